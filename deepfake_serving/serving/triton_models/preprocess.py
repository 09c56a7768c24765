"""Image ensemble step 1: decode, MTCNN (ONNX Runtime), crops, normalisation (the core's ImagePreprocessor)."""

from __future__ import annotations

import numpy as np
import triton_python_backend_utils as pb_utils

from deepfake_serving.core.batching import in_place
from deepfake_serving.core.errors import internal_error
from deepfake_serving.core.limits import MAX_IMAGE_FACES
from deepfake_serving.core.naming import model_names
from deepfake_serving.pipeline.image import ImagePreprocessor
from deepfake_serving.serving.triton_models import error_response, input_bytes, instance_device, json_tensor, parameters
from deepfake_serving.serving.triton_models.metrics import recorder
from deepfake_serving.variants import get_variant


def face_tensor(crops, variant) -> np.ndarray:
    """Normalised NCHW faces; one black placeholder when there are none, so the classifier
    always answers (with its version) and Triton never sees a batch of 0. Callers drop it."""
    pre = variant.preprocessing
    if not crops:
        size = pre.input_size
        crops = [np.zeros((size, size, 3), dtype=np.uint8)]
    return pre.tensor(crops)


class TritonPythonModel:
    def initialize(self, args):
        params = parameters(args)
        self.variant = get_variant(params["variant"])
        self.preprocessor = ImagePreprocessor(self.variant, max_faces=int(params.get("max_faces", MAX_IMAGE_FACES)),
                                              device=instance_device(args),
                                              video_endpoint=model_names(self.variant)["video"])
        self.recorder = recorder(self.variant.name)  # decode, detect and crop times; the requests it refuses
        self.preprocessor.observers.subscribe(self.recorder.stage)

    def face_outputs(self, item) -> list:
        return [pb_utils.Tensor("FACES", face_tensor(item.crops, self.variant))]

    def execute(self, requests):
        payloads: list[bytes | Exception] = []
        for request in requests:
            try:
                payloads.append(input_bytes(request, "IMAGE"))
            except Exception as err:  # noqa: BLE001 - answered per request
                payloads.append(err)
        prepared = in_place(payloads, self.preprocessor.prepare)  # one MTCNN call per image
        for item in prepared:
            if isinstance(item, Exception):
                self.recorder.answer(internal_error(item))
        return [error_response(item) if isinstance(item, Exception) else pb_utils.InferenceResponse(
            output_tensors=[*self.face_outputs(item), json_tensor("METADATA", item.metadata())]) for item in prepared]
