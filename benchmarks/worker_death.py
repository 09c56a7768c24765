"""Clients against worker deaths: a Locust run (image + video mix) while a worker is SIGKILLed every
``--every`` seconds — TorchServe's image worker (TorchServe restarts it), or the classifier's
python-backend stub on Triton (the project's supervisor reloads the model: serving/launch/supervisor.py).
Prints the requests that failed at the client (the target is zero), the clients' retries, each kill's
recovery (seconds until a new worker process exists, and until the server answers through it), and what
the supervisor did.

Run: python benchmarks/worker_death.py [--backend torchserve|triton] [--seconds 120] [--every 20]
"""

from __future__ import annotations

import argparse
import csv
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "loadtests"))

from run import demo_server  # noqa: E402

from deepfake_serving.core.naming import model_names  # noqa: E402
from deepfake_serving.media import samples  # noqa: E402
from deepfake_serving.serving.client.clients import NO_RETRY, RestClient, TritonClient  # noqa: E402
from deepfake_serving.serving.launch.triton import triton_supervisor  # noqa: E402

VARIANT = "b4-mobile"


def victims(backend: str, server) -> list[int]:
    if backend == "torchserve":
        return server.worker_pids(VARIANT)
    return server.stub_pids(f"{model_names(VARIANT)['classifier']}/1/")


def recover(backend: str, server, host: str, victim: int, timeout_s: float = 120) -> tuple[float, float]:
    """(seconds until a new worker process, seconds until a request with no retry is answered 200)."""
    probe = (RestClient(host, retry=NO_RETRY) if backend == "torchserve" else TritonClient(host, "http", retry=NO_RETRY))
    image, start, new_process = samples.astronaut_jpeg(), time.monotonic(), None
    while time.monotonic() - start < timeout_s:
        if new_process is None and [p for p in victims(backend, server) if p != victim]:
            new_process = time.monotonic() - start
        if probe.predict(VARIANT, image).ok:
            answered = time.monotonic() - start
            return (new_process if new_process is not None else answered), answered
        time.sleep(0.1)
    raise RuntimeError(f"no recovery within {timeout_s} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["torchserve", "triton"], default="torchserve")
    parser.add_argument("--seconds", type=int, default=120)
    parser.add_argument("--every", type=float, default=20)
    parser.add_argument("--users", type=int, default=4)
    args = parser.parse_args()
    user, protocol = ("TorchServeRestUser", "rest") if args.backend == "torchserve" else ("TritonHttpUser", "http")
    with tempfile.TemporaryDirectory() as work, demo_server(args.backend, VARIANT, Path(work)) as hosts:
        server, host, reports = hosts["server"], hosts[protocol], Path(work) / "locust"
        supervisor = triton_supervisor(server).start() if args.backend == "triton" else None
        locust = subprocess.Popen(
            [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests" / "locustfile.py"), "--headless",
             "--only-summary", "-u", str(args.users), "-r", str(args.users), "-t", f"{args.seconds}s",
             "--host", host, "--model", VARIANT, "--csv", str(reports), user],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        started, recoveries = time.monotonic(), []
        while time.monotonic() - started + args.every < args.seconds:
            time.sleep(args.every)
            (victim,) = victims(args.backend, server)
            os.kill(victim, signal.SIGKILL)
            recoveries.append(recover(args.backend, server, host, victim))
            print(f"kill {len(recoveries)}: new worker after {recoveries[-1][0]:.1f} s, "
                  f"answering after {recoveries[-1][1]:.1f} s", flush=True)
        output, _ = locust.communicate(timeout=args.seconds + 300)
        healings = supervisor.healings if supervisor else []
        if supervisor:
            supervisor.stop()
        with open(f"{reports}_stats.csv") as handle:
            total = next(row for row in csv.DictReader(handle) if row["Name"] == "Aggregated")
        with open(f"{reports}_failures.csv") as handle:
            failures = [f"{row['Occurrences']}x {row['Name']}: {row['Error']}" for row in csv.DictReader(handle)]
    retries = next((line for line in output.splitlines() if line.startswith("client retries")), "client retries: ?")
    print(f"\n{args.backend}: {len(recoveries)} kills in {args.seconds} s, {total['Request Count']} requests, "
          f"{total['Failure Count']} failed at the client; {retries}")
    for failure in failures:
        print(f"failed: {failure}")
    print("recovery (new process / answering), s: " + ", ".join(f"{a:.1f}/{b:.1f}" for a, b in recoveries))
    for healing in healings:
        print(f"supervisor: {healing.action} {healing.target} after {healing.reason} ({healing.seconds:.1f} s)")
    return 0 if int(total["Failure Count"]) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
