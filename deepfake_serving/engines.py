"""Inference engines: one seam from a bundle's graph or weights to a face scorer.

- ``onnxruntime`` (the serving default): the bundle's ONNX graph, CPU or CUDA.
- ``openvino``: the same ONNX graph compiled by OpenVINO's runtime for the CPU,
  in f32 (level with ONNX Runtime on this machine's CPU; see the README).
- ``torch``: the bundle's safetensors weights in PyTorch eager (the reference
  engine: parity tests, and whatever needs gradients).

Faces per call are measured per engine (``benchmarks/bench_engines.py``):
PyTorch eager on a CPU gets slower per face as the batch grows, so it runs one
face per call; the graph engines do best with small batches.
Nothing here imports torch unless the torch engine is asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, Sequence

import numpy as np

from .crops import to_array
from .errors import CheckpointError
from .manifest import DEFAULT_ENGINE, BundleManifest, check_bytes, check_file
from .threads import alone_on_machine, intra_op_threads

if TYPE_CHECKING:
    from .variants import Variant

ENGINES = ("onnxruntime", "openvino", "torch")
# Faces per call on a CPU (benchmarks/bench_engines.py, 2 threads: at 4, ONNX Runtime and OpenVINO are
# within ~12 % of their best per-face time for both b4-mobile (best at 8) and b7-dfdc (best at 1)); a GPU
# takes the batch it is given.
CPU_BATCH = {"onnxruntime": 4, "openvino": 4, "torch": 1}
GPU_BATCH = 32


class FaceScorer(Protocol):
    """What the pipelines need from a classifier: P(fake) with shape (checkpoints, faces)."""

    def scores(self, crops: Sequence[np.ndarray]) -> np.ndarray: ...


@dataclass(frozen=True)
class Device:
    """Where a model runs. ``cuda`` code follows ONNX Runtime's and PyTorch's documented APIs; no GPU
    was available to test it (the README says so)."""

    kind: str = "cpu"
    index: int = 0

    @classmethod
    def from_gpu_id(cls, gpu_id) -> "Device":
        """TorchServe's ``gpu_id`` property (absent or None on a CPU-only host)."""
        return cls("cuda", int(gpu_id)) if gpu_id not in (None, "", -1, "-1") else cls()

    @property
    def torch(self) -> str:
        return "cpu" if self.kind == "cpu" else f"cuda:{self.index}"


def check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; known: {', '.join(ENGINES)}")
    return engine


