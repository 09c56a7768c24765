"""Writing a bundle: weights (safetensors, one file per checkpoint), the same checkpoints as one ONNX graph
(exported here), reduced precision under proof, and the manifest. Imports torch."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from safetensors.torch import save_file

from deepfake_serving import __version__
from deepfake_serving.builder.engine_choice import decide
from deepfake_serving.builder.export import export_onnx, exporter_info
from deepfake_serving.builder.quantize import QuantizationRefused, check_options, reduce_precision
from deepfake_serving.bundle.manifest import GRAPH_NAME, LAYOUT, MANIFEST_NAME, BundleManifest, created_now
from deepfake_serving.core.digest import sha256_of
from deepfake_serving.engines import AUTO_ENGINE, check_engine
from deepfake_serving.variants import get_variant
from deepfake_serving.variants.factory import create_model


def weights_file_name(i: int) -> str:
    return "weights.safetensors" if i == 0 else f"weights_{i}.safetensors"


def write_bundle(
    directory: str | Path,
    variant_name: str,
    version: str,
    checkpoints: Sequence[str | Path] = (),
    seed: int = 0,
    engine: str = AUTO_ENGINE,
    quantize: str | None = None,
    calibration: str | Path | None = None,
    holdout: str | Path | None = None,
    training_run: dict | None = None,
) -> BundleManifest:
    """Write weights, graph and manifest. Without checkpoints the weights are random (seeded) and
    flagged untrained. Every checkpoint is loaded into the variant before anything is written.
    ``quantize`` ("int8", "fp16" or "bf16") reduces the graph's precision (int8 calibrated on
    ``calibration``'s faces), refused unless it agrees with fp32 on ``holdout``'s (the built-in sample faces
    without one: builder.quantize). ``engine`` "auto" takes bf16 on OpenVINO where this CPU has bf16 units
    and the proof passes, else fp32 on ONNX Runtime (builder.engine_choice)."""
    decision = decide(engine, quantize)
    check_engine(decision.engine)
    check_options(decision.reduced, calibration, holdout, decision.engine)
    variant = get_variant(variant_name)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    sources: list[str | Path | None] = list(checkpoints) or [None]  # no checkpoint: random (seeded) weights
    models = [(create_model(variant.name, checkpoint, seed=seed), checkpoint) for checkpoint in sources]
    entries = []
    for i, (model, checkpoint) in enumerate(models):
        path = directory / weights_file_name(i)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        source = {"name": Path(checkpoint).name, "sha256": sha256_of(checkpoint)} if checkpoint else None
        entries.append({"file": path.name, "sha256": sha256_of(path), "source_checkpoint": source})
    graph = export_onnx(variant, [model for model, _ in models], directory / GRAPH_NAME)
    onnx = {"file": graph.name, "checkpoints": len(models), **exporter_info(), "precision": "fp32"}
    if decision.reduced:
        fp32 = graph.rename(directory / "classifier.fp32.onnx")
        try:
            record = reduce_precision(decision.reduced, fp32, graph, variant, calibration, holdout)
            onnx.update(precision=decision.reduced, quantization=record)
        except QuantizationRefused as refusal:
            if not decision.fallback:
                raise
            fp32.rename(graph)
            decision = decision.refused(str(refusal))
        finally:
            fp32.unlink(missing_ok=True)
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
        created_at=created_now(),
        package_version=__version__,
        engine=decision.engine,
        onnx=onnx,
        layout=LAYOUT,
        engine_decision=decision.record(),
        training_run=training_run,
    )
    (directory / MANIFEST_NAME).write_text(manifest.to_json())
    return manifest
