"""Face crops, following the DFDC reference exactly (normalisation: ``variants.to_array``).

Reference behaviour (see the field notes): padding ``h // 3`` / ``w // 3`` on
every side clamped at 0 top/left; isotropic resize of the longest side with
INTER_AREA when shrinking and INTER_CUBIC when enlarging; centring on a black
square canvas.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Sequence

import cv2
import numpy as np


def padded_crop(image: np.ndarray, box: Sequence[int], margin: Fraction) -> np.ndarray:
    """Crop ``box`` (integer x1, y1, x2, y2) widened by ``margin`` of its size on every side."""
    xmin, ymin, xmax, ymax = box
    w, h = xmax - xmin, ymax - ymin
    p_w = w * margin.numerator // margin.denominator
    p_h = h * margin.numerator // margin.denominator
    return image[max(ymin - p_h, 0): max(ymax + p_h, 0), max(xmin - p_w, 0): max(xmax + p_w, 0)]


def _interpolation(scale: float) -> int:
    return cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA


def isotropic_resize(image: np.ndarray, size: int) -> np.ndarray:
    """Scale so the longest side equals ``size``; unchanged if it already does."""
    h: float
    w: float
    h, w = image.shape[:2]
    if max(w, h) == size:
        return image
    if w > h:
        scale = size / w
        h, w = h * scale, size
    else:
        scale = size / h
        h, w = size, w * scale
    # max(1, ...) only guards degenerate slivers, where the reference would crash.
    return cv2.resize(image, (max(1, int(w)), max(1, int(h))), interpolation=_interpolation(scale))


def put_to_center(image: np.ndarray, size: int) -> np.ndarray:
    image = image[:size, :size]
    canvas = np.zeros((size, size, 3), dtype=np.uint8)
    start_w = (size - image.shape[1]) // 2
    start_h = (size - image.shape[0]) // 2
    canvas[start_h:start_h + image.shape[0], start_w:start_w + image.shape[1]] = image
    return canvas


def stretch_resize(image: np.ndarray, size: int) -> np.ndarray:
    h, w = image.shape[:2]
    return cv2.resize(image, (size, size), interpolation=_interpolation(size / max(h, w)))


def fit_to_input(image: np.ndarray, size: int, mode: str) -> np.ndarray:
    if mode == "isotropic":
        return put_to_center(isotropic_resize(image, size), size)
    if mode == "stretch":
        return stretch_resize(image, size)
    raise ValueError(f"unknown resize mode {mode!r}")


def center_square(image: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The largest centred square of an image and its box (the no-face fallback of seed 004)."""
    h, w = image.shape[:2]
    side = min(h, w)
    x1, y1 = (w - side) // 2, (h - side) // 2
    return image[y1:y1 + side, x1:x1 + side], (x1, y1, x1 + side, y1 + side)

