"""Append-only JSON-lines files (the rollout's audit, the job API's access log and audit): one object a line."""

from __future__ import annotations

import json
import os
from pathlib import Path


def append_line(path: str | Path, entry: dict, mode: int = 0o600, fsync: bool = True) -> None:
    """One line, written with O_APPEND (concurrent writers never interleave inside a line), the file's mode
    set whatever the umask; fsynced unless ``fsync`` is False (a busy access log)."""
    line = json.dumps(entry, sort_keys=True, default=str) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, line.encode())
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def read_lines(path: str | Path) -> list[dict]:
    path = Path(path)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
