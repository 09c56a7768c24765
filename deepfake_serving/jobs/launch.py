"""Start and stop the job system on this host: Redis (Debian's ``redis-server``, or the copy ``make install``
unpacks into the venv; persistence on, a password, loopback), the job API (uvicorn) and Celery workers,
each a real process in its own process group.

Redis holds every job's record and the queue: it is started with append-only persistence (queued jobs
survive a restart) and a generated password (``requirepass``, kept in a 0600 file in the 0700 work
folder), so another local user who reaches its port can read or queue nothing.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Sequence

import requests
from redis import Redis

from deepfake_serving.jobs.edge import Edge
from deepfake_serving.jobs.healing import Healer, Part
from deepfake_serving.jobs.settings import JobSettings
from deepfake_serving.jobs.worker import CALLBACK_QUEUE, QUEUE
from deepfake_serving.serving.launch.processes import free_ports, stop_group

BUNDLED = Path(sys.prefix) / "redis"  # `make install` unpacks Debian's redis-tools (and its libraries) here


def redis_binary() -> tuple[Path, dict[str, str]]:
    """redis-server and the environment it needs (the bundled copy finds jemalloc and lzf beside it)."""
    found = shutil.which("redis-server") or ("/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None)
    if found:
        return Path(found), {}
    bundled = BUNDLED / "usr" / "bin" / "redis-server"
    if not bundled.exists():
        raise FileNotFoundError("redis-server is not installed (make install unpacks Debian's package into .venv/redis)")
    return bundled, {"LD_LIBRARY_PATH": str(BUNDLED / "usr" / "lib" / "x86_64-linux-gnu")}


def private_folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


class RedisServer:
    def __init__(self, workdir: str | Path, port: int | None = None, host: str = "127.0.0.1"):
        self.workdir = private_folder(Path(workdir).resolve())
        self.port = port or free_ports(1)[0]
        self.host = host
        secret = self.workdir / "redis.secret"
        if not secret.exists():
            secret.touch(mode=0o600)
            secret.write_text(secrets.token_urlsafe(32))
        self.password = secret.read_text().strip()
        self.url = f"redis://:{self.password}@127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> "RedisServer":
        binary, env = redis_binary()
        config = self.workdir / "redis.conf"  # the password lives in the 0600 config, not on a command line
        config.touch(mode=0o600)
        config.write_text("\n".join([
            f"bind {self.host}", f"port {self.port}", "protected-mode yes", f"requirepass {self.password}",
            f"dir {self.workdir}", "appendonly yes", "appendfsync everysec", "save 60 1", "daemonize no",
            f"logfile {self.workdir / 'redis.log'}", "maxclients 1000", "",
        ]))
        self.process = subprocess.Popen([str(binary), str(config)], env={**os.environ, **env}, cwd=self.workdir,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True,
                                        umask=0o077)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if Redis.from_url(self.url, socket_timeout=1).ping():
                    return self
            except Exception:  # noqa: BLE001 - not up yet
                if self.process.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {self.process.returncode}: see {self.workdir}/redis.log")
                time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"redis-server not answering after {timeout} s")

    def stop(self, timeout: float = 15.0) -> None:
        if self.process is not None:
            stop_group(self.process, timeout)  # SIGTERM: Redis flushes its append-only file first
            self.process = None


class JobSystem:
    """Redis, the API and ``workers`` Celery workers, sharing one ``JobSettings``."""

    def __init__(self, workdir: str | Path, settings: JobSettings = JobSettings(), api_port: int | None = None,
                 workers: int = 1, host: str = "127.0.0.1", heal: bool = False):
        """``heal``: start again whatever process of the system exits (jobs.healing; the command line's
        ``jobs`` does)."""
        self.workdir = private_folder(Path(workdir).resolve())
        self.redis = RedisServer(self.workdir / "redis")
        self.settings = replace(settings, redis_url=self.redis.url, store=self.workdir / "store",
                                access_log=self.workdir / "access.jsonl", audit_log=self.workdir / "audit.jsonl",
                                metrics_port=settings.metrics_port or free_ports(1)[0]).check()
        self.api_port, self.host, self.worker_count = api_port or free_ports(1)[0], host, workers
        self.url = f"http://127.0.0.1:{self.api_port}"
        self.metrics_url = f"http://127.0.0.1:{self.settings.metrics_port}/metrics"  # the API's (jobs.metrics)
        self.api: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.callback_worker: subprocess.Popen | None = None
        self.edges: list[Edge] = []  # nginx in front of each API process
        self.worker_specs: dict[int, tuple[str, tuple[str, ...], dict]] = {}  # how worker i was started
        self.api_sockets: dict[int, tuple[Path, int]] = {}
        self.heal = heal
        self.healer: Healer | None = None

    def _spawn(self, name: str, command: list[str], settings: JobSettings | None = None) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "ab")
        return subprocess.Popen(command, env={**os.environ, **(settings or self.settings).environment()},
                                cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                umask=0o077)

    def start_worker(self, host: str = "%h", wrapper: Sequence[str] = (), index: int | None = None,
                     **reached_at) -> subprocess.Popen:
        """One Celery worker (concurrency 1), named ``deepfake<i>-<pid>@<host>``. ``wrapper`` runs it elsewhere
        (``ip netns exec NS``: another host), where Redis and the model server are ``reached_at`` other
        addresses (``redis_url=``, ``server_url=``). ``index``: start worker ``index`` again as it was."""
        if index is None:
            index = len(self.workers)
            self.worker_specs[index] = (host, tuple(wrapper), reached_at)
        host, wrapper, reached_at = self.worker_specs[index]
        worker = self._spawn(f"worker{index}", [
            *wrapper, sys.executable, "-m", "celery", "-A", "deepfake_serving.jobs.worker", "worker", "--concurrency",
            "1", "--pool", "prefork", "-Q", QUEUE, "--hostname", f"deepfake{index}-{os.getpid()}@{host}",
            "--loglevel", "INFO", "--without-gossip", "--without-mingle"], replace(self.settings, **reached_at))
        if index < len(self.workers):
            self.workers[index] = worker
        else:
            self.workers.append(worker)
        return worker

    def start_callback_worker(self) -> subprocess.Popen:
        """The worker that sends callbacks (a pool of threads on the callback queue: each attempt is bounded
        by its own deadline, so a slow receiver holds one thread for ``callback_timeout_s`` at most)."""
        self.callback_worker = self._spawn("callbacks", [
            sys.executable, "-m", "celery", "-A", "deepfake_serving.jobs.worker", "worker", "--pool", "threads",
            "--concurrency", str(self.settings.callback_workers), "-Q", CALLBACK_QUEUE, "--hostname",
            f"callbacks-{os.getpid()}@%h", "--loglevel", "INFO", "--without-gossip", "--without-mingle"])
        return self.callback_worker

    def start_api(self, port: int, timeout: float = 60.0, metrics_port: int = 0) -> subprocess.Popen:
        """One API process (a front replica): uvicorn on a Unix socket in the private work folder, nginx on
        ``port`` in front of it (jobs.edge; its metrics on ``metrics_port``, 0: none), answering once it is
        up. The API's process is returned; its nginx is stopped with the system."""
        socket = self.workdir / f"api{port}.sock"
        if len(str(socket)) > 100:  # a Unix socket's path has at most 107 bytes
            socket = Path(tempfile.mkdtemp(prefix="deepfake-api-")) / f"api{port}.sock"
        api = self._spawn_api(port, socket, metrics_port)
        try:
            edge = Edge(self.workdir / f"edge{port}", self.host, port, socket, self.settings.max_request_bytes).start()
        except BaseException:
            stop_group(api, 10.0)
            raise
        self.edges.append(edge)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if api.poll() is not None:
                raise RuntimeError(f"the job API exited: see {self.workdir}/api{port}.log")
            try:
                if requests.get(f"http://127.0.0.1:{port}/v1/health", timeout=2).ok:
                    return api
            except requests.RequestException:
                pass
            time.sleep(0.2)
        stop_group(api, 10.0)
        raise TimeoutError(f"the job API is not answering after {timeout} s: see {self.workdir}/api{port}.log")

    def _spawn_api(self, port: int, socket: Path, metrics_port: int) -> subprocess.Popen:
        socket.unlink(missing_ok=True)
        self.api_sockets[port] = (socket, metrics_port)
        return self._spawn(f"api{port}", [sys.executable, "-m", "uvicorn", "--factory", "deepfake_serving.jobs.api:build",
                                          "--uds", str(socket), "--log-level", "warning"],
                           replace(self.settings, metrics_port=metrics_port))

    def _restart_api(self) -> None:
        self.api = self._spawn_api(self.api_port, *self.api_sockets[self.api_port])

    def parts(self) -> dict[str, Part]:
        """What the healer watches (jobs.healing): every process of the system, and how to start it again."""
        parts: dict[str, Part] = {"redis": (lambda: self.redis.process, self.redis.start),
                                  "callbacks": (lambda: self.callback_worker, self.start_callback_worker),
                                  "api": (lambda: self.api, self._restart_api)}
        for index in range(len(self.workers)):
            parts[f"worker{index}"] = (partial(self.workers.__getitem__, index), partial(self.start_worker, index=index))
        for edge in self.edges:
            parts[f"edge{edge.port}"] = (partial(getattr, edge, "process"), edge.start)
        return parts

    def start(self) -> "JobSystem":
        self.redis.start()
        (self.workdir / "redis.url").touch(mode=0o600)  # for `deepfake-serving api-key`: it holds the password
        (self.workdir / "redis.url").write_text(self.redis.url)
        for _ in range(self.worker_count):
            self.start_worker()
        self.start_callback_worker()
        try:
            self.api = self.start_api(self.api_port, metrics_port=self.settings.metrics_port)
        except BaseException:
            self.stop()
            raise
        if self.heal:
            self.healer = Healer(self.parts, self.workdir / "healing.jsonl").start()
        return self

    @property
    def process(self) -> subprocess.Popen | None:
        """The API's process (what a caller waits on)."""
        return self.api

    def stop(self) -> None:
        if self.healer is not None:
            self.healer.stop()  # first: nothing stopped on purpose is started again
            self.healer = None
        for process in [*self.workers, self.callback_worker, self.api]:
            if process is not None and process.poll() is None:
                stop_group(process, 30.0)  # Celery's warm shutdown: the running task finishes or is requeued
        for edge in self.edges:
            edge.stop()
        self.workers, self.worker_specs, self.api, self.callback_worker, self.edges = [], {}, None, None, []
        self.redis.stop()

    def __enter__(self) -> "JobSystem":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
