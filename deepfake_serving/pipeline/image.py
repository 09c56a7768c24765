"""The image pipeline: decode → detect faces → crops → one forward pass → responses.

Backend-agnostic: the TorchServe handler and the Triton models call it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence, cast

import numpy as np

from deepfake_serving.core.batching import isolated
from deepfake_serving.core.errors import RequestError, internal_error
from deepfake_serving.core.limits import MAX_IMAGE_FACES
from deepfake_serving.core.naming import video_model
from deepfake_serving.core.observe import StageObservers, ms_since, outcome_of
from deepfake_serving.core.schema import face_entry, image_response
from deepfake_serving.engines import Device, FaceScorer, as_scorer
from deepfake_serving.faces.crops import center_square, fit_to_input
from deepfake_serving.faces.detector import FaceDetector, FaceSet, check_detectable, image_detect_scale
from deepfake_serving.media.image import ImageLimits, decode_image
from deepfake_serving.variants import Preprocessing, Variant

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
    more_crops: list[list[np.ndarray]] = field(default_factory=list)  # the same faces cut for ``also_crop_for``

    def metadata(self) -> dict:
        """Everything but the crops: what travels beside the face tensor between Triton models."""
        return {"width": self.width, "height": self.height, "boxes": [list(map(int, b)) for b in self.boxes],
                "confidences": self.confidences, "source": self.source, "timings_ms": self.timings_ms}

    @classmethod
    def from_metadata(cls, data: dict) -> "PreparedImage":
        return cls(data["width"], data["height"], [tuple(b) for b in data["boxes"]], list(data["confidences"]),
                   source=data["source"], timings_ms=dict(data["timings_ms"]))


class ImagePreprocessor:
    """Decode → MTCNN (one image per call) → model-ready crops (what Triton's preprocess model runs)."""

    def __init__(self, variant: Variant, limits: ImageLimits = ImageLimits(), max_faces: int = MAX_IMAGE_FACES,
                 threads: int | None = None, device: Device = Device(), video_endpoint: str | None = None,
                 observers: StageObservers | None = None, also_crop_for: Sequence[Preprocessing] = ()):
        """``also_crop_for``: other variants' preprocessing (an ensemble's members), whose crops of the same
        detected faces go into ``more_crops``."""
        self.variant = variant
        self.also_crop_for = list(also_crop_for)
        self.video_endpoint = video_endpoint or video_model(variant.name)
        self.limits = limits
        self.max_faces = max_faces
        self.face_detector = FaceDetector(variant.preprocessing.faces, threads, device)
        self.observers = observers if observers is not None else StageObservers("image", variant.name)

    def prepare(self, payloads: Sequence[bytes]) -> list[PreparedImage | RequestError]:
        """Decode every payload and detect faces over the whole batch; failures stay per item."""
        prepared: list[PreparedImage | RequestError] = [self._decode(data) for data in payloads]
        images = {i: item for i, item in enumerate(prepared) if isinstance(item, PreparedImage)}
        if not images:
            return prepared
        start = time.perf_counter()
        detections = self.face_detector.detect([cast(np.ndarray, item.image) for item in images.values()],
                                               [item.detect_scale for item in images.values()])
        detect_ms = ms_since(start) / len(images)
        for (i, item), found in zip(images.items(), detections):
            start = time.perf_counter()
            stage = "detect"
            try:
                if isinstance(found, Exception):
                    raise found
                self.observers.emit("detect", detect_ms, faces=len(found.faces))
                stage = "crop"
                found.faces.sort(key=lambda f: -f.confidence)
                del found.faces[self.max_faces:]
                self._crop(item, found)
            except Exception as exc:  # noqa: BLE001 - this request fails alone
                self.observers.emit(stage, detect_ms if stage == "detect" else ms_since(start), outcome=outcome_of(exc))
                prepared[i] = internal_error(exc)
                continue
            finally:
                item.image = None  # the crops are cut: the decoded pixels are not needed any more
            item.timings_ms["detect"] = detect_ms
            item.timings_ms["crop"] = ms_since(start)
            self.observers.emit("crop", item.timings_ms["crop"], faces=len(item.crops))
        return prepared

    def _decode(self, data: bytes) -> PreparedImage | RequestError:
        start = time.perf_counter()
        try:
            image = decode_image(data, self.limits, self.video_endpoint)
            scale = image_detect_scale(image.shape, self.variant.preprocessing.faces)
            check_detectable(image.shape, scale, self.variant.preprocessing.faces, "image_too_small", "the image")
        except Exception as exc:  # noqa: BLE001 - RequestError as it is, anything else an internal error
            self.observers.emit("decode", ms_since(start), outcome=outcome_of(exc))
            return internal_error(exc)
        decode_ms = ms_since(start)
        self.observers.emit("decode", decode_ms)
        return PreparedImage(image.shape[1], image.shape[0], image=image, detect_scale=scale,
                             timings_ms={"decode": decode_ms})

    def _crop(self, item: PreparedImage, found: FaceSet) -> None:
        pre = self.variant.preprocessing
        kept, (item.crops, *item.more_crops) = found.member_crops([pre, *self.also_crop_for])
        item.boxes = [face.box for face in kept]
        item.confidences = [face.confidence for face in kept]
        if not item.crops and pre.faces.no_face_fallback == "center_crop" and found.image is not None:
            crop, box = center_square(found.image)
            item.boxes.append(box)
            item.confidences.append(None)
            item.crops.append(fit_to_input(crop, pre.input_size, pre.resize))
            item.source = "center_crop"
            item.more_crops = [[fit_to_input(crop, other.input_size, other.resize)] for other in self.also_crop_for]


def image_result(item: PreparedImage, scores: Sequence[float] | np.ndarray, *, model: str, version: str, threshold: float,
                 weights_trained: bool, batch_size: int) -> dict:
    """The response for one prepared image and its faces' P(fake)."""
    faces = [
        face_entry(box, conf, score, item.source)
        for box, conf, score in zip(item.boxes, item.confidences, scores)
    ]
    return image_response(model=model, version=version, threshold=threshold, faces=faces,
                          weights_trained=weights_trained, width=item.width, height=item.height,
                          timings_ms=item.timings_ms, batch_size=batch_size)


def answer_batch(prepared: Sequence[PreparedImage | RequestError],
                 classify_together: Callable[[Sequence[PreparedImage]], Sequence[np.ndarray]],
                 respond: Callable[..., dict], observers: StageObservers) -> list[dict | RequestError]:
    """Scores for every prepared image in one call, each answer in its place. Whatever fails fails one
    request: a call that raises is run again request by request (the image and ensemble pipelines)."""
    valid = [p for p in prepared if isinstance(p, PreparedImage)]
    start = time.perf_counter()
    scores = isolated(valid, lambda item: classify_together([item])[0], classify_together)
    classify_ms = ms_since(start) / max(len(valid), 1)  # shared, as detection is
    results: list[dict | RequestError] = []
    answers = iter(scores)
    for item in prepared:
        if isinstance(item, RequestError):
            results.append(item)
            continue
        item_scores = next(answers)
        if isinstance(item_scores, Exception):
            observers.emit("classify", classify_ms, faces=len(item.crops), outcome=outcome_of(item_scores))
            results.append(internal_error(item_scores))
            continue
        item.timings_ms["classify"] = classify_ms
        observers.emit("classify", classify_ms, faces=len(item.crops))
        results.append(respond(item, item_scores, batch_size=len(valid)))  # requests in the forward pass
    return results


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
        max_faces: int = MAX_IMAGE_FACES,
        threads: int | None = None,
        device: Device = Device(),
    ):
        self.variant = variant
        self.classifier = as_scorer(variant, model)
        self.version = version
        self.weights_trained = weights_trained
        self.model_name = model_name or variant.name
        self.observers = StageObservers("image", self.model_name)
        self.preprocessor = ImagePreprocessor(variant, limits, max_faces, threads, device, video_model(self.model_name),
                                              self.observers)

    def prepare(self, payloads: Sequence[bytes]) -> list[PreparedImage | RequestError]:
        return self.preprocessor.prepare(payloads)

    def classify(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """P(fake) for each crop (the mean over the archive's checkpoints)."""
        return self.classifier.scores(crops).mean(axis=0)

    def respond(self, item: PreparedImage, scores: Sequence[float] | np.ndarray, batch_size: int = 1) -> dict:
        # A remote classifier (a Triton classifier model over BLS) says which version answered.
        answered_by = getattr(self.classifier, "answered_by", None) or {}
        return image_result(item, scores, model=self.model_name, version=answered_by.get("version", self.version),
                            threshold=self.variant.threshold,
                            weights_trained=answered_by.get("trained", self.weights_trained), batch_size=batch_size)

    # -- whole pipeline -------------------------------------------------------
    def predict_batch(self, payloads: Sequence[bytes]) -> list[dict | RequestError]:
        """Answer a batch: the faces of every valid request share one forward pass (``answer_batch``)."""
        return answer_batch(self.prepare(payloads), self._classify_together, self.respond, self.observers)

    def _classify_together(self, items: Sequence[PreparedImage]) -> list[np.ndarray]:
        scores = self.classify([crop for item in items for crop in item.crops])
        bounds = np.cumsum([0] + [len(item.crops) for item in items])
        return [scores[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    def predict(self, payload: bytes) -> dict:
        (result,) = self.predict_batch([payload])
        if isinstance(result, RequestError):
            raise result
        return result
