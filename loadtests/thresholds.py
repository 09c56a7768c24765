"""Pass/fail thresholds for load tests: per scenario, minimum requests/s, maximum failure ratio,
and p95/p99 latency ceilings (loadtests/thresholds.yaml)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml


@dataclass(frozen=True)
class Thresholds:
    min_rps: float = 0.0
    max_failure_ratio: float = 0.0
    p95_ms: float = float("inf")
    p99_ms: float = float("inf")
    min_requests: int = 1


@dataclass(frozen=True)
class Observed:
    requests: int
    failures: int
    rps: float
    p95_ms: float
    p99_ms: float

    @property
    def failure_ratio(self) -> float:
        return self.failures / self.requests if self.requests else 1.0


def load_thresholds(path: str | Path, scenario: str) -> Thresholds:
    scenarios = yaml.safe_load(Path(path).read_text())["scenarios"]
    if scenario not in scenarios:
        raise KeyError(f"no scenario {scenario!r} in {path} (have: {', '.join(sorted(scenarios))})")
    unknown = set(scenarios[scenario]) - set(Thresholds.__dataclass_fields__)
    if unknown:
        raise ValueError(f"scenario {scenario!r}: unknown keys {sorted(unknown)}")
    return Thresholds(**scenarios[scenario])


def breaches(observed: Observed, limits: Thresholds) -> list[str]:
    """Every threshold the run breached, as a sentence; empty when it passed."""
    found = []
    if observed.requests < limits.min_requests:
        found.append(f"{observed.requests} requests < {limits.min_requests} required")
    if observed.rps < limits.min_rps:
        found.append(f"throughput {observed.rps:.2f} req/s < {limits.min_rps}")
    if observed.failure_ratio > limits.max_failure_ratio:
        found.append(f"failure ratio {observed.failure_ratio:.3f} > {limits.max_failure_ratio}")
    if observed.p95_ms > limits.p95_ms:
        found.append(f"p95 {observed.p95_ms:.0f} ms > {limits.p95_ms:.0f} ms")
    if observed.p99_ms > limits.p99_ms:
        found.append(f"p99 {observed.p99_ms:.0f} ms > {limits.p99_ms:.0f} ms")
    return found
