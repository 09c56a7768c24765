"""Start, check and stop a real TorchServe; register models and switch default versions.

The launcher derives a runtime config from the repository's config.properties,
changing only ports, paths and the models to load, so tests and demos run the
configuration users get.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from deepfake_serving.core.threads import worker_environment
from deepfake_serving.serving.client.auth import ServerKeys, register_key_file, write_server_record
from deepfake_serving.serving.launch.processes import ServerPorts, stop_group
from deepfake_serving.serving.launch.torchserve_metrics import write_metrics_config

CONFIG = Path(__file__).with_name("config.properties")  # package data; the checkout's top-level file links here


@dataclass(frozen=True)
class Ports(ServerPorts):
    inference: int = 8080
    management: int = 8081
    metrics: int = 8082
    grpc_inference: int = 7070
    grpc_management: int = 7071


def read_properties(path: Path) -> dict[str, str]:
    props = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            props[key.strip()] = value.strip()
    return props


class TorchServe:
    def __init__(
        self,
        model_store: str | Path,
        workdir: str | Path,
        models: list[str] | None = None,
        ports: Ports = Ports(),
        config: Path = CONFIG,
        env: dict[str, str] | None = None,
        workers: int | None = None,
    ):
        """``workers``: model workers that will share this machine's cores, counting versions
        registered later (a canary) — the threads rule divides the cores by it (default: one per
        model loaded at start)."""
        self.model_store = Path(model_store).resolve()
        self.workdir = Path(workdir).resolve()
        self.models = models or []
        self.ports = ports
        self.config = config
        self.env = {**worker_environment(workers or len(models or []) or 1), **(env or {})}
        self.process: subprocess.Popen | None = None
        host = ports.client_host
        self.inference_url = f"http://{host}:{ports.inference}"
        self.management_url = f"http://{host}:{ports.management}"
        self.metrics_url = f"http://{host}:{ports.metrics}"
        self.grpc_target = f"{host}:{ports.grpc_inference}"
        self.grpc_management_target = f"{host}:{ports.grpc_management}"
        # TorchServe writes its keys (0600) into its working directory, which only the service user may enter.
        self.key_file = self.workdir / "key_file.json"
        self.keys = ServerKeys(self.key_file)

    # -- life cycle -------------------------------------------------------------
    def runtime_config(self) -> Path:
        props = read_properties(self.config)
        props.update({
            "inference_address": f"http://{self.ports.host}:{self.ports.inference}",
            "management_address": f"http://{self.ports.host}:{self.ports.management}",
            "metrics_address": f"http://{self.ports.host}:{self.ports.metrics}",
            "grpc_inference_address": self.ports.host,
            "grpc_management_address": self.ports.host,
            "grpc_inference_port": str(self.ports.grpc_inference),
            "grpc_management_port": str(self.ports.grpc_management),
            "model_store": str(self.model_store),
            "load_models": ",".join(self.models),
            "metrics_config": str(write_metrics_config(self.workdir / "metrics.yaml")),
        })
        path = self.workdir / "config.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        return path

    def start(self, timeout: float = 180.0) -> "TorchServe":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o700)
        register_key_file([self.inference_url, self.management_url, self.grpc_target, self.grpc_management_target],
                          self.key_file)
        (self.workdir / "tmp").mkdir(parents=True, exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        env = {
            **os.environ,
            # torchserve --stop and the pid file live in the temp dir.
            "TEMP": str(self.workdir / "tmp"),
            "TMPDIR": str(self.workdir / "tmp"),
            "LOG_LOCATION": str(self.workdir / "logs"),
            "METRICS_LOCATION": str(self.workdir / "logs"),
            # The workers must find the venv's python and this package.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            **self.env,
        }
        self.log = open(self.workdir / "logs" / "torchserve.out", "wb")
        # TorchServe writes new keys as it starts: the last run's must not be handed out meanwhile (the nginx
        # front's relay answers "no key yet", which clients retry, instead of a key the new server refuses).
        self.key_file.unlink(missing_ok=True)
        # TorchServe appends to its logs: this start is judged by the lines it writes from here on.
        self._log_offsets = {name: self._log_size(name) for name in ("ts_log.log", "model_log.log")}
        self.process = subprocess.Popen(
            # TorchServe's own entry point, run by this interpreter (a console script need not be on PATH
            # nor beside it when the package was installed into another environment)
            [sys.executable, "-m", "ts.model_server", "--start", "--foreground", "--ncs",
             "--ts-config", str(self.runtime_config()), "--model-store", str(self.model_store)],
            cwd=self.workdir, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        write_server_record(self.key_file, self.process.pid, [self.inference_url, self.management_url,
                                                               self.grpc_target, self.grpc_management_target])
        self.wait_ready(timeout)
        return self

    def _log_size(self, name: str) -> int:
        path = self.workdir / "logs" / name
        return path.stat().st_size if path.exists() else 0

    def _log_since_start(self, name: str) -> str:
        path = self.workdir / "logs" / name
        if not path.exists():
            return ""
        with open(path, "rb") as log:
            log.seek(self._log_offsets.get(name, 0))
            return log.read().decode(errors="replace")

    def wait_ready(self, timeout: float) -> None:
        """/ping answers before workers load: wait for every model's workers to be READY."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                code = self.process and self.process.returncode
                raise RuntimeError(f"TorchServe exited with {code}; see {self.workdir}/logs")
            self.raise_on_load_failure()
            try:
                ping = requests.get(f"{self.inference_url}/ping", headers=self.keys.headers("inference"), timeout=2)
                if ping.ok and self.all_workers_ready():
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"TorchServe not ready after {timeout} s; see {self.workdir}/logs")

    def raise_on_load_failure(self) -> None:
        """TorchServe retries a model whose worker dies while loading, forever: fail fast, with the cause."""
        if "Load model failed" in self._log_since_start("ts_log.log"):
            model_log = self._log_since_start("model_log.log").splitlines()
            cause = "\n".join(line.split("MODEL_LOG - ")[-1] for line in model_log[-15:])
            self.stop()
            raise RuntimeError(f"a model failed to load; last worker output:\n{cause}")

    def all_workers_ready(self) -> bool:
        models = self._management("GET", "/models", timeout=5).json().get("models", [])
        if len(models) < len({m.split("=")[0] for m in self.models}):
            return False
        for model in models:
            for version in self.describe(model["modelName"], "all"):
                workers = version.get("workers", [])
                if not workers or any(w.get("status") != "READY" for w in workers):
                    return False
        return True

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the launcher, Java and every worker (the whole process group), and wait for all of them:
        ``torchserve --stop`` returns seconds before Java exits and leaves its pid file behind."""
        if self.process is None:
            return
        stop_group(self.process, timeout)
        self.process = None
        (self.workdir / "tmp" / ".model_server.pid").unlink(missing_ok=True)
        self.log.close()

    def __enter__(self) -> "TorchServe":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- management API (with the management key) -----------------------------------
    def _management(self, method: str, path: str, timeout: float, **kwargs) -> requests.Response:
        response = requests.request(method, f"{self.management_url}{path}", timeout=timeout,
                                    headers=self.keys.headers("management"), **kwargs)
        response.raise_for_status()
        return response

    def describe(self, name: str, version: str | None = None) -> list[dict]:
        return self._management("GET", f"/models/{name}" + (f"/{version}" if version else ""), 10).json()

    def register(self, mar_file: str, workers: int = 1, timeout: float = 300.0) -> dict:
        params = {"url": mar_file, "initial_workers": workers, "synchronous": "true"}
        return self._management("POST", "/models", timeout, params=params).json()

    def set_default(self, name: str, version: str) -> dict:
        return self._management("PUT", f"/models/{name}/{version}/set-default", 10).json()

    def worker_pids(self, name: str, version: str | None = None) -> list[int]:
        return [int(w["pid"]) for d in self.describe(name, version) for w in d.get("workers", []) if w.get("pid")]


def torchserve_supervisor(server: TorchServe, within_s: float = 30.0, **options):
    """A Supervisor (serving.launch.supervisor) for ``server``: TorchServe restarts its own workers, so the
    supervisor restarts the frontend when its process is gone or its /ping gives no answer within
    ``within_s`` (any status: "Partial Healthy" while a worker restarts is TorchServe healing itself)."""
    from deepfake_serving.serving.launch.supervisor import Probe, Supervisor

    def ask(timeout: float) -> bool:
        try:
            requests.get(f"{server.inference_url}/ping", headers=server.keys.headers("inference"), timeout=timeout)
            return True
        except requests.RequestException:
            return False

    return Supervisor(server, {"frontend": Probe(ask, within_s)}, **options)
