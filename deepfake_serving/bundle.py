"""A model bundle: one variant's weights (safetensors, one file per checkpoint), the same
checkpoints as one ONNX graph (``classifier.onnx``, exported at build time), and a manifest
(``manifest.py``, torch-free).

Both backends serve bundles: a TorchServe archive carries one, a Triton model
version directory holds one. Loading checks every file's sha256 against the
manifest. Writing and the torch engine import torch; serving the graph does not.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Sequence

from . import __version__
from .engines import DEFAULT_ENGINE, Device, check_engine, load_scorer
from .manifest import GRAPH_NAME, MANIFEST_NAME, BundleManifest, check_file
from .runtime import sha256_of
from .variants import create_model, get_variant


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
    from safetensors.torch import save_file

    from .onnx_export import export_onnx, exporter_info
    from .quantize import check_options, reduce_precision

    check_engine(engine)
    check_options(quantize, calibration, holdout, engine)
    variant = get_variant(variant_name)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    models = [(create_model(variant.name, checkpoint, seed=seed), checkpoint) for checkpoint in checkpoints or [None]]
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


def load_models(directory: str | Path) -> tuple[BundleManifest, list]:
    """The bundle's torch models, refusing any weights file whose sha256 differs from the manifest's."""
    directory = Path(directory)
    manifest = BundleManifest.read(directory)
    return manifest, [create_model(manifest.variant, check_file(directory, entry)) for entry in manifest.weights]


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
