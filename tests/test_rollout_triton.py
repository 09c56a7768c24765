"""The same rollout on a real Triton under a running Locust load that follows the split (routed
users): classifier versions in play are pinned through the repository API; promotion, and rollbacks
of a candidate that answers errors and of one slower than the guard allows, without a failed
request; a version that cannot load, a second rollout and a Triton that is down leave the serving
version serving."""

import dataclasses
import json
import re
import time

import pytest
import torch

from deepfake_serving.builder.export import export_onnx
from deepfake_serving.bundle.manifest import GRAPH_NAME
from deepfake_serving.core.digest import sha256_of
from deepfake_serving.core.naming import model_names, pinned_ensemble
from deepfake_serving.media import samples
from deepfake_serving.rollout.audit import AuditLog
from deepfake_serving.rollout.controller import Rollout, RolloutError, RolloutPolicy
from deepfake_serving.rollout.routing import Split, VersionStats, bucket
from deepfake_serving.rollout.targets import Counters, TritonTarget
from deepfake_serving.serving.client.clients import TritonClient
from deepfake_serving.serving.launch.triton import Triton, TritonPorts
from deepfake_serving.serving.launch.triton_repository import build_classifier_version, write_configs
from deepfake_serving.variants import get_variant
from helpers.live_load import Load, second_rollout_during_canary

pytestmark = pytest.mark.server
VARIANT = "b4-mobile"
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


def rollout(target, tmp_path, policy=POLICY) -> Rollout:
    return Rollout(target, AuditLog(tmp_path / "audit.jsonl"), tmp_path / "split.json", policy=policy,
                   probes=[samples.astronaut_jpeg()])


def entries(tmp_path) -> list[dict]:
    """The audit log less ("canary", "slow") notes: one slow check on these shared cores is watched on."""
    return [e for e in AuditLog(tmp_path / "audit.jsonl").entries() if e["outcome"] != "slow"]


def steps(tmp_path) -> list[tuple[str, str]]:
    return [(e["step"], e["outcome"]) for e in entries(tmp_path)]


def live_load(server, target, tmp_path, seconds: int) -> Load:
    # The routed users are keyed user-0-0 … user-0-3; at 50 % exactly one of them is on the canary.
    assert sum(bucket(f"user-0-{i}") < POLICY.canary_weight / 100 for i in range(4)) == 1
    Split(VARIANT, target.serving_version()).save(tmp_path / "split.json")
    return Load(server.http_url, "RoutedTritonUser", tmp_path / "split.json", tmp_path / "load", seconds)


def replace_onnx(version_dir, variant, models):
    """Put another graph into a built version (its manifest's checksum updated, so it loads)."""
    onnx = export_onnx(variant, models, version_dir / GRAPH_NAME)
    manifest = json.loads((version_dir / "deepfake_manifest.json").read_text())
    manifest["onnx"]["sha256"] = sha256_of(onnx)
    (version_dir / "deepfake_manifest.json").write_text(json.dumps(manifest))


