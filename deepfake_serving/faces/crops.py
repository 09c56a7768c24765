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


def crop_region(box: Sequence[int], margin: Fraction, width: int, height: int) -> tuple[int, int, int, int]:
    """The image rectangle (x1, y1, x2, y2) a face's crop holds: ``box`` widened by ``margin`` of its size on
    every side, clipped to the image (empty when the box lies outside it)."""
    xmin, ymin, xmax, ymax = box
    p_w = (xmax - xmin) * margin.numerator // margin.denominator
    p_h = (ymax - ymin) * margin.numerator // margin.denominator
    x1, y1 = min(max(xmin - p_w, 0), width), min(max(ymin - p_h, 0), height)
    return x1, y1, max(min(xmax + p_w, width), x1), max(min(ymax + p_h, height), y1)


def padded_crop(image: np.ndarray, box: Sequence[int], margin: Fraction) -> np.ndarray:
    """Crop ``box`` (integer x1, y1, x2, y2) widened by ``margin`` of its size on every side."""
    x1, y1, x2, y2 = crop_region(box, margin, image.shape[1], image.shape[0])
    return image[y1:y2, x1:x2]


def content_window(region_width: int, region_height: int, size: int, mode: str) -> tuple[int, int, int, int]:
    """Where a crop of ``region_width`` × ``region_height`` lands in the model's ``size`` square (x, y, w, h):
    all of it when stretched, else centred as ``isotropic_resize`` and ``put_to_center`` place it (the rest
    is black canvas)."""
    if mode == "stretch":
        return 0, 0, size, size
    w, h = region_width, region_height
    if max(w, h) != size:
        scale = size / max(w, h)
        w, h = (size, max(1, int(h * scale))) if w > h else (max(1, int(w * scale)), size)
    w, h = min(w, size), min(h, size)
    return (size - w) // 2, (size - h) // 2, w, h


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

