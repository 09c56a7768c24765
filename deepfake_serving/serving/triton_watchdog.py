"""Restarts what Triton 2.45's python backend does not: a stub that died while requests were in flight.

Reproduced here: four concurrent clients, the classifier's stub SIGKILLed; Triton answers the
requests in that batch with an error, starts no new stub, and every later request to the model waits
until its client gives up (triton-inference-server/server#7862: the backend's restart path does not
cover this). A single client at a time does get a new stub within ~2 s. The launcher therefore watches
the stubs: when a model version that the repository index calls READY has fewer stubs than before for
``grace_s``, the model is reloaded with its current configuration (a rollout's version policy is kept)
plus a marker parameter, so that Triton makes new instances; a new stub serves.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path

import psutil
import requests


def live_stubs(server_pid: int) -> dict[int, Path]:
    """pid → model file (<model>/<version>/model.py) of every live python-backend stub under Triton's
    process (a killed stub not yet reaped is a zombie: not live)."""
    found = {}
    for child in psutil.Process(server_pid).children(recursive=True):
        try:
            command = child.cmdline()
            if child.status() != psutil.STATUS_ZOMBIE and command and "triton_python_backend_stub" in command[0]:
                found[child.pid] = next(Path(arg) for arg in command if arg.endswith("model.py"))
        except (psutil.NoSuchProcess, psutil.ZombieProcess, StopIteration):
            continue
    return found


def running_stubs(server_pid: int) -> Counter:
    """(model, version) → how many live stubs it has."""
    return Counter((path.parents[1].name, path.parent.name) for path in live_stubs(server_pid).values())


class StubWatchdog(threading.Thread):
    def __init__(self, server, every_s: float = 0.5, grace_s: float = 2.0):
        super().__init__(name="triton-stub-watchdog", daemon=True)
        self.server, self.every_s, self.grace_s = server, every_s, grace_s
        self.stopping = threading.Event()
        self.reloads: list[tuple[str, float]] = []  # (model, seconds from the stub's loss to the reload)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=30)

    def run(self) -> None:
        expected: Counter = Counter()
        short_since: dict[tuple[str, str], float] = {}
        while not self.stopping.wait(self.every_s):
            try:
                now = running_stubs(self.server.process.pid)
            except (psutil.NoSuchProcess, AttributeError):
                return  # the server is gone
            for key in set(expected) | set(now):
                if now[key] >= expected[key]:
                    expected[key] = now[key]
                    short_since.pop(key, None)
                    continue
                since = short_since.setdefault(key, time.monotonic())
                if time.monotonic() - since >= self.grace_s:
                    short_since.pop(key, None)
                    expected[key] = now[key]  # from here on: what the reload (or an unload) left
                    if self._ready(*key):
                        self._reload(key[0], since)

    def _ready(self, model: str, version: str) -> bool:
        """Whether the index says this version should be serving (else its stub went with an unload)."""
        try:
            index = self.server.repository_index(ready_only=True)
        except requests.RequestException:
            return False
        return any(m.get("name") == model and str(m.get("version")) == version for m in index)

    def _reload(self, model: str, since: float) -> None:
        try:
            config = requests.get(f"{self.server.http_url}/v2/models/{model}/config", timeout=10).json()
            # A config Triton sees as changed: it then makes new instances (new stubs); the same config
            # would be a no-op load.
            config.setdefault("parameters", {})["restarted_after_stub_loss"] = {"string_value": f"{time.time():.3f}"}
            response = self.server._repository(f"/models/{model}/load", {"parameters": {"config": json.dumps(config)}},
                                               300)
            if response.status_code == 200:
                self.reloads.append((model, time.monotonic() - since))
        except requests.RequestException:
            pass  # tried again at the next loss
