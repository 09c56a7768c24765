"""Start, check and stop the tritonserver binary that the nvidia-pytriton wheel bundles.

No Docker engine here, so the launcher builds what the official container has:
a backend directory with the python backend and the stub for this Python, the
wheel's shared libraries on LD_LIBRARY_PATH, and this venv first on PATH (the
stub finds its packages through the ``python3`` it runs). Models load in
explicit mode; the repository API loads and unloads them later.
"""

from __future__ import annotations

import glob
import importlib.util
import logging
import os
import secrets
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import psutil
import requests

from deepfake_serving.core.threads import THREADS_ENV, worker_environment
from deepfake_serving.serving.client.auth import ServerKeys, register_key_file, write_key_file, write_server_record
from deepfake_serving.serving.launch.nginx import nginx_binary
from deepfake_serving.serving.launch.processes import ServerPorts, free_ports, stop_group
from deepfake_serving.serving.launch.triton_front import FrontPorts, TritonFront
from deepfake_serving.serving.launch.triton_repository import DEFAULT_INSTANCES, REPOSITORY, compile_model_files

logger = logging.getLogger(__name__)
SHM_DIR = Path("/dev/shm")
# Triton 2.45's API groups that need the launcher's key (the open ones: health, metadata, inference).
RESTRICTED_APIS = ("model-repository", "shared-memory", "logging", "trace", "statistics", "model-config")
# The python backend's shared memory per stub starts here and grows in steps; a 100 MB clip
# needs ~100 growth steps at the 1 MB default, so both are raised (launcher only: machine-specific).
SHM_DEFAULT_BYTES = 16 * 1024 * 1024
SHM_GROWTH_BYTES = 16 * 1024 * 1024
SHM_GUARD_S = 0.05  # how often new regions are looked for (a glob of /dev/shm)


