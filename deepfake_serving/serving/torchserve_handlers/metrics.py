"""The catalogue's metrics through TorchServe's custom metrics API (``context.metrics``): each is declared
in the metrics configuration the launcher writes (serving.launch.torchserve_metrics), so the frontend
exposes it on its Prometheus endpoint (``metrics_mode=prometheus``, the metrics address)."""

from __future__ import annotations

from typing import Any

from ts.metrics.metric_type_enum import MetricTypes

from deepfake_serving.monitoring.catalogue import MetricSpec


class TorchServeSink:
    def __init__(self, metrics):
        self.metrics = metrics  # the worker's metrics cache (context.metrics)
        self.cache: dict[str, Any] = {}

    def observe(self, spec: MetricSpec, value: float, labels: tuple[str, ...]) -> None:
        metric = self.cache.get(spec.name)
        if metric is None:
            metric = self.cache[spec.name] = self.metrics.get_metric(spec.name, MetricTypes[spec.kind.upper()])
        metric.add_or_update(value, list(labels))
