"""Locust against real servers: every user class sends real media without failures, the thresholds
decide pass/fail both ways, and a distributed run (one master, two workers on loopback) aggregates."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from deepfake_serving.serving.launch.archive import build_archive
from deepfake_serving.serving.launch.processes import free_ports
from deepfake_serving.serving.launch.torchserve import Ports, TorchServe
from deepfake_serving.serving.launch.triton import Triton, TritonPorts
from deepfake_serving.serving.launch.triton_repository import build_classifier_version, write_configs
from helpers.live_load import LOCUSTFILE, import_beside_locustfile

Observed, Thresholds, breaches, load_thresholds = import_beside_locustfile(
    "thresholds", "Observed", "Thresholds", "breaches", "load_thresholds")

THRESHOLDS = LOCUSTFILE.with_name("thresholds.yaml")
VARIANT = "b4-mobile"


def test_every_breach_is_reported():
    limits = Thresholds(min_rps=5, max_failure_ratio=0.01, p95_ms=500, p99_ms=900, min_requests=10)
    assert breaches(Observed(100, 0, 6.0, 400, 800), limits) == []
    found = breaches(Observed(100, 5, 4.0, 600, 1000), limits)
    assert len(found) == 4 and "throughput 4.00 req/s < 5" in found[0]
    assert breaches(Observed(0, 0, 0.0, 0, 0), limits)[0].startswith("0 requests")


def test_thresholds_file_has_a_scenario_per_user_class():
    for scenario in ("torchserve-rest", "torchserve-grpc", "triton-http", "triton-grpc", "jobs", "smoke-pass", "smoke-fail"):
        assert load_thresholds(THRESHOLDS, scenario).min_rps > 0
    with pytest.raises(KeyError, match="no scenario"):
        load_thresholds(THRESHOLDS, "nonexistent")


def locust(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def summary(prefix: Path) -> dict[str, dict]:
    with open(f"{prefix}_stats.csv") as handle:
        return {row["Name"]: row for row in csv.DictReader(handle)}


@pytest.mark.server
class TestAgainstTorchServe:
    @pytest.fixture(scope="class")
    def server(self, tmp_path_factory):
        store = tmp_path_factory.mktemp("store")
        image = build_archive(VARIANT, "1.0", export_path=store)
        video = build_archive(VARIANT, "1.0", export_path=store, media="video")
        ts = TorchServe(store, tmp_path_factory.mktemp("ts"), ports=Ports.free(),
                        models=[f"{VARIANT}={image.name}", f"{VARIANT}-video={video.name}"])
        with ts:
            yield ts

    def test_a_passing_run_distributed_over_two_workers(self, server, tmp_path):
        port = free_ports(1)[0]
        reports = tmp_path / "pass"
        workers = [subprocess.Popen([sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--worker",
                                     "--master-host", "127.0.0.1", "--master-port", str(port)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(2)]
        try:
            run = locust("--master", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port),
                         "--expect-workers", "2", "--expect-workers-max-wait", "30", "-u", "4", "-r", "4",
                         "-t", "15s", "--host", server.inference_url, "--scenario", "smoke-pass",
                         "--csv", str(reports), "--html", f"{reports}.html", "TorchServeRestUser")
        finally:
            for worker in workers:
                worker.wait(timeout=30)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "LOADTEST PASS [smoke-pass]" in run.stdout + run.stderr
        assert "to 2 ready workers" in run.stderr  # the master split the users over both workers
        stats = summary(reports)
        assert int(stats["Aggregated"]["Request Count"]) >= 5 and int(stats["Aggregated"]["Failure Count"]) == 0
        assert int(stats["image"]["Request Count"]) > 0
        assert Path(f"{reports}.html").stat().st_size > 10_000

    def test_a_breached_threshold_fails_the_run(self, server, tmp_path):
        run = locust("-u", "2", "-r", "2", "-t", "6s", "--host", server.grpc_target, "--scenario", "smoke-fail",
                     "--csv", str(tmp_path / "fail"), "TorchServeGrpcUser")
        output = run.stdout + run.stderr
        assert run.returncode == 1, output
        assert "LOADTEST FAIL [smoke-fail]" in output and "throughput" in output and "p95" in output
        assert int(summary(tmp_path / "fail")["Aggregated"]["Failure Count"]) == 0  # it failed on figures only


@pytest.mark.server
def test_triton_users_over_http_and_grpc(tmp_path):
    repository = tmp_path / "repository"
    write_configs(repository, [VARIANT])
    build_classifier_version(VARIANT, 1, repository=repository)
    triton = Triton(tmp_path / "triton", [VARIANT.replace("-", "_"), f"{VARIANT.replace('-', '_')}_video"],
                    repository=repository, ports=TritonPorts.free())
    with triton:
        for user, host in (("TritonHttpUser", triton.http_url), ("TritonGrpcUser", triton.grpc_target)):
            prefix = tmp_path / user
            run = locust("-u", "3", "-r", "3", "-t", "8s", "--host", host, "--csv", str(prefix), user)
            assert run.returncode == 0, run.stdout + run.stderr
            stats = summary(prefix)
            assert int(stats["Aggregated"]["Request Count"]) > 0, user
            assert int(stats["Aggregated"]["Failure Count"]) == 0, (user, stats)
