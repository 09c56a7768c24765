"""Live traffic for the rollout tests: Locust's routed users in a subprocess, following the split file."""

from __future__ import annotations

import csv
import importlib
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from deepfake_serving.rollout.routing import Split

LOCUSTFILE = Path(__file__).parents[2] / "loadtests" / "locustfile.py"


def import_beside_locustfile(module: str, *names: str) -> list:
    """Names from a module of loadtests/ (Locust imports them from the locustfile's folder)."""
    if str(LOCUSTFILE.parent) not in sys.path:
        sys.path.insert(0, str(LOCUSTFILE.parent))
    loaded = importlib.import_module(module)
    return [getattr(loaded, name) for name in names]


class Load:
    """``user``: RoutedTorchServeUser or RoutedTritonUser; 4 users keyed user-0-0 … user-0-3."""

    def __init__(self, host: str, user: str, split_file: Path, reports: Path, seconds: int):
        self.reports = reports
        self.process = subprocess.Popen(
            [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary", "-u", "4",
             "-r", "4", "-t", f"{seconds}s", "--host", host, "--split-file", str(split_file),
             "--csv", str(reports), user],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def finish(self, stop: bool = False) -> dict[str, dict]:
        """Wait for the run to end (or end it now: Locust stops cleanly on SIGTERM) and read its stats."""
        if stop:
            self.process.terminate()
        output, _ = self.process.communicate(timeout=180)
        assert self.process.returncode == 0, output
        with open(f"{self.reports}_stats.csv") as handle:
            stats = {row["Name"]: row for row in csv.DictReader(handle)}
        stats["output"] = output
        return stats


def second_rollout_during_canary(first: Callable[[], object], second: Callable[[], object], split_file: Path,
                                 timeout_s: float = 240) -> tuple[Exception | None, Exception | None]:
    """Run ``first`` (a rollout) in a thread and, once its canary has moved the split, ``second``.
    Returns what each raised."""
    raised = {}

    def attempt(name, job):
        try:
            job()
        except Exception as err:  # noqa: BLE001
            raised[name] = err

    thread = threading.Thread(target=attempt, args=("first", first))
    thread.start()
    deadline = time.monotonic() + timeout_s
    while Split.load(split_file).weight == 0 and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    attempt("second", second)
    thread.join(timeout=timeout_s)
    return raised.get("first"), raised.get("second")


def predictions_while_killing(clients: list, send: Callable, pids: Callable[[], list[int]], kills: int,
                              every_s: float, timeout_s: float = 180) -> tuple[list, list[float]]:
    """Each client (one thread each) sends ``send(client)`` in a loop while the worker ``pids()`` names
    is SIGKILLed ``kills`` times, ``every_s`` apart (each kill once a new worker is up again).
    Returns (every prediction, seconds from each kill until a new worker pid appeared)."""
    import os
    import signal
    from concurrent.futures import ThreadPoolExecutor

    stop, answers, recoveries = threading.Event(), [], []

    def loop(client):
        while not stop.is_set():
            answers.append(send(client))

    with ThreadPoolExecutor(len(clients)) as pool:
        running = [pool.submit(loop, c) for c in clients]
        try:
            for _ in range(kills):
                time.sleep(every_s)
                (victim,) = pids()
                killed_at = time.monotonic()
                os.kill(victim, signal.SIGKILL)
                while time.monotonic() - killed_at < timeout_s:
                    if [p for p in pids() if p != victim]:
                        recoveries.append(time.monotonic() - killed_at)
                        break
                    time.sleep(0.1)
            time.sleep(every_s)  # traffic on the last new worker
        finally:
            stop.set()
            for future in running:
                future.result(timeout=timeout_s)
    return answers, recoveries
