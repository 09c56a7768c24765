"""The two servers as rollout targets: the same verbs over TorchServe's management API and
Triton's model control, plus per-version counters from each server's Prometheus metrics."""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import requests
from prometheus_client.parser import text_string_to_metric_families

from deepfake_serving.core.naming import model_names, pinned_ensemble
from deepfake_serving.monitoring.catalogue import FAKE_PROBABILITY
from deepfake_serving.serving.client.auth import ServerKeys
from deepfake_serving.serving.client.clients import Prediction, RestClient, TritonClient
from deepfake_serving.serving.launch.supervisor import model_control


class ServerUnavailable(RuntimeError):
    """The management/control API cannot be reached or refused the call."""


@dataclass(frozen=True)
class Counters:
    """Cumulative per-version figures from the server; compare two readings (``later - earlier``)."""

    requests: float = 0.0
    failures: float | None = None  # None: the server does not count failures per version (TorchServe)
    latency_ms_sum: float = 0.0

    def __sub__(self, other: "Counters") -> "Counters":
        failures = None if self.failures is None else self.failures - (other.failures or 0.0)
        return Counters(self.requests - other.requests, failures, self.latency_ms_sum - other.latency_ms_sum)

    @property
    def mean_latency_ms(self) -> float | None:
        return self.latency_ms_sum / self.requests if self.requests else None

    @property
    def error_ratio(self) -> float | None:
        return None if self.failures is None or not self.requests else self.failures / self.requests


def _samples(text: str) -> list[tuple[str, dict, float]]:
    """(name without a ``_total`` suffix, labels, value): the parser adds ``_total`` to every counter
    sample, which TorchServe's ``ts_inference_latency_microseconds`` does not carry on the wire."""
    return [(s.name.removesuffix("_total"), s.labels, s.value)
            for family in text_string_to_metric_families(text) for s in family.samples]


def _call(method: str, url: str, timeout: float, key: str = "management", key_file: str | None = None,
          **kwargs) -> requests.Response:
    """A control-API call with the server's key of that kind (TorchServe: management; Triton: every API
    but inference and health)."""
    try:
        headers = ServerKeys.for_url(url, key_file).headers(key)
        response = requests.request(method, url, timeout=timeout, headers=headers, **kwargs)
    except requests.RequestException as err:
        raise ServerUnavailable(f"{method} {url}: {err}") from None
    if response.status_code >= 400:
        raise ServerUnavailable(f"{method} {url}: {response.status_code} {response.text[:300]}")
    return response


class RolloutTarget(Protocol):
    """What a rollout needs from a server (TorchServeTarget, TritonTarget): its versions of one model,
    registering, routing, promoting and removing them, and the counters the canary gate reads."""

    backend: str
    model: str
    quantile_window_s: float | None  # the window of latency_quantiles, or None when counters are cumulative

    def versions(self) -> list[str]: ...

    def serving_version(self) -> str: ...

    def register(self, archive: str | Path, timeout: float = 600.0) -> str: ...

    def predict(self, version: str, data: bytes) -> Prediction: ...

    def promote(self, version: str) -> None: ...

    def remove(self, version: str) -> None: ...

    def counters(self, version: str) -> Counters: ...

    def latency_quantiles(self, version: str) -> dict[float, float]: ...

    def score_histogram(self, version: str) -> dict[float, float]: ...


def fake_probability_buckets(text: str, model: str, version: str) -> dict[float, float]:
    """The cumulative ``deepfake_fake_probability_bucket`` counts (upper bound → answers) of one model version
    (monitoring's catalogue, as the server exposes it)."""
    buckets: dict[float, float] = {}
    for name, labels, value in _samples(text):
        if (name == f"{FAKE_PROBABILITY.name}_bucket" and labels.get("model") == model
                and labels.get("version") == version):
            le = float(labels["le"])
            buckets[le] = buckets.get(le, 0.0) + value  # summed over hosts
    return buckets


class _ControlApi:
    key_file: str | None = None

    def _call(self, method: str, url: str, timeout: float, **kwargs) -> requests.Response:
        return _call(method, url, timeout, key_file=self.key_file, **kwargs)


