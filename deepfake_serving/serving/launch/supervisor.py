"""Servers that heal: a supervisor thread beside a launched TorchServe or Triton.

Triton's health endpoint says "live" while a python-backend model hangs (server#8604), and Triton 2.45
restarts a killed stub unreliably under load (a hung model twice in three trials here, once a crashed
server); newer releases dropped the restart (server#7347). So the supervisor looks for itself, every
``interval_s``:

- **the server process**: gone → restarted on the same ports (TorchServe's frontend, tritonserver);
- **Triton's stubs**: a model with fewer live stubs than it started with → reloaded through the repository
  API (its stubs start anew); a reload that fails or does not finish within ``reload_within_s``, or after
  which a probe still gets no answer → the server restarted;
- **a real inference** of each probed model, every ``probe_every_s`` (Triton's health endpoint is not
  enough): no answer within the probe's own bound → the server restarted (a hang that no dead stub explains
  cannot be healed by one model's reload). A probe waits in the model's queue like any request, so its bound
  is set above the longest request the model accepts (``Probe``).

Model control is shared with the rollout through one file lock beside the server's key file
(``model_control``): the supervisor never reloads while a rollout registers or removes a version, and a
rollout waits while the supervisor heals. The project's clients retry ``server_unavailable`` and
``worker_failed`` across it (serving.client.clients.RetryPolicy).
"""

from __future__ import annotations

import fcntl
import functools
import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from deepfake_serving.media import samples

logger = logging.getLogger(__name__)

LOCK_NAME = "model-control.lock"


@contextmanager
def model_control(key_file: str | Path) -> Iterator[None]:
    """The server's model-control lock (an exclusive ``flock`` on a 0600 file beside its key file), held by
    whoever loads or unloads models: the rollout and the supervisor."""
    path = Path(key_file).with_name(LOCK_NAME)
    path.touch(mode=0o600, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass(frozen=True)
class Probe:
    """A real request to one model: ``ask(within_s)`` is True when it answered in time."""

    ask: Callable[[float], bool]
    within_s: float

    def answered(self) -> bool:
        return self.ask(self.within_s)


def _probe_frame(i: int = 0) -> np.ndarray:
    """A 160x120 colour gradient: no face, so nothing but the package's own dependencies makes it (a Triton
    box has no scikit-image). A faceless answer still runs every model: decode, detection, and the classifier
    on its placeholder face (the answer names the version that classified)."""
    y, x = np.mgrid[0:120, 0:160]
    return np.stack([(x + 8 * i) % 256, (y + 4 * i) % 256, np.full_like(x, 128)], axis=-1).astype(np.uint8)


@functools.cache
def probe_image() -> bytes:
    """What a probe sends an image model."""
    return samples.encode(_probe_frame())


@functools.cache
def probe_clip() -> bytes:
    """What a probe sends a video model: four frames (decode, detect and classify, per frame)."""
    return samples.encode_video([_probe_frame(i) for i in range(4)])


@dataclass
class Healing:
    """What the supervisor did, for the log, the tests and the benchmark."""

    time: float
    action: str  # "restart" or "reload"
    target: str  # the server, or a model
    reason: str
    seconds: float = 0.0  # until it answered again


@dataclass
class Supervisor:
    """``server``: a started ``TorchServe`` or ``Triton`` (its ``process``, ``start``, ``stop``, ``key_file``).
    ``probes``: model → its Probe. The process and the stubs are looked at every ``interval_s`` (cheap),
    the probes sent every ``probe_every_s``."""

    server: object
    probes: dict[str, Probe] = field(default_factory=dict)
    interval_s: float = 1.0
    probe_every_s: float = 15.0
    reload_within_s: float = 60.0
    reload: Callable[[str, float], None] | None = None  # model, timeout → reload it (Triton's repository API)
    stubs: Callable[[], dict[str, int]] | None = None  # model → live stubs (Triton)
    healings: list[Healing] = field(default_factory=list)

    def __post_init__(self):
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._expected: dict[str, int] = {}
        self._probed = 0.0  # monotonic time of the last probes

    # -- life cycle ------------------------------------------------------------------------------
    def start(self) -> "Supervisor":
        self._expected = self._live_stubs()
        self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.reload_within_s + 30)

    def _live_stubs(self) -> dict[str, int]:
        return self.stubs() if self.stubs else {}

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except Exception:  # noqa: BLE001 - the supervisor outlives whatever one check met
                logger.exception("supervisor check failed")

    # -- one check -------------------------------------------------------------------------------
    def check(self) -> None:
        process = getattr(self.server, "process", None)
        if process is None or process.poll() is not None:
            self.restart(f"the server process is gone (exit {process and process.returncode})")
            return
        if self.stubs:
            live = self.stubs()
            for model, expected in self._expected.items():
                if live.get(model, 0) < expected:
                    self.heal(model, f"{expected - live.get(model, 0)} of its {expected} stub(s) died")
                    return
        if time.monotonic() - self._probed < self.probe_every_s:
            return
        self._probed = time.monotonic()
        for model, probe in self.probes.items():
            if self._stop.is_set():
                return
            if not probe.answered():
                self.restart(f"{model}: no answer to a real inference within {probe.within_s} s")
                return

    def heal(self, model: str, reason: str) -> None:
        """Reload the model (Triton), then check that it answers; else restart the server."""
        if self.reload is None:
            self.restart(f"{model}: {reason}")
            return
        start = time.monotonic()
        try:
            with model_control(self.server.key_file):  # type: ignore[attr-defined]
                self.reload(model, self.reload_within_s)
        except Exception as err:  # noqa: BLE001 - a reload that fails or hangs: the server goes
            self.restart(f"{model}: {reason}; its reload failed ({type(err).__name__}: {err})")
            return
        answered = all(probe.answered() for probe in self.probes.values())
        if not answered:
            self.restart(f"{model}: {reason}; still no answer after its reload")
            return
        self._expected = self._live_stubs()
        self._log(Healing(time.time(), "reload", model, reason, time.monotonic() - start))

    def restart(self, reason: str) -> None:
        start = time.monotonic()
        with model_control(self.server.key_file):  # type: ignore[attr-defined]
            try:
                self.server.stop(timeout=5.0)  # type: ignore[attr-defined]
            except Exception:  # noqa: BLE001 - whatever is left of it is killed with its group
                logger.exception("stopping the server")
            self.server.start()  # type: ignore[attr-defined]
        self._expected = self._live_stubs()
        self._log(Healing(time.time(), "restart", type(self.server).__name__, reason, time.monotonic() - start))

    def _log(self, healing: Healing) -> None:
        self.healings.append(healing)
        logger.warning("supervisor: %s %s after %s (%.1f s)", healing.action, healing.target, healing.reason,
                       healing.seconds)
