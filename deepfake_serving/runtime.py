"""Process-level settings the server adapters share; imports no torch at module level, so the
torch-free Triton classifier can use the digest."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def set_torch_threads(threads: int) -> int:
    """Intra-op threads as given, one inter-op thread: workers × threads must not oversubscribe the
    cores (servers do not set this themselves)."""
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process
        pass
    return threads