def test_promotion_under_load_with_zero_failed_requests(server, repository, weights, tmp_path):
    build_classifier_version(VARIANT, 2, [weights], label="2.0", repository=repository)
    target = TritonTarget(VARIANT, server.http_url, server.metrics_url)
    assert target.serving_version() == "1"
    load = live_load(server, target, tmp_path, seconds=120)
    try:  # the score shift judged too (the same weights: no shift), once each version has 5 answers
        assert rollout(target, tmp_path, dataclasses.replace(POLICY, max_score_psi=0.5, min_score_answers=5)).run("2") == "2"
    finally:
        stats = load.finish(stop=True)
    assert int(stats["Aggregated"]["Failure Count"]) == 0, stats["output"]
    assert int(stats["image 1"]["Request Count"]) > 0 and int(stats["image 2"]["Request Count"]) > 0, stats["output"]
    assert target.labels == {"1": "1.0", "2": "2.0"}
    assert target.serving_version() == "2"
    assert TritonClient(server.http_url).predict(VARIANT, samples.astronaut_jpeg()).body["version"] == "2.0"
    assert steps(tmp_path) == [("start", "ok"), ("register", "ok"), ("warm_up", "ok"), ("shadow", "ok"),
                               ("gate", "skipped"), ("canary", "started"), ("canary", "ok"), ("promote", "ok")]
    canary = entries(tmp_path)[6]["figures"]
    assert canary["candidate_requests"] > 0 and canary["candidate_error_ratio"] == 0.0  # Triton counts failures
    assert min(canary["score_answers"].values()) >= 5 and canary["score_psi"] <= 0.5, canary
    # Triton's own p95 per version (summary_latencies), recorded; not judged: its 60 s window still holds
    # the candidate's warm-up and shadow requests after a 6 s canary
    p95 = canary["server_p95_ms"]
    assert p95["serving"] > 0 and p95["candidate"] > 0 and p95["judged"] is False


def test_triton_p95_is_judged_once_its_window_holds_the_canary_alone(tmp_path):
    job = Rollout(TritonTarget(VARIANT, "http://127.0.0.1:9", "http://127.0.0.1:9/metrics"),
                  AuditLog(tmp_path / "audit.jsonl"), tmp_path / "split.json", policy=POLICY)
    job.serving, job.candidate = "1", "2"
    idle = {"1": Counters(), "2": Counters()}
    slow_tail = {"1": {0.95: 100.0}, "2": {0.95: 250.0}}
    failing, slow, figures = job._guard_rails(idle, {}, {"1": VersionStats(), "2": VersionStats()}, slow_tail, True)
    assert failing == [] and slow == ["candidate p95 250 ms > 2.0× serving 100 ms (server summary over the last 60 s)"]
    assert figures["server_p95_ms"] == {"serving": 100.0, "candidate": 250.0, "judged": True}
    assert job._guard_rails(idle, {}, {"1": VersionStats(), "2": VersionStats()}, slow_tail, False)[1] == []


def test_a_candidate_that_answers_errors_is_rolled_back_under_load(server, repository, weights, tmp_path):
    """Version 3 loads (its checksum holds) but was exported for 380-pixel faces: every request
    through it fails in its runtime. Rolled back at warm-up; live traffic never sees it."""
    target = TritonTarget(VARIANT, server.http_url, server.metrics_url)
    serving = target.serving_version()
    replace_onnx(build_classifier_version(VARIANT, 3, [weights], label="3.0", repository=repository),
                 get_variant("b4-keras-head"), [get_variant("b4-keras-head").build()])
    load = live_load(server, target, tmp_path, seconds=120)
    try:
        with pytest.raises(RolloutError, match="warm_up"):
            rollout(target, tmp_path).run("3")
    finally:
        stats = load.finish(stop=True)
    assert int(stats["Aggregated"]["Request Count"]) > 0 and int(stats["Aggregated"]["Failure Count"]) == 0, \
        stats["output"]
    assert steps(tmp_path)[-2:] == [("warm_up", "failed"), ("rollback", "ok")]
    message = AuditLog(tmp_path / "audit.jsonl").entries()[-2]["message"]
    assert re.search(r"Expected: 380|expecting \[4,3,380,380\]", message), message  # ONNX Runtime's or OpenVINO's words
    assert target.serving_version() == serving and "3" not in target.versions()
    index = server.repository_index(ready_only=True)
    assert pinned_ensemble(VARIANT, 3) not in {m["name"] for m in index}
    assert TritonClient(server.http_url).predict(VARIANT, samples.astronaut_jpeg()).ok


