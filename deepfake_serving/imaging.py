"""Decoding untrusted image bytes into RGB uint8 arrays, with clear errors."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError

SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000  # checked from the header, before any pixel is decoded
    min_side: int = 16


def looks_like_video(data: bytes) -> bool:
    """Container magic: MP4/MOV (ftyp at 4), AVI (RIFF....AVI), Matroska/WebM (EBML), Ogg, FLV."""
    head = data[:12]
    return (head[4:8] == b"ftyp" or (head[:4] == b"RIFF" and head[8:11] == b"AVI")
            or head[:4] in (b"\x1a\x45\xdf\xa3", b"OggS") or head[:3] == b"FLV")


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


def decode_image(data: bytes, limits: ImageLimits = ImageLimits()) -> np.ndarray:
    """Return an HxWx3 RGB uint8 array, upright per EXIF, or raise InputError."""
    if not data:
        raise InputError(400, "empty_body", "the request body is empty; send the image bytes as the body")
    if len(data) > limits.max_bytes:
        raise InputError(413, "body_too_large", f"the image is {len(data)} bytes; the limit is {limits.max_bytes}")
    if looks_like_video(data):
        raise InputError(415, "video_sent_to_image_endpoint",
                         "the body is a video; send videos to the video model ({variant}-video)")
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:  # PIL refuses > 2x its own pixel limit while opening
        raise InputError(413, "image_too_large", f"the image declares too many pixels: {exc}") from None
    except UnidentifiedImageError:
        raise InputError(415, "unsupported_media",
                         "the body is not an image this server can decode (JPEG, PNG, WebP, BMP, TIFF, GIF)") from None
    except Exception as exc:
        raise InputError(400, "corrupt_image", f"the image header cannot be read: {exc}") from None
    width, height = img.size
    if width * height > limits.max_pixels:
        raise InputError(413, "image_too_large",
                         f"the image declares {width}x{height} pixels; the limit is {limits.max_pixels} pixels")
    if min(width, height) < limits.min_side:
        raise InputError(422, "image_too_small", f"the image is {width}x{height}; each side must be at least {limits.min_side}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.load()
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img)
    except InputError:
        raise
    except Exception as exc:  # truncated data, bad chunks, zlib errors...
        raise InputError(400, "corrupt_image", f"the image data is corrupt or truncated: {exc}") from None
