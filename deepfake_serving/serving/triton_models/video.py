"""Video over BLS: the core's VideoPipeline, with the faces scored by this variant's classifier model.

Decoding, sampling, MTCNN, the face pool and the confident strategy are the
same code TorchServe's handler runs; only the forward pass goes to Triton.
"""

from __future__ import annotations

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from deepfake_serving.core.errors import RequestError
from deepfake_serving.core.limits import MAX_VIDEO_FACES
from deepfake_serving.core.naming import ANSWERED_BY
from deepfake_serving.media.video import Sampling
from deepfake_serving.pipeline.video import VideoPipeline
from deepfake_serving.serving.triton_models import answer_each, input_bytes, instance_device, optional_scalar, parameters
from deepfake_serving.serving.triton_models.metrics import recorder
from deepfake_serving.serving.triton_models.preprocess import face_tensor
from deepfake_serving.variants import get_variant


class TritonClassifier:
    """A FaceScorer that sends faces to a classifier model in chunks of its max batch size."""

    def __init__(self, variant, model_name: str, max_batch: int):
        self.variant, self.model_name, self.max_batch = variant, model_name, max_batch
        self.answered_by: dict = {}  # the classifier version that answered, from its last call

    def scores(self, crops) -> np.ndarray:
        faces = face_tensor(crops, self.variant)  # a placeholder when empty: the answer still names the version
        parts = []
        for start in range(0, len(faces), self.max_batch):
            response = pb_utils.InferenceRequest(
                model_name=self.model_name, requested_output_names=["FAKE_PROBABILITY", ANSWERED_BY],
                inputs=[pb_utils.Tensor("FACES", faces[start:start + self.max_batch])],
            ).exec()
            if response.has_error():  # the classifier could not answer (a stub that died, a reload): retryable
                raise RequestError("worker_failed", f"{self.model_name}: {response.error().message()}")
            parts.append(pb_utils.get_output_tensor_by_name(response, "FAKE_PROBABILITY").as_numpy())
            self.answered_by = json.loads(pb_utils.get_output_tensor_by_name(response, ANSWERED_BY).as_numpy().flat[0])
        return np.concatenate(parts)[:len(crops)].T.astype(np.float64)  # (checkpoints, faces)


class TritonPythonModel:
    def initialize(self, args):
        params = parameters(args)
        variant = get_variant(params["variant"])
        self.classifier = TritonClassifier(variant, params["classifier"], int(params.get("classifier_batch", 16)))
        self.pipeline = VideoPipeline(variant, self.classifier, max_faces=int(params.get("max_faces", MAX_VIDEO_FACES)),
                                      device=instance_device(args))
        self.recorder = recorder(self.pipeline.model_name)
        self.pipeline.observers.subscribe(self.recorder.stage)

    def execute(self, requests):
        return answer_each(requests, lambda request: analyze_request(self.pipeline, request), self.recorder)


def analyze_request(pipeline: VideoPipeline, request) -> dict:
    """A VIDEO input analysed with the request's SAMPLING/FRAMES/EVERY (the video and ensemble video models)."""
    sampling = Sampling.from_options({name: optional_scalar(request, name.upper(), None) for name in Sampling.OPTIONS})
    return pipeline.analyze(input_bytes(request, "VIDEO"), sampling)
