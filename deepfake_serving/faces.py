"""Face detection: facenet-pytorch's MTCNN, run without torch (``mtcnn.OnnxMTCNN``), one image per call."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image

from .engines import Device, ort_providers
from .mtcnn import OnnxMTCNN
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
    """MTCNN one image per call, as the DFDC reference detects: an image's boxes never depend on
    the images that arrive with it. Every face is kept, largest first."""

    def __init__(self, params: FaceStage, threads: int | None = None, device: Device = Device()):
        self.params = params
        self.mtcnn = OnnxMTCNN(params.min_face_size, params.thresholds, threads, ort_providers(device))

    def detect(self, images: Sequence[np.ndarray], scales: Sequence[float]) -> list[list[DetectedFace] | Exception]:
        """Detect faces in each RGB image after shrinking it by its scale; boxes come back full size.
        A failure stays with its image: it gets the exception in place of its faces."""
        results: list[list[DetectedFace] | Exception] = []
        for image, scale in zip(images, scales):
            try:
                results.append(self._faces(*self.mtcnn.detect(shrink(image, scale)), scale))
            except Exception as exc:  # noqa: BLE001 - isolate the image at fault
                results.append(exc)
        return results

    @staticmethod
    def _faces(boxes: np.ndarray, probs: np.ndarray, scale: float) -> list[DetectedFace]:
        inverse = 1.0 / scale
        return [DetectedFace(tuple(int(float(b) * inverse) for b in box), float(p)) for box, p in zip(boxes, probs)]
