"""Sticky weighted routing: a request key (a user id) always lands on the same version for a given
weight, and raising the weight only moves keys from the serving version to the candidate."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from deepfake_serving.core.naming import pinned_ensemble
from deepfake_serving.rollout.files import write_atomically


def split_file(state_dir: str | Path, model: str) -> Path:
    """Where the rollout of ``model`` keeps its split (``deepfake-serving rollout --state-dir``)."""
    return Path(state_dir) / f"{model}.split.json"


def bucket(key: str) -> float:
    """A key's fixed position in [0, 1) (sha256, so it is stable across processes and runs)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


@dataclass(frozen=True)
class Split:
    """Traffic split of one model: ``weight`` (0–100) percent of keys go to the candidate."""

    model: str
    serving: str
    candidate: str | None = None
    weight: float = 0.0

    def version_for(self, key: str) -> str:
        if self.candidate is None or self.weight <= 0:
            return self.serving
        return self.candidate if bucket(key) * 100 < self.weight else self.serving

    def save(self, path: str | Path) -> None:
        """Atomically (write, then rename; mode 0644), so a reader never sees half a file."""
        write_atomically(Path(path), json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: str | Path) -> "Split":
        return cls(**json.loads(Path(path).read_text()))


@dataclass
class VersionStats:
    """What the router saw per version: latencies (ms) and failures, for guard rails with percentiles."""

    latencies_ms: list[float] = field(default_factory=list)
    failures: int = 0

    @property
    def requests(self) -> int:
        return len(self.latencies_ms)

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return 0.0
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


class RoutedClient:
    """Wraps a TorchServe client (REST or gRPC): each call goes to the version the split file gives
    its key. The file is re-read when it changes, so a rollout moves live traffic."""

    @staticmethod
    def address(split: Split, version: str) -> tuple[str, str | None]:
        """(model, version) to call: TorchServe addresses any registered version of a model."""
        return split.model, version

    def __init__(self, client, split_file: str | Path, reload_every_s: float = 0.5):
        self.client = client
        self.split_file = Path(split_file)
        self.reload_every_s = reload_every_s
        self._split: Split | None = None
        self._mtime: int | None = None
        self._checked = 0.0
        self._lock = threading.Lock()
        self.stats: dict[str, VersionStats] = {}

    def split(self) -> Split:
        now = time.monotonic()
        with self._lock:
            if self._split is None or now - self._checked > self.reload_every_s:
                self._checked = now
                mtime = self.split_file.stat().st_mtime_ns
                if mtime != self._mtime:
                    self._split, self._mtime = Split.load(self.split_file), mtime
            assert self._split is not None  # loaded above on the first call
            return self._split

    def predict(self, data: bytes, key: str, **options):
        split = self.split()
        version = split.version_for(key)
        model, model_version = self.address(split, version)
        start = time.perf_counter()
        prediction = self.client.predict(model, data, version=model_version, **options)
        with self._lock:
            stats = self.stats.setdefault(version, VersionStats())
            stats.latencies_ms.append((time.perf_counter() - start) * 1000)
            stats.failures += 0 if prediction.ok else 1
        return version, prediction


class RoutedTritonClient(RoutedClient):
    """Wraps a ``TritonClient``: the serving version is the variant's ensemble (pinned to it during a
    rollout), another version its own pinned ensemble, which the rollout loads beside it."""

    @staticmethod
    def address(split: Split, version: str) -> tuple[str, str | None]:
        return (split.model if version == split.serving else pinned_ensemble(split.model, version)), None
