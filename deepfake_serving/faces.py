"""Face detection with facenet-pytorch's MTCNN (its P/R/O-Net weights ship in its wheel)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from facenet_pytorch import MTCNN
from PIL import Image

from .variants import FaceStage


@dataclass(frozen=True)
class DetectedFace:
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 in the full-size image (DFDC: int(b / scale))
    confidence: float


def shrink(image: np.ndarray, scale: float) -> np.ndarray:
    """Downscale as the DFDC reference does (PIL resize of each side // (1/scale))."""
    if scale == 1.0:
        return image
    h, w = image.shape[:2]
    size = (max(1, int(w * scale)), max(1, int(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size))


def image_detect_scale(shape: tuple[int, ...], params: FaceStage) -> float:
    longest = max(shape[:2])
    return 1.0 if longest <= params.image_detect_max_side else params.image_detect_max_side / longest


class FaceDetector:
    """Batched MTCNN: images that share a size go through one call; every face is kept."""

    def __init__(self, params: FaceStage):
        self.params = params
        self.mtcnn = MTCNN(
            margin=0,
            thresholds=list(params.thresholds),
            min_face_size=params.min_face_size,
            keep_all=True,
            select_largest=True,  # the DFDC reference's default: boxes come largest first
            post_process=False,
            device="cpu",
        )

    def detect(self, images: Sequence[np.ndarray], scales: Sequence[float]) -> list[list[DetectedFace]]:
        """Detect faces in each RGB image after shrinking it by its scale; boxes come back full size."""
        shrunk = [shrink(img, s) for img, s in zip(images, scales)]
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, img in enumerate(shrunk):
            groups.setdefault(img.shape, []).append(i)
        results: list[list[DetectedFace]] = [[] for _ in images]
        for indices in groups.values():
            batch_boxes, batch_probs = self.mtcnn.detect(np.stack([shrunk[i] for i in indices]))
            for i, boxes, probs in zip(indices, batch_boxes, batch_probs):
                results[i] = self._faces(boxes, probs, scales[i])
        return results

    @staticmethod
    def _faces(boxes, probs, scale: float) -> list[DetectedFace]:
        if boxes is None:
            return []
        inverse = 1.0 / scale
        return [
            DetectedFace(tuple(int(float(b) * inverse) for b in box), float(p))
            for box, p in zip(boxes, probs)
            if box is not None
        ]
