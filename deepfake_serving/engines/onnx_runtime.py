"""ONNX Runtime sessions: the classifier graph (``OrtGraph``) and MTCNN's nets share these settings."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from deepfake_serving.core.digest import check_bytes
from deepfake_serving.core.errors import CheckpointError
from deepfake_serving.core.threads import alone_on_machine, intra_op_threads
from deepfake_serving.engines import Device


def ort_providers(device: Device) -> list:
    if device.kind == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return [("CUDAExecutionProvider", {"device_id": device.index}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def ort_session(graph: bytes, name: str, sha256: str, threads: int | None = None, providers=None) -> ort.InferenceSession:
    """An ONNX Runtime session over ``graph``, refused when its sha256 differs from ``sha256``."""
    check_bytes(graph, name, sha256)
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads(threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Idle intra-op threads spin by default: ~15 % faster alone, but they take the cores that
    # co-located workers need, so they spin only when this worker has the machine to itself.
    spin = "1" if alone_on_machine() else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    options.add_session_config_entry("session.inter_op.allow_spinning", spin)
    try:
        return ort.InferenceSession(graph, options, providers=list(providers or ["CPUExecutionProvider"]))
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises several kinds
        raise CheckpointError(f"{name} is not a usable ONNX graph: {str(exc).strip()[:300]}") from None


class OrtGraph:
    """A classifier graph on ONNX Runtime: ``run(faces)`` → (faces, checkpoints)."""

    def __init__(self, graph: bytes, name: str, sha256: str, threads: int | None, device: Device = Device(),
                 precision: str = "fp32"):
        # fp16 and int8 live in the graph itself; "bf16" is OpenVINO's and runs in fp32 here.
        self.session = ort_session(graph, name, sha256, threads, ort_providers(device))
        (graph_input,) = self.session.get_inputs()
        self.input_name, self.input_shape = graph_input.name, list(graph_input.shape)

    def run(self, faces: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: faces})[0]
