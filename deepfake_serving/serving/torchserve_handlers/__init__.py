"""TorchServe handlers: thin adapters from BaseHandler's life cycle to deepfake_serving's pipelines.

An archive carries one of the handler files (``deepfake_image_handler.py``, ``deepfake_video_handler.py``
or ``deepfake_ensemble_handler.py``, one class each, as TorchServe's loader wants) and imports the rest from
the installed package. ``base`` imports TorchServe (``ts``): only a TorchServe worker imports it.
"""

from __future__ import annotations

from importlib.resources import files

MEDIA = ("image", "video", "ensemble")  # an ensemble archive answers images


def handler_file(media: str):
    """The handler file an archive of ``media`` ships (inside the installed package)."""
    if media not in MEDIA:
        raise ValueError(f"media must be one of {', '.join(MEDIA)}")
    return files(__package__) / f"deepfake_{media}_handler.py"
