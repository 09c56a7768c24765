"""Image ensemble step 2 (and the video model's BLS target): ONNX Runtime over normalised faces.

Dynamic batching hands this model the faces of several requests at once; they
run as one ONNX call. Imports no torch: this stub stays small.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from deepfake_serving.engines import open_graph

from . import error_response, instance_device


class TritonPythonModel:
    def initialize(self, args):
        directory = Path(args["model_repository"]) / args["model_version"]
        self.graph, manifest = open_graph(directory, device=instance_device(args))
        self.checkpoint = {"version": manifest.version, "trained": manifest.trained, "variant": manifest.variant}

    def execute(self, requests):
        """One ONNX call for the whole dynamic batch; if it fails, each request runs alone, so a
        request that cannot run fails by itself and its neighbours are answered. Each answer carries
        the version, the batch size and its share of the call's time (the schema's timings rule)."""
        start = time.perf_counter()
        try:
            faces = [pb_utils.get_input_tensor_by_name(r, "FACES").as_numpy() for r in requests]
            probabilities = self.graph.run(np.concatenate(faces))
        except Exception:  # noqa: BLE001
            return [self._alone(r) for r in requests]
        share_ms = (time.perf_counter() - start) * 1000 / len(requests)
        responses, offset = [], 0
        for batch in faces:
            responses.append(self._response(probabilities[offset:offset + len(batch)], len(requests), share_ms))
            offset += len(batch)
        return responses

    def _alone(self, request) -> "pb_utils.InferenceResponse":
        start = time.perf_counter()
        try:
            faces = pb_utils.get_input_tensor_by_name(request, "FACES").as_numpy()
            probabilities = self.graph.run(faces)
            return self._response(probabilities, 1, (time.perf_counter() - start) * 1000)
        except Exception as err:  # noqa: BLE001 - fails this request, never the stub
            return error_response(err)

    def _response(self, probabilities: np.ndarray, batch_size: int, classify_ms: float) -> "pb_utils.InferenceResponse":
        answered = {**self.checkpoint, "batch_size": batch_size, "classify_ms": classify_ms}
        checkpoint = np.array([[json.dumps(answered).encode()]] * len(probabilities), dtype=np.object_)
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("FAKE_PROBABILITY", probabilities.astype(np.float32)),
            pb_utils.Tensor("CHECKPOINT", checkpoint),
        ])

