"""Image ensemble step 2 (and the video model's BLS target): ONNX Runtime over normalised faces.

Dynamic batching hands this model the faces of several requests at once; they
run as one ONNX call. Imports no torch: this stub stays small.
"""

from __future__ import annotations

import json
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
        request that cannot run fails by itself and its neighbours are answered."""
        try:
            faces = [pb_utils.get_input_tensor_by_name(r, "FACES").as_numpy() for r in requests]
            probabilities = self.graph.run(np.concatenate(faces))
        except Exception:  # noqa: BLE001
            return [self._alone(r) for r in requests]
        responses, offset = [], 0
        for batch in faces:
            responses.append(self._response(probabilities[offset:offset + len(batch)]))
            offset += len(batch)
        return responses

    def _alone(self, request) -> "pb_utils.InferenceResponse":
        try:
            faces = pb_utils.get_input_tensor_by_name(request, "FACES").as_numpy()
            return self._response(self.graph.run(faces))
        except Exception as err:  # noqa: BLE001 - fails this request, never the stub
            return error_response(err)

    def _response(self, probabilities: np.ndarray) -> "pb_utils.InferenceResponse":
        checkpoint = np.array([[json.dumps(self.checkpoint).encode()]] * len(probabilities), dtype=np.object_)
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("FAKE_PROBABILITY", probabilities.astype(np.float32)),
            pb_utils.Tensor("CHECKPOINT", checkpoint),
        ])

