"""Servers that heal (serving.launch.supervisor), on real servers: Triton's classifier stub SIGKILLed three
times under four concurrent clients, then tritonserver itself SIGKILLed; TorchServe's frontend SIGKILLed.
No client request fails, none waits past the documented bound, and the model answers again in time."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest

from deepfake_serving.media import samples
from deepfake_serving.serving.client.clients import NO_RETRY, RestClient, TritonClient
from deepfake_serving.serving.launch.archive import build_archive
from deepfake_serving.serving.launch.processes import free_ports
from deepfake_serving.serving.launch.supervisor import model_control
from deepfake_serving.serving.launch.triton import Triton, TritonPorts, triton_supervisor
from deepfake_serving.serving.launch.triton_repository import build_classifier_version, write_configs

pytestmark = pytest.mark.server
VARIANT, ENSEMBLE, CLASSIFIER = "b4-mobile", "b4_mobile", "b4_mobile_classifier"
REQUEST_BOUND_S = 30.0  # a client's request across a heal: its timeout (30 s here) bounds any one wait
ANSWERS_AGAIN_S = 15.0  # after a stub kill (issue 23's target); after a tritonserver kill: 30 s


class Load:
    """Four clients predicting in a loop (the clients' default retries) until stopped; ``call(client)``
    with each thread's own client from ``make_client`` (tritonclient's are not shared across threads)."""

    def __init__(self, make_client, call, clients: int = 4):
        self.make_client, self.call, self.results, self.done = make_client, call, [], threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self):
        client = self.make_client()
        while not self.done.is_set():
            start = time.monotonic()
            answer = self.call(client)
            self.results.append((answer.status, time.monotonic() - start, answer.body.get("error")))

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        for thread in self.threads:
            thread.join(timeout=2 * REQUEST_BOUND_S)
        assert not any(thread.is_alive() for thread in self.threads), "a client is still waiting"


def answers_again(call, within_s: float) -> float:
    """Seconds until ``call`` (no retry) answers 200."""
    start = time.monotonic()
    while time.monotonic() - start < within_s:
        if call().status == 200:
            return time.monotonic() - start
        time.sleep(0.2)
    raise AssertionError(f"no answer within {within_s} s")


@pytest.fixture(scope="module")
def triton(tmp_path_factory):
    root = tmp_path_factory.mktemp("repository")
    write_configs(root, [VARIANT])
    build_classifier_version(VARIANT, 1, [], label="1.0", repository=root)
    with Triton(tmp_path_factory.mktemp("triton"), [ENSEMBLE], repository=root, ports=TritonPorts.free()) as server:
        yield server


def test_triton_heals_three_stub_kills_and_its_own_death_under_load(triton):
    image = samples.astronaut_jpeg()
    supervisor = triton_supervisor(triton, image_within_s=10.0, interval_s=1.0, probe_every_s=1.0).start()
    probe = TritonClient(triton.http_url, "http", timeout=5, retry=NO_RETRY)
    recoveries = []
    try:
        with Load(lambda: TritonClient(triton.http_url, "http", timeout=REQUEST_BOUND_S),
                  lambda client: client.predict(VARIANT, image)) as load:
            time.sleep(3)
            for _ in range(3):
                (victim,) = triton.stub_pids(f"{CLASSIFIER}/1/")
                os.kill(victim, signal.SIGKILL)
                time.sleep(0.5)  # the kill lands among in-flight requests
                recoveries.append(answers_again(lambda: probe.predict(VARIANT, image), ANSWERS_AGAIN_S))
                time.sleep(3)
            os.killpg(triton.process.pid, signal.SIGKILL)  # tritonserver itself, and its stubs
            time.sleep(0.5)
            recoveries.append(answers_again(lambda: probe.predict(VARIANT, image), 30.0))
            time.sleep(3)
    finally:
        supervisor.stop()
    failed = [r for r in load.results if r[0] != 200]
    print(f"{len(load.results)} requests, {len(failed)} failed, longest {max(r[1] for r in load.results):.1f} s; "
          f"answering again after {[round(s, 1) for s in recoveries]} s; healings: "
          f"{[(h.action, h.target, round(h.seconds, 1), h.reason) for h in supervisor.healings]}")
    assert not failed, failed[:5]
    assert max(r[1] for r in load.results) <= REQUEST_BOUND_S
    # A stub kill is healed by a reload, or by a restart when the reload does not bring answers back, or by
    # Triton itself when it restarts the stub before the supervisor looks; the server's death by a restart.
    assert len(supervisor.healings) >= 2 and supervisor.healings[-1].action == "restart"
    assert "process is gone" in supervisor.healings[-1].reason


def test_the_model_control_lock_is_held_by_one_owner_at_a_time(tmp_path):
    """The rollout and the supervisor load and unload models under one file lock: a second holder waits."""
    key_file = tmp_path / "key_file.json"
    key_file.write_text("{}")
    order = []

    def second():
        with model_control(key_file):
            order.append("second")

    with model_control(key_file):
        waiting = threading.Thread(target=second)
        waiting.start()
        time.sleep(0.5)
        order.append("first")
    waiting.join(timeout=10)
    assert order == ["first", "second"]
    assert (tmp_path / "model-control.lock").stat().st_mode & 0o077 == 0


def test_serve_restarts_torchserve_when_its_frontend_dies(tmp_path):
    """`deepfake-serving serve` runs its supervisor: the frontend's process group SIGKILLed → a new frontend
    answers on the same ports, the command keeps serving, and Ctrl-C still stops everything."""
    store, workdir = tmp_path / "store", tmp_path / "ts"
    mar = build_archive(VARIANT, "1.0", export_path=store, engine="onnxruntime")
    ports = free_ports(5)
    command = subprocess.Popen(
        [sys.executable, "-m", "deepfake_serving.cli", "serve", "--model-store", str(store), "--workdir", str(workdir),
         "--models", f"{VARIANT}={mar.name}", "--ports", ",".join(map(str, ports))],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    image, url, key_file = samples.astronaut_jpeg(), f"http://127.0.0.1:{ports[0]}", str(workdir / "key_file.json")

    def answer():
        return RestClient(url, timeout=10, key_file=key_file, retry=NO_RETRY).predict(VARIANT, image)

    try:
        assert "Ctrl-C stops it" in command.stdout.readline()
        assert answer().status == 200
        frontend = json.loads((workdir / "server.json").read_text())["pid"]
        os.killpg(frontend, signal.SIGKILL)
        recovered = answers_again(answer, 180.0)
        assert json.loads((workdir / "server.json").read_text())["pid"] != frontend
        assert command.poll() is None
    finally:
        command.send_signal(signal.SIGINT)
        output = command.communicate(timeout=90)[0]
    assert command.returncode == 0, output
    assert "supervisor: restart TorchServe after the server process is gone" in output
    assert not [p for p in psutil.process_iter(["cmdline"]) if str(workdir) in " ".join(p.info["cmdline"] or [])]
    print(f"TorchServe answering again {recovered:.1f} s after its frontend was killed")
