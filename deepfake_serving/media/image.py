"""Decoding untrusted image bytes into RGB uint8 arrays, with clear errors."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from deepfake_serving.core.errors import RequestError
from deepfake_serving.core.formats import ACCEPTED_IMAGES, image_format, video_container

SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000  # checked from the header, before any pixel is decoded
    min_side: int = 16


def _to_rgb(img: Image.Image) -> np.ndarray:
    if img.mode in SIXTEEN_BIT_MODES:
        # PIL's convert("RGB") clips 16-bit values at 255; rescale instead.
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode != "I" or arr.max() > 255 else 255.0
        gray = np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))
    if img.mode == "F":
        gray = np.clip(np.asarray(img, dtype=np.float64), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))
    if img.mode == "P":
        img = img.convert("RGBA")
    return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))


def decode_image(data: bytes, limits: ImageLimits = ImageLimits(), video_endpoint: str = "the video model") -> np.ndarray:
    """Return an HxWx3 RGB uint8 array, upright per EXIF, or raise RequestError (a video is pointed at
    ``video_endpoint``, the served name of the video model beside this one)."""
    if not data:
        raise RequestError("empty_body", "the request body is empty; send the image bytes as the body")
    if len(data) > limits.max_bytes:
        raise RequestError("body_too_large", f"the image is {len(data)} bytes; the limit is {limits.max_bytes}")
    if video_container(data):
        raise RequestError("video_sent_to_image_endpoint",
                           f"the body is a video; send videos to {video_endpoint}")
    fmt = image_format(data)
    if fmt is None:
        raise RequestError("unsupported_media", f"the body is not an accepted image ({ACCEPTED_IMAGES})")
    try:
        img = Image.open(io.BytesIO(data), formats=[fmt])
    except Image.DecompressionBombError as exc:  # PIL refuses > 2x its own pixel limit while opening
        raise RequestError("image_too_large", f"the image declares too many pixels: {exc}") from None
    except Exception as exc:  # the signature of an accepted format, but a header Pillow cannot read
        raise RequestError("corrupt_image", f"the {fmt} header cannot be read: {exc}") from None
    width, height = img.size
    if width * height > limits.max_pixels:
        raise RequestError("image_too_large",
                           f"the image declares {width}x{height} pixels; the limit is {limits.max_pixels} pixels")
    if min(width, height) < limits.min_side:
        raise RequestError("image_too_small", f"the image is {width}x{height}; each side must be at least {limits.min_side}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.load()
            return _to_rgb(ImageOps.exif_transpose(img))
    except Exception as exc:  # truncated data, bad chunks, zlib errors...
        raise RequestError("corrupt_image", f"the {fmt} data is corrupt or truncated: {exc}") from None
