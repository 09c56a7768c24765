"""The image pipeline: decode → detect faces (batched) → crops → one forward pass → responses.

Backend-agnostic: the TorchServe handler and the Triton models call it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from torch import nn

from .classifier import FaceScorer, as_scorer
from .crops import center_square, fit_to_input, padded_crop
from .errors import InputError
from .faces import FaceDetector, image_detect_scale
from .imaging import ImageLimits, decode_image
from .schema import face_entry, image_response
from .variants import Variant


@dataclass
class PreparedImage:
    """One image after the face stage: model-ready crops and what the response needs about them."""

    width: int
    height: int
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)
    confidences: list[float | None] = field(default_factory=list)
    crops: list[np.ndarray] = field(default_factory=list)
    source: str = "mtcnn"
    timings_ms: dict[str, float] = field(default_factory=dict)

    def metadata(self) -> dict:
        """Everything but the crops: what travels beside the face tensor between Triton models."""
        return {"width": self.width, "height": self.height, "boxes": [list(map(int, b)) for b in self.boxes],
                "confidences": self.confidences, "source": self.source, "timings_ms": self.timings_ms}

    @classmethod
    def from_metadata(cls, data: dict) -> "PreparedImage":
        return cls(data["width"], data["height"], [tuple(b) for b in data["boxes"]], list(data["confidences"]),
                   source=data["source"], timings_ms=dict(data["timings_ms"]))


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000.0


class ImageFaceStage:
    """Decode → batched MTCNN → model-ready crops (what Triton's preprocess model runs)."""

    def __init__(self, variant: Variant, limits: ImageLimits = ImageLimits(), max_faces: int = 32):
        self.variant = variant
        self.limits = limits
        self.max_faces = max_faces
        self.face_detector = FaceDetector(variant.preprocessing.faces)

    def prepare(self, payloads: Sequence[bytes]) -> list[PreparedImage | InputError]:
        """Decode every payload and detect faces over the whole batch; failures stay per item."""
        prepared: list[PreparedImage | InputError] = []
        images: dict[int, np.ndarray] = {}
        for i, data in enumerate(payloads):
            start = time.perf_counter()
            try:
                image = decode_image(data, self.limits)
            except InputError as err:
                prepared.append(err)
                continue
            images[i] = image
            prepared.append(PreparedImage(image.shape[1], image.shape[0], timings_ms={"decode": _ms(start)}))
        if not images:
            return prepared
        start = time.perf_counter()
        params = self.variant.preprocessing.faces
        order = list(images)
        detections = self.face_detector.detect(
            [images[i] for i in order], [image_detect_scale(images[i].shape, params) for i in order]
        )
        detect_ms = _ms(start) / len(order)
        for i, faces in zip(order, detections):
            item = prepared[i]
            start = time.perf_counter()
            faces = sorted(faces, key=lambda f: -f.confidence)[: self.max_faces]
            self._crop(item, images[i], faces)
            item.timings_ms["detect"] = detect_ms
            item.timings_ms["crop"] = _ms(start)
        return prepared

    def _crop(self, item: PreparedImage, image: np.ndarray, faces) -> None:
        pre = self.variant.preprocessing
        for face in faces:
            crop = padded_crop(image, face.box, pre.faces.crop_margin)
            if crop.size == 0:
                continue
            item.boxes.append(face.box)
            item.confidences.append(face.confidence)
            item.crops.append(fit_to_input(crop, pre.input_size, pre.resize))
        if not item.crops and pre.faces.no_face_fallback == "center_crop":
            crop, box = center_square(image)
            item.boxes.append(box)
            item.confidences.append(None)
            item.crops.append(fit_to_input(crop, pre.input_size, pre.resize))
            item.source = "center_crop"


def image_result(item: PreparedImage, scores: Sequence[float], *, model: str, version: str, threshold: float,
                 weights_trained: bool) -> dict:
    """The response for one prepared image and its faces' P(fake)."""
    faces = [
        face_entry(box, conf, score, item.source)
        for box, conf, score in zip(item.boxes, item.confidences, scores)
    ]
    return image_response(model=model, version=version, threshold=threshold, faces=faces,
                          weights_trained=weights_trained, width=item.width, height=item.height,
                          timings_ms=item.timings_ms)


class ImagePipeline:
    def __init__(
        self,
        variant: Variant,
        model: nn.Module | Sequence[nn.Module] | FaceScorer,
        *,
        version: str = "0",
        weights_trained: bool = False,
        model_name: str | None = None,
        limits: ImageLimits = ImageLimits(),
        max_faces: int = 32,
    ):
        self.variant = variant
        self.classifier = as_scorer(variant, model)
        self.version = version
        self.weights_trained = weights_trained
        self.model_name = model_name or variant.name
        self.face_stage = ImageFaceStage(variant, limits, max_faces)

    def prepare(self, payloads: Sequence[bytes]) -> list[PreparedImage | InputError]:
        return self.face_stage.prepare(payloads)

    def classify(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """P(fake) for each crop (the mean over the archive's checkpoints)."""
        return self.classifier.scores(crops).mean(axis=0)

    def respond(self, item: PreparedImage, scores: Sequence[float]) -> dict:
        return image_result(item, scores, model=self.model_name, version=self.version,
                            threshold=self.variant.threshold, weights_trained=self.weights_trained)

    # -- whole pipeline -------------------------------------------------------
    def predict_batch(self, payloads: Sequence[bytes]) -> list[dict | InputError]:
        """Answer a batch: the faces of every valid request share one forward pass."""
        prepared = self.prepare(payloads)
        valid = [p for p in prepared if isinstance(p, PreparedImage)]
        start = time.perf_counter()
        scores = self.classify([crop for p in valid for crop in p.crops])
        classify_ms = _ms(start)
        results: list[dict | InputError] = []
        offset = 0
        for item in prepared:
            if isinstance(item, InputError):
                results.append(item)
                continue
            n = len(item.crops)
            item.timings_ms["classify"] = classify_ms
            item.timings_ms["total"] = sum(item.timings_ms.values())
            response = self.respond(item, scores[offset:offset + n])
            response["batch_size"] = len(payloads)  # requests that shared this forward pass
            results.append(response)
            offset += n
        return results

    def predict(self, payload: bytes) -> dict:
        (result,) = self.predict_batch([payload])
        if isinstance(result, InputError):
            raise result
        return result
