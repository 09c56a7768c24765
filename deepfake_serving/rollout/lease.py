"""A rollout's lease on a model: who runs it (pid, host, process start time) and what it has changed,
renewed while it runs. A later rollout tells a running owner from a dead one (SIGKILL, a lost
machine) by it and recovers what the dead one left behind (``controller.recover``).

On the owner's host the owner is alive while its pid runs with the recorded start time (a pid that
was reused is not the owner); from another host, while the lease was renewed within ``ttl_s``.
Files are written whole and then renamed or linked into place, mode 0644: a reader never sees half
a lease, and creation is exclusive.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import psutil

from deepfake_serving.rollout.files import write_atomically


def _process_started(pid: int) -> float | None:
    """When ``pid`` started, or None when it is gone (a zombie, killed but not yet reaped, is gone)."""
    try:
        process = psutil.Process(pid)
        return None if process.status() == psutil.STATUS_ZOMBIE else process.create_time()
    except psutil.NoSuchProcess:
        return None


@dataclass(frozen=True)
class Lease:
    model: str
    backend: str
    pid: int
    host: str
    process_started: float
    started: str
    renewed: float  # epoch seconds
    ttl_s: float
    serving: str | None = None
    candidate: str | None = None
    # the versions registered before the candidate: whatever else a dead owner left is its candidate
    versions_before: list[str] = field(default_factory=list)
    phase: str = "start"

    @classmethod
    def mine(cls, model: str, backend: str, ttl_s: float) -> "Lease":
        pid = os.getpid()
        return cls(model, backend, pid, socket.gethostname(), _process_started(pid) or 0.0,
                   _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), time.time(), ttl_s)

    def owner_alive(self) -> bool:
        if self.host == socket.gethostname():
            started = _process_started(self.pid)
            return started is not None and abs(started - self.process_started) < 1.0
        return time.time() - self.renewed < self.ttl_s

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host} since {self.started}"


class LeaseHeld(RuntimeError):
    def __init__(self, lease: Lease):
        super().__init__(f"a rollout of {lease.model} is already running ({lease.describe()})")
        self.lease = lease


class LeaseFile:
    """The lease of one model at ``path``; once acquired, a thread renews it every ``ttl_s`` / 3."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lease: Lease | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def read(self) -> Lease | None:
        try:
            return Lease(**json.loads(self.path.read_text()))
        except FileNotFoundError:
            return None

    def acquire(self, lease: Lease) -> None:
        """Take the lease, or raise LeaseHeld with the current one (alive or not: see ``claim``)."""
        try:
            write_atomically(self.path, json.dumps(asdict(lease)), exclusive=True)
        except FileExistsError:
            held = self.read()
            if held is None:  # released meanwhile
                return self.acquire(lease)
            raise LeaseHeld(held) from None
        self._lease = lease
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew, name="lease-renewer", daemon=True)
        self._renewer.start()

    def update(self, **changes) -> None:
        """Record what the rollout changed (serving, candidate, versions_before, phase)."""
        with self._lock:
            self._lease = replace(self._held(), renewed=time.time(), **changes)
            write_atomically(self.path, json.dumps(asdict(self._lease)))

    def _held(self) -> Lease:
        if self._lease is None:
            raise RuntimeError("the lease is not held: acquire() it first")
        return self._lease

    def _renew(self) -> None:
        while not self._stop.wait(self._held().ttl_s / 3):
            self.update()

    def release(self) -> None:
        self._stop.set()
        if self._renewer:
            self._renewer.join()
        with self._lock:
            if self._lease and self.read() == self._lease:
                self.path.unlink(missing_ok=True)
            self._lease = None

    def claim(self, dead: Lease) -> bool:
        """Take a dead owner's lease away (atomically: of two recoverers one wins); False when it changed."""
        claimed = self.path.with_name(f".{self.path.name}.recovering.{os.getpid()}")
        try:
            os.rename(self.path, claimed)
        except FileNotFoundError:
            return False
        if Lease(**json.loads(claimed.read_text())) != dead:
            os.link(claimed, self.path)  # somebody else's newer lease: put it back
            claimed.unlink()
            return False
        claimed.unlink()
        return True
