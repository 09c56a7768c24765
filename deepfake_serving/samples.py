"""Real sample media for demos, tests and benchmarks (scikit-image ships the photographs)."""

from __future__ import annotations

import io
from functools import lru_cache

import numpy as np
from PIL import Image

# Where the astronaut's (Eileen Collins') face lies in scikit-image's 512×512 photograph.
ASTRONAUT_FACE_REGION = (150, 30, 300, 200)  # x1, y1, x2, y2


@lru_cache(maxsize=None)
def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


def two_faces() -> np.ndarray:
    """Two real faces side by side (the astronaut, and her mirror image)."""
    face = astronaut()
    return np.ascontiguousarray(np.hstack([face, face[:, ::-1]]))


def no_face() -> np.ndarray:
    from skimage import data

    return data.coffee()


def encode(image: np.ndarray, fmt: str = "JPEG", **options) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, fmt, **options)
    return buf.getvalue()


def astronaut_jpeg() -> bytes:
    return encode(astronaut(), quality=95)