class TorchServeTarget(_ControlApi):
    """Versions are archive versions ("1.0", "2.0") of one model name."""

    backend = "torchserve"
    quantile_window_s: float | None = None  # TorchServe exposes cumulative counters only

    def __init__(self, model: str, inference_url: str, management_url: str, metrics_url: str,
                 key_file: str | None = None):
        self.model = model
        self.management_url, self.metrics_url = management_url, metrics_url
        self.key_file = key_file
        self.client = RestClient(inference_url, key_file=key_file)

    def versions(self) -> list[str]:
        described = self._call("GET", f"{self.management_url}/models/{self.model}/all", 10).json()
        return [d["modelVersion"] for d in described]

    def serving_version(self) -> str:
        """The default version (describing a model without a version describes its default)."""
        return self._call("GET", f"{self.management_url}/models/{self.model}", 10).json()[0]["modelVersion"]

    def register(self, archive: str | Path, timeout: float = 600.0) -> str:
        """Register the archive (by file name in the model store) with one worker; returns its version."""
        before = set(self.versions())
        self._call("POST", f"{self.management_url}/models", timeout,
              params={"url": Path(archive).name, "initial_workers": 1, "synchronous": "true"})
        added = set(self.versions()) - before
        if len(added) != 1:
            raise ServerUnavailable(f"registering {Path(archive).name} added versions {sorted(added)}")
        return added.pop()

    def predict(self, version: str, data: bytes) -> Prediction:
        return self.client.predict(self.model, data, version=version)

    def promote(self, version: str) -> None:
        self._call("PUT", f"{self.management_url}/models/{self.model}/{version}/set-default", 30)

    def remove(self, version: str, wait_s: float = 60.0) -> None:
        """Unregister once the version's queue is empty (traffic was moved away before this)."""
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            described = self._call("GET", f"{self.management_url}/models/{self.model}/{version}", 10).json()
            if all(d.get("jobQueueStatus", {}).get("pendingRequests", 0) == 0 for d in described):
                break
            time.sleep(0.2)
        self._call("DELETE", f"{self.management_url}/models/{self.model}/{version}", 120)

    def counters(self, version: str) -> Counters:
        """ts_inference_requests_total and ts_inference_latency_microseconds (cumulative, per version)."""
        totals = {"ts_inference_requests": 0.0, "ts_inference_latency_microseconds": 0.0}
        for name, labels, value in _samples(self._call("GET", self.metrics_url, 10).text):
            if name in totals and labels.get("model_name") == self.model and labels.get("model_version") == version:
                totals[name] += value
        return Counters(totals["ts_inference_requests"], None,
                        totals["ts_inference_latency_microseconds"] / 1000)

    def latency_quantiles(self, version: str) -> dict[float, float]:
        return {}

    def score_histogram(self, version: str) -> dict[float, float]:
        return fake_probability_buckets(self._call("GET", self.metrics_url, 10).text, self.model, version)


