"""The job launcher's healer: a part of the job system whose process has exited (Redis, a worker, the
callback worker, the API, its nginx) is started again.

Healing must not be a weapon: a part is judged dead only when its process has exited, never by how
long a request took, so no load and no request anyone can send makes the healer act. Restarts of one part
are rate-limited: each waits twice as long as the one before (1 s, 2 s, 4 s, ...), and after ``limit`` in
``window_s`` the healer stops restarting that part and says so (stderr and ``healing.jsonl``): a part that
cannot stay up is an operator's problem, not a loop's.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

# A part: how to read its process now (None: not started, or stopped on purpose) and how to start it again.
Part = tuple[Callable[[], subprocess.Popen | None], Callable[[], object]]


@dataclass
class Restarts:
    limit: int = 5
    window_s: float = 600.0
    times: deque = field(default_factory=deque)
    gave_up: bool = False

    def due(self, now: float) -> bool | None:
        """True: restart now; False: not yet (backing off); None: over the limit, give up."""
        while self.times and now - self.times[0] > self.window_s:
            self.times.popleft()
        if len(self.times) >= self.limit:
            return None
        return not self.times or now >= self.times[-1] + 2.0 ** (len(self.times) - 1)


class Healer:
    def __init__(self, parts: Callable[[], dict[str, Part]], log: Path, every_s: float = 1.0, limit: int = 5,
                 window_s: float = 600.0):
        self.parts, self.log, self.every_s = parts, log, every_s
        self.limit, self.window_s = limit, window_s
        self.restarts: dict[str, Restarts] = {}
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="job-system-healer", daemon=True)

    def start(self) -> "Healer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join(timeout=30)

    def _run(self) -> None:
        while not self.stopping.wait(self.every_s):
            self.check(time.monotonic())

    def check(self, now: float) -> None:
        """Each part whose process has exited: started again when its backoff allows, or given up once."""
        for name, (process_of, restart) in self.parts().items():
            process = process_of()
            if process is None or process.poll() is None or self.stopping.is_set():
                continue
            record = self.restarts.setdefault(name, Restarts(self.limit, self.window_s))
            due = record.due(now)
            if due is None:
                if not record.gave_up:
                    record.gave_up = True
                    self._say({"part": name, "event": "gave_up", "exit": process.returncode,
                               "restarts": len(record.times), "window_s": self.window_s})
                continue
            if due:
                record.times.append(now)
                try:
                    restart()
                    self._say({"part": name, "event": "restarted", "exit": process.returncode,
                               "restarts": len(record.times)})
                except Exception as err:  # noqa: BLE001 - tried again after the backoff, up to the limit
                    self._say({"part": name, "event": "restart_failed", "error": f"{type(err).__name__}: {err}"})

    def _say(self, entry: dict) -> None:
        line = json.dumps({"time": time.time(), **entry})
        print(f"job system: {line}", file=sys.stderr, flush=True)
        with open(self.log, "a") as out:
            out.write(line + "\n")