def test_a_slow_candidate_breaches_the_canary_guard_rail_under_load(server, repository, weights, tmp_path):
    """Version 5 is a B7 at the same 224-pixel input: right answers, ~3× the classifier time of the
    B4. It reaches the canary (the shadow does not judge latency) and Triton's per-version latency
    stops it; a second rollout started meanwhile is refused; no live request fails."""
    target = TritonTarget(VARIANT, server.http_url, server.metrics_url)
    serving = target.serving_version()
    b7 = get_variant("b7-dfdc")
    b7_at_224 = dataclasses.replace(b7, preprocessing=dataclasses.replace(b7.preprocessing, input_size=224))
    replace_onnx(build_classifier_version(VARIANT, 5, [weights], label="5.0", repository=repository),
                 b7_at_224, [b7.build()])
    load = live_load(server, target, tmp_path, seconds=300)
    try:
        first, second = second_rollout_during_canary(
            lambda: rollout(target, tmp_path, dataclasses.replace(POLICY, max_latency_ratio=1.5)).run("5"),
            lambda: rollout(target, tmp_path).run("2"), tmp_path / "split.json")
        time.sleep(3)  # live traffic keeps going to the serving version after the rollback
    finally:
        stats = load.finish(stop=True)
    assert isinstance(first, RolloutError) and "canary" in str(first) and "latency" in str(first), first
    assert isinstance(second, RolloutError) and "already running" in str(second), second
    assert int(stats["Aggregated"]["Failure Count"]) == 0, stats["output"]
    assert int(stats.get("image 5", {}).get("Request Count", 0)) > 0, stats  # live traffic reached it
    assert ("start", "refused") in steps(tmp_path) and ("canary", "breach") in steps(tmp_path)
    assert steps(tmp_path)[-1] == ("rollback", "ok")
    assert target.serving_version() == serving and "5" not in target.versions()
    assert Split.load(tmp_path / "split.json") == Split(VARIANT, serving)


def test_a_triton_that_is_down_stops_the_rollout_cleanly(server, tmp_path):
    with pytest.raises(RolloutError, match="start"):
        rollout(TritonTarget(VARIANT, "http://127.0.0.1:9", "http://127.0.0.1:9/metrics"), tmp_path).run("2")
    entry = AuditLog(tmp_path / "audit.jsonl").entries()[-1]
    assert (entry["step"], entry["outcome"]) == ("start", "failed") and "unavailable" in entry["message"]
    assert TritonClient(server.http_url).predict(VARIANT, samples.astronaut_jpeg()).ok


def test_the_serving_version_is_refused_as_a_candidate(server, tmp_path):
    target = TritonTarget(VARIANT, server.http_url, server.metrics_url)
    serving = target.serving_version()
    with pytest.raises(RolloutError, match="serving version already"):
        rollout(target, tmp_path).run(serving)
    assert steps(tmp_path)[-2:] == [("register", "failed"), ("rollback", "ok")]
    assert target.serving_version() == serving
    assert TritonClient(server.http_url).predict(VARIANT, samples.astronaut_jpeg()).ok


def test_a_version_that_cannot_load_leaves_the_serving_version(server, repository, weights, tmp_path):
    target = TritonTarget(VARIANT, server.http_url, server.metrics_url)
    serving = target.serving_version()
    broken = build_classifier_version(VARIANT, 4, [weights], label="4.0", repository=repository)
    (broken / GRAPH_NAME).write_bytes((broken / GRAPH_NAME).read_bytes()[:-100] + b"\0" * 100)
    with pytest.raises(RolloutError, match="register"):
        rollout(target, tmp_path).run("4")
    entry, rollback = AuditLog(tmp_path / "audit.jsonl").entries()[-2:]
    assert (entry["step"], entry["outcome"]) == ("register", "failed") and "4" in entry["message"]
    assert (rollback["step"], rollback["figures"]["removed"]) == ("rollback", [])
    assert target.serving_version() == serving and "4" not in target.versions()
    assert TritonClient(server.http_url).predict(VARIANT, samples.astronaut_jpeg()).ok
