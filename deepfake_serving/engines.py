"""Inference engines: one seam from a bundle's graph or weights to a face scorer.

- ``onnxruntime`` (the serving default): the bundle's ONNX graph, CPU or CUDA.
- ``openvino``: the same ONNX graph through ONNX Runtime's OpenVINO execution
  provider when the installed ONNX Runtime has it, else refused.
- ``torch``: the bundle's safetensors weights in PyTorch eager (the reference
  engine: parity tests, and whatever needs gradients).

Each engine's batch per call is measured (``benchmarks/bench_engines.py``):
PyTorch eager on a CPU gets slower per face as the batch grows, so it runs one
face per call there; ONNX Runtime stays flat or gains.
Nothing here imports torch unless the torch engine is asked for.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, Sequence

import numpy as np

from .crops import to_array
from .errors import CheckpointError
from .threads import intra_op_threads

if TYPE_CHECKING:
    from .variants import Variant

ENGINES = ("onnxruntime", "openvino", "torch")
DEFAULT_ENGINE = "onnxruntime"
# Faces per call on a CPU (measured); on a GPU every engine takes the full batch it is given.
CPU_BATCH = {"onnxruntime": 16, "openvino": 16, "torch": 1}
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


def ort_providers(engine: str, device: Device) -> list:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if engine == "openvino":
        if "OpenVINOExecutionProvider" not in available:
            raise CheckpointError("the openvino engine needs onnxruntime-openvino (ONNX Runtime's OpenVINO "
                                  f"execution provider); this ONNX Runtime has {', '.join(available)}")
        return [("OpenVINOExecutionProvider", {"device_type": "GPU" if device.kind == "cuda" else "CPU"}),
                "CPUExecutionProvider"]
    if device.kind == "cuda" and "CUDAExecutionProvider" in available:
        return [("CUDAExecutionProvider", {"device_id": device.index}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def ort_session(graph: bytes, name: str, sha256: str, threads: int | None = None, providers=None):
    """An ONNX Runtime session over ``graph``, refused when its sha256 differs from ``sha256``."""
    import onnxruntime as ort

    digest = hashlib.sha256(graph).hexdigest()
    if digest != sha256:
        raise CheckpointError(f"{name} has sha256 {digest}, the manifest says {sha256}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads(threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Idle intra-op threads spin by default, taking the cores co-located workers need.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(graph, options, providers=list(providers or ["CPUExecutionProvider"]))
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises several kinds
        raise CheckpointError(f"{name} is not a usable ONNX graph: {str(exc).strip()[:300]}") from None


class OnnxScorer:
    """The bundle's ONNX graph: normalised faces → (faces, checkpoints) P(fake)."""

    def __init__(self, session, variant: "Variant", batch_size: int, name: str = "classifier.onnx"):
        size = variant.preprocessing.input_size
        (graph_input,) = session.get_inputs()
        if list(graph_input.shape[1:]) != [3, size, size]:
            raise CheckpointError(f"{name} takes input {graph_input.shape}; variant {variant.name} needs "
                                  f"[faces, 3, {size}, {size}]")
        self.session, self.variant, self.batch_size = session, variant, batch_size
        self.input_name = graph_input.name

    def scores(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        pre = self.variant.preprocessing
        parts = [self.session.run(None, {self.input_name: to_array(crops[i:i + self.batch_size], pre.mean, pre.std)})[0]
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


def open_graph(directory: str | Path, engine: str = DEFAULT_ENGINE, device: Device = Device(),
               threads: int | None = None):
    """(session, manifest) over a bundle's ONNX graph, sha256-checked."""
    from .bundle import BundleManifest

    directory = Path(directory)
    manifest = BundleManifest.read(directory)
    graph = manifest.onnx
    if not graph:
        raise CheckpointError(f"{directory} has no ONNX graph (built before engines existed): rebuild it, "
                              "or serve it with the torch engine")
    path = directory / graph["file"]
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    return ort_session(path.read_bytes(), path.name, graph["sha256"], threads, ort_providers(engine, device)), manifest


def load_scorer(directory: str | Path, engine: str | None = None, device: Device = Device(),
                threads: int | None = None, batch: int | None = None) -> FaceScorer:
    """A bundle's face scorer on ``engine`` (default: the one its manifest records)."""
    from .bundle import BundleManifest, check_file, load_models
    from .variants import get_variant

    manifest = BundleManifest.read(directory)
    engine = check_engine(engine or manifest.engine)
    variant = get_variant(manifest.variant)
    batch = batch or batch_size(engine, device)
    for entry in manifest.files:  # every file, used by this engine or not: a tampered bundle is refused whole
        check_file(Path(directory), entry)
    if engine == "torch":
        from .runtime import set_torch_threads

        set_torch_threads(intra_op_threads(threads))
        return TorchScorer(variant, load_models(directory)[1], batch, device)
    session, manifest = open_graph(directory, engine, device, threads)
    return OnnxScorer(session, variant, batch, manifest.onnx["file"])
