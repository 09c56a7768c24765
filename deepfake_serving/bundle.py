"""A model bundle: one variant's weights (safetensors, one file per checkpoint), the same
checkpoints as one ONNX graph (``classifier.onnx``, exported at build time), and a manifest.

Both backends serve bundles: a TorchServe archive carries one, a Triton model
version directory holds one. Loading checks every file's sha256 against the
manifest. Reading a manifest and serving the graph import no torch.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from . import __version__
from .engines import DEFAULT_ENGINE, Device, check_engine, load_scorer
from .errors import CheckpointError
from .runtime import sha256_of
from .variants import get_variant

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
    engine: str = DEFAULT_ENGINE  # what serves it unless told otherwise
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


def weights_file_name(i: int) -> str:
    return "weights.safetensors" if i == 0 else f"weights_{i}.safetensors"


def write_bundle(
    directory: str | Path,
    variant_name: str,
    version: str,
    checkpoints: Sequence[str | Path] = (),
    seed: int = 0,
    engine: str = DEFAULT_ENGINE,
    quantize: str | None = None,
    calibration: str | Path | None = None,
    holdout: str | Path | None = None,
) -> BundleManifest:
    """Write weights, graph and manifest. Without checkpoints the weights are random (seeded) and
    flagged untrained. Every checkpoint is loaded into the variant before anything is written.
    ``quantize`` ("int8", "fp16" or "bf16") reduces the graph's precision (int8 calibrated on
    ``calibration``'s faces), refused unless it agrees with fp32 on ``holdout``'s (deepfake_serving.quantize)."""
    import torch
    from safetensors.torch import save_file

    from .checkpoints import load_checkpoint_into
    from .onnx_export import export_onnx, exporter_info
    from .quantize import check_options, reduce_precision

    check_engine(engine)
    check_options(quantize, calibration, holdout, engine)
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
    graph = export_onnx(variant, [model for model, _ in models], directory / GRAPH_NAME)
    onnx = {"file": graph.name, "checkpoints": len(models), **exporter_info(), "precision": "fp32"}
    if quantize:
        fp32 = graph.rename(directory / "classifier.fp32.onnx")
        try:
            record = reduce_precision(quantize, fp32, graph, variant, calibration, holdout)
            onnx.update(precision=quantize, quantization=record)
        finally:
            fp32.unlink()
    onnx["sha256"] = sha256_of(graph)
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
        engine=engine,
        onnx=onnx,
    )
    (directory / MANIFEST_NAME).write_text(manifest.to_json())
    return manifest


def check_file(directory: Path, entry: dict) -> Path:
    """A file the manifest lists, refused when missing or when its sha256 differs from the manifest's."""
    path = directory / entry["file"]
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    digest = sha256_of(path)
    if digest != entry["sha256"]:
        raise CheckpointError(f"{path.name} has sha256 {digest}, the manifest says {entry['sha256']}")
    return path


def load_models(directory: str | Path) -> tuple[BundleManifest, list]:
    """The bundle's torch models, refusing any weights file whose sha256 differs from the manifest's."""
    from safetensors.torch import load_file

    from .checkpoints import load_state_dict_strict

    directory = Path(directory)
    manifest = BundleManifest.read(directory)
    variant = get_variant(manifest.variant)
    models = []
    for entry in manifest.weights:
        path = check_file(directory, entry)
        model = variant.build()
        load_state_dict_strict(model, load_file(str(path)), path.name)
        models.append(model.eval())
    return manifest, models


def load_bundle(directory: str | Path, engine: str | None = None, device: Device = Device(),
                threads: int | None = None, media: str = "image", **pipeline_options):
    """The image (or video) pipeline over a bundle, its classifier on ``engine`` (default: the manifest's)."""
    from .pipeline import ImagePipeline
    from .video_pipeline import VideoPipeline

    manifest = BundleManifest.read(directory)
    scorer = load_scorer(directory, engine, device, threads)
    pipeline = VideoPipeline if media == "video" else ImagePipeline
    return pipeline(get_variant(manifest.variant), scorer, version=manifest.version,
                    weights_trained=manifest.trained, threads=threads, device=device, **pipeline_options)


def load_video_bundle(directory: str | Path, **options):
    return load_bundle(directory, media="video", **options)
