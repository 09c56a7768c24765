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
    return np.asarray(Image.fromarray(image).resize(detection_size(image.shape, scale)))


def detection_size(shape: tuple[int, ...], scale: float) -> tuple[int, int]:
    """(width, height) of the copy MTCNN sees (``shrink``'s arithmetic)."""
    h, w = shape[:2]
    return (w, h) if scale == 1.0 else (max(1, int(w * scale)), max(1, int(h * scale)))


def detectable(shape: tuple[int, ...], scale: float, params: "FaceStage") -> bool:
    """MTCNN's image pyramid starts at min_face_size: a smaller copy has no scale to run (it crashes)."""
    return min(detection_size(shape, scale)) >= params.min_face_size


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

    def detect(self, images: Sequence[np.ndarray], scales: Sequence[float]) -> list[list[DetectedFace] | Exception]:
        """Detect faces in each RGB image after shrinking it by its scale; boxes come back full size.

        A failure stays with its image: a group that fails is detected again one image at a
        time, and an image that still fails gets its exception in place of its faces.
        """
        shrunk = [shrink(img, s) for img, s in zip(images, scales)]
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, img in enumerate(shrunk):
            groups.setdefault(img.shape, []).append(i)
        results: list[list[DetectedFace] | Exception] = [[] for _ in images]
        for indices in groups.values():
            try:
                found = self._detect_group([shrunk[i] for i in indices])
            except Exception:  # noqa: BLE001 - isolate the image at fault
                found = [self._detect_alone(shrunk[i]) for i in indices]
            for i, item in zip(indices, found):
                results[i] = item if isinstance(item, Exception) else self._faces(*item, scales[i])
        return results

    def _detect_group(self, images: list[np.ndarray]) -> list[tuple]:
        batch_boxes, batch_probs = self.mtcnn.detect(np.stack(images))
        return list(zip(batch_boxes, batch_probs))

    def _detect_alone(self, image: np.ndarray) -> tuple | Exception:
        try:
            return self._detect_group([image])[0]
        except Exception as exc:  # noqa: BLE001
            return exc

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
