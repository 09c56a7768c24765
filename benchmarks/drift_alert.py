"""The drift alert as shipped: the repository's rules (DeepfakeScoreDrift: PSI > 0.25 for 2 m), Prometheus'
default 15 s scrape and evaluation, the archive's 500-answer drift window, on a real TorchServe, Prometheus
and Alertmanager. A normal stream (varied photographs of the face, in random order, at ``--rate`` answers
a second) runs ``--normal-minutes`` and must leave the alert silent (not even pending); then the same
photographs degraded (grey, darker, low JPEG quality) must fire it and reach the webhook. Prints the PSI
over the normal run, and the shifted answers until firing in drift windows (the target: within 2).

Run: python benchmarks/drift_alert.py [--normal-minutes 10] [--rate 5]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from deepfake_serving.media import samples  # noqa: E402
from deepfake_serving.monitoring.drift import WINDOW  # noqa: E402
from deepfake_serving.serving.client.clients import RestClient  # noqa: E402
from deepfake_serving.serving.launch.archive import build_archive  # noqa: E402
from deepfake_serving.serving.launch.monitor import Monitor, Targets  # noqa: E402
from deepfake_serving.serving.launch.torchserve import Ports, TorchServe  # noqa: E402
from helpers.calibrated import calibrated_b4_mobile, write_face_folders  # noqa: E402
from helpers.media import degraded  # noqa: E402

MODEL, DRIFT = "b4-mobile", "DeepfakeScoreDrift"
DELIVERED: list = []


class Webhook(BaseHTTPRequestHandler):
    def do_POST(self):
        DELIVERED.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def states(monitor: Monitor) -> set[str]:
    return {a["state"] for a in monitor.alerts() if a["labels"]["alertname"] == DRIFT}


def psi(monitor: Monitor) -> float | None:
    answer = monitor.query("deepfake_score_drift_psi")["result"]
    return max(float(r["value"][1]) for r in answer) if answer else None


class Paced:
    """Answers at ``rate`` a second from a pool of photographs, in random order, until stopped."""

    def __init__(self, client: RestClient, pool: list[bytes], rate: float, seed: int = 0):
        self.client, self.pool, self.rate, self.random = client, pool, rate, random.Random(seed)
        self.answers, self.failed, self.started = 0, 0, None

    def run_for(self, seconds: float, until=lambda: False) -> bool:
        start = time.monotonic()
        self.started = self.started or start
        while time.monotonic() - start < seconds:
            if until():
                return True
            time.sleep(max(0.0, self.started + self.answers / self.rate - time.monotonic()))
            answer = self.client.predict(MODEL, self.random.choice(self.pool))
            self.answers += 1
            self.failed += 0 if answer.ok else 1
        return until()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--normal-minutes", type=float, default=10)
    parser.add_argument("--rate", type=float, default=5, help="answers a second")
    parser.add_argument("--photographs", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        root = Path(work)
        checkpoint = root / "calibrated.pt"
        torch.save(calibrated_b4_mobile(write_face_folders(root)).state_dict(), checkpoint)
        archive = build_archive(MODEL, "1.0", checkpoints=[str(checkpoint)], export_path=root / "store",
                                engine="onnxruntime", model_config={"handler": {"media": "image"}})
        pool = samples.holdout_images(args.photographs, seed=1)
        receiver = ThreadingHTTPServer(("127.0.0.1", 0), Webhook)
        threading.Thread(target=receiver.serve_forever, daemon=True).start()
        with TorchServe(root / "store", root / "ts", models=[f"{MODEL}={archive.name}"], ports=Ports.free()) as server, \
                Monitor.on_free_ports(root / "monitor", Targets(torchserve=(server.metrics_url.removeprefix("http://"),)),
                                      webhook=f"http://127.0.0.1:{receiver.server_port}/alerts") as monitor:
            normal = Paced(RestClient(server.inference_url), pool, args.rate)
            seen_states, indexes = set(), []
            end = time.monotonic() + args.normal_minutes * 60
            while time.monotonic() < end:
                normal.run_for(min(15.0, end - time.monotonic()))
                seen_states |= states(monitor)
                if (value := psi(monitor)) is not None:
                    indexes.append(value)
            print(f"normal: {normal.answers} answers ({normal.failed} failed) in {args.normal_minutes:g} min, "
                  f"{normal.answers / WINDOW:.1f} windows; PSI {min(indexes, default=float('nan')):.3f}.."
                  f"{max(indexes, default=float('nan')):.3f} over {len(indexes)} looks; drift alert states seen: "
                  f"{sorted(seen_states) or 'none'}", flush=True)
            shifted = Paced(RestClient(server.inference_url), [degraded(p) for p in pool], args.rate, seed=2)
            fired = shifted.run_for(4 * WINDOW / args.rate, until=lambda: "firing" in states(monitor))
            print(f"shifted: {'firing' if fired else 'NOT firing'} after {shifted.answers} shifted answers "
                  f"({shifted.answers / WINDOW:.2f} windows of {WINDOW}); PSI {psi(monitor):.2f}", flush=True)
            deadline = time.monotonic() + 90
            while fired and not DELIVERED and time.monotonic() < deadline:
                time.sleep(1)
            print(f"webhook: {len(DELIVERED)} notification(s) delivered", flush=True)
        receiver.shutdown()
    return 0 if not seen_states and fired and DELIVERED else 1


if __name__ == "__main__":
    sys.exit(main())