def pytriton_paths() -> dict[str, Path]:
    """Where the wheel keeps the server, the python backend, the stubs and the libraries (without importing it)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("nvidia-pytriton is not installed: pip install -e '.[triton]'")
    package = Path(next(iter(spec.submodule_search_locations)))
    server = package / "tritonserver"
    return {
        "binary": server / "bin" / "tritonserver",
        "python_backend": server / "backends" / "python",
        "stub": server / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}"
        / "triton_python_backend_stub",
        "libs": package.parent / "nvidia_pytriton.libs",
    }


@dataclass(frozen=True)
class TritonPorts(ServerPorts):
    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002


def compute_instances(models: list[str]) -> int:
    """Model instances that take CPU among ``models``: an image ensemble's preprocess instances and its
    classifier, a video model (it shares the classifier). Postprocess only formats JSON."""
    count = 0
    for name in models:
        if name.endswith("_explain"):  # idle but for explanations, one at a time: it takes no share
            continue
        if name.endswith("_video"):
            count += 1
        elif not name.endswith(("_preprocess", "_classifier", "_postprocess")):
            count += DEFAULT_INSTANCES.get("preprocess", 1) + 1
        elif name.endswith(("_preprocess", "_classifier")):
            count += 1
    return max(1, count)


def live_stubs(server_pid: int) -> dict[int, Path]:
    """pid → model file (<model>/<version>/model.py) of every live python-backend stub under Triton's
    process (a killed stub not yet reaped is a zombie: not live)."""
    found: dict[int, Path] = {}
    try:
        children = psutil.Process(server_pid).children(recursive=True)
    except psutil.NoSuchProcess:  # the server is gone (a restart replaces it)
        return found
    for child in children:
        try:
            command = child.cmdline()
            if child.status() != psutil.STATUS_ZOMBIE and command and "triton_python_backend_stub" in command[0]:
                found[child.pid] = next(Path(arg) for arg in command if arg.endswith("model.py"))
        except (psutil.NoSuchProcess, psutil.ZombieProcess, StopIteration):
            continue
    return found


class Triton:
    def __init__(
        self,
        workdir: str | Path,
        models: list[str],
        repository: str | Path = REPOSITORY,
        ports: TritonPorts = TritonPorts(),
        threads: int | None = None,
        workers: int | None = None,
        env: dict[str, str] | None = None,
        server_root: str | Path | None = None,
    ):
        """``server_root``: a Triton install to run (its ``bin/tritonserver`` and ``backends/``, with the
        python backend's stub for this Python) instead of the server the nvidia-pytriton wheel bundles."""
        self.server_root = Path(server_root) if server_root else None
        self.workdir = Path(workdir).resolve()
        self.repository = Path(repository).resolve()
        self.models = models
        self.ports = ports
        # The threads rule counts every instance that computes (deepfake_serving.core.threads).
        self.env = {**worker_environment(workers or compute_instances(models)),
                    **({THREADS_ENV: str(threads)} if threads else {}), **(env or {})}
        self.http_url = f"http://{ports.client_host}:{ports.http}"
        self.grpc_target = f"{ports.client_host}:{ports.grpc}"
        self.metrics_url = f"http://{ports.client_host}:{ports.metrics}/metrics"
        # Our own shared-memory prefix: a leftover segment can be told apart from another server's.
        self.shm_prefix = f"deepfake_triton_{ports.http}_"
        self.process: subprocess.Popen | None = None
        self.front: TritonFront | None = None
        self.listen = ports  # where tritonserver itself listens (loopback ports behind the front)
        self.key_file = self.workdir / "key_file.json"
        self.keys = ServerKeys(self.key_file)

    def _write_key(self) -> str:
        """A new repository-API key, in TorchServe's key-file layout ("management"), readable by this user only."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o700)
        key = secrets.token_urlsafe(24)
        write_key_file(self.key_file, {"management": key})
        register_key_file([self.http_url, self.grpc_target], self.key_file)
        return key

    # -- life cycle -------------------------------------------------------------
    def backend_directory(self) -> Path:
        if self.server_root is not None:
            return self.server_root / "backends"
        paths = pytriton_paths()
        python = self.workdir / "backends" / "python"
        python.mkdir(parents=True, exist_ok=True)
        for source in (paths["python_backend"] / "libtriton_python.so",
                       paths["python_backend"] / "triton_python_backend_utils.py", paths["stub"]):
            link = python / source.name
            if not link.exists():
                link.symlink_to(source)
        return python.parent

    def command(self, key: str) -> list[str]:
        """The server's command line. Every API but inference, health and model metadata answers only
        requests that carry the key: the repository API (a load request can carry model files, i.e. code),
        system and CUDA shared memory (registering a stub's own region and aiming an output at it aborts
        tritonserver), logging and trace settings, statistics and model configurations."""
        binary = self.server_root / "bin" / "tritonserver" if self.server_root else pytriton_paths()["binary"]
        restricted = f"{','.join(RESTRICTED_APIS)}:authorization=Bearer {key}"
        return [
            str(binary), f"--model-repository={self.repository}",
            f"--backend-directory={self.backend_directory()}",
            "--model-control-mode=explicit", *(f"--load-model={m}" for m in self.models),
            "--disable-auto-complete-config", "--strict-readiness=true", "--exit-timeout-secs=30",
            f"--http-address={self.listen.host}", f"--http-port={self.listen.http}",
            f"--grpc-address={self.listen.host}", f"--grpc-port={self.listen.grpc}",
            f"--http-restricted-api={restricted}", f"--grpc-restricted-protocol={restricted}",
            "--allow-metrics=true", "--allow-cpu-metrics=true", "--metrics-config=summary_latencies=true",
            f"--metrics-address={self.ports.host}", f"--metrics-port={self.ports.metrics}",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            f"--backend-config=python,shm-default-byte-size={SHM_DEFAULT_BYTES}",
            f"--backend-config=python,shm-growth-byte-size={SHM_GROWTH_BYTES}",
        ]

    def _start_front(self) -> None:
        """nginx on the public ports (the transport limit, serving.triton_front), tritonserver on free
        loopback ports behind it; without nginx, tritonserver on the public ports and no limit."""
        if nginx_binary() is None:
            logger.warning("nginx is not installed: Triton serves without a transport limit (make install)")
            self.listen = self.ports
            return
        http, grpc = free_ports(2)
        self.listen = replace(self.ports, http=http, grpc=grpc, host="127.0.0.1")
        self.front = TritonFront(self.workdir / "front", FrontPorts(self.ports.host, self.ports.http, self.ports.grpc,
                                                                   http, grpc)).start()

    def start(self, timeout: float = 240.0) -> "Triton":
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        self._start_front()
        libs = None if self.server_root else str(pytriton_paths()["libs"])
        env = {
            **os.environ,
            "LD_LIBRARY_PATH": os.pathsep.join(filter(None, [libs, os.environ.get("LD_LIBRARY_PATH")])),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            **self.env,
        }
        compile_model_files(self.repository)
        self.log_path = self.workdir / "logs" / "tritonserver.log"
        self.log = open(self.log_path, "wb")
        self.process = subprocess.Popen(self.command(self._write_key()), cwd=self.workdir, env=env, stdout=self.log,
                                        stderr=subprocess.STDOUT, start_new_session=True, umask=0o077)
        write_server_record(self.key_file, self.process.pid, [self.http_url, self.grpc_target])
        self._guard = threading.Thread(target=self._guard_shared_memory, name="triton-shm-guard", daemon=True)
        self._guard.start()
        self.wait_ready(timeout)
        return self

    def private_shared_memory(self) -> list[Path]:
        """Make every region of this server 0600; the ones changed. The python backend's regions carry
        every request's bytes, and boost.interprocess creates them 0644 whatever the umask."""
        changed = []
        for path in self.shm_segments():
            try:
                if path.stat().st_mode & 0o077:
                    path.chmod(0o600)
                    changed.append(path)
            except FileNotFoundError:  # a stub released it meanwhile
                continue
        return changed

    def _guard_shared_memory(self) -> None:
        """While the server runs, every new region (a stub started at load, by us or by a rollout through
        the repository API) is made private within SHM_GUARD_S, before any model using it is ready."""
        process = self.process
        while process is not None and process.poll() is None:
            self.private_shared_memory()
            time.sleep(SHM_GUARD_S)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                code = self.process and self.process.returncode
                raise RuntimeError(f"tritonserver exited with {code}:\n{self.log_tail()}")
            try:
                if requests.get(f"{self.http_url}/v2/health/ready", timeout=2).status_code == 200:
                    self.private_shared_memory()
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"Triton not ready after {timeout} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def shm_segments(self) -> list[Path]:
        return [Path(p) for p in glob.glob(str(SHM_DIR / f"{self.shm_prefix}*"))]

    def stop(self, timeout: float = 45.0) -> list[Path]:
        """SIGTERM (Triton unloads every model and its stubs release their shared memory), SIGKILL after
        ``timeout``. Returns the shared-memory segments a forced stop left behind, after removing them."""
        if self.process is None:
            return []
        stop_group(self.process, timeout)
        self.process = None
        self.log.close()
        if self.front is not None:
            self.front.stop()
            self.front = None
        leftovers = self.shm_segments()
        for path in leftovers:
            path.unlink(missing_ok=True)
        return leftovers

    def __enter__(self) -> "Triton":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- health and the repository API -------------------------------------------
    def live(self) -> bool:
        return requests.get(f"{self.http_url}/v2/health/live", timeout=5).status_code == 200

    def model_ready(self, name: str, version: int | None = None) -> bool:
        url = f"{self.http_url}/v2/models/{name}" + (f"/versions/{version}" if version else "") + "/ready"
        return requests.get(url, timeout=5).status_code == 200

    def _repository(self, path: str, body: dict, timeout: float) -> requests.Response:
        """A repository-API call, with the key."""
        return requests.post(f"{self.http_url}/v2/repository{path}", json=body, timeout=timeout,
                             headers=self.keys.headers("management"))

    def repository_index(self, ready_only: bool = False) -> list[dict]:
        response = self._repository("/index", {"ready": True} if ready_only else {}, 10)
        response.raise_for_status()
        return response.json()

    def load(self, name: str, timeout: float = 300.0) -> None:
        response = self._repository(f"/models/{name}/load", {}, timeout)
        if response.status_code != 200:
            raise RuntimeError(f"loading {name} failed: {response.text}")

    def unload(self, name: str, dependents: bool = False, timeout: float = 120.0) -> None:
        response = self._repository(f"/models/{name}/unload", {"parameters": {"unload_dependents": dependents}},
                                    timeout)
        if response.status_code != 200:
            raise RuntimeError(f"unloading {name} failed: {response.text}")

    def statistics(self, name: str, version: int | str = "") -> dict:
        url = f"{self.http_url}/v2/models/{name}" + (f"/versions/{version}" if version else "") + "/stats"
        response = requests.get(url, timeout=10, headers=self.keys.headers("management"))
        response.raise_for_status()
        return response.json()

    def metrics(self) -> str:
        return requests.get(self.metrics_url, timeout=10).text

    def stub_pids(self, model_path: str = "") -> list[int]:
        """The live python-backend stubs, or those whose model file path contains ``model_path``
        (e.g. ``b4_mobile_classifier/2/``)."""
        if self.process is None:
            return []
        return [pid for pid, path in live_stubs(self.process.pid).items() if model_path in str(path)]

    def stub_counts(self) -> dict[str, int]:
        """Live python-backend stubs per model (``<repository>/<model>/<version>/model.py``)."""
        counts: dict[str, int] = {}
        for path in live_stubs(self.process.pid).values() if self.process is not None else []:
            counts[path.parents[1].name] = counts.get(path.parents[1].name, 0) + 1
        return counts


def triton_supervisor(triton: Triton, image_within_s: float = 30.0, video_within_s: float = 120.0, **options):
    """A Supervisor (serving.launch.supervisor) for ``triton``: its stubs counted, a model whose stub died
    reloaded through the repository API, and a real inference sent with no retry to each served image model
    (a faceless image) and video model (a four-frame clip), answered within ``image_within_s`` /
    ``video_within_s`` (a video model's queue may hold a long clip). Explanation models are watched by their
    stubs alone: a probe there is a Grad-CAM, seconds of CPU every ``probe_every_s``."""
    from deepfake_serving.serving.client.clients import NO_RETRY, TritonClient
    from deepfake_serving.serving.launch.supervisor import Probe, Supervisor, probe_clip, probe_image

    def probe(name: str, data: bytes, within_s: float) -> Probe:
        def ask(timeout: float) -> bool:
            client = TritonClient(triton.http_url, "http", timeout=timeout, retry=NO_RETRY)
            try:
                return client.predict(name, data).ok
            finally:
                client.close()
        return Probe(ask, within_s)

    probes = {model: probe(model, probe_clip(), video_within_s) if model.endswith("_video")
              else probe(model, probe_image(), image_within_s)
              for model in triton.models if not model.endswith("_explain")}
    return Supervisor(triton, probes, reload=lambda model, timeout: triton.load(model, timeout),
                      stubs=triton.stub_counts, **options)
