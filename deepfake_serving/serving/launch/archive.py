"""Versioned TorchServe archives (.mar) built with torch-model-archiver."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import replace
from importlib.resources import as_file
from pathlib import Path
from typing import Any, Sequence

import yaml

from deepfake_serving import __version__
from deepfake_serving.builder.ensemble import write_ensemble
from deepfake_serving.builder.quantize import check_options
from deepfake_serving.builder.write import write_bundle
from deepfake_serving.bundle.ensemble import ENSEMBLE_MANIFEST, MEMBERS, EnsembleManifest
from deepfake_serving.bundle.manifest import GRAPH_NAME, MANIFEST_NAME, created_now
from deepfake_serving.core.fusion import Abstention, Fusion
from deepfake_serving.core.naming import archive_file_name, check_name, default_model_name
from deepfake_serving.engines import AUTO_ENGINE
from deepfake_serving.serving.torchserve_handlers import handler_file
from deepfake_serving.variants import get_variant

# Worker settings that go into the archive's model-config.yaml: one worker, server-side batching
# (benchmarks/bench_image.py prints the sweep); threads follow deepfake_serving.core.threads' rule
# unless ``handler.threads`` is set.
DEFAULT_MODEL_CONFIG: dict[str, Any] = {
    "minWorkers": 1,
    "maxWorkers": 1,
    "batchSize": 8,
    "maxBatchDelay": 10,
    "responseTimeout": 300,
    "handler": {"media": "image"},
}
# A video is already a batch of faces: one request per forward pass, a longer timeout.
VIDEO_MODEL_CONFIG: dict[str, Any] = {**DEFAULT_MODEL_CONFIG, "batchSize": 1, "maxBatchDelay": 0, "responseTimeout": 900,
                      "handler": {"media": "video"}}


def build_archive(
    variant: str,
    version: str,
    checkpoints: list[str] | tuple[str, ...] = (),
    export_path: str | Path = "model_store",
    model_name: str | None = None,
    model_config: dict | None = None,
    media: str = "image",
    seed: int = 0,
    engine: str = AUTO_ENGINE,
    **quantization,
) -> Path:
    """Package a variant as ``{name}-v{version}.mar``: random weights when no checkpoint is given,
    several checkpoints of one variant averaged (as the DFDC winner did). ``quantization``:
    write_bundle's ``quantize``, ``calibration`` and ``holdout`` (and ``training_run``, the MLflow run the
    weights come from)."""
    # Every refusal before the build (15-20 s): names that become paths, the variant, the folders.
    get_variant(variant)
    check_name(version, "version")
    model_name = check_name(model_name or default_model_name(variant, media), "model name")
    check_options(quantization.get("quantize"), quantization.get("calibration"), quantization.get("holdout"), engine)
    handler = handler_file(media)
    export_path = Path(export_path)
    export_path.mkdir(parents=True, exist_ok=True)
    base = DEFAULT_MODEL_CONFIG if media == "image" else VIDEO_MODEL_CONFIG
    config = {**base, **(model_config or {})}
    if media == "video" and int(config.get("batchSize", 1)) > 1:
        raise ValueError(f"a video archive takes one clip per request (batch size 1, not {config['batchSize']}): "
                         "a batch would send one request's streamed progress to every request in it")
    config["handler"] = {**base["handler"], **config.get("handler", {}), "media": media}
    with tempfile.TemporaryDirectory(prefix="mar-") as tmp_name, as_file(handler) as handler:
        tmp = Path(tmp_name)
        manifest = write_bundle(tmp / "bundle", variant, version, checkpoints=checkpoints, seed=seed, engine=engine,
                                **quantization)
        config["handler"]["engine"] = manifest.engine  # as decided (an "auto" engine is decided by the build)
        files = [tmp / "bundle" / name for name in [*manifest.weight_files, GRAPH_NAME]]
        target = _package(tmp, model_name, version, handler, files[0], [tmp / "bundle" / MANIFEST_NAME, *files[1:]],
                          config, export_path)
    return target


def build_ensemble_archive(name: str, version: str, members: Sequence[tuple[str, Sequence[str]]],
                           fusion: Fusion = Fusion(), export_path: str | Path = "model_store",
                           model_config: dict | None = None, seed: int = 0, engine: str = AUTO_ENGINE,
                           media: str = "image") -> Path:
    """Package several variants as one archive ``{name}-v{version}.mar`` (images: the ensemble handler;
    videos: the video handler over the ensemble bundle): one face detection, each member's classifier in
    turn, fused by ``fusion`` (builder.ensemble)."""
    check_name(name, "model name")
    check_name(version, "version")
    with tempfile.TemporaryDirectory(prefix="mar-") as tmp_name:
        tmp = Path(tmp_name)
        write_ensemble(tmp / "bundle", name, version, members, fusion, seed=seed, engine=engine)
        return package_ensemble(tmp / "bundle", name, version, media, model_config, Path(export_path))


def package_ensemble(bundle: Path, name: str, version: str, media: str, model_config: dict | None,
                     export_path: Path) -> Path:
    """An ensemble bundle (written, or refitted by ``ensemble fit``) as an archive for ``media``."""
    base = VIDEO_MODEL_CONFIG if media == "video" else DEFAULT_MODEL_CONFIG
    config = {**base, **(model_config or {})}
    config["handler"] = {**base["handler"], **config.get("handler", {}), "media": media}
    export_path.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mar-") as tmp_name, \
            as_file(handler_file("video" if media == "video" else "ensemble")) as handler:
        return _package(Path(tmp_name), name, version, handler, bundle / ENSEMBLE_MANIFEST, [bundle], config,
                        export_path)


def _package(tmp: Path, model_name: str, version: str, handler: Path, serialized: Path, extra_files: list[Path],
             config: dict, export_path: Path) -> Path:
    """torch-model-archiver over the staged files (a folder among ``extra_files`` lands with its contents
    at the archive's root), moved to ``export_path``."""
    (tmp / "model-config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    subprocess.run(
        [
            sys.executable, "-m", "model_archiver.model_packaging",  # torch-model-archiver's entry point
            "--model-name", model_name,
            "--version", version,
            "--handler", str(handler),
            "--serialized-file", str(serialized),
            "--extra-files", ",".join(str(f) for f in extra_files),
            "--config-file", str(tmp / "model-config.yaml"),
            "--export-path", str(tmp),
            "--force",
        ],
        check=True,
        # the archiver stages files in $TMPDIR/<model name>: in the shared /tmp two builds of one model
        # collide, and another local user could plant that folder; a private TMPDIR closes both
        env={**os.environ, "TMPDIR": str(tmp)},
    )
    target = export_path / archive_file_name(model_name, version)
    shutil.move(str(tmp / f"{model_name}.mar"), target)
    return target



def fit_ensemble_archive(archive: str | Path, labelled: str | Path, version: str, rule: str = "stacking",
                         calibration: str = "temperature", export_path: str | Path = "model_store",
                         abstention: Abstention | None = None, threads: int | None = None) -> tuple[Path, Fusion]:
    """``ensemble fit``: the archive's members score the labelled folder in this process, the fusion is
    fitted (evaluation.fusion_fit), and the same members are packaged as ``version`` with it."""
    from deepfake_serving.evaluation.fusion_fit import fit_fusion, labelled_member_scores
    from deepfake_serving.pipeline.ensemble import EnsemblePipeline, load_ensemble_pipeline

    check_name(version, "version")
    with tempfile.TemporaryDirectory(prefix="fit-") as tmp_name:
        bundle = Path(tmp_name) / "bundle"
        config = extract_ensemble(Path(archive), bundle)
        manifest = EnsembleManifest.read(bundle)
        pipeline = load_ensemble_pipeline(bundle, "image", threads=threads)
        assert isinstance(pipeline, EnsemblePipeline)
        scores, labels, skipped = labelled_member_scores(pipeline, labelled)
        base = pipeline.fusion if abstention is None else replace(pipeline.fusion, abstention=abstention)
        fusion = fit_fusion(scores, labels, base, rule, calibration, skipped).check(len(pipeline.members))
        media = config.get("handler", {}).get("media", "image")
        target = _repackage(bundle, replace(manifest, version=version, fusion=fusion.to_dict()),
                            "video" if media == "video" else "image", config, Path(export_path))
    return target, fusion


def repackage_ensemble(archive: str | Path, name: str, version: str, media: str,
                       export_path: str | Path = "model_store") -> Path:
    """``ensemble build --archive``: an ensemble archive's members and fusion (fitted or not) as another
    archive, for example the video archive of a fitted image ensemble; no member is rebuilt."""
    check_name(name, "model name")
    check_name(version, "version")
    with tempfile.TemporaryDirectory(prefix="mar-") as tmp_name:
        bundle = Path(tmp_name) / "bundle"
        config = extract_ensemble(Path(archive), bundle)
        same_media = config.get("handler", {}).get("media", "image") == media  # a video archive batches 1
        return _repackage(bundle, replace(EnsembleManifest.read(bundle), name=name, version=version), media,
                          config if same_media else None, Path(export_path))


def _repackage(bundle: Path, manifest: EnsembleManifest, media: str, config: dict | None, export_path: Path) -> Path:
    """An extracted ensemble bundle under ``manifest`` (stamped now, by this package) as an archive."""
    stamped = replace(manifest, created_at=created_now(), package_version=__version__)
    (bundle / ENSEMBLE_MANIFEST).write_text(stamped.to_json())
    return package_ensemble(bundle, stamped.name, stamped.version, media, config, export_path)


def extract_ensemble(archive: Path, bundle: Path) -> dict:
    """An ensemble archive's bundle (its manifest and members/, nothing else) into ``bundle``, and its
    model-config.yaml."""
    return _extract(archive, bundle, lambda name: name == ENSEMBLE_MANIFEST or name.startswith(f"{MEMBERS}/"),
                    ENSEMBLE_MANIFEST, "an ensemble archive")


def extract_bundle(archive: Path, bundle: Path) -> dict:
    """A variant's or an ensemble's archive unpacked into ``bundle`` (all but TorchServe's MAR-INF), for a
    pipeline in this process (``load_pipeline``); and its model-config.yaml."""
    return _extract(archive, bundle, lambda name: not name.startswith("MAR-INF/"), None, "an archive")


def _extract(archive: Path, bundle: Path, wanted, required: str | None, kind: str) -> dict:
    """The ``wanted`` entries of ``archive`` into ``bundle``; entry names that would leave it are refused."""
    try:
        with zipfile.ZipFile(archive) as mar:
            names = mar.namelist()
            if required and required not in names:
                raise ValueError(f"{archive} is not {kind} (no {required})")
            root = bundle.resolve()
            for name in filter(wanted, names):
                if root not in (bundle / name).resolve().parents:
                    raise ValueError(f"{archive}: entry {name!r} is outside the archive")
                mar.extract(name, bundle)
            config = yaml.safe_load(mar.read("model-config.yaml")) if "model-config.yaml" in names else {}
    except (OSError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{archive}: not a readable archive ({exc})") from None
    return config if isinstance(config, dict) else {}
