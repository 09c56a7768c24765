"""Prometheus and Alertmanager (Debian's ``prometheus`` and ``prometheus-alertmanager``, or the copies
``make install`` unpacks into the venv) on loopback: a generated scrape configuration for TorchServe,
Triton and the job API, the repository's alert rules (monitoring/rules), and Alertmanager delivering to a
webhook. Each runs in its own process group with its data in a 0700 work folder.

Both answer only with a password (basic auth through ``--web.config.file``, the password bcrypt-hashed):
another local user could otherwise read every series and silence any alert through Alertmanager's API.
A new password is drawn at every start and written to ``credentials.json`` (0600) in the work folder;
Prometheus reads it from a 0600 file to reach Alertmanager."""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

import bcrypt
import requests
import yaml

from deepfake_serving.serving.launch.processes import free_ports, stop_group

BUNDLED = Path(sys.prefix) / "monitoring"  # `make install` unpacks Debian's packages here
# Debian's Alertmanager reads its notification templates from here only (make install puts them there)
ALERTMANAGER_TEMPLATES = Path("/usr/share/prometheus/alertmanager/default.tmpl")
RULES = Path(str(files("deepfake_serving.monitoring") / "rules" / "deepfake-alerts.yml"))
JOBS = ("torchserve", "triton", "jobs")  # scrape jobs: the alert rules name them
USER = "deepfake"


def monitoring_binary(name: str) -> Path:
    """A Debian binary of Prometheus' (prometheus, promtool, prometheus-alertmanager)."""
    if name == "prometheus-alertmanager" and not ALERTMANAGER_TEMPLATES.is_file():
        raise FileNotFoundError(f"{ALERTMANAGER_TEMPLATES} is missing (Debian's Alertmanager needs it; make install "
                                "copies it there)")
    for candidate in (shutil.which(name), f"/usr/bin/{name}", str(BUNDLED / "usr" / "bin" / name)):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise FileNotFoundError(f"{name} is not installed (make install unpacks Debian's prometheus and "
                            "prometheus-alertmanager into .venv/monitoring)")


@dataclass(frozen=True)
class Targets:
    """host:port of each metrics endpoint (all serve /metrics)."""

    torchserve: tuple[str, ...] = ()
    triton: tuple[str, ...] = ()
    jobs: tuple[str, ...] = ()


@dataclass
class Intervals:
    scrape: str = "15s"
    evaluation: str = "15s"
    group_wait: str = "30s"  # Alertmanager waits this long to group a new alert's first notification


def prometheus_config(targets: Targets, alertmanager: str, rules: Path, intervals: Intervals,
                      password_file: Path) -> dict:
    return {
        "global": {"scrape_interval": intervals.scrape, "evaluation_interval": intervals.evaluation},
        "rule_files": [str(rules)],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}],
                                        "basic_auth": {"username": USER, "password_file": str(password_file)}}]},
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": list(getattr(targets, job))}]}
                           for job in JOBS if getattr(targets, job)],
    }


def alertmanager_config(webhook: str | None, intervals: Intervals) -> dict:
    receiver: dict = {"name": "webhook"}
    if webhook:
        receiver["webhook_configs"] = [{"url": webhook, "send_resolved": True}]
    return {"route": {"receiver": "webhook", "group_by": ["alertname", "job", "model"],
                      "group_wait": intervals.group_wait, "group_interval": "1m", "repeat_interval": "4h"},
            "receivers": [receiver]}


@dataclass
class Monitor:
    workdir: Path
    targets: Targets
    webhook: str | None = None
    intervals: Intervals = field(default_factory=Intervals)
    rules: Path = RULES
    ports: tuple[int, int] = (9090, 9093)  # Prometheus, Alertmanager (their usual ports)
    processes: list[subprocess.Popen] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.ports[0]}"

    @property
    def alertmanager_url(self) -> str:
        return f"http://127.0.0.1:{self.ports[1]}"

    @property
    def auth(self) -> tuple[str, str]:
        """(user, password) of this start, for requests' ``auth=``."""
        return USER, json.loads((self.workdir / "credentials.json").read_text())["password"]

    def _write_credentials(self) -> Path:
        """A new password: in credentials.json and password (for Prometheus), hashed in web.yml (for both)."""
        password = secrets.token_urlsafe(24)
        digest = bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode()
        for name, text in (("credentials.json", json.dumps({"username": USER, "password": password})),
                           ("password", password), ("web.yml", yaml.safe_dump({"basic_auth_users": {USER: digest}}))):
            path = self.workdir / name
            path.unlink(missing_ok=True)
            path.touch(mode=0o600)
            path.write_text(text)
        return self.workdir / "web.yml"

    @classmethod
    def on_free_ports(cls, workdir: Path, targets: Targets, **options) -> "Monitor":
        return cls(Path(workdir), targets, ports=tuple(free_ports(2)), **options)  # type: ignore[arg-type]

    def start(self, timeout: float = 60.0) -> "Monitor":
        self.workdir = Path(self.workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o700)
        prometheus, alertmanager = self.workdir / "prometheus.yml", self.workdir / "alertmanager.yml"
        am_address = f"127.0.0.1:{self.ports[1]}"
        web = f"--web.config.file={self._write_credentials()}"
        prometheus.write_text(yaml.safe_dump(prometheus_config(self.targets, am_address, self.rules, self.intervals,
                                                               self.workdir / "password")))
        alertmanager.write_text(yaml.safe_dump(alertmanager_config(self.webhook, self.intervals)))
        self._spawn("alertmanager", [str(monitoring_binary("prometheus-alertmanager")), f"--config.file={alertmanager}",
                                     f"--storage.path={self.workdir / 'alertmanager'}", f"--web.listen-address={am_address}",
                                     web, "--cluster.listen-address="])  # no gossip port: one Alertmanager
        self._spawn("prometheus", [str(monitoring_binary("prometheus")), f"--config.file={prometheus}",
                                   f"--storage.tsdb.path={self.workdir / 'prometheus'}", web,
                                   f"--web.listen-address=127.0.0.1:{self.ports[0]}", "--storage.tsdb.retention.time=15d"])
        try:
            for url in (self.alertmanager_url, self.prometheus_url):
                self._wait_ready(url, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, name: str, command: list[str]) -> None:
        log = open(self.workdir / f"{name}.log", "ab")
        self.processes.append(subprocess.Popen(command, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT,
                                               start_new_session=True, umask=0o077))
        self.names.append(name)

    def _wait_ready(self, url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, process in zip(self.names, self.processes):
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with {process.returncode}: see {self.workdir}/{name}.log")
            try:
                if requests.get(f"{url}/-/ready", timeout=2, auth=self.auth).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{url} not ready after {timeout} s: see {self.workdir}")

    @property
    def process(self) -> subprocess.Popen | None:
        """Prometheus' process (what a caller waits on)."""
        return self.processes[-1] if self.processes else None

    def alerts(self) -> list[dict]:
        """Prometheus' alerts (pending and firing)."""
        return requests.get(f"{self.prometheus_url}/api/v1/alerts", timeout=10, auth=self.auth).json()["data"]["alerts"]

    def query(self, expression: str) -> dict:
        """An instant query's answer (``data``), through Prometheus' HTTP API."""
        answer = requests.get(f"{self.prometheus_url}/api/v1/query", params={"query": expression}, timeout=10,
                              auth=self.auth).json()
        if answer.get("status") != "success":
            raise RuntimeError(f"{expression}: {answer.get('error')}")
        return answer["data"]

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                stop_group(process, 15.0)
        self.processes, self.names = [], []

    def __enter__(self) -> "Monitor":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
