"""The servers' API keys, and where each client finds them.

TorchServe runs with token authorization on: it writes ``key_file.json``
(mode 0600) into its working directory, which the launcher makes 0700, so only
the service user can read the keys. Without the management key no HTTP or gRPC
client can register a model (and so run code from outside the model store);
inference needs the inference key too — TorchServe has no switch for one API
only — so our clients, the rollout, the Locust users and the nginx front send it.
Triton's repository API is likewise restricted to a key the launcher writes.

A client finds the key file for its server address in this order: an explicit
``key_file``; one registered by a launcher that started that server in this
process or a parent (``$DEEPFAKE_KEY_FILES``, address → file, inherited by
subprocesses such as Locust); ``$DEEPFAKE_KEY_FILE``; none (no key sent).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

REGISTRY_VARIABLE = "DEEPFAKE_KEY_FILES"


def _address(url: str) -> str:
    """host:port of a URL or gRPC target."""
    return re.sub(r"^[a-z]+://", "", url).split("/")[0]


def _registry() -> dict[str, str]:
    return json.loads(os.environ.get(REGISTRY_VARIABLE) or "{}")


def register_key_file(urls: list[str], path: Path) -> None:
    """Where the keys of the server at these addresses are (for this process and the ones it starts)."""
    registry = _registry()
    registry.update({_address(url): str(path) for url in urls})
    os.environ[REGISTRY_VARIABLE] = json.dumps(registry)


def key_file_for(url: str) -> Path | None:
    found = _registry().get(_address(url)) or os.environ.get("DEEPFAKE_KEY_FILE")
    return Path(found) if found else None


class ServerKeys:
    """The keys in a key file (TorchServe's ``key_file.json`` layout), re-read when the file changes
    (TorchServe rewrites it when a key is renewed through its token API)."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self._stamp: float | None = None
        self._keys: dict[str, str] = {}

    @classmethod
    def for_url(cls, url: str, key_file: str | Path | None = None) -> "ServerKeys":
        return cls(key_file or key_file_for(url))

    def key(self, kind: str) -> str | None:
        """``inference``, ``management`` or ``API``; None without a key file."""
        if self.path is None or not self.path.exists():
            return None
        stamp = self.path.stat().st_mtime_ns
        if stamp != self._stamp:
            try:
                data = json.loads(self.path.read_text())
            except ValueError:  # the server is writing it: read it again next time
                return None
            self._keys = {name: entry["key"] for name, entry in data.items() if isinstance(entry, dict)}
            self._stamp = stamp
        return self._keys.get(kind)

    def headers(self, kind: str) -> dict[str, str]:
        key = self.key(kind)
        return {"Authorization": f"Bearer {key}"} if key else {}

    def metadata(self, kind: str) -> tuple[tuple[str, str], ...]:
        """The same key as gRPC call metadata (TorchServe reads ``authorization: Bearer <key>``)."""
        key = self.key(kind)
        return (("authorization", f"Bearer {key}"),) if key else ()
