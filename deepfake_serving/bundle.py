"""A model bundle: one variant's weights (safetensors) plus a manifest saying what they are.

Both backends serve bundles: a TorchServe archive carries one, a Triton
classifier version directory holds one. Loading checks the weights' sha256.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from . import __version__
from .checkpoints import load_checkpoint_into, load_state_dict_strict, sha256_of
from .errors import CheckpointError
from .pipeline import ImagePipeline
from .variants import get_variant

MANIFEST_NAME = "deepfake_manifest.json"
WEIGHTS_NAME = "weights.safetensors"


@dataclass(frozen=True)
class BundleManifest:
    variant: str
    version: str
    input_size: int
    preprocessing: dict
    output: str
    threshold: float
    weights_file: str
    weights_sha256: str
    trained: bool
    source_checkpoint: dict | None  # {"name", "sha256"} of the file the weights came from
    created_at: str
    package_version: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def read(cls, directory: str | Path) -> "BundleManifest":
        return cls(**json.loads((Path(directory) / MANIFEST_NAME).read_text()))


def write_bundle(
    directory: str | Path,
    variant_name: str,
    version: str,
    checkpoint: str | Path | None = None,
    seed: int = 0,
) -> BundleManifest:
    """Write weights and manifest. Without a checkpoint the weights are random and flagged untrained."""
    variant = get_variant(variant_name)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = variant.build().eval()
    source = None
    if checkpoint is not None:
        load_checkpoint_into(model, checkpoint, variant)
        source = {"name": Path(checkpoint).name, "sha256": sha256_of(checkpoint)}
    weights = directory / WEIGHTS_NAME
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    manifest = BundleManifest(
        variant=variant.name,
        version=version,
        input_size=variant.preprocessing.input_size,
        preprocessing=variant.preprocessing.to_dict(),
        output=variant.output,
        threshold=variant.threshold,
        weights_file=WEIGHTS_NAME,
        weights_sha256=sha256_of(weights),
        trained=checkpoint is not None,
        source_checkpoint=source,
        created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        package_version=__version__,
    )
    (directory / MANIFEST_NAME).write_text(manifest.to_json())
    return manifest


def load_bundle(directory: str | Path, weights_path: str | Path | None = None, **pipeline_options) -> ImagePipeline:
    """Build the image pipeline of a bundle, refusing weights whose sha256 differs from the manifest's."""
    directory = Path(directory)
    manifest = BundleManifest.read(directory)
    weights = Path(weights_path) if weights_path else directory / manifest.weights_file
    digest = sha256_of(weights)
    if digest != manifest.weights_sha256:
        raise CheckpointError(f"{weights.name} has sha256 {digest}, the manifest says {manifest.weights_sha256}")
    variant = get_variant(manifest.variant)
    model = variant.build()
    load_state_dict_strict(model, load_file(str(weights)), weights.name)
    return ImagePipeline(
        variant, model, version=manifest.version, weights_trained=manifest.trained, **pipeline_options
    )
