"""The servers' API keys, and where each client finds them.

TorchServe runs with token authorization on: it writes ``key_file.json``
(mode 0600, keys of 8 characters: about 48 bits) into its working directory,
which the launcher makes 0700, so only the service user can read the keys.
Without the management key no HTTP or gRPC client can register a model (and so
run code from outside the model store); inference needs the inference key too —
TorchServe has no switch for one API only — so our clients, the rollout, the
Locust users and the nginx front send it. Triton's non-inference APIs are
likewise restricted to a key the launcher writes.

Beside each key file the launcher writes ``server.json`` (0600): the server's
pid, start time and addresses, so a client can tell a key file of the running
server at its address from one an earlier server left. A client finds the key
file for a server address in this order, and takes the first that is current:

1. an explicit ``key_file`` (``--key-file``): always used, current or not;
2. one registered by a launcher in this process or a parent (``$DEEPFAKE_KEY_FILES``,
   address → file, inherited by subprocesses such as Locust);
3. ``$DEEPFAKE_KEY_FILE``;
4. the default working directories' key files (``runtime/torchserve``, ``runtime/triton``).

A key file whose ``server.json`` names another address or a server that is no
longer running is stale: it is skipped and reported (``ServerKeys.notes``),
never silently preferred. A key file without ``server.json`` (a server started
by hand) is used when nothing current was found.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import psutil

REGISTRY_VARIABLE = "DEEPFAKE_KEY_FILES"
KEY_FILE_VARIABLE = "DEEPFAKE_KEY_FILE"
KEY_FILE_NAME = "key_file.json"
RECORD_NAME = "server.json"
DEFAULT_WORKDIRS = {"torchserve": "runtime/torchserve", "triton": "runtime/triton"}


def _address(url: str) -> str:
    """host:port of a URL or gRPC target."""
    return re.sub(r"^[a-z]+://", "", url).split("/")[0]


def _registry() -> dict[str, str]:
    try:
        registry = json.loads(os.environ.get(REGISTRY_VARIABLE) or "{}")
    except ValueError:
        return {}
    return registry if isinstance(registry, dict) else {}


def register_key_file(urls: list[str], path: Path) -> None:
    """Where the keys of the server at these addresses are (for this process and the ones it starts).
    Called by the launchers only: the command line itself never writes the environment."""
    registry = _registry()
    registry.update({_address(url): str(path) for url in urls})
    os.environ[REGISTRY_VARIABLE] = json.dumps(registry)


def _write_private(path: Path, data: dict) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)
    with os.fdopen(descriptor, "w") as out:
        json.dump(data, out)


def write_server_record(key_file: Path, pid: int, urls: list[str]) -> None:
    """``server.json`` beside the key file: which running server its keys belong to."""
    started = psutil.Process(pid).create_time()
    _write_private(key_file.with_name(RECORD_NAME), {"pid": pid, "started": started,
                                                     "addresses": sorted({_address(u) for u in urls})})


def write_key_file(path: Path, keys: dict[str, str]) -> None:
    """A key file in TorchServe's layout (``{"management": {"key": ...}}``), readable by this user only."""
    _write_private(path, {kind: {"key": key} for kind, key in keys.items()})


def staleness(key_file: Path, url: str) -> str | None:
    """Why ``key_file`` is not the current one for the server at ``url`` (None: it is, or no record says)."""
    try:
        record = json.loads(key_file.with_name(RECORD_NAME).read_text())
        pid, started, addresses = int(record["pid"]), float(record["started"]), list(record["addresses"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return f"its {RECORD_NAME} is unreadable"
    if _address(url) not in addresses:
        return f"it belongs to a server at {', '.join(addresses)}, not {_address(url)}"
    try:
        alive = abs(psutil.Process(pid).create_time() - started) < 1.0
    except psutil.Error:
        alive = False
    return None if alive else f"the server that wrote it (pid {pid}) is no longer running"


def find_key_file(url: str, key_file: str | Path | None = None) -> tuple[Path | None, str, list[str]]:
    """(key file, where it came from, notes on the candidates skipped) for the server at ``url``."""
    if key_file:
        return Path(key_file), "--key-file", []
    candidates = [(_registry().get(_address(url)), "the launcher that started it"),
                  (os.environ.get(KEY_FILE_VARIABLE), f"${KEY_FILE_VARIABLE}"),
                  *((str(Path(d) / KEY_FILE_NAME), f"the default working directory {d}")
                    for d in DEFAULT_WORKDIRS.values())]
    notes: list[str] = []
    unrecorded: tuple[Path, str] | None = None
    for name, how in candidates:
        if not name or not Path(name).is_file():
            continue
        path = Path(name)
        if not path.with_name(RECORD_NAME).exists():
            unrecorded = unrecorded or (path, how)
            continue
        stale = staleness(path, url)
        if stale is None:
            return path, how, notes
        notes.append(f"skipped {path} ({how}): {stale}")
    if unrecorded:
        return unrecorded[0], unrecorded[1], notes
    return None, "", notes


class ServerKeys:
    """The keys in a key file (TorchServe's ``key_file.json`` layout), re-read when the file changes
    (TorchServe rewrites it when a key is renewed through its token API). A file of the wrong shape
    gives no keys and a ``problem`` (the server then answers 401, and the client says why)."""

    def __init__(self, path: str | Path | None, source: str = "", notes: list[str] | None = None):
        self.path = Path(path) if path else None
        self.source = source or ("given" if path else "")
        self.notes = list(notes or [])
        self.problem: str | None = None
        self._stamp: int | None = None
        self._keys: dict[str, str] = {}

    @classmethod
    def for_url(cls, url: str, key_file: str | Path | None = None) -> "ServerKeys":
        return cls(*find_key_file(url, key_file))

    def key(self, kind: str) -> str | None:
        """``inference``, ``management`` or ``API``; None without a key file."""
        if self.path is None:
            return None
        try:
            stamp = self.path.stat().st_mtime_ns
        except OSError:
            self.problem = f"key file {self.path} does not exist"
            return None
        if stamp != self._stamp:
            try:
                data = json.loads(self.path.read_text())
            except ValueError:  # the server is writing it: read it again next time
                return None
            except OSError as err:
                self.problem = f"key file {self.path} cannot be read: {err.strerror}"
                return None
            entries = data if isinstance(data, dict) else {}
            self._keys = {name: entry["key"] for name, entry in entries.items()
                          if isinstance(entry, dict) and isinstance(entry.get("key"), str)}
            self.problem = None if self._keys else (f"key file {self.path} holds no keys (expected "
                                                    '{"inference": {"key": ...}, ...})')
            self._stamp = stamp
        return self._keys.get(kind)

    def headers(self, kind: str) -> dict[str, str]:
        key = self.key(kind)
        return {"Authorization": f"Bearer {key}"} if key else {}

    def metadata(self, kind: str) -> tuple[tuple[str, str], ...]:
        """The same key as gRPC call metadata (TorchServe reads ``authorization: Bearer <key>``)."""
        key = self.key(kind)
        return (("authorization", f"Bearer {key}"),) if key else ()

    def describe(self) -> str:
        """Where the key came from, for a 401's message."""
        found = (f"key file {self.path} ({self.source})" if self.path else
                 f"no key file found (looked at --key-file, ${REGISTRY_VARIABLE}, ${KEY_FILE_VARIABLE}, "
                 f"{', '.join(str(Path(d) / KEY_FILE_NAME) for d in DEFAULT_WORKDIRS.values())})")
        return "; ".join([found, *([self.problem] if self.problem else []), *self.notes])
