"""A bundle's manifest: what the bundle holds (variant, version, each file with its sha256, the graph's
precision and engine), read and checked without torch (the Triton classifier and the graph engines use
it as they are)."""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from deepfake_serving.core.errors import CheckpointError
from deepfake_serving.engines import DEFAULT_ENGINE

MANIFEST_NAME = "deepfake_manifest.json"
# The package layout the bundle was built for (2: the layered package; handlers of layout 1 import
# modules that no longer exist, so such archives are rebuilt: README, Upgrading).
LAYOUT = 2
GRAPH_NAME = "classifier.onnx"
# A graph's precision other than fp32, each allowed only with proof (deepfake_serving.builder.quantize).
REDUCED_PRECISIONS = ("int8", "fp16", "bf16")



def created_now() -> str:
    """A manifest's ``created_at``: now, UTC, to the second."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")

@dataclass(frozen=True)
class BundleManifest:
    variant: str
    version: str
    input_size: int
    preprocessing: dict
    output: str
    threshold: float
    # One entry per checkpoint: {"file", "sha256", "source_checkpoint": {"name", "sha256"} | None}
    weights: list[dict]
    trained: bool
    created_at: str
    package_version: str
    engine: str = DEFAULT_ENGINE
    # {"file", "sha256", "checkpoints", "opset", "exporter"}: the checkpoints as one graph, (faces, checkpoints) out
    onnx: dict | None = None
    layout: int = 1  # absent in bundles built before layouts were recorded
    # {"requested", "engine", "precision", "reason", "cpu"}: why the archive serves on its engine (builder.engine_choice)
    engine_decision: dict | None = None
    # {"run_id", "tracking_uri"}: the MLflow run that trained the weights (deepfake-serving train), when known
    training_run: dict | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def read(cls, directory: str | Path) -> "BundleManifest":
        path = Path(directory) / MANIFEST_NAME
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{path}: not a bundle manifest ({exc})") from None

    @property
    def files(self) -> list[dict]:
        """Every file entry ({"file", "sha256", ...}): the weights, then the graph."""
        return [*self.weights, *([self.onnx] if self.onnx else [])]

    @property
    def weight_files(self) -> list[str]:
        return [w["file"] for w in self.weights]

