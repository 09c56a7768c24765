"""Append-only JSONL audit log: one line per rollout step, flushed and fsynced as it is written."""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path


class AuditLog:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, *, model: str, serving: str | None, candidate: str | None, step: str, outcome: str,
               message: str = "", figures: dict | None = None) -> dict:
        entry = {"time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds"), "model": model,
                 "serving_version": serving, "candidate_version": candidate, "step": step, "outcome": outcome,
                 "message": message, "figures": figures or {}}
        line = json.dumps(entry, sort_keys=True, default=str) + "\n"
        # O_APPEND: concurrent writers never interleave inside a line or overwrite one another.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.fchmod(fd, 0o644)  # as documented, whatever the umask
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        return entry

    def entries(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
