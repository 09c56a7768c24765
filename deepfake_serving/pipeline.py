"""The image pipeline: decode → detect faces → crops → one forward pass → responses.

Backend-agnostic: the TorchServe handler and the Triton models call it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .crops import center_square, fit_to_input, padded_crop
from .engines import Device, FaceScorer, as_scorer
from .errors import RequestError, internal_error
from .faces import FaceDetector, detectable, detection_size, image_detect_scale
from .imaging import ImageLimits, decode_image
from .naming import video_model
from .schema import face_entry, image_response
from .variants import Variant

if TYPE_CHECKING:  # a scorer, or torch models for the torch engine; torch is never imported here
    from torch import nn


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
    image: np.ndarray | None = field(default=None, repr=False)  # the decoded pixels, until the crops are cut
    detect_scale: float = 1.0

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
    """Decode → MTCNN (one image per call) → model-ready crops (what Triton's preprocess model runs)."""

    def __init__(self, variant: Variant, limits: ImageLimits = ImageLimits(), max_faces: int = 32,
                 threads: int | None = None, device: Device = Device(), video_endpoint: str | None = None):
        self.variant = variant
        self.video_endpoint = video_endpoint or video_model(variant.name)
        self.limits = limits
        self.max_faces = max_faces
        self.face_detector = FaceDetector(variant.preprocessing.faces, threads, device)

    def prepare(self, payloads: Sequence[bytes]) -> list[PreparedImage | RequestError]:
        """Decode every payload and detect faces over the whole batch; failures stay per item."""
        prepared: list[PreparedImage | RequestError] = [self._decode(data) for data in payloads]
        images = {i: item for i, item in enumerate(prepared) if isinstance(item, PreparedImage)}
        if not images:
            return prepared
        start = time.perf_counter()
        detections = self.face_detector.detect([item.image for item in images.values()],
                                               [item.detect_scale for item in images.values()])
        detect_ms = _ms(start) / len(images)
        for (i, item), faces in zip(images.items(), detections):
            start = time.perf_counter()
            try:
                if isinstance(faces, Exception):
                    raise faces
                self._crop(item, item.image, sorted(faces, key=lambda f: -f.confidence)[: self.max_faces])
            except Exception as exc:  # noqa: BLE001 - this request fails alone
                prepared[i] = internal_error(exc)
                continue
            finally:
                item.image = None  # the crops are cut: the decoded pixels are not needed any more
            item.timings_ms["detect"] = detect_ms
            item.timings_ms["crop"] = _ms(start)
        return prepared

    def _decode(self, data: bytes) -> PreparedImage | RequestError:
        start = time.perf_counter()
        try:
            image = decode_image(data, self.limits, self.video_endpoint)
            scale = image_detect_scale(image.shape, self.variant.preprocessing.faces)
            if not detectable(image.shape, scale, self.variant.preprocessing.faces):
                w, h = detection_size(image.shape, scale)
                raise RequestError("image_too_small", f"the image is {image.shape[1]}x{image.shape[0]}; faces are "
                                   f"detected on a {w}x{h} copy, and each side of it must be at least "
                                   f"{self.variant.preprocessing.faces.min_face_size} px")
        except Exception as exc:  # noqa: BLE001 - RequestError as it is, anything else an internal error
            return internal_error(exc)
        return PreparedImage(image.shape[1], image.shape[0], image=image, detect_scale=scale,
                             timings_ms={"decode": _ms(start)})

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
                 weights_trained: bool, batch_size: int) -> dict:
    """The response for one prepared image and its faces' P(fake)."""
    faces = [
        face_entry(box, conf, score, item.source)
        for box, conf, score in zip(item.boxes, item.confidences, scores)
    ]
    return image_response(model=model, version=version, threshold=threshold, faces=faces,
                          weights_trained=weights_trained, width=item.width, height=item.height,
                          timings_ms=item.timings_ms, batch_size=batch_size)


class ImagePipeline:
    def __init__(
        self,
        variant: Variant,
        model: "FaceScorer | nn.Module | Sequence[nn.Module]",
        *,
        version: str = "0",
        weights_trained: bool = False,
        model_name: str | None = None,
        limits: ImageLimits = ImageLimits(),
        max_faces: int = 32,
        threads: int | None = None,
        device: Device = Device(),
    ):
        self.variant = variant
        self.classifier = as_scorer(variant, model)
        self.version = version
        self.weights_trained = weights_trained
        self.model_name = model_name or variant.name
        self.face_stage = ImageFaceStage(variant, limits, max_faces, threads, device, video_model(self.model_name))

    def prepare(self, payloads: Sequence[bytes]) -> list[PreparedImage | RequestError]:
        return self.face_stage.prepare(payloads)

    def classify(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """P(fake) for each crop (the mean over the archive's checkpoints)."""
        return self.classifier.scores(crops).mean(axis=0)

    def respond(self, item: PreparedImage, scores: Sequence[float], batch_size: int = 1) -> dict:
        return image_result(item, scores, model=self.model_name, version=self.version,
                            threshold=self.variant.threshold, weights_trained=self.weights_trained,
                            batch_size=batch_size)

    # -- whole pipeline -------------------------------------------------------
    def predict_batch(self, payloads: Sequence[bytes]) -> list[dict | RequestError]:
        """Answer a batch: the faces of every valid request share one forward pass. Whatever fails
        fails one request: a forward pass that raises is run again request by request."""
        prepared = self.prepare(payloads)
        valid = [p for p in prepared if isinstance(p, PreparedImage)]
        start = time.perf_counter()
        try:
            scores = list(self._split(self.classify([crop for p in valid for crop in p.crops]), valid))
        except Exception:  # noqa: BLE001
            scores = [self._classify_alone(p) for p in valid]
        classify_ms = _ms(start) / max(len(valid), 1)  # shared, as detection is
        results: list[dict | RequestError] = []
        answers = iter(scores)
        for item in prepared:
            if isinstance(item, RequestError):
                results.append(item)
                continue
            item_scores = next(answers)
            if isinstance(item_scores, Exception):
                results.append(internal_error(item_scores))
                continue
            item.timings_ms["classify"] = classify_ms
            results.append(self.respond(item, item_scores, batch_size=len(valid)))  # requests in the forward pass
        return results

    @staticmethod
    def _split(scores: np.ndarray, items: Sequence[PreparedImage]):
        offset = 0
        for item in items:
            yield scores[offset:offset + len(item.crops)]
            offset += len(item.crops)

    def _classify_alone(self, item: PreparedImage) -> np.ndarray | Exception:
        try:
            return self.classify(item.crops)
        except Exception as exc:  # noqa: BLE001
            return exc

    def predict(self, payload: bytes) -> dict:
        (result,) = self.predict_batch([payload])
        if isinstance(result, RequestError):
            raise result
        return result