def ort_providers(device: Device) -> list:
    import onnxruntime as ort

    if device.kind == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return [("CUDAExecutionProvider", {"device_id": device.index}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def ort_session(graph: bytes, name: str, sha256: str, threads: int | None = None, providers=None):
    """An ONNX Runtime session over ``graph``, refused when its sha256 differs from ``sha256``."""
    import onnxruntime as ort

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


class OpenVinoGraph:
    """The same graph compiled by OpenVINO for the CPU (one infer request: one caller at a time, as
    TorchServe workers and Triton instances call)."""

    def __init__(self, graph: bytes, name: str, sha256: str, threads: int | None, device: Device = Device(),
                 precision: str = "fp32"):
        import openvino as ov

        check_bytes(graph, name, sha256)
        if device.kind != "cpu":
            raise CheckpointError(f"the openvino engine runs on the CPU; use onnxruntime for {device.torch}")
        core = ov.Core()
        try:
            model = core.read_model(graph, b"")
            # f32 unless the archive proved bf16 (CPUs with bf16 units would otherwise get bf16 unasked);
            # threads pinned to cores would collide with co-located workers' threads.
            self.compiled = core.compile_model(model, "CPU", {
                "INFERENCE_NUM_THREADS": intra_op_threads(threads), "PERFORMANCE_HINT": "LATENCY",
                "NUM_STREAMS": 1, "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                "ENABLE_CPU_PINNING": alone_on_machine()})
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError subclasses
            raise CheckpointError(f"{name} is not a usable ONNX graph: {str(exc).strip()[:300]}") from None
        self.request = self.compiled.create_infer_request()
        self.input_shape = [d.get_length() if d.is_static else "faces" for d in model.inputs[0].get_partial_shape()]

    def run(self, faces: np.ndarray) -> np.ndarray:
        return self.request.infer({0: faces})[0]


GRAPH_RUNTIMES = {"onnxruntime": OrtGraph, "openvino": OpenVinoGraph}


class GraphScorer:
    """A bundle's ONNX graph on a graph engine: normalised faces → (checkpoints, faces) P(fake)."""

    def __init__(self, graph: OrtGraph | OpenVinoGraph, variant: "Variant", batch_size: int,
                 name: str = "classifier.onnx"):
        size = variant.preprocessing.input_size
        if list(graph.input_shape[1:]) != [3, size, size]:
            raise CheckpointError(f"{name} takes input {graph.input_shape}; variant {variant.name} needs "
                                  f"[faces, 3, {size}, {size}]")
        self.graph, self.variant, self.batch_size = graph, variant, batch_size

    def scores(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        pre = self.variant.preprocessing
        parts = [self.graph.run(to_array(crops[i:i + self.batch_size], pre.mean, pre.std))
                 for i in range(0, len(crops), self.batch_size)]
        if not parts:
            return np.zeros((0, 0))
        return np.concatenate(parts).T.astype(np.float64)


class TorchScorer:
    """PyTorch eager over each checkpoint (the reference engine)."""

    def __init__(self, variant: "Variant", models, batch_size: int = 1, device: Device = Device()):
        import torch

        models = [models] if isinstance(models, torch.nn.Module) else list(models)
        if not models:
            raise ValueError("a classifier needs at least one model")
        self.variant, self.batch_size, self.device = variant, batch_size, device
        self.models = [m.eval().to(device.torch) for m in models]

    def scores(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        import torch

        pre = self.variant.preprocessing
        out = np.zeros((len(self.models), len(crops)), dtype=np.float64)
        with torch.inference_mode():
            for start in range(0, len(crops), self.batch_size):
                batch = torch.from_numpy(to_array(crops[start:start + self.batch_size], pre.mean, pre.std))
                batch = batch.to(self.device.torch)
                for m, model in enumerate(self.models):
                    out[m, start:start + len(batch)] = self.variant.fake_probability(model(batch)).double().cpu().numpy()
        return out


def batch_size(engine: str, device: Device) -> int:
    return GPU_BATCH if device.kind == "cuda" else CPU_BATCH[engine]


def as_scorer(variant: "Variant", models, batch: int | None = None) -> FaceScorer:
    """A scorer as it is, or torch models run in this process (tests and tools hand models directly)."""
    if hasattr(models, "scores"):
        return models
    return TorchScorer(variant, models, batch or CPU_BATCH["torch"])


def open_graph(directory: str | Path, engine: str | None = None, device: Device = Device(),
               threads: int | None = None):
    """(graph, manifest): a bundle's ONNX graph on ``engine``'s runtime (default: the manifest's engine
    when it runs graphs, else ONNX Runtime), sha256-checked."""
    directory = Path(directory)
    manifest = BundleManifest.read(directory)
    engine = engine or (manifest.engine if manifest.engine in GRAPH_RUNTIMES else DEFAULT_ENGINE)
    graph = manifest.onnx
    if not graph:
        raise CheckpointError(f"{directory} has no ONNX graph (built before engines existed): rebuild it, "
                              "or serve it with the torch engine")
    path = directory / graph["file"]
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    runtime = GRAPH_RUNTIMES[engine]
    return runtime(path.read_bytes(), path.name, graph["sha256"], threads, device, graph.get("precision", "fp32")), manifest


def load_scorer(directory: str | Path, engine: str | None = None, device: Device = Device(),
                threads: int | None = None, batch: int | None = None) -> FaceScorer:
    """A bundle's face scorer on ``engine`` (default: the one its manifest records)."""
    from .variants import get_variant

    manifest = BundleManifest.read(directory)
    engine = check_engine(engine or manifest.engine)
    variant = get_variant(manifest.variant)
    batch = batch or batch_size(engine, device)
    # A tampered bundle is refused whole: the files this engine does not read are checked here, the ones it
    # reads are checked by their loader (the weights by load_models, the graph on the bytes it runs).
    read = manifest.weights if engine == "torch" else [manifest.onnx]
    for entry in manifest.files:
        if entry not in read:
            check_file(Path(directory), entry)
    if engine == "torch":
        from .runtime import set_torch_threads

        set_torch_threads(intra_op_threads(threads))
        from .bundle import load_models

        return TorchScorer(variant, load_models(directory)[1], batch, device)
    graph, manifest = open_graph(directory, engine, device, threads)
    return GraphScorer(graph, variant, batch, manifest.onnx["file"])
