"""A real Prometheus and Alertmanager (Debian's, started by the project's launcher) scraping a real
TorchServe with the repository's alert rules: a normal input stream keeps the drift alert silent; the same
faces degraded (grey, darker, low-quality JPEG) drive it through pending to firing, and Alertmanager
delivers it to the test's webhook receiver. The rules' ``for`` durations are shortened to 2 s here (their
behaviour over time is promtool's unit tests, tests/test_alerts.py)."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
import yaml

from deepfake_serving.media import samples
from deepfake_serving.serving.client.clients import RestClient
from deepfake_serving.serving.launch.archive import build_archive
from deepfake_serving.serving.launch.monitor import RULES, Intervals, Monitor, Targets, monitoring_binary
from deepfake_serving.serving.launch.torchserve import Ports, TorchServe
from helpers.calibrated import calibrated_b4_mobile
from helpers.media import degraded

pytestmark = pytest.mark.server
MODEL = "b4-mobile"
WINDOW = 16  # the archive's drift window (handler.drift_window): 16 answers of reference, then 16 a window
DRIFT = "DeepfakeScoreDrift"


@pytest.fixture(scope="module")
def server(tmp_path_factory, face_folders):
    """b4-mobile with weights whose scores spread over faces (random ones answer one score for every face)."""
    store = tmp_path_factory.mktemp("store")
    checkpoint = store / "calibrated.pt"
    torch.save(calibrated_b4_mobile(face_folders).state_dict(), checkpoint)
    archive = build_archive(MODEL, "1.0", checkpoints=[str(checkpoint)], export_path=store, engine="onnxruntime",
                            model_config={"handler": {"media": "image", "drift_window": WINDOW}})
    with TorchServe(store, tmp_path_factory.mktemp("ts"), models=[f"{MODEL}={archive.name}"], ports=Ports.free()) as ts:
        yield ts


class Webhook(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):
        Webhook.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def monitor(server, tmp_path_factory):
    try:
        monitoring_binary("prometheus"), monitoring_binary("prometheus-alertmanager")
    except FileNotFoundError as err:
        pytest.skip(str(err))
    workdir = tmp_path_factory.mktemp("monitor")
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule["for"] = "2s"
    fast_rules = workdir / "rules.yml"
    fast_rules.write_text(yaml.safe_dump(rules))
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Webhook)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    targets = Targets(torchserve=(server.metrics_url.removeprefix("http://"),))
    with Monitor.on_free_ports(workdir / "run", targets, webhook=f"http://127.0.0.1:{receiver.server_port}/alerts",
                               intervals=Intervals("1s", "1s", "1s"), rules=fast_rules) as running:
        yield running
    receiver.shutdown()


def drift_states(monitor) -> set[str]:
    return {a["state"] for a in monitor.alerts() if a["labels"]["alertname"] == DRIFT}


def psi(monitor) -> list[float]:
    return [float(r["value"][1]) for r in monitor.query("deepfake_score_drift_psi")["result"]]


def test_a_shifted_stream_fires_the_drift_alert_and_a_normal_one_does_not(server, monitor):
    client = RestClient(server.inference_url)
    faces = samples.holdout_images(8)
    for i in range(3 * WINDOW):  # a reference, a full window, and a window more: the same faces in turn
        assert client.predict(MODEL, faces[i % len(faces)]).status == 200
    deadline = time.monotonic() + 30
    while not psi(monitor) and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(4)  # several evaluations of the rules on the scraped index
    assert psi(monitor) and max(psi(monitor)) < 0.25
    assert not drift_states(monitor) and not Webhook.received

    seen, shifted = [], 0
    start = time.monotonic()
    for i in range(2 * WINDOW):
        assert client.predict(MODEL, degraded(faces[i % len(faces)])).status == 200
        shifted += 1
        seen.append(drift_states(monitor))
        if "firing" in seen[-1]:
            break
    while "firing" not in seen[-1] and time.monotonic() - start < 60:
        time.sleep(0.2)
        seen.append(drift_states(monitor))
    assert "pending" in set().union(*seen) and "firing" in seen[-1], seen
    print(f"drift alert firing after {shifted} shifted answers ({shifted / WINDOW:.2f} windows), "
          f"{time.monotonic() - start:.1f} s; PSI {max(psi(monitor)):.2f}")
    deadline = time.monotonic() + 30
    while not Webhook.received and time.monotonic() < deadline:
        time.sleep(0.2)
    delivered = [a for message in Webhook.received for a in message["alerts"]]
    assert delivered and {a["labels"]["alertname"] for a in delivered} == {DRIFT}
    alert = delivered[0]
    assert alert["status"] == "firing" and alert["labels"]["model"] == MODEL and alert["labels"]["version"] == "1.0"
    assert alert["labels"]["job"] == "torchserve" and "drifted" in alert["annotations"]["summary"]


def test_every_dashboard_panel_evaluates_in_prometheus(monitor):
    """The dashboard's expressions (``$model`` = all) run in the real Prometheus; the image model's panels
    have data after the test above."""
    from deepfake_serving.monitoring.dashboard import dashboard

    with_data = {"Answers per second by label", "P(fake): median and 90th percentile by version",
                 "Score drift (PSI; alert above 0.25)", "Faces per answered request", "Time in the model, p95",
                 "Stage time, p95", "Servers answering their scrape", "Alerts firing"}
    for panel in dashboard()["panels"]:
        for target in panel["targets"]:
            answer = monitor.query(target["expr"].replace("$model", ".*"))
            if panel["title"] in with_data:
                assert answer["result"], panel["title"]


def test_prometheus_and_alertmanager_answer_only_with_this_starts_password(monitor):
    """Another local user reaches loopback too: without the password (0600, in the 0700 work folder) neither
    answers, so nobody else reads the series or silences an alert."""
    import stat

    import requests

    for url in (f"{monitor.prometheus_url}/api/v1/alerts", f"{monitor.alertmanager_url}/api/v2/silences"):
        assert requests.get(url, timeout=10).status_code == 401
        assert requests.get(url, timeout=10, auth=("deepfake", "guess")).status_code == 401
        assert requests.get(url, timeout=10, auth=monitor.auth).status_code == 200
    for name in ("credentials.json", "password", "web.yml"):
        assert stat.S_IMODE((monitor.workdir / name).stat().st_mode) == 0o600
    assert stat.S_IMODE(monitor.workdir.stat().st_mode) == 0o700
    assert monitor.auth[1] not in (monitor.workdir / "web.yml").read_text()  # only its bcrypt hash
