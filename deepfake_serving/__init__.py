"""deepfake-serving: serve EfficientNet deepfake detectors on TorchServe and Triton.

The core (everything in this package except ``deepfake_serving.serving``) knows
nothing of either server; handlers and python-backend models are thin adapters.
"""

__version__ = "0.1.0"
