"""A bundle's manifest: what the bundle holds (variant, version, each file with its sha256, the graph's
precision and engine), read and checked without torch (the Triton classifier and the graph engines use
it as they are)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import CheckpointError
from .runtime import sha256_of

DEFAULT_ENGINE = "onnxruntime"  # what serves a bundle unless told otherwise (engines.ENGINES)
MANIFEST_NAME = "deepfake_manifest.json"
GRAPH_NAME = "classifier.onnx"


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


def check_bytes(data: bytes, name: str, sha256: str) -> bytes:
    """``data`` as it is, refused when its sha256 differs from the manifest's ``sha256``."""
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise CheckpointError(f"{name} has sha256 {digest}, the manifest says {sha256}")
    return data


def check_file(directory: Path, entry: dict) -> Path:
    """A file the manifest lists, refused when missing or when its sha256 differs from the manifest's."""
    path = directory / entry["file"]
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    digest = sha256_of(path)
    if digest != entry["sha256"]:
        raise CheckpointError(f"{path.name} has sha256 {digest}, the manifest says {entry['sha256']}")
    return path
