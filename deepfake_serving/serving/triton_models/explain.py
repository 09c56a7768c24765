"""A variant's explain model (``b4_mobile_explain``), beside its image ensemble and video model: an image
(IMAGE) or a clip (VIDEO, with the video model's sampling inputs) → the prediction answer plus Grad-CAM
heatmaps (deepfake_serving.explain), the same answer TorchServe's ``/explanations`` gives.

Predictions go to the variant's classifier model over BLS, so scores come from the engine and version
that serve; the heatmaps come from the torch weights of the classifier version that answered (its
version directory's safetensors, each checked), loaded on the first explanation of that version. Torch and
pytorch-grad-cam are imported then, not at load: a Triton without them (the ``triton`` extra alone)
loads this model and answers ``not_explainable``.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import triton_python_backend_utils as pb_utils

from deepfake_serving.bundle import MANIFEST_NAME, BundleManifest
from deepfake_serving.core.errors import RequestError, not_installed
from deepfake_serving.core.limits import MAX_IMAGE_FACES, MAX_VIDEO_FACES
from deepfake_serving.pipeline.image import ImagePipeline
from deepfake_serving.pipeline.video import VideoPipeline
from deepfake_serving.serving.triton_models import answer_each, input_bytes, instance_device, parameters
from deepfake_serving.serving.triton_models.video import TritonClassifier, analyze_request
from deepfake_serving.variants import get_variant

VERSIONS_KEPT = 2  # explainers held at once (the classifier serves two versions side by side)


class AnsweredVersionExplainers:
    """An ExplainerSource: the face explainer of the classifier version that answered the request's
    scores (``TritonClassifier.answered_by``), found by its label among the version directories."""

    def __init__(self, classifier_dir: Path, classifier: TritonClassifier, model_name: str, method: str):
        self.classifier_dir, self.classifier, self.model_name, self.method = classifier_dir, classifier, model_name, method
        self.loaded: OrderedDict[str, tuple] = OrderedDict()

    def __call__(self):
        label = str(self.classifier.answered_by.get("version"))
        if label not in self.loaded:
            from deepfake_serving.explain.image import load_face_explainer  # torch: on the first explanation

            self.loaded[label] = load_face_explainer(self._directory(label), self.model_name, self.method)
            while len(self.loaded) > VERSIONS_KEPT:
                self.loaded.popitem(last=False)
        self.loaded.move_to_end(label)
        return self.loaded[label]

    def _directory(self, label) -> Path:
        for directory in sorted(self.classifier_dir.iterdir()):
            if directory.name.isdigit() and (directory / MANIFEST_NAME).is_file() \
                    and BundleManifest.read(directory).version == label:
                return directory
        raise RequestError("not_explainable", f"{self.model_name}: the classifier version {label!r} that answered "
                           f"has no directory under {self.classifier_dir.name}/ any more")


class TritonPythonModel:
    def initialize(self, args):
        self.params = parameters(args)
        self.variant = get_variant(self.params["variant"])
        self.device = instance_device(args)
        self.classifier = TritonClassifier(self.variant, self.params["classifier"],
                                           int(self.params.get("classifier_batch", 16)))
        self.explainers = AnsweredVersionExplainers(Path(args["model_repository"]).parent / self.params["classifier"],
                                                    self.classifier, self.variant.name,
                                                    self.params.get("method", "gradcam"))
        self.explainer: dict = {}  # media → its ImageExplainer / VideoExplainer, made on its first explanation

    def _explainer(self, media: str):
        if media not in self.explainer:
            try:
                from deepfake_serving.explain.image import ImageExplainer
                from deepfake_serving.explain.video import VideoExplainer
            except ImportError as err:  # the triton extra alone: no torch, no pytorch-grad-cam
                raise not_installed(self.variant.name, err) from None
            if media == "image":
                pipeline = ImagePipeline(self.variant, self.classifier, model_name=self.variant.name, device=self.device,
                                         max_faces=int(self.params.get("max_faces", MAX_IMAGE_FACES)))
                self.explainer[media] = ImageExplainer(pipeline, self.explainers)
            else:
                video = VideoPipeline(self.variant, self.classifier, device=self.device,
                                      max_faces=int(self.params.get("max_video_faces", MAX_VIDEO_FACES)))
                self.explainer[media] = VideoExplainer(video, self.explainers)
        return self.explainer[media]

    def execute(self, requests):
        return answer_each(requests, self._answer)

    def _answer(self, request) -> dict:
        if pb_utils.get_input_tensor_by_name(request, "VIDEO") is not None:
            return analyze_request(self._explainer("video"), request)
        return self._explainer("image").explain(input_bytes(request, "IMAGE"))
