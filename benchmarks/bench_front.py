"""The job API's front: its own overhead on a synchronous prediction, against calling TorchServe directly.

One TorchServe (b4-mobile, ONNX Runtime) and one job system (Redis and the API; no worker is needed for
predictions); rounds interleave one direct request (the project's REST client with TorchServe's key) and
one through the front (``POST /v1/predictions/b4-mobile`` with an API key: the key, rate and quota checks,
the forward, the charge and the access log line). The overhead is the difference of the medians.

Run: python benchmarks/bench_front.py [--rounds 60]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).parent))
from bench_engines import RESULTS, cpu  # noqa: E402

from deepfake_serving.jobs.front import KeyRing  # noqa: E402
from deepfake_serving.jobs.launch import JobSystem  # noqa: E402
from deepfake_serving.jobs.settings import JobSettings  # noqa: E402
from deepfake_serving.jobs.store import redis_client  # noqa: E402
from deepfake_serving.media import samples  # noqa: E402
from deepfake_serving.serving.client.clients import RestClient  # noqa: E402
from deepfake_serving.serving.launch.archive import build_archive  # noqa: E402
from deepfake_serving.serving.launch.torchserve import Ports, TorchServe  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=60)
    args = parser.parse_args()
    image = samples.astronaut_jpeg()
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        mar = build_archive("b4-mobile", "1.0", export_path=store, engine="onnxruntime")
        with TorchServe(store, Path(tmp) / "ts", models=[f"b4-mobile={mar.name}"], ports=Ports.free()) as server:
            settings = JobSettings(server_url=server.inference_url, key_file=str(server.key_file))
            with JobSystem(Path(tmp) / "jobs", settings, workers=0) as jobs:
                key = KeyRing(redis_client(jobs.settings.redis_url)).add("bench", rate_per_minute=100_000,
                                                                         faces_per_day=10_000_000)[0]
                direct = RestClient(server.inference_url)
                front = requests.Session()
                front.headers["Authorization"] = f"Bearer {key}"
                url = f"{jobs.url}/v1/predictions/b4-mobile"
                calls = {"direct": lambda: direct.predict("b4-mobile", image).status,
                         "front": lambda: front.post(url, data=image, timeout=60).status_code}
                for call in calls.values():  # warm both paths
                    assert call() == 200
                times: dict[str, list[float]] = {name: [] for name in calls}
                for _ in range(args.rounds):
                    for name, call in calls.items():
                        start = time.perf_counter()
                        assert call() == 200
                        times[name].append((time.perf_counter() - start) * 1000)
    p50 = {name: statistics.median(t) for name, t in times.items()}
    p95 = {name: statistics.quantiles(t, n=20)[18] for name, t in times.items()}
    overhead = p50["front"] - p50["direct"]
    print(f"CPU: {cpu()}; {args.rounds} interleaved rounds, one face per request")
    print(f"direct to TorchServe: p50 {p50['direct']:.1f} ms, p95 {p95['direct']:.1f} ms")
    print(f"through the front:    p50 {p50['front']:.1f} ms, p95 {p95['front']:.1f} ms")
    print(f"the front's overhead: {overhead:.1f} ms at p50 (target <= 5 ms)")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_front.json").write_text(json.dumps({"cpu": cpu(), "rounds": args.rounds, "p50_ms": p50,
                                                          "p95_ms": p95, "overhead_p50_ms": overhead}, indent=2))


if __name__ == "__main__":
    main()
