"""Versioned TorchServe archives (.mar) built with torch-model-archiver."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from ..bundle import MANIFEST_NAME, WEIGHTS_NAME, write_bundle

REPO_ROOT = Path(__file__).resolve().parents[2]
HANDLER = REPO_ROOT / "handlers" / "deepfake_handler.py"

# Worker settings that go into the archive's model-config.yaml. On 2 cores one
# worker with 2 torch threads and server-side batching measured best
# (benchmarks/bench_image.py prints the sweep).
DEFAULT_MODEL_CONFIG = {
    "minWorkers": 1,
    "maxWorkers": 1,
    "batchSize": 8,
    "maxBatchDelay": 10,
    "responseTimeout": 300,
    "handler": {"torch_threads": 2},
}


def archive_file_name(model_name: str, version: str) -> str:
    return f"{model_name}-v{version}.mar"


def build_archive(
    variant: str,
    version: str,
    checkpoint: str | None = None,
    export_path: str | Path = "model_store",
    model_name: str | None = None,
    model_config: dict | None = None,
    seed: int = 0,
) -> Path:
    """Package a variant (random weights when no checkpoint is given) as ``{name}-v{version}.mar``."""
    model_name = model_name or variant
    export_path = Path(export_path)
    export_path.mkdir(parents=True, exist_ok=True)
    config = {**DEFAULT_MODEL_CONFIG, **(model_config or {})}
    with tempfile.TemporaryDirectory(prefix="mar-") as tmp:
        tmp = Path(tmp)
        write_bundle(tmp / "bundle", variant, version, checkpoint=checkpoint, seed=seed)
        (tmp / "model-config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        subprocess.run(
            [
                str(Path(sys.executable).parent / "torch-model-archiver"),
                "--model-name", model_name,
                "--version", version,
                "--handler", str(HANDLER),
                "--serialized-file", str(tmp / "bundle" / WEIGHTS_NAME),
                "--extra-files", str(tmp / "bundle" / MANIFEST_NAME),
                "--config-file", str(tmp / "model-config.yaml"),
                "--export-path", str(tmp),
                "--force",
            ],
            check=True,
        )
        target = export_path / archive_file_name(model_name, version)
        shutil.move(str(tmp / f"{model_name}.mar"), target)
    return target
