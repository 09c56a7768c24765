"""Inference engines: the seam from a bundle's graph or weights to a face scorer.

- ``onnxruntime`` (the serving default): the bundle's ONNX graph, CPU or CUDA (``onnx_runtime``).
- ``openvino``: the same ONNX graph compiled by OpenVINO's runtime for the CPU (``openvino_runtime``).
- ``torch``: the bundle's safetensors weights in PyTorch eager (``torch_engine``: the reference engine
  for parity tests and whatever needs gradients).

Faces per call are measured per engine (``benchmarks/bench_engines.py``): PyTorch eager on a CPU gets
slower per face as the batch grows, so it runs one face per call; the graph engines do best with small
batches. Engines are loaded by name (``graph_runtime``, ``torch_scorer``), so nothing that serves a graph
imports the torch engine, and the import contract (pyproject.toml) can say so.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, Sequence

import numpy as np

if TYPE_CHECKING:
    from deepfake_serving.variants import Variant

ENGINES = ("onnxruntime", "openvino", "torch")
DEFAULT_ENGINE = "onnxruntime"  # fp32 everywhere; what serves a bundle whose manifest names no engine
# What archives take unless told: the fastest engine and precision proven on this CPU (builder.engine_choice).
AUTO_ENGINE = "auto"
# Where each engine lives: graph engines give a Graph class (``run(faces)``), the torch engine a scorer.
ENGINE_MODULES = {
    "onnxruntime": "deepfake_serving.engines.onnx_runtime:OrtGraph",
    "openvino": "deepfake_serving.engines.openvino_runtime:OpenVinoGraph",
    "torch": "deepfake_serving.engines.torch_engine:TorchScorer",
}
GRAPH_ENGINES = ("onnxruntime", "openvino")
# Faces per call on a CPU (benchmarks/bench_engines.py, 2 threads: at 4, ONNX Runtime and OpenVINO are
# within ~12 % of their best per-face time for both b4-mobile (best at 8) and b7-dfdc (best at 1)); a GPU
# takes the batch it is given.
CPU_BATCH = {"onnxruntime": 4, "openvino": 4, "torch": 1}
GPU_BATCH = 32


class FaceScorer(Protocol):
    """What the pipelines need from a classifier: P(fake) with shape (checkpoints, faces)."""

    def scores(self, crops: Sequence[np.ndarray]) -> np.ndarray: ...


class Graph(Protocol):
    """A classifier graph on a graph engine: normalised faces (N, 3, H, W) → P(fake) (N, checkpoints)."""

    input_shape: list

    def run(self, faces: np.ndarray) -> np.ndarray: ...


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


def batch_size(engine: str, device: Device) -> int:
    return GPU_BATCH if device.kind == "cuda" else CPU_BATCH[engine]


def _load(engine: str) -> Any:
    module, name = ENGINE_MODULES[check_engine(engine)].split(":")
    return getattr(importlib.import_module(module), name)


def graph_runtime(engine: str, graph: bytes, name: str, sha256: str, threads: int | None = None,
                  device: Device = Device(), precision: str = "fp32", batch: int | None = None) -> Graph:
    """``graph`` (refused unless its sha256 is ``sha256``) on a graph engine's runtime; ``batch``: the
    faces per call the caller sends (OpenVINO compiles that static shape; ONNX Runtime takes any)."""
    if engine not in GRAPH_ENGINES:
        raise ValueError(f"{engine!r} does not run graphs; graph engines: {', '.join(GRAPH_ENGINES)}")
    options = {"batch": batch} if engine == "openvino" and batch else {}
    return _load(engine)(graph, name, sha256, threads, device, precision, **options)


def torch_scorer(variant: "Variant", models, batch: int | None = None, device: Device = Device()) -> FaceScorer:
    """Torch models as a scorer in this process (the torch engine; imports torch)."""
    return _load("torch")(variant, models, batch or CPU_BATCH["torch"], device)


def as_scorer(variant: "Variant", models) -> FaceScorer:
    """A scorer as it is, or torch models run in this process (tests and tools hand models directly)."""
    return models if hasattr(models, "scores") else torch_scorer(variant, models)


def set_torch_threads(threads: int) -> int:
    """The torch engine's thread setting (imports torch)."""
    return importlib.import_module("deepfake_serving.engines.torch_engine").set_torch_threads(threads)
