"""A/B rollout on a real TorchServe under a running Locust load: promotion, automatic rollbacks for
each fault, the observed traffic split, and the audit log."""

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

import psutil
import pytest
import requests
import torch

from deepfake_serving.evaluation.metrics import evaluate, labelled_files, worse
from deepfake_serving.media import samples
from deepfake_serving.rollout.audit import AuditLog
from deepfake_serving.rollout.controller import Rollout, RolloutError, RolloutPolicy
from deepfake_serving.rollout.files import write_atomically
from deepfake_serving.rollout.lease import Lease, LeaseFile, LeaseHeld
from deepfake_serving.rollout.nginx import Nginx
from deepfake_serving.rollout.routing import RoutedClient, Split, bucket
from deepfake_serving.rollout.targets import TorchServeTarget
from deepfake_serving.serving.client.clients import Prediction, RestClient, RetryPolicy
from deepfake_serving.serving.launch.archive import build_archive, build_ensemble_archive
from deepfake_serving.serving.launch.nginx import nginx_binary
from deepfake_serving.serving.launch.processes import free_ports
from deepfake_serving.serving.launch.torchserve import Ports, TorchServe
from deepfake_serving.variants import get_variant
from helpers.live_load import Load, second_rollout_during_canary

MODEL = "b4-mobile"
FAST = RolloutPolicy(warmup_requests=10, shadow_rounds=4, canary_weight=50, watch_s=6, check_every_s=2, drain_s=4,
                     min_canary_requests=1)


# -- pieces without a server ----------------------------------------------------------------------
def test_routing_is_sticky_and_monotonic_in_the_weight():
    keys = [f"user-{i}" for i in range(2000)]
    at10 = {k for k in keys if Split(MODEL, "1.0", "2.0", 10).version_for(k) == "2.0"}
    at30 = {k for k in keys if Split(MODEL, "1.0", "2.0", 30).version_for(k) == "2.0"}
    assert at10 < at30  # raising the weight only moves keys to the candidate
    assert abs(len(at30) / len(keys) - 0.30) < 0.03
    assert all(Split(MODEL, "1.0", "2.0", 30).version_for(k) == "2.0" for k in at30)  # same answer again
    assert 0 <= bucket("x") < 1 and bucket("x") == bucket("x")


def test_evaluation_metrics_and_confusion():
    result = evaluate([0, 0, 1, 1, 1], [0.1, 0.7, 0.8, 0.9, None])
    assert result.confusion == [[1, 1], [0, 2]] and result.no_verdict == 1
    assert (result.accuracy, result.recall, result.specificity) == (0.75, 1.0, 0.5)
    assert result.precision == pytest.approx(2 / 3) and result.roc_auc == 1.0
    assert result.average_precision == 1.0 and result.eer == 0.0
    assert result.ece == pytest.approx((0.1 + 0.7 + 0.2 + 0.1) / 4)  # one item per bin: |label - score|


def test_the_gate_knows_which_way_each_metric_improves():
    assert worse("f1", 0.80, 0.85, 0.02) and not worse("f1", 0.84, 0.85, 0.02)
    assert worse("eer", 0.20, 0.15, 0.02) and not worse("eer", 0.10, 0.15, 0.02)  # a lower EER is better
    assert worse("ece", 0.10, 0.05, 0.02) and not worse("roc_auc", 0.5, None, 0.02)


def test_the_gate_labels_as_the_server_does():
    """FAKE above the threshold, as aggregation.label_for (a score at the threshold is REAL), at the
    threshold each answer carries."""
    assert evaluate([0, 1], [0.5, 0.6], 0.5).confusion == [[1, 0], [0, 1]]
    assert evaluate([0, 1], [0.5, 0.6], [0.4, 0.7]).confusion == [[0, 1], [1, 0]]


def test_a_labelled_folder_with_videos_is_refused_up_front(tmp_path):
    for name in ("Real", "Fake"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "a.jpg").write_bytes(b"x")
    assert len(labelled_files(tmp_path)) == 2
    (tmp_path / "Fake" / "clip.MP4").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"holds 1 videos \(e.g. Fake/clip.MP4\).*image model"):
        labelled_files(tmp_path)


