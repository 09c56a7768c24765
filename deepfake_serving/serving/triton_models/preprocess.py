"""Image ensemble step 1: decode, MTCNN (ONNX Runtime), crops, normalisation (the core's ImageFaceStage)."""

from __future__ import annotations

import numpy as np
import triton_python_backend_utils as pb_utils

from deepfake_serving.crops import to_array
from deepfake_serving.naming import model_names
from deepfake_serving.pipeline import ImageFaceStage
from deepfake_serving.variants import get_variant

from . import error_response, input_bytes, instance_device, json_tensor, parameters


def face_tensor(crops, variant) -> np.ndarray:
    """Normalised NCHW faces; one black placeholder when there are none, so the classifier
    always answers (with its version) and Triton never sees a batch of 0. Callers drop it."""
    pre = variant.preprocessing
    if not crops:
        size = pre.input_size
        crops = [np.zeros((size, size, 3), dtype=np.uint8)]
    return to_array(crops, pre.mean, pre.std)


class TritonPythonModel:
    def initialize(self, args):
        params = parameters(args)
        self.variant = get_variant(params["variant"])
        self.stage = ImageFaceStage(self.variant, max_faces=int(params.get("max_faces", 32)),
                                    device=instance_device(args), video_endpoint=model_names(self.variant)["video"])

    def execute(self, requests):
        payloads, responses = [], [None] * len(requests)
        for i, request in enumerate(requests):
            try:
                payloads.append((i, input_bytes(request, "IMAGE")))
            except Exception as err:  # noqa: BLE001 - answered per request
                responses[i] = error_response(err)
        try:
            prepared = self.stage.prepare([data for _, data in payloads])  # one MTCNN call per image
        except Exception as err:  # noqa: BLE001
            prepared = [err] * len(payloads)
        for (i, _), item in zip(payloads, prepared):
            if isinstance(item, Exception):
                responses[i] = error_response(item)
                continue
            responses[i] = pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("FACES", face_tensor(item.crops, self.variant)),
                json_tensor("METADATA", item.metadata()),
            ])
        return responses
