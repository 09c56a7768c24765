"""Self-blended images (Shiohara & Yamasaki, CVPR 2022): a fake made from one real face alone, by blending
a transformed copy of the face back into itself inside a soft face-shaped mask. The blend leaves what face
swaps leave (a boundary, a colour and sharpness mismatch) without any identity change.

Written from the paper: the copy gets a colour shift (hue, saturation, brightness, contrast), a sharpness
change (blur or sharpen) and a small scale and shift; the mask is an ellipse around the crop's centre (the
face stage centres the face; the paper uses landmarks' convex hull, which MTCNN's five points cannot
give), randomly sized, rotated and blurred, at a random blend ratio.
"""

from __future__ import annotations

import cv2
import numpy as np


def _colour(image: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    def around(centre: float, spread: float) -> float:
        return centre + rng.uniform(-spread, spread) * strength

    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + around(0, 10)) % 180
    hsv[..., 1] = np.clip(hsv[..., 1] * around(1, 0.3), 0, 255)
    hsv[..., 2] = np.clip(hsv[..., 2] * around(1, 0.2), 0, 255)
    out = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
    out = (out - out.mean()) * around(1, 0.2) + out.mean() + rng.uniform(-20, 20, size=3) * strength
    return np.clip(out, 0, 255)


def _sharpness(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.5:
        return cv2.GaussianBlur(image, (0, 0), rng.uniform(0.5, 1.5))
    blurred = cv2.GaussianBlur(image, (0, 0), 1.0)
    return np.clip(image + rng.uniform(0.5, 1.5) * (image - blurred), 0, 255)


def _move(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = image.shape[:2]
    scale = rng.uniform(0.95, 1.05)
    dx, dy = rng.uniform(-0.03, 0.03) * w, rng.uniform(-0.03, 0.03) * h
    matrix = np.array([[scale, 0, (1 - scale) * w / 2 + dx], [0, scale, (1 - scale) * h / 2 + dy]], dtype=np.float32)
    return cv2.warpAffine(image, matrix, (w, h), borderMode=cv2.BORDER_REFLECT)


def face_mask(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A soft ellipse around the centre, 0..1, HxW."""
    mask = np.zeros((height, width), dtype=np.float32)
    centre = (int(width * rng.uniform(0.45, 0.55)), int(height * rng.uniform(0.45, 0.55)))
    axes = (int(width * rng.uniform(0.25, 0.4)), int(height * rng.uniform(0.3, 0.45)))
    cv2.ellipse(mask, centre, axes, float(rng.uniform(-15, 15)), 0, 360, (1.0,), -1)
    sigma = max(1.0, min(height, width) * rng.uniform(0.02, 0.08))
    return cv2.GaussianBlur(mask, (0, 0), sigma)


def self_blend(face: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """A self-blended fake of an HxWx3 uint8 RGB face crop (same size and type). ``strength`` scales the
    colour shift (1: the paper's ranges as we read them); above 1 the copy is also blended in whole (ratio 1),
    a cruder fake."""
    target = face.astype(np.float32)
    source = _move(_sharpness(_colour(face, rng, strength), rng), rng)
    ratio = 1.0 if strength > 1 else rng.choice([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    mask = face_mask(face.shape[0], face.shape[1], rng) * ratio
    blended = mask[..., None] * source + (1 - mask[..., None]) * target
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)
