"""A model bundle: one variant's weights (safetensors, one file per checkpoint) plus a manifest.

Both backends serve bundles: a TorchServe archive carries one, a Triton model
version directory holds one. Loading checks every weights file's sha256.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file, save_file

from . import __version__
from .checkpoints import load_checkpoint_into, load_state_dict_strict
from .errors import CheckpointError
from .pipeline import ImagePipeline
from .runtime import sha256_of
from .variants import get_variant

MANIFEST_NAME = "deepfake_manifest.json"


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

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def read(cls, directory: str | Path) -> "BundleManifest":
        return cls(**json.loads((Path(directory) / MANIFEST_NAME).read_text()))

    @property
    def weight_files(self) -> list[str]:
        return [w["file"] for w in self.weights]


def weights_file_name(i: int) -> str:
    return "weights.safetensors" if i == 0 else f"weights_{i}.safetensors"


def write_bundle(
    directory: str | Path,
    variant_name: str,
    version: str,
    checkpoints: Sequence[str | Path] = (),
    seed: int = 0,
) -> BundleManifest:
    """Write weights and manifest. Without checkpoints the weights are random (seeded) and flagged untrained.

    Every checkpoint is loaded into the variant before anything is written.
    """
    variant = get_variant(variant_name)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    models = []
    for checkpoint in checkpoints or [None]:
        torch.manual_seed(seed)
        model = variant.build().eval()
        if checkpoint is not None:
            load_checkpoint_into(model, checkpoint, variant)
        models.append((model, checkpoint))
    entries = []
    for i, (model, checkpoint) in enumerate(models):
        path = directory / weights_file_name(i)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        source = {"name": Path(checkpoint).name, "sha256": sha256_of(checkpoint)} if checkpoint else None
        entries.append({"file": path.name, "sha256": sha256_of(path), "source_checkpoint": source})
    manifest = BundleManifest(
        variant=variant.name,
        version=version,
        input_size=variant.preprocessing.input_size,
        preprocessing=variant.preprocessing.to_dict(),
        output=variant.output,
        threshold=variant.threshold,
        weights=entries,
        trained=bool(checkpoints),
        created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        package_version=__version__,
    )
    (directory / MANIFEST_NAME).write_text(manifest.to_json())
    return manifest


def load_models(directory: str | Path) -> tuple[BundleManifest, list[torch.nn.Module]]:
    """The bundle's models, refusing any weights file whose sha256 differs from the manifest's."""
    directory = Path(directory)
    manifest = BundleManifest.read(directory)
    variant = get_variant(manifest.variant)
    models = []
    for entry in manifest.weights:
        path = directory / entry["file"]
        digest = sha256_of(path)
        if digest != entry["sha256"]:
            raise CheckpointError(f"{path.name} has sha256 {digest}, the manifest says {entry['sha256']}")
        model = variant.build()
        load_state_dict_strict(model, load_file(str(path)), path.name)
        models.append(model.eval())
    return manifest, models


def load_bundle(directory: str | Path, **pipeline_options) -> ImagePipeline:
    manifest, models = load_models(directory)
    return ImagePipeline(get_variant(manifest.variant), models, version=manifest.version,
                         weights_trained=manifest.trained, **pipeline_options)


def load_video_bundle(directory: str | Path, **pipeline_options):
    from .video_pipeline import VideoPipeline

    manifest, models = load_models(directory)
    return VideoPipeline(get_variant(manifest.variant), models, version=manifest.version,
                         weights_trained=manifest.trained, **pipeline_options)
