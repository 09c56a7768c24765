"""deepfake-serving: serve EfficientNet deepfake detectors on TorchServe and Triton.

Subpackages are layers, each importing only those below it (README "Layout"; checked by ``make lint``):
the core (``core`` … ``pipeline``, ``builder``, ``evaluation``) knows nothing of either server; the
handlers and python-backend models under ``serving`` are thin adapters.
"""

__version__ = "0.1.0"
