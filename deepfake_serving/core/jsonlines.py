"""Append-only JSON-lines files (the rollout's audit, the job API's access log and audit): one object a line."""

from __future__ import annotations

import json
import os
from pathlib import Path


def append_line(path: str | Path, entry: dict, mode: int = 0o600, fsync: bool = True, max_bytes: int = 0,
                keep: int = 3) -> None:
    """One line, written with O_APPEND (concurrent writers never interleave inside a line), the file's mode
    set whatever the umask; fsynced unless ``fsync`` is False (a busy access log). ``max_bytes``: a file that
    would pass it is first renamed ``.1`` (the older ``.1`` … ``.keep`` shift along, the oldest goes)."""
    line = json.dumps(entry, sort_keys=True, default=str) + "\n"
    if max_bytes and os.path.exists(path) and os.path.getsize(path) + len(line) > max_bytes:
        rotate(Path(path), keep)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, line.encode())
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def rotate(path: Path, keep: int) -> None:
    for index in range(keep - 1, 0, -1):
        older = path.with_name(f"{path.name}.{index}")
        if older.exists():
            os.replace(older, path.with_name(f"{path.name}.{index + 1}"))
    if path.exists():
        os.replace(path, path.with_name(f"{path.name}.1"))


def read_lines(path: str | Path) -> list[dict]:
    path = Path(path)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