class TritonTarget(_ControlApi):
    """Versions are classifier versions ("1", "2") of one variant's repository. During a rollout the
    image ensemble is pinned to the serving version, each version in play gets its own pinned
    ensemble ``<ensemble>_v<N>`` (loaded through the repository API with a config override and no
    files on disk), and the classifier's version policy lists exactly the versions in play."""

    backend = "triton"
    # Triton's summaries (the launcher turns on summary_latencies) are prometheus-cpp's: the last 60 s.
    quantile_window_s: float | None = 60.0

    def __init__(self, variant: str, http_url: str, metrics_url: str, key_file: str | None = None):
        self.model = variant
        self.names = model_names(variant)
        self.http_url, self.metrics_url = http_url.rstrip("/"), metrics_url
        self.key_file = key_file
        self.client = TritonClient(http_url, "http")
        self.labels: dict[str, str] = {}  # classifier version → the version its answers carry ("2" → "2.0")

    # -- repository API --------------------------------------------------------------------------
    def _config(self, name: str) -> dict:
        return self._call("GET", f"{self.http_url}/v2/models/{name}/config", 10).json()

    def _load(self, name: str, config: dict, files: dict[str, bytes] | None = None) -> None:
        import base64
        import json

        parameters = {"config": json.dumps(config)}
        parameters.update({f"file:{path}": base64.b64encode(data).decode() for path, data in (files or {}).items()})
        with self._model_control():
            self._call("POST", f"{self.http_url}/v2/repository/models/{name}/load", 600, json={"parameters": parameters})

    def _model_control(self):
        """The server's model-control lock, shared with its supervisor (serving.launch.supervisor): a
        rollout never loads or unloads while the supervisor reloads or restarts, nor the reverse."""
        key_file = ServerKeys.for_url(self.http_url, self.key_file).path
        return model_control(key_file) if key_file else contextlib.nullcontext()

    def _pinned_ensemble(self, version: str, name: str) -> dict:
        config = self._config(self.names["ensemble"])
        config["name"] = name
        for step in config["ensemble_scheduling"]["step"]:
            if step["model_name"] == self.names["classifier"]:
                step["model_version"] = int(version)
        return config

    def _classifier_policy(self, versions: list[str]) -> None:
        config = self._config(self.names["classifier"])
        config["version_policy"] = {"specific": {"versions": sorted(int(v) for v in versions)}}
        self._load(self.names["classifier"], config)

    def _index(self) -> list[dict]:
        return self._call("POST", f"{self.http_url}/v2/repository/index", 10, json={"ready": True}).json()

    def _unload(self, name: str) -> None:
        with self._model_control():
            self._call("POST", f"{self.http_url}/v2/repository/models/{name}/unload", 120, json={})

    def versions(self) -> list[str]:
        found = {m["version"] for m in self._index() if m["name"] == self.names["classifier"] and m.get("version")}
        return sorted(found, key=int)  # "10" after "2"

    # -- the rollout's verbs -----------------------------------------------------------------------
    def serving_version(self) -> str:
        steps = self._config(self.names["ensemble"])["ensemble_scheduling"]["step"]
        pinned = next(int(s["model_version"]) for s in steps if s["model_name"] == self.names["classifier"])
        return str(pinned) if pinned > 0 else max(self.versions(), key=int)

    def register(self, version: str | Path, timeout: float = 600.0) -> str:
        """``version``: a classifier version directory already built (``deepfake-serving triton build``)."""
        version, serving = str(version), self.serving_version()
        if version == serving:
            raise ServerUnavailable(f"version {version} is the serving version already")
        try:
            # First take in the new version directory while serving exactly what is served now: loading
            # the ensemble reloads a composing model whose files changed, from its on-disk policy
            # ("latest 2" of every version directory), which need not hold the serving version.
            self._classifier_policy(self.versions() or [serving])
            self._load(self.names["ensemble"], self._pinned_ensemble(serving, self.names["ensemble"]))
            loaded = {m["name"] for m in self._index()}
            for stale in set(self.versions()) - {serving, version}:  # e.g. the version a promotion replaced
                if pinned_ensemble(self.model, stale) in loaded:
                    self._unload(pinned_ensemble(self.model, stale))
            self._classifier_policy([serving, version])
            ready = version in self.versions()
        except ServerUnavailable as err:
            ready, cause = False, err
        if not ready:
            self._classifier_policy([serving])  # back to the serving version alone
            raise ServerUnavailable(f"classifier version {version} did not load: {locals().get('cause', 'not ready')}")
        for v in (serving, version):
            self._load(pinned_ensemble(self.model, v), self._pinned_ensemble(v, pinned_ensemble(self.model, v)),
                       files={"1/.version_directory": b""})
        return version

    def predict(self, version: str, data: bytes) -> Prediction:
        answer = self.client.predict(pinned_ensemble(self.model, version), data)
        if answer.ok and isinstance(answer.body.get("version"), str):
            self.labels[version] = answer.body["version"]
        return answer

    def promote(self, version: str) -> None:
        self._load(self.names["ensemble"], self._pinned_ensemble(version, self.names["ensemble"]))

    def remove(self, version: str) -> None:
        self._unload(pinned_ensemble(self.model, version))
        self._classifier_policy([v for v in self.versions() if v != str(version)])

    def counters(self, version: str) -> Counters:
        """nv_inference_request_success/failure and nv_inference_request_duration_us of the classifier."""
        totals = {"nv_inference_request_success": 0.0, "nv_inference_request_failure": 0.0,
                  "nv_inference_request_duration_us": 0.0}
        for name, labels, value in _samples(self._call("GET", self.metrics_url, 10).text):
            if name in totals and labels.get("model") == self.names["classifier"] and labels.get("version") == version:
                totals[name] += value
        requests_done = totals["nv_inference_request_success"] + totals["nv_inference_request_failure"]
        return Counters(requests_done, totals["nv_inference_request_failure"],
                        totals["nv_inference_request_duration_us"] / 1000)

    def latency_quantiles(self, version: str) -> dict[float, float]:
        """{0.5: ms, 0.9: ms, 0.95: ms, 0.99: ms} of the classifier version's requests (queue included)
        over the summary window; empty when it saw none there or summaries are off."""
        found = {}
        for name, labels, value in _samples(self._call("GET", self.metrics_url, 10).text):
            if (name == "nv_inference_request_summary_us" and "quantile" in labels and not math.isnan(value)
                    and labels.get("model") == self.names["classifier"] and labels.get("version") == version):
                found[float(labels["quantile"])] = value / 1000
        return found

    def score_histogram(self, version: str) -> dict[float, float]:
        """The models' metrics name a version by the label its answers carry ("2.0"), the rollout by its
        classifier version ("2"): the label is the one the version's own answers to the rollout's requests
        (warm-up, shadow, probes) carried; none yet → no histogram (not judged)."""
        label = self.labels.get(version)
        if label is None:
            return {}
        return fake_probability_buckets(self._call("GET", self.metrics_url, 10).text, self.model, label)
