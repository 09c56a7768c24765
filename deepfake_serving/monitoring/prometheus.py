"""The catalogue's metrics in a prometheus_client registry (the job API and the front; any process of ours
that is not a model server)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from deepfake_serving.monitoring.catalogue import COUNTER, GAUGE, METRICS, MetricSpec


class PrometheusSink:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        self.metrics = {spec.name: self._make(spec) for spec in METRICS}

    def _make(self, spec: MetricSpec):
        if spec.kind == COUNTER:
            return Counter(spec.name, spec.help, spec.labels, registry=self.registry)
        if spec.kind == GAUGE:
            return Gauge(spec.name, spec.help, spec.labels, registry=self.registry)
        return Histogram(spec.name, spec.help, spec.labels, buckets=spec.buckets, registry=self.registry)

    def observe(self, spec: MetricSpec, value: float, labels: tuple[str, ...]) -> None:
        metric = self.metrics[spec.name].labels(*labels)
        if spec.kind == COUNTER:
            metric.inc(value)
        elif spec.kind == GAUGE:
            metric.set(value)
        else:
            metric.observe(value)
