"""Face detection: facenet-pytorch's MTCNN, run without torch (``mtcnn.OnnxMTCNN``), one image per call,
and the detected face set that yields crops for any variant (an ensemble detects once)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from PIL import Image

from deepfake_serving.core.batching import isolated
from deepfake_serving.core.errors import RequestError
from deepfake_serving.engines import Device
from deepfake_serving.engines.onnx_runtime import ort_providers
from deepfake_serving.faces.crops import fit_to_input, padded_crop
from deepfake_serving.faces.mtcnn import OnnxMTCNN
from deepfake_serving.variants import FaceSettings, Preprocessing


@dataclass(frozen=True)
class DetectedFace:
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 in the full-size image (DFDC: int(b / scale))
    confidence: float


@dataclass
class FaceSet:
    """The faces of one image or frame (largest confidence first unless said otherwise) and its decoded
    pixels while crops may still be cut: any variant cuts its own crops from the same detection."""

    faces: list[DetectedFace]
    image: np.ndarray | None = field(default=None, repr=False)

    def crops(self, pre: Preprocessing, limit: int | None = None) -> tuple[list[DetectedFace], list[np.ndarray]]:
        """(faces kept, model-ready crops of the first ``limit`` of them) for a variant's margin, input
        size and resize rule; a face whose padded crop is empty (a box outside the image) is not kept."""
        kept, (crops,) = self.member_crops([pre], limit)
        return kept, crops

    def member_crops(self, pres: Sequence[Preprocessing], limit: int | None = None
                     ) -> tuple[list[DetectedFace], list[list[np.ndarray]]]:
        """``crops`` for several variants at once (an ensemble's members): the faces every one of them can
        cut, and each one's crops of the first ``limit`` of those, in the same order."""
        if self.image is None:
            raise ValueError("the decoded pixels were released: crops are cut before release()")
        kept: list[DetectedFace] = []
        crops: list[list[np.ndarray]] = [[] for _ in pres]
        for face in self.faces:
            padded = [padded_crop(self.image, face.box, pre.faces.crop_margin) for pre in pres]
            if any(crop.size == 0 for crop in padded):
                continue
            kept.append(face)
            if limit is None or len(crops[0]) < limit:
                for pool, pre, crop in zip(crops, pres, padded):
                    pool.append(fit_to_input(crop, pre.input_size, pre.resize))
        return kept, crops

    def release(self) -> None:
        self.image = None


def _box(values) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = values
    return x1, y1, x2, y2


def shrink(image: np.ndarray, scale: float) -> np.ndarray:
    """Downscale as the DFDC reference does (PIL resize of each side // (1/scale))."""
    if scale == 1.0:
        return image
    return np.asarray(Image.fromarray(image).resize(detection_size(image.shape, scale)))


def detection_size(shape: tuple[int, ...], scale: float) -> tuple[int, int]:
    """(width, height) of the copy MTCNN sees (``shrink``'s arithmetic)."""
    h, w = shape[:2]
    return (w, h) if scale == 1.0 else (max(1, int(w * scale)), max(1, int(h * scale)))


def check_detectable(shape: tuple[int, ...], scale: float, params: FaceSettings, code: str, what: str) -> None:
    """MTCNN's image pyramid starts at min_face_size: a smaller copy has no scale to run (it crashes), so it
    is refused with ``code`` (``image_too_small`` / ``frame_too_small``); ``what`` names the image."""
    w, h = detection_size(shape, scale)
    if min(w, h) < params.min_face_size:
        raise RequestError(code, f"{what} is {shape[1]}x{shape[0]}; faces are detected on a {w}x{h} copy, and "
                           f"each side of it must be at least {params.min_face_size} px")


def image_detect_scale(shape: tuple[int, ...], params: FaceSettings) -> float:
    longest = max(shape[:2])
    return 1.0 if longest <= params.image_detect_max_side else params.image_detect_max_side / longest


class FaceDetector:
    """MTCNN one image per call, as the DFDC reference detects: an image's boxes never depend on
    the images that arrive with it."""

    def __init__(self, params: FaceSettings, threads: int | None = None, device: Device = Device()):
        self.params = params
        self.mtcnn = OnnxMTCNN(params.min_face_size, params.thresholds, threads, ort_providers(device))

    def find(self, image: np.ndarray, scale: float) -> FaceSet:
        """The faces of an RGB image, detected on its copy shrunk by ``scale``; boxes come back full size."""
        boxes, probs = self.mtcnn.detect(shrink(image, scale))
        inverse = 1.0 / scale
        faces = [DetectedFace(_box(int(float(b) * inverse) for b in box), float(p)) for box, p in zip(boxes, probs)]
        return FaceSet(faces, image)

    def detect(self, images: Sequence[np.ndarray], scales: Sequence[float]) -> list[FaceSet | Exception]:
        """``find`` for each image; a failure stays with its image (the exception in its place)."""
        return isolated(list(zip(images, scales)), lambda pair: self.find(*pair))
