"""nginx as the project runs it (Debian's package, or the copy `make install` unpacks into the venv):
finding the binary, the project's JSON error as an nginx response, and one nginx per prefix directory
(configuration, pid file, logs) started in the foreground and stopped with its process."""

from __future__ import annotations

import getpass
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from deepfake_serving.core.errors import CATALOGUE, error_body

BUNDLED = Path(sys.prefix) / "nginx" / "usr" / "sbin" / "nginx"  # `make install` unpacks Debian's nginx into the venv


def nginx_binary() -> Path | None:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    return Path(found) if found else (BUNDLED if BUNDLED.exists() else None)


def require_nginx() -> Path:
    binary = nginx_binary()
    if binary is None:
        raise FileNotFoundError("nginx is not installed (make install unpacks Debian's package into .venv/nginx)")
    return binary


def worker_user() -> str:
    """nginx's ``user`` line. Started as root, its workers would run as ``nobody``, an account other
    processes share, and as ``nobody`` those could read the workers' memory (the keys they relay); so they
    run as the user that started them. Not root: nginx runs its workers as that user anyway."""
    return f"user {getpass.getuser()};\n" if os.geteuid() == 0 else ""


def json_error_location(where: str, code: str, message: str, internal: bool = False) -> str:
    """A location (``@name`` or a path; ``internal``: reached by error_page only) answering ``{"error": ...}``
    with the catalogue's status for ``code``."""
    body = json.dumps(error_body(code, message)).replace('"', '\\"')
    only = "            internal;\n" if internal else ""
    return (f"        location {where} {{\n{only}            default_type application/json;\n"
            f'            return {CATALOGUE[code].status} "{body}";\n        }}\n')


def grpc_error_location(where: str, grpc_status: int, message: str) -> str:
    """A location answering a gRPC call with ``grpc_status`` and ``message`` (trailers-only)."""
    return (f"        location {where} {{\n            default_type application/grpc;\n"
            f"            add_header grpc-status {grpc_status} always;\n"
            f'            add_header grpc-message "{message}" always;\n            return 204;\n        }}\n')


def temp_paths(prefix: Path) -> str:
    return "\n".join(f"    {kind}_temp_path {prefix}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi",
                                                                            "scgi"))


def check_config(binary: Path, prefix: Path, conf: Path) -> None:
    run = subprocess.run([str(binary), "-t", "-q", "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(conf)],
                         capture_output=True, text=True)
    if run.returncode:
        raise RuntimeError(f"nginx refused {conf}: {run.stderr.strip()}")


def start_nginx(binary: Path, prefix: Path, conf: Path, probe_url: str, timeout: float = 15.0) -> subprocess.Popen:
    """nginx in the foreground (its own session), once ``probe_url`` answers anything."""
    check_config(binary, prefix, conf)
    process = subprocess.Popen([str(binary), "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(conf),
                                "-g", "daemon off;"], start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            requests.get(probe_url, timeout=2)
            return process
        except requests.RequestException:
            time.sleep(0.1)
    process.kill()
    raise TimeoutError(f"nginx did not start: {(prefix / 'error.log').read_text(errors='replace')[-2000:]}")


def stop_nginx(process: subprocess.Popen, timeout: float = 30.0) -> None:
    """Graceful stop (SIGQUIT: workers finish their requests), SIGKILL after ``timeout``."""
    if process.poll() is None:
        process.send_signal(signal.SIGQUIT)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
