"""Reading a Prometheus endpoint in tests."""

import requests
from prometheus_client.parser import text_string_to_metric_families

SERVER_LABELS = ("Hostname",)  # TorchServe adds the host to every metric


def metric_samples(url: str) -> dict:
    """(name as written, sorted labels) → value, from the Prometheus text at ``url``. (The parser names a
    counter's samples ``…_total`` even when the text does not, as Triton's histogram counters.)"""
    text = requests.get(url, timeout=10).text

    def written(name: str) -> str:
        return name if f"\n{name}{{" in text or f"\n{name} " in text else name.removesuffix("_total")

    return {(written(s.name), tuple(sorted((k, v) for k, v in s.labels.items() if k not in SERVER_LABELS))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def grown(before: dict, after: dict, name: str, **labels) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)