def test_a_lease_tells_a_live_owner_from_a_dead_one(tmp_path):
    path = tmp_path / "m.split.lease"
    mine = Lease.mine(MODEL, "torchserve", ttl_s=0.3)
    held = LeaseFile(path)
    held.acquire(mine)
    assert oct(path.stat().st_mode & 0o777) == "0o644" and held.read().owner_alive()
    with pytest.raises(LeaseHeld, match=f"pid {mine.pid}"):
        LeaseFile(path).acquire(Lease.mine(MODEL, "torchserve", 30))
    time.sleep(0.5)
    assert held.read().renewed > mine.renewed  # renewed while held
    held.update(serving="1.0", candidate="2.0", versions_before=["1.0"], phase="canary")
    assert (held.read().serving, held.read().phase) == ("1.0", "canary")
    held.release()
    assert not path.exists() and not list(tmp_path.iterdir())  # no temporary files either

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = replace(mine, pid=child.pid, process_started=psutil.Process(child.pid).create_time())
    assert dead.owner_alive()
    child.kill()
    time.sleep(0.5)
    assert not dead.owner_alive()  # killed, not yet reaped: a zombie is no owner
    child.wait()
    assert not dead.owner_alive()  # its pid is gone
    assert not replace(mine, process_started=mine.process_started - 100).owner_alive()  # a reused pid
    far = replace(mine, host="elsewhere", renewed=time.time())
    assert far.owner_alive() and not replace(far, renewed=time.time() - 1).owner_alive()  # ttl 0.3 s

    write_atomically(path, json.dumps(asdict(dead)))
    assert LeaseFile(path).claim(dead) and not path.exists()
    assert not LeaseFile(path).claim(dead)  # of two recoverers one wins
    write_atomically(path, json.dumps(asdict(far)))
    assert not LeaseFile(path).claim(dead) and LeaseFile(path).read() == far  # another lease is put back


def test_triton_versions_sort_as_integers(monkeypatch):
    from deepfake_serving.rollout.targets import TritonTarget

    target = TritonTarget(MODEL, "http://127.0.0.1:9", "http://127.0.0.1:9/metrics")
    index = [{"name": target.names["classifier"], "version": v} for v in ("10", "2", "1")]
    monkeypatch.setattr(target, "_index", lambda: index)
    assert target.versions() == ["1", "2", "10"]


