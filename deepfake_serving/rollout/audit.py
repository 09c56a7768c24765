"""Append-only JSONL audit log: one line per rollout step, flushed and fsynced as it is written."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

from deepfake_serving.core.jsonlines import append_line, read_lines


class AuditLog:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, *, model: str, serving: str | None, candidate: str | None, step: str, outcome: str,
               message: str = "", figures: dict | None = None) -> dict:
        entry = {"time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds"), "model": model,
                 "serving_version": serving, "candidate_version": candidate, "step": step, "outcome": outcome,
                 "message": message, "figures": figures or {}}
        append_line(self.path, entry, mode=0o644)  # readable by local users, as documented: no secret in it
        return entry

    def entries(self) -> list[dict]:
        return read_lines(self.path)
