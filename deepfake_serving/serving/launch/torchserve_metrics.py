"""TorchServe's metrics configuration (``metrics_config``): TorchServe's own (its frontend and default
backend metrics, from the installed package) plus the catalogue's, declared as model metrics so the
frontend exposes them. Written by the launcher beside its runtime config."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import yaml

from deepfake_serving.monitoring.catalogue import METRICS


def metrics_config() -> dict:
    config = yaml.safe_load((files("ts") / "configs" / "metrics.yaml").read_text())
    model_metrics = config.setdefault("model_metrics", {})
    for spec in METRICS:
        model_metrics.setdefault(spec.kind, []).append({"name": spec.name, "unit": spec.unit,
                                                         "dimensions": list(spec.labels)})
    return config


def write_metrics_config(path: Path) -> Path:
    path.write_text(yaml.safe_dump(metrics_config(), sort_keys=False))
    return path
