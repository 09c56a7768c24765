"""Explaining images: the prediction's own answer (from the engine that serves it), each face's heatmap,
where that heatmap lies on the original image, and its ROAD figure."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from deepfake_serving.bundle import Bundle
from deepfake_serving.core.batching import isolated
from deepfake_serving.core.errors import CheckpointError, RequestError, internal_error
from deepfake_serving.core.observe import ms_since
from deepfake_serving.core.schema import explanation_summary, face_heatmap
from deepfake_serving.core.threads import intra_op_threads
from deepfake_serving.engines import set_torch_threads
from deepfake_serving.explain.gradcam import ROAD_REMOVED, FaceExplainer, FaceExplanation
from deepfake_serving.faces.crops import content_window, crop_region
from deepfake_serving.pipeline.image import ImagePipeline
from deepfake_serving.variants import Preprocessing

# Faces explained per image, the detector's most confident first: each costs about three forward passes
# (Grad-CAM's, ROAD's imputation and its pass), so a crowd photograph's cost stays bounded. The rest are
# answered as predictions, without a heatmap (``faces_unexplained``).
MAX_EXPLAINED_FACES = 8
BUILD_HINT = ("build the archive with this release (`deepfake-serving archive`: every archive carries its "
              "safetensors weights) and serve it where the `explain` extra is installed "
              "(pip install 'deepfake-serving[serve]')")


def heatmap_png(heatmap: np.ndarray) -> bytes:
    ok, png = cv2.imencode(".png", np.round(heatmap * 255).astype(np.uint8))
    if not ok:
        raise RuntimeError("the heatmap could not be encoded as PNG")
    return png.tobytes()


def face_geometry(box: Sequence[int], source: str, pre: Preprocessing, width: int, height: int):
    """(region, window): the image rectangle a face's crop holds and where it lies in the model's input."""
    region = tuple(box) if source == "center_crop" else crop_region(box, pre.faces.crop_margin, width, height)
    x1, y1, x2, y2 = region
    return region, content_window(x2 - x1, y2 - y1, pre.input_size, pre.resize)


# What an explainer asks for each request: the face explainer of the weights that answered, and their
# checkpoints (fixed in a TorchServe worker; on Triton, the classifier version that answered).
ExplainerSource = Callable[[], tuple[FaceExplainer, int]]


def explained_face(explanation: FaceExplanation, geometry, input_size: int) -> dict:
    """A face entry's ``explanation`` (core.schema.face_heatmap) from its heatmap and geometry."""
    region, window = geometry
    return face_heatmap(heatmap_png(explanation.heatmap), input_size, region, window, explanation.fake_probability,
                        explanation.road_drop, explanation.road_logit_drop, ROAD_REMOVED)


class ImageExplainer:
    def __init__(self, pipeline: ImagePipeline, explainers: ExplainerSource):
        self.pipeline, self.explainers = pipeline, explainers

    def explain_batch(self, payloads: Sequence[bytes]) -> list[dict | RequestError]:
        """One request at a time (a heatmap depends only on its own image), each failing alone."""
        return [internal_error(a) if isinstance(a, Exception) else a for a in isolated(payloads, self.explain)]

    def explain(self, payload: bytes) -> dict:
        (item,) = self.pipeline.prepare([payload])
        if isinstance(item, RequestError):
            raise item
        start = time.perf_counter()
        scores = self.pipeline.classify(item.crops)
        item.timings_ms["classify"] = ms_since(start)
        explainer, checkpoints = self.explainers()
        start = time.perf_counter()
        shown = min(len(item.crops), MAX_EXPLAINED_FACES)
        pre = self.pipeline.variant.preprocessing
        geometry = [face_geometry(box, item.source, pre, item.width, item.height) for box in item.boxes[:shown]]
        explained = explainer.explain(item.crops[:shown], [window for _, window in geometry])
        item.timings_ms["explain"] = ms_since(start)
        answer = self.pipeline.respond(item, scores)
        for face, where, explanation in zip(answer["faces"], geometry, explained):
            face["explanation"] = explained_face(explanation, where, pre.input_size)
        answer["explanation"] = explanation_summary(explainer.method, self.pipeline.variant.cam_layer,
                                                    checkpoints, shown, len(item.crops))
        return answer


def load_face_explainer(directory: str | Path, model_name: str, method: str = "gradcam",
                        threads: int | None = None) -> tuple[FaceExplainer, int]:
    """(an explainer, its checkpoints) from a bundle's torch weights (each checked), whatever engine serves
    its predictions. Raises ``not_explainable`` when the bundle or this install cannot."""
    bundle = Bundle.open(directory)
    if not bundle.manifest.weights:
        raise RequestError("not_explainable", f"{model_name} v{bundle.version} carries no torch weights "
                           f"(explanations need them): {BUILD_HINT}")
    try:
        models = bundle.torch_models()
    except CheckpointError as err:
        raise RequestError("not_explainable", f"{model_name}: {err}") from None
    set_torch_threads(intra_op_threads(threads))
    return FaceExplainer(bundle.variant, models, method), len(models)


def load_image_explainer(directory: str | Path, pipeline: ImagePipeline, method: str = "gradcam",
                         threads: int | None = None) -> ImageExplainer:
    """An explainer beside a served image pipeline (``load_face_explainer``)."""
    loaded = load_face_explainer(directory, pipeline.model_name, method, threads)
    return ImageExplainer(pipeline, lambda: loaded)
