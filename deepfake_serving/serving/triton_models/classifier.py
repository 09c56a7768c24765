"""Image ensemble step 2 (and the video model's BLS target): ONNX Runtime over normalised faces.

Dynamic batching hands this model the faces of several requests at once; they
run as one ONNX call. Imports no torch: this stub stays small.
"""

from __future__ import annotations

import json
import time

import numpy as np
import triton_python_backend_utils as pb_utils

from deepfake_serving.bundle import Bundle
from deepfake_serving.core.batching import isolated
from deepfake_serving.core.naming import ANSWERED_BY
from deepfake_serving.core.observe import ms_since
from deepfake_serving.serving.triton_models import error_response, instance_device


class TritonPythonModel:
    def initialize(self, args):
        bundle = Bundle.open(f"{args['model_repository']}/{args['model_version']}")
        self.graph = bundle.graph(device=instance_device(args))
        self.answered_by = {"version": bundle.version, "trained": bundle.trained, "variant": bundle.variant.name}

    def execute(self, requests):
        """One ONNX call for the whole dynamic batch; if it fails, each request runs alone, so a
        request that cannot run fails by itself and its neighbours are answered. Each answer carries
        the version, the batch size and its share of the call's time (the schema's timings rule)."""
        answers = isolated(requests, self._alone, self._together)
        return [error_response(a) if isinstance(a, Exception) else a for a in answers]

    def _together(self, requests) -> list:
        start = time.perf_counter()
        faces = [self._faces(r) for r in requests]
        probabilities = self.graph.run(np.concatenate(faces))
        share_ms = ms_since(start) / len(requests)
        bounds = np.cumsum([0] + [len(batch) for batch in faces])
        return [self._response(probabilities[a:b], len(requests), share_ms) for a, b in zip(bounds[:-1], bounds[1:])]

    def _alone(self, request) -> "pb_utils.InferenceResponse":
        start = time.perf_counter()
        probabilities = self.graph.run(self._faces(request))
        return self._response(probabilities, 1, ms_since(start))

    @staticmethod
    def _faces(request) -> np.ndarray:
        return pb_utils.get_input_tensor_by_name(request, "FACES").as_numpy()

    def _response(self, probabilities: np.ndarray, batch_size: int, classify_ms: float) -> "pb_utils.InferenceResponse":
        answered = {**self.answered_by, "batch_size": batch_size, "classify_ms": classify_ms}
        answered_by = np.array([[json.dumps(answered).encode()]] * len(probabilities), dtype=np.object_)
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("FAKE_PROBABILITY", probabilities.astype(np.float32)),
            pb_utils.Tensor(ANSWERED_BY, answered_by),
        ])
