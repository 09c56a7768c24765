"""The same rollout on a real Triton under a running Locust load: classifier versions in play are
pinned through the repository API; promotion without a failed request; a version that cannot load
leaves the serving version serving."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from deepfake_serving import samples
from deepfake_serving.rollout.audit import AuditLog
from deepfake_serving.rollout.controller import Rollout, RolloutError, RolloutPolicy
from deepfake_serving.rollout.servers import TritonTarget
from deepfake_serving.serving.client import TritonClient
from deepfake_serving.serving.triton import Triton, TritonPorts
from deepfake_serving.serving.triton_repository import build_classifier_version, model_names, write_configs
from deepfake_serving.variants import get_variant

pytestmark = pytest.mark.server
VARIANT = "b4-mobile"
LOCUSTFILE = Path(__file__).parents[1] / "loadtests" / "locustfile.py"
POLICY = RolloutPolicy(warmup_requests=10, shadow_rounds=2, canary_weight=50, watch_s=6,
                       check_every_s=2, drain_s=2, min_canary_requests=1)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("weights") / "weights.pt"
    torch.save(get_variant(VARIANT).build().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def repository(tmp_path_factory, weights):
    root = tmp_path_factory.mktemp("repository")
    write_configs(root, [VARIANT])
    build_classifier_version(VARIANT, 1, [weights], label="1.0", repository=root)
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory, repository):
    with Triton(tmp_path_factory.mktemp("triton"), [model_names(VARIANT)["ensemble"]], repository=repository,
                ports=TritonPorts.free()) as triton:
        yield triton


def test_promotion_under_load_with_zero_failed_requests(server, repository, weights, tmp_path):
    build_classifier_version(VARIANT, 2, [weights], label="2.0", repository=repository)
    target = TritonTarget(VARIANT, server.http_url, server.metrics_url)
    assert target.serving_version() == "1"
    reports = tmp_path / "load"
    load = subprocess.Popen(
        [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary", "-u", "4", "-r", "4",
         "-t", "60s", "--host", server.http_url, "--tags", "image", "--csv", str(reports), "TritonHttpUser"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        job = Rollout(target, AuditLog(tmp_path / "audit.jsonl"), tmp_path / "split.json", policy=POLICY,
                      probes=[samples.astronaut_jpeg()])
        assert job.run("2") == "2"
    finally:
        load.terminate()
        output, _ = load.communicate(timeout=120)
    with open(f"{reports}_stats.csv") as handle:
        stats = {row["Name"]: row for row in csv.DictReader(handle)}
    assert int(stats["Aggregated"]["Request Count"]) > 0 and int(stats["Aggregated"]["Failure Count"]) == 0, output
    assert target.serving_version() == "2"
    assert TritonClient(server.http_url).predict(VARIANT, samples.astronaut_jpeg()).body["version"] == "2.0"
    steps = [(e["step"], e["outcome"]) for e in AuditLog(tmp_path / "audit.jsonl").entries()]
    assert steps == [("start", "ok"), ("register", "ok"), ("warm_up", "ok"), ("shadow", "ok"), ("gate", "skipped"),
                     ("canary", "started"), ("canary", "ok"), ("promote", "ok")]
    canary = AuditLog(tmp_path / "audit.jsonl").entries()[6]["figures"]
    assert canary["candidate_requests"] > 0 and canary["candidate_error_ratio"] == 0.0  # Triton counts failures


def test_a_version_that_cannot_load_leaves_the_serving_version(server, repository, weights, tmp_path):
    target = TritonTarget(VARIANT, server.http_url, server.metrics_url)
    serving = target.serving_version()
    broken = build_classifier_version(VARIANT, 3, [weights], label="3.0", repository=repository)
    (broken / "model.onnx").write_bytes((broken / "model.onnx").read_bytes()[:-100] + b"\0" * 100)
    with pytest.raises(RolloutError, match="register"):
        Rollout(target, AuditLog(tmp_path / "audit.jsonl"), tmp_path / "split.json", policy=POLICY,
                probes=[samples.astronaut_jpeg()]).run("3")
    entry = AuditLog(tmp_path / "audit.jsonl").entries()[-1]
    assert (entry["step"], entry["outcome"]) == ("register", "failed") and "3" in entry["message"]
    assert target.serving_version() == serving and "3" not in target.versions()
    assert TritonClient(server.http_url).predict(VARIANT, samples.astronaut_jpeg()).ok