def test_audit_log_is_append_only_jsonl(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl")
    log.append(model=MODEL, serving="1.0", candidate="2.0", step="start", outcome="ok")
    log.append(model=MODEL, serving="1.0", candidate="2.0", step="register", outcome="failed", message="x",
               figures={"n": 3})
    entries = log.entries()
    assert [e["step"] for e in entries] == ["start", "register"] and entries[1]["figures"] == {"n": 3}
    assert all(e["time"] for e in entries)


# -- a real TorchServe ------------------------------------------------------------------------------
def checkpoint(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    torch.save(get_variant(MODEL).build().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """1.0 serves; 2.0 re-packages 1.0's weights (a release that must pass every gate); 3.0 is
    misconfigured as a video model (answers every image with 415); 4.0 is a B7 under the same
    name (real, and ~10× slower); 5.0's weights fail their checksum (cannot load); 6.0 is 2.0
    again, for the command-line rollout; 7.0 too, for the rollouts that are stopped or killed;
    8.0 is an ensemble archive under the same name (two members with 1.0's weights)."""
    store = tmp_path_factory.mktemp("store")
    weights = checkpoint(store / "weights.pt", 1)
    # Two versions share the 2 cores during a rollout: one torch thread per worker, or they oversubscribe.
    # The torch engine: no ONNX export and no reduced-precision proof (~15 s a build, ~55 s the B7's);
    # the gates judge answers and latency, whatever engine computes them.
    one = {"model_config": {"handler": {"threads": 1}}, "engine": "torch"}
    build_archive(MODEL, "1.0", checkpoints=[weights], export_path=store, **one)
    build_archive(MODEL, "2.0", checkpoints=[weights], export_path=store, **one)
    build_archive(MODEL, "3.0", checkpoints=[weights], export_path=store, media="video", model_name=MODEL, **one)
    build_archive("b7-dfdc", "4.0", export_path=store, model_name=MODEL, **one)
    broken = build_archive(MODEL, "5.0", checkpoints=[weights], export_path=store, **one)
    build_archive(MODEL, "6.0", checkpoints=[weights], export_path=store, **one)
    build_archive(MODEL, "7.0", checkpoints=[weights], export_path=store, **one)
    build_ensemble_archive(MODEL, "8.0", [(MODEL, [str(weights)]), (MODEL, [str(weights)])], export_path=store,
                           model_config=one["model_config"], engine="torch")
    import zipfile
    with zipfile.ZipFile(broken) as z:
        members = {n: z.read(n) for n in z.namelist()}
    members["weights.safetensors"] = members["weights.safetensors"][:-64] + b"\0" * 64
    with zipfile.ZipFile(broken, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return store


@pytest.fixture(scope="module")
def server(tmp_path_factory, store):
    ts = TorchServe(store, tmp_path_factory.mktemp("ts"), models=[f"{MODEL}={MODEL}-v1.0.mar"], ports=Ports.free())
    with ts:
        yield ts


@pytest.fixture(scope="module")
def target(server):
    return TorchServeTarget(MODEL, server.inference_url, server.management_url, f"{server.metrics_url}/metrics")


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    root = tmp_path_factory.mktemp("labelled")
    (root / "Real").mkdir()
    (root / "Fake").mkdir()
    (root / "Real" / "astronaut.jpg").write_bytes(samples.astronaut_jpeg())
    (root / "Real" / "two.jpg").write_bytes(samples.encode(samples.two_faces()))
    (root / "Fake" / "astronaut_q60.jpg").write_bytes(samples.encode(samples.astronaut(), quality=60))
    (root / "Fake" / "flipped.png").write_bytes(samples.encode(samples.astronaut()[:, ::-1], "PNG"))
    return root


def rollout(target, tmp_path, **kwargs) -> Rollout:
    options = {"policy": FAST, "probes": [samples.astronaut_jpeg()], **kwargs}
    return Rollout(target, AuditLog(tmp_path / "audit.jsonl"), tmp_path / "split.json", **options)


def test_promotion_under_load_with_zero_failed_requests(server, target, labelled, tmp_path):
    Split(MODEL, "1.0").save(tmp_path / "split.json")
    load = Load(server.inference_url, "RoutedTorchServeUser", tmp_path / "split.json", tmp_path / "load", seconds=35)
    try:
        job = rollout(target, tmp_path, labelled_folder=labelled, reports=tmp_path / "reports")
        assert job.run(Path(server.model_store) / f"{MODEL}-v2.0.mar") == "2.0"
    finally:
        stats = load.finish()
    assert int(stats["Aggregated"]["Failure Count"]) == 0, stats
    assert int(stats["image 1.0"]["Request Count"]) > 0 and int(stats["image 2.0"]["Request Count"]) > 0
    assert target.serving_version() == "2.0" and Split.load(tmp_path / "split.json").serving == "2.0"
    # (a single slow check on these shared cores is noted as ("canary", "slow") and watched on: not a step)
    entries = [e for e in AuditLog(tmp_path / "audit.jsonl").entries() if e["outcome"] != "slow"]
    assert [(e["step"], e["outcome"]) for e in entries] == [
        ("start", "ok"), ("register", "ok"), ("warm_up", "ok"), ("shadow", "ok"), ("gate", "ok"),
        ("canary", "started"), ("canary", "ok"), ("promote", "ok")]
    gate = entries[4]["figures"]
    assert set(gate["candidate"]) >= {"accuracy", "precision", "recall", "f1", "specificity", "roc_auc", "confusion"}
    assert (tmp_path / "reports" / f"confusion_{MODEL}_2.0.png").stat().st_size > 1000
    assert entries[6]["figures"]["candidate_requests"] > 0


def assert_rolled_back(target, tmp_path, step: str, serving: str):
    entries = AuditLog(tmp_path / "audit.jsonl").entries()
    assert any(e["step"] == step and e["outcome"] in ("failed", "breach") for e in entries), entries
    assert entries[-1]["step"] == "rollback" and entries[-1]["outcome"] == "ok"
    assert target.serving_version() == serving
    assert Split.load(tmp_path / "split.json") == Split(MODEL, serving)
    assert RestClient(target.client.url).predict(MODEL, samples.astronaut_jpeg()).body["version"] == serving


def test_a_candidate_that_answers_errors_is_rolled_back(server, target, tmp_path):
    serving = target.serving_version()
    with pytest.raises(RolloutError, match="shadow|warm_up"):
        rollout(target, tmp_path).run(Path(server.model_store) / f"{MODEL}-v3.0.mar")
    assert_rolled_back(target, tmp_path, "warm_up", serving)
    assert "3.0" not in target.versions()


def test_a_slow_candidate_breaches_the_canary_guard_rail_under_load(server, target, tmp_path):
    """Also: a second rollout started while this one watches its canary is refused."""
    serving = target.serving_version()
    # Locust's users are keyed user-0-0 … user-0-3; at 50 % user-0-0 (bucket 0.359) is on the canary.
    assert sum(bucket(f"user-0-{i}") < 0.5 for i in range(4)) == 1
    Split(MODEL, serving).save(tmp_path / "split.json")
    load = Load(server.inference_url, "RoutedTorchServeUser", tmp_path / "split.json", tmp_path / "load", seconds=300)
    # the shadow does not judge latency, so the B7 reaches the canary, where the probes must stop it
    policy = RolloutPolicy(**{**FAST.__dict__, "warmup_requests": 3, "shadow_rounds": 1, "watch_s": 10,
                              "max_latency_ratio": 1.5})
    try:
        first, second = second_rollout_during_canary(
            lambda: rollout(target, tmp_path, policy=policy).run(Path(server.model_store) / f"{MODEL}-v4.0.mar"),
            lambda: rollout(target, tmp_path).run(Path(server.model_store) / f"{MODEL}-v2.0.mar"),
            tmp_path / "split.json")
        time.sleep(3)  # load keeps running on the serving version after the rollback
    finally:
        stats = load.finish(stop=True)
    assert isinstance(first, RolloutError) and "canary" in str(first) and "latency" in str(first), first
    assert isinstance(second, RolloutError) and "already running" in str(second), second
    assert int(stats["Aggregated"]["Failure Count"]) == 0, stats
    assert int(stats.get("image 4.0", {}).get("Request Count", 0)) > 0  # live traffic reached the canary
    steps = [(e["step"], e["outcome"]) for e in AuditLog(tmp_path / "audit.jsonl").entries()]
    assert ("start", "refused") in steps and ("canary", "breach") in steps and steps[-1] == ("rollback", "ok")
    assert target.serving_version() == serving and "4.0" not in target.versions()
    assert Split.load(tmp_path / "split.json") == Split(MODEL, serving)


def test_a_candidate_that_fails_to_load_leaves_the_serving_version(server, target, tmp_path):
    serving = target.serving_version()
    with pytest.raises(RolloutError, match="register"):
        rollout(target, tmp_path).run(Path(server.model_store) / f"{MODEL}-v5.0.mar")
    entries = AuditLog(tmp_path / "audit.jsonl").entries()
    assert (entries[-2]["step"], entries[-2]["outcome"]) == ("register", "failed") and entries[-2]["message"]
    assert (entries[-1]["step"], entries[-1]["outcome"], entries[-1]["figures"]["removed"]) == ("rollback", "ok", [])
    assert target.serving_version() == serving and "5.0" not in target.versions()


def test_a_management_api_that_is_down_stops_the_rollout_cleanly(server, tmp_path):
    dead = TorchServeTarget(MODEL, server.inference_url, "http://127.0.0.1:9", f"{server.metrics_url}/metrics")
    with pytest.raises(RolloutError, match="start"):
        rollout(dead, tmp_path).run(Path(server.model_store) / f"{MODEL}-v2.0.mar")
    entry = AuditLog(tmp_path / "audit.jsonl").entries()[-1]
    assert (entry["step"], entry["outcome"]) == ("start", "failed") and "unavailable" in entry["message"]
    assert RestClient(server.inference_url).predict(MODEL, samples.astronaut_jpeg()).ok


def test_any_failure_after_register_rolls_back(server, target, tmp_path, monkeypatch):
    """Not only RolloutError: a connection reset in the middle of the shadow rolls back too."""
    serving, calls = target.serving_version(), itertools.count()

    def predict(version, data):
        if next(calls) == FAST.warmup_requests + 3:
            raise requests.ConnectionError("connection reset by peer")
        return TorchServeTarget.predict(target, version, data)

    monkeypatch.setattr(target, "predict", predict)
    with pytest.raises(requests.ConnectionError):
        rollout(target, tmp_path).run(Path(server.model_store) / f"{MODEL}-v7.0.mar")
    assert_rolled_back(target, tmp_path, "shadow", serving)
    assert "ConnectionError: connection reset by peer" in AuditLog(tmp_path / "audit.jsonl").entries()[-1]["message"]
    assert "7.0" not in target.versions() and not (tmp_path / "split.lease").exists()


def cli_rollout(server, state: Path, candidate: str, *options: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "deepfake_serving.cli", "rollout", *([candidate] if candidate else []),
         "--model", MODEL, "--inference-url", server.inference_url, "--management-url", server.management_url,
         "--metrics-url", f"{server.metrics_url}/metrics", "--state-dir", str(state), *options],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_canary(state: Path, process: subprocess.Popen, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        if any(e["step"] == "canary" for e in AuditLog(state / "audit.jsonl").entries()):
            return
        time.sleep(0.3)
    raise AssertionError(f"no canary: {process.poll()} {AuditLog(state / 'audit.jsonl').entries()}")


def test_abort_stops_a_running_rollout_which_rolls_back_on_sigterm(server, target, tmp_path):
    """`rollout --abort MODEL` sends the running controller SIGTERM; it rolls back, audits and exits 143."""
    serving, state = target.serving_version(), tmp_path / "state"
    controller = cli_rollout(server, state, str(Path(server.model_store) / f"{MODEL}-v7.0.mar"), "--watch", "600")
    wait_for_canary(state, controller)
    assert Split.load(state / f"{MODEL}.split.json").candidate == "7.0"
    abort = cli_rollout(server, state, "", "--abort", MODEL)
    assert abort.wait(timeout=120) == 0 and "was stopped and rolled back" in abort.stdout.read()
    assert controller.wait(timeout=60) == 143, controller.stderr.read()
    steps = [(e["step"], e["outcome"]) for e in AuditLog(state / "audit.jsonl").entries()]
    assert steps[-2:] == [("canary", "stopped"), ("rollback", "ok")], steps
    assert "stopped by SIGTERM" in AuditLog(state / "audit.jsonl").entries()[-1]["message"]
    assert Split.load(state / f"{MODEL}.split.json") == Split(MODEL, serving)
    assert target.serving_version() == serving and "7.0" not in target.versions()
    assert not (state / f"{MODEL}.split.lease").exists()


def test_a_killed_rollout_is_recovered_under_live_load(server, target, tmp_path):
    """kill -9 mid-canary under routed load: the lease stays behind; `rollout --abort` finds its owner
    dead, puts every user back on the serving version and unregisters the orphaned candidate; no client
    request fails throughout."""
    serving, state = target.serving_version(), tmp_path / "state"
    split_file = state / f"{MODEL}.split.json"
    Split(MODEL, serving).save(split_file)
    load = Load(server.inference_url, "RoutedTorchServeUser", split_file, tmp_path / "load", seconds=300)
    try:
        controller = cli_rollout(server, state, str(Path(server.model_store) / f"{MODEL}-v7.0.mar"),
                                 "--watch", "600", "--weight", "50")
        wait_for_canary(state, controller)
        time.sleep(3)  # live traffic on the canary
        controller.send_signal(signal.SIGKILL)
        controller.wait()
        lease = json.loads((state / f"{MODEL}.split.lease").read_text())
        assert (lease["pid"], lease["candidate"], lease["phase"]) == (controller.pid, "7.0", "canary")
        assert Split.load(split_file).weight == 50
        abort = cli_rollout(server, state, "", "--abort", MODEL)
        assert abort.wait(timeout=120) == 0, abort.stderr.read()
        time.sleep(3)  # load goes on, on the serving version
    finally:
        stats = load.finish(stop=True)
    assert int(stats["Aggregated"]["Failure Count"]) == 0, stats
    assert int(stats.get("image 7.0", {}).get("Request Count", 0)) > 0  # live traffic reached the canary
    entry = AuditLog(state / "audit.jsonl").entries()[-1]
    assert (entry["step"], entry["outcome"]) == ("recover", "recovered") and entry["figures"]["removed"] == ["7.0"]
    assert Split.load(split_file) == Split(MODEL, serving)
    assert target.serving_version() == serving and "7.0" not in target.versions()
    assert not (state / f"{MODEL}.split.lease").exists()


def test_a_later_rollout_recovers_a_dead_owners_leftovers_then_proceeds(server, target, tmp_path):
    serving = target.serving_version()
    before = target.versions()
    target.register(Path(server.model_store) / f"{MODEL}-v7.0.mar")  # the dead owner's candidate
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    dead = replace(Lease.mine(MODEL, "torchserve", 30), pid=child.pid, serving=serving, candidate="7.0",
                   versions_before=before, phase="shadow")
    write_atomically(tmp_path / "split.lease", json.dumps(asdict(dead)))
    Split(MODEL, serving, "7.0", 10).save(tmp_path / "split.json")
    with pytest.raises(RolloutError, match="warm_up"):  # 3.0 answers images with 415
        rollout(target, tmp_path).run(Path(server.model_store) / f"{MODEL}-v3.0.mar")
    steps = [(e["step"], e["outcome"]) for e in AuditLog(tmp_path / "audit.jsonl").entries()]
    assert steps[:3] == [("recover", "recovered"), ("start", "ok"), ("register", "ok")], steps
    assert_rolled_back(target, tmp_path, "warm_up", serving)
    assert {"7.0", "3.0"}.isdisjoint(target.versions())


@pytest.mark.parametrize("route", ["python client", "nginx split_clients"])
def test_the_observed_split_over_2000_requests(server, target, tmp_path, route):
    """Both versions registered, 25 % of keys to the other one: 2000 real requests (a small image
    without a face, so each is cheap) from 2000 users land within ±3 points of the weight, and
    200 of those users asking again get the same version."""
    if route.startswith("nginx") and nginx_binary() is None:
        pytest.skip("no nginx here: `make install` unpacks Debian's package when apt can reach it")
    serving = target.serving_version()
    other = "1.0" if serving != "1.0" else "2.0"
    registered_here = other not in target.versions()
    if registered_here:
        target.register(Path(server.model_store) / f"{MODEL}-v{other}.mar")
    split = Split(MODEL, serving, other, 25)
    image = samples.encode(samples.no_face()[:64, :64])
    keys = [f"user-{i}" for i in range(2000)] + [f"user-{i}" for i in range(0, 2000, 10)]
    proxy = None
    try:
        if route == "python client":
            split.save(tmp_path / "split.json")
            routed = RoutedClient(RestClient(server.inference_url), tmp_path / "split.json")
            send = lambda key: routed.predict(image, key)  # noqa: E731
        else:
            proxy = Nginx(tmp_path / "nginx", free_ports(1)[0], server.inference_url).start(split)
            local = threading.local()

            def send(key):
                local.session = getattr(local, "session", None) or requests.Session()
                response = local.session.post(f"{proxy.url}/predictions/{MODEL}", data=image,
                                              headers={"X-User-Id": key}, timeout=60)
                return response.headers["X-Model-Version"], Prediction(response.status_code, response.json())
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda key: (key, *send(key)), keys))
        assert all(p.ok and p.body["version"] == v for _, v, p in answers)
        share = sum(v == other for _, v, _ in answers[:2000]) / 2000
        assert abs(share - 0.25) <= 0.03, share
        by_key = {}
        for key, version, _ in answers:
            by_key.setdefault(key, set()).add(version)
        assert all(len(versions) == 1 for versions in by_key.values())  # sticky
        if proxy:
            # The front's own refusals and our handler's errors both reach clients in the project's format.
            url = f"{proxy.url}/predictions/{MODEL}"
            huge = requests.post(url, data=image, headers={"X-Padding": "x" * 40_000}, timeout=30)
            assert (huge.status_code, huge.json()["error"]["code"]) == (431, "headers_too_large")
            empty = requests.post(url, data=b"", timeout=30)
            assert (empty.status_code, empty.json()["error"]["code"]) == (400, "empty_body")
            # a rollback rewrites the split and reloads nginx: everyone back on the serving version
            proxy.apply(Split(MODEL, serving))
            assert {send(k)[0] for k in keys[:40]} == {serving}
    finally:
        if proxy:
            proxy.stop()
        if registered_here:
            target.remove(other)


def test_the_command_line_rolls_out_behind_nginx(server, target, tmp_path):
    """`deepfake-serving nginx` fronts TorchServe for clients that are not ours, and `deepfake-serving
    rollout --nginx-prefix` moves them: keys on the canary reach the candidate while it is watched,
    every key after the promotion, and not one request fails on the way."""
    if nginx_binary() is None:
        pytest.skip("no nginx here: `make install` unpacks Debian's package when apt can reach it")
    serving, state, prefix, port = target.serving_version(), tmp_path / "state", tmp_path / "nginx", free_ports(1)[0]
    servers = ["--model", MODEL, "--inference-url", server.inference_url, "--management-url", server.management_url]
    cli = [sys.executable, "-m", "deepfake_serving.cli"]
    front = subprocess.Popen([*cli, "nginx", *servers, "--port", str(port), "--prefix", str(prefix),
                              "--state-dir", str(state)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url, image = f"http://127.0.0.1:{port}/predictions/{MODEL}", samples.astronaut_jpeg()  # as the probes
    keys = [f"client-{i}" for i in range(8)]  # at 25 %: client-0 and client-5 are on the canary
    assert [k for k in keys if bucket(k) < 0.25] == ["client-0", "client-5"]
    seen, stop = [], threading.Event()

    def clients():
        session = requests.Session()
        for key in itertools.cycle(keys):
            if stop.is_set():
                return
            try:
                response = session.post(url, data=image, headers={"X-User-Id": key}, timeout=60)
            except requests.RequestException as err:
                seen.append((key, None, None, repr(err)))
                continue
            json_body = response.headers.get("Content-Type", "").startswith("application/json")
            seen.append((key, response.status_code, response.headers.get("X-Model-Version"),
                         response.json().get("version") if json_body else response.text[:300]))

    traffic = threading.Thread(target=clients)
    try:
        while "Ctrl-C" not in front.stdout.readline() and front.poll() is None:
            pass  # nginx answers once the command says so
        traffic.start()
        run = subprocess.run([*cli, "rollout", str(Path(server.model_store) / f"{MODEL}-v6.0.mar"), *servers,
                              "--metrics-url", f"{server.metrics_url}/metrics", "--weight", "25", "--watch", "6",
                              "--check-every", "2", "--state-dir", str(state), "--nginx-prefix", str(prefix)],
                             capture_output=True, text=True, timeout=300)
        promoted_at = len(seen) + 1  # the request in flight may have been routed before the promotion
        deadline = time.monotonic() + 60
        while len(seen) < promoted_at + len(keys) and time.monotonic() < deadline and traffic.is_alive():
            time.sleep(0.2)
    finally:
        stop.set()
        if traffic.is_alive():
            traffic.join(timeout=120)
        front.send_signal(signal.SIGINT)
        output, _ = front.communicate(timeout=60)
    assert run.returncode == 0, run.stderr + output
    assert json.loads(run.stdout.splitlines()[-1])["serving"] == "6.0"
    assert seen and all(status == 200 and header == answered for _, status, header, answered in seen), seen[-5:]
    def first_answer_from_the_candidate(group: set[str]) -> int:
        return next(i for i, (key, _, header, _) in enumerate(seen) if key in group and header == "6.0")

    # the canary keys reach the candidate first (while it is watched), the others after the promotion
    assert first_answer_from_the_candidate({"client-0", "client-5"}) < first_answer_from_the_candidate({"client-3"})
    assert {header for key, _, header, _ in seen if key == "client-3"} == {serving, "6.0"}
    after = seen[promoted_at:]
    assert len(after) >= len(keys) and {header for _, _, header, _ in after} == {"6.0"}, after
    assert front.returncode == 0 and not (prefix / "nginx.pid").exists()  # Ctrl-C stops nginx too


def test_an_ensemble_candidate_is_gated_and_promoted_like_a_single_model(server, target, labelled, tmp_path):
    """An ensemble archive named as the serving model is one more version to TorchServe: registered,
    warmed, shadowed, gated on its fused fake_probability, watched on the canary and promoted."""
    job = rollout(target, tmp_path, labelled_folder=labelled)
    assert job.run(Path(server.model_store) / f"{MODEL}-v8.0.mar") == "8.0"
    answer = RestClient(target.client.url).predict(MODEL, samples.astronaut_jpeg()).body
    assert answer["version"] == "8.0" and answer["ensemble"]["members"] == [MODEL, MODEL]
    steps = [(e["step"], e["outcome"]) for e in AuditLog(tmp_path / "audit.jsonl").entries() if e["outcome"] != "slow"]
    assert ("gate", "ok") in steps and steps[-1] == ("promote", "ok")


def test_kserve_inference_service_for_the_canary():
    from jsonschema import ValidationError

    from deepfake_serving.rollout.kserve import SCHEMA, inference_service, to_yaml

    manifest = inference_service("b4-mobile", "torchserve", "s3://models/b4-mobile/2.0", 10, "2.0")
    assert manifest["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert "canaryTrafficPercent: 10" in to_yaml(manifest)
    assert inference_service("b4-mobile", "triton", "gs://m/repo")["spec"]["predictor"]["model"]["protocolVersion"] == "v2"
    with pytest.raises(ValidationError):
        inference_service("b4-mobile", "torchserve", "s3://x", 150)
    with pytest.raises(ValidationError):
        inference_service("B4_Mobile", "torchserve", "s3://x")
    broken = {**manifest, "spec": {"predictor": {"model": {"storageUri": "s3://x"}}}}
    with pytest.raises(ValidationError, match="modelFormat"):
        import jsonschema
        jsonschema.validate(broken, SCHEMA)


def test_kserve_export_writes_a_layout_torchserve_serves_as_kserves_runtime_starts_it(store, tmp_path):
    """`kserve export` (TorchServe): config/config.properties and model-store/, served by TorchServe started
    as KServe's torchserve image starts it (its --model-store and --ts-config, the snapshot's models): the
    newest version answers unversioned requests without a key on loopback, nothing is registered over the
    management API, and the InferenceService printed validates."""
    out = tmp_path / "export"
    command = [sys.executable, "-m", "deepfake_serving.cli", "kserve", "export", "--out", str(out),
               "--storage-uri", "s3://models/b4-mobile", "--archive", str(store / f"{MODEL}-v1.0.mar"),
               "--archive", str(store / f"{MODEL}-v2.0.mar")]
    printed = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    assert "storageUri: s3://models/b4-mobile" in printed and "modelFormat:\n" in printed
    refused = subprocess.run(command, capture_output=True, text=True)
    assert refused.returncode == 2 and "is not empty" in refused.stderr
    assert sorted(p.name for p in (out / "model-store").iterdir()) == [f"{MODEL}-v1.0.mar", f"{MODEL}-v2.0.mar"]
    exported = (out / "config" / "config.properties").read_text()
    assert "model_store=/mnt/models/model-store\n" in exported and "inference_address=http://127.0.0.1:8085\n" in exported
    assert "vmargs=-Xmx1g" in exported

    # Here: free ports instead of 8085/8082/7070/7071, and the folder instead of /mnt/models.
    http, metrics, grpc, grpc_management = free_ports(4)
    config = tmp_path / "config.properties"
    config.write_text(exported.replace(":8085", f":{http}").replace(":8082", f":{metrics}").replace(
        "=7070", f"={grpc}").replace("=7071", f"={grpc_management}").replace("/mnt/models", str(out)))
    (tmp_path / "tmp").mkdir()
    env = {**os.environ, "TEMP": str(tmp_path / "tmp"), "LOG_LOCATION": str(tmp_path), "METRICS_LOCATION": str(tmp_path)}
    server = subprocess.Popen([sys.executable, "-m", "ts.model_server", "--start", "--foreground", "--model-store",
                               str(out / "model-store"), "--ts-config", str(config)], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{http}"
    try:
        answer, deadline = None, time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                answer = requests.post(f"{url}/predictions/{MODEL}", data=samples.astronaut_jpeg(), timeout=60)
                if answer.status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(1)
        assert answer is not None and answer.status_code == 200, answer and answer.text
        assert answer.json()["version"] == "2.0"
        assert requests.post(f"{url}/predictions/{MODEL}/1.0", data=samples.astronaut_jpeg(), timeout=60).json()[
            "version"] == "1.0"
        registered = requests.post(f"{url}/models", params={"url": f"{MODEL}-v6.0.mar"}, timeout=30)
        assert registered.status_code != 200
        assert requests.get(f"http://127.0.0.1:{metrics}/metrics", timeout=10).status_code == 200
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def test_the_front_survives_a_key_renewal_and_a_restart_after_a_failed_load(store, tmp_path):
    """The front wrote TorchServe's inference key into its configuration once: after a renewal or a restart
    every request through it got TorchServe's 400. It asks for the current key per request now. The restart
    also follows a failed registration in the same working directory (TorchServe appends to its logs; the
    launcher used to find that old "Load model failed" and refuse every later start)."""
    if nginx_binary() is None:
        pytest.skip("no nginx here: `make install` unpacks Debian's package when apt can reach it")
    ts = TorchServe(store, tmp_path / "ts", models=[f"{MODEL}={MODEL}-v1.0.mar"], ports=Ports.free()).start()
    proxy = None
    try:
        with pytest.raises(requests.HTTPError):
            ts.register(f"{MODEL}-v5.0.mar")  # its weights fail their checksum
        assert "Load model failed" in (ts.workdir / "logs" / "ts_log.log").read_text()
        proxy = Nginx(tmp_path / "nginx", free_ports(1)[0], ts.inference_url).start(Split(MODEL, "1.0"))
        assert requests.get(f"{proxy.url}/ping", timeout=10).status_code == 200  # health checks need no key
        explained = requests.post(f"{proxy.url}/explanations/{MODEL}", data=samples.astronaut_jpeg(), timeout=10)
        assert (explained.status_code, explained.json()["error"]["code"]) == (400, "explain_not_supported")
        assert requests.get(f"{proxy.url}/api-description", timeout=10).status_code == 404
        # our handler's 400 passes the front as it is; TorchServe's own 400 for a key it does not know
        # (the race of a renewal) becomes a retryable 503: a front holding a stale key shows it every time
        corrupt = requests.post(f"{proxy.url}/predictions/{MODEL}", data=samples.astronaut_jpeg()[:3000], timeout=30)
        assert (corrupt.status_code, corrupt.json()["error"]["code"]) == (400, "corrupt_image"), corrupt.text
        stale_key = tmp_path / "stale_key.json"
        write_atomically(stale_key, json.dumps({"inference": {"key": "stale"}}), mode=0o600)
        stale = Nginx(tmp_path / "stale", free_ports(1)[0], ts.inference_url, key_file=stale_key).start(Split(MODEL, "1.0"))
        try:
            refused = requests.post(f"{stale.url}/predictions/{MODEL}", data=samples.astronaut_jpeg(), timeout=30)
            assert (refused.status_code, refused.json()["error"]["code"]) == (503, "server_unavailable"), refused.text
        finally:
            stale.stop()
        # a client of ours through the front, retrying only what can succeed again (the restart's 502s)
        client = RestClient(proxy.url, retry=RetryPolicy(attempts=12, deadline_s=120))
        answers, stop = [], threading.Event()

        def traffic():
            while not stop.is_set():
                answers.append(client.predict(MODEL, samples.astronaut_jpeg()))

        sender = threading.Thread(target=traffic)
        sender.start()
        try:
            time.sleep(2)
            old = ts.keys.key("inference")
            renewed = requests.get(f"{ts.management_url}/token", params={"type": "inference"},
                                   headers=ts.keys.headers("API"), timeout=10)
            assert renewed.status_code == 200, renewed.text
            time.sleep(3)
            assert ts.keys.key("inference") != old
            before_restart = len(answers)
            ts.stop()
            ts.start()  # same ports and working directory: new keys
            time.sleep(3)
        finally:
            stop.set()
            sender.join(timeout=180)
        failed = [a for a in answers if a.status != 200]
        assert not failed, failed[:3]
        assert before_restart >= 2 and len(answers) > before_restart
        assert client.stats.retried >= 1  # the restart was crossed by retries
    finally:
        if proxy:
            proxy.stop()
        ts.stop()
