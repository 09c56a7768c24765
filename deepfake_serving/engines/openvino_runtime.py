"""Graphs compiled by OpenVINO for the CPU: the classifier (static shape) and MTCNN's nets."""

from __future__ import annotations

import threading

import numpy as np
import openvino as ov

from deepfake_serving.core.digest import check_bytes
from deepfake_serving.core.errors import CheckpointError
from deepfake_serving.core.threads import alone_on_machine, intra_op_threads
from deepfake_serving.engines import CPU_BATCH, Device


def cpu_config(threads: int | None, bf16: bool = False) -> dict:
    """Threads as asked, not pinned to cores (pinned threads would collide with co-located workers'),
    and f32 unless bf16 was proved (CPUs with bf16 units would otherwise get bf16 unasked)."""
    return {"INFERENCE_NUM_THREADS": intra_op_threads(threads), "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
            "INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32", "ENABLE_CPU_PINNING": alone_on_machine()}


class OpenVinoNet:
    """A small graph compiled in f32 with its dynamic shapes (MTCNN's nets: every pyramid level is another
    shape), one infer request per calling thread; ``run(x)`` → its outputs, as ONNX Runtime's ``run``."""

    def __init__(self, graph: bytes, name: str, sha256: str, threads: int | None):
        check_bytes(graph, name, sha256)
        try:
            self.compiled = ov.Core().compile_model(ov.Core().read_model(graph, b""), "CPU", cpu_config(threads))
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError subclasses
            raise CheckpointError(f"{name} is not a usable ONNX graph: {str(exc).strip()[:300]}") from None
        self.local = threading.local()

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        request = getattr(self.local, "request", None) or self.compiled.create_infer_request()
        self.local.request = request
        request.infer({0: x})
        return [np.array(request.get_output_tensor(i).data) for i in range(len(self.compiled.outputs))]


class OpenVinoGraph:
    """One infer request: one caller at a time, as TorchServe workers and Triton instances call. The input
    shape is static (``batch`` faces: OpenVINO's CPU plugin picks faster kernels for a known shape); a
    shorter call is padded with black faces and their rows dropped, a longer one runs in chunks."""

    def __init__(self, graph: bytes, name: str, sha256: str, threads: int | None, device: Device = Device(),
                 precision: str = "fp32", batch: int = CPU_BATCH["openvino"]):
        check_bytes(graph, name, sha256)
        if device.kind != "cpu":
            raise CheckpointError(f"the openvino engine runs on the CPU; use onnxruntime for {device.torch}")
        core = ov.Core()
        try:
            model = core.read_model(graph, b"")
            shape = model.inputs[0].get_partial_shape()
            model.reshape({model.inputs[0]: ov.PartialShape([batch, *shape[1:]])})
            # bf16 only where the archive proved it and this CPU has bf16 units (built elsewhere: f32 here)
            bf16 = precision == "bf16" and "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
            self.compiled = core.compile_model(model, "CPU", cpu_config(threads, bf16))
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError subclasses
            raise CheckpointError(f"{name} is not a usable ONNX graph: {str(exc).strip()[:300]}") from None
        self.request = self.compiled.create_infer_request()
        self.batch = batch
        self.input_shape = ["faces", *(d.get_length() for d in model.inputs[0].get_partial_shape()[1:])]

    def run(self, faces: np.ndarray) -> np.ndarray:
        parts = []
        for start in range(0, len(faces), self.batch):
            chunk = faces[start:start + self.batch]
            padded = np.zeros((self.batch, *faces.shape[1:]), dtype=faces.dtype)
            padded[:len(chunk)] = chunk
            parts.append(np.array(self.request.infer({0: padded})[0][:len(chunk)]))
        return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)
