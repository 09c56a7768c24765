"""The catalogue's metrics through Triton's custom metrics API (``pb_utils.MetricFamily``), on Triton's own
metrics endpoint. Triton 2.45's python backend has counters and gauges only, so a histogram is written as
Prometheus writes one: cumulative ``<name>_bucket`` counters labelled ``le``, and ``<name>_sum`` and
``<name>_count`` (``histogram_quantile`` reads them as it reads any histogram)."""

from __future__ import annotations

from typing import Any

import triton_python_backend_utils as pb_utils

from deepfake_serving.monitoring.catalogue import COUNTER, GAUGE, MetricSpec
from deepfake_serving.monitoring.recorder import PredictionRecorder

ANY_VERSION = "any"  # steps before the classifier (preprocess) serve every classifier version


def bucket_label(bound: float) -> str:
    return str(float(bound))  # as prometheus_client writes ``le``: "0.1", "1.0"


class TritonSink:
    families: dict[str, Any] = {}  # per stub process: a family is made once, whichever model asks

    def __init__(self):
        self.metrics: dict[tuple, Any] = {}

    @classmethod
    def family(cls, name: str, help: str, kind) -> Any:
        if name not in cls.families:
            cls.families[name] = pb_utils.MetricFamily(name=name, description=help, kind=kind)
        return cls.families[name]

    def metric(self, name: str, help: str, kind, labels: dict[str, str]):
        key = (name, tuple(labels.items()))
        if key not in self.metrics:
            self.metrics[key] = self.family(name, help, kind).Metric(labels=labels)
        return self.metrics[key]

    def observe(self, spec: MetricSpec, value: float, labels: tuple[str, ...]) -> None:
        named = dict(zip(spec.labels, labels))
        if spec.kind == COUNTER:
            self.metric(spec.name, spec.help, pb_utils.MetricFamily.COUNTER, named).increment(value)
        elif spec.kind == GAUGE:
            self.metric(spec.name, spec.help, pb_utils.MetricFamily.GAUGE, named).set(value)
        else:
            counter = pb_utils.MetricFamily.COUNTER
            for bound in (*spec.buckets, float("inf")):
                if value <= bound:
                    le = "+Inf" if bound == float("inf") else bucket_label(bound)
                    self.metric(f"{spec.name}_bucket", spec.help, counter, {**named, "le": le}).increment(1)
            self.metric(f"{spec.name}_sum", spec.help, counter, named).increment(value)
            self.metric(f"{spec.name}_count", spec.help, counter, named).increment(1)


def recorder(model: str, version: str = ANY_VERSION) -> PredictionRecorder:
    return PredictionRecorder(TritonSink(), model, version)
