"""State files of the rollout (split, lease): written whole, then renamed or linked into place."""

from __future__ import annotations

import os
import threading
from pathlib import Path


def write_atomically(path: Path, text: str, mode: int = 0o644, exclusive: bool = False) -> None:
    """``path`` appears whole or not at all; ``exclusive`` refuses (FileExistsError) an existing one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
        os.fchmod(fd, mode)  # whatever the umask
    finally:
        os.close(fd)
    try:
        if exclusive:
            os.link(tmp, path)  # atomic and exclusive: fails when the path exists
        else:
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
