"""Image ensemble step 3: per-face P(fake) → the same response as TorchServe's (the core's image_result)."""

from __future__ import annotations

import json

import triton_python_backend_utils as pb_utils

from deepfake_serving.core.naming import ANSWERED_BY
from deepfake_serving.core.observe import StageEvent
from deepfake_serving.pipeline.image import PreparedImage, image_result
from deepfake_serving.serving.triton_models import answer_each, input_bytes, parameters
from deepfake_serving.serving.triton_models.metrics import recorder
from deepfake_serving.variants import get_variant


class TritonPythonModel:
    def initialize(self, args):
        self.variant = get_variant(parameters(args)["variant"])
        self.recorder = recorder(self.variant.name)

    def execute(self, requests):
        return answer_each(requests, self._answer, self.recorder)

    def _answer(self, request) -> dict:
        item = PreparedImage.from_metadata(json.loads(input_bytes(request, "METADATA")))
        per_checkpoint = pb_utils.get_input_tensor_by_name(request, "FAKE_PROBABILITY").as_numpy()
        answered_by = json.loads(pb_utils.get_input_tensor_by_name(request, ANSWERED_BY).as_numpy().flat[0])
        scores = per_checkpoint[:len(item.boxes)].mean(axis=1)  # drops the no-face placeholder
        item.timings_ms["classify"] = answered_by["classify_ms"]
        self.recorder.stage(StageEvent("image", self.variant.name, "classify", answered_by["classify_ms"]),
                            answered_by["version"])
        return image_result(item, scores, model=self.variant.name, version=answered_by["version"],
                            threshold=self.variant.threshold, weights_trained=answered_by["trained"],
                            batch_size=answered_by["batch_size"])
