"""sha256 of files and bytes, and the check of either against the digest a manifest records."""

from __future__ import annotations

import hashlib
from pathlib import Path

from deepfake_serving.core.errors import CheckpointError


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_bytes(data: bytes, name: str, sha256: str) -> bytes:
    """``data`` as it is, refused when its sha256 differs from the manifest's ``sha256``."""
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise CheckpointError(f"{name} has sha256 {digest}, the manifest says {sha256}")
    return data


def check_file(directory: Path, entry: dict) -> Path:
    """A file a manifest lists ({"file", "sha256"}), refused when missing or when its sha256 differs."""
    path = directory / entry["file"]
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    digest = sha256_of(path)
    if digest != entry["sha256"]:
        raise CheckpointError(f"{path.name} has sha256 {digest}, the manifest says {entry['sha256']}")
    return path
