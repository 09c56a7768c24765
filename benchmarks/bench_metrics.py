"""The cost of the prediction metrics: served image throughput with them on against off, side by side.

One TorchServe, the same b4-mobile archive twice (ONNX Runtime, one worker each, one thread each): as
``b4-mobile`` with the metrics (the default) and as ``b4-mobile-plain`` with ``handler.metrics: false``.
Each round sends ``--requests`` images from ``--clients`` concurrent clients to one model, then to the
other (the order alternating per round); throughput is requests over wall time, summed over the rounds.

Run: python benchmarks/bench_metrics.py [--rounds 8] [--requests 48] [--clients 4]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_engines import RESULTS, cpu  # noqa: E402

from deepfake_serving.media import samples  # noqa: E402
from deepfake_serving.serving.client.clients import RestClient  # noqa: E402
from deepfake_serving.serving.launch.archive import build_archive  # noqa: E402
from deepfake_serving.serving.launch.torchserve import Ports, TorchServe  # noqa: E402

MODELS = {"on": "b4-mobile", "off": "b4-mobile-plain"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    image = samples.astronaut_jpeg()
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        archives = {arm: build_archive("b4-mobile", "1.0", export_path=store, engine="onnxruntime", model_name=name,
                                       model_config={"handler": {"media": "image", "metrics": arm == "on"}})
                    for arm, name in MODELS.items()}
        models = [f"{MODELS[arm]}={mar.name}" for arm, mar in archives.items()]
        with TorchServe(store, Path(tmp) / "ts", models=models, ports=Ports.free(), workers=2) as server:
            clients = [RestClient(server.inference_url) for _ in range(args.clients)]

            def burst(model: str) -> float:
                start = time.perf_counter()
                with ThreadPoolExecutor(args.clients) as pool:
                    statuses = list(pool.map(lambda i: clients[i % args.clients].predict(model, image).status,
                                             range(args.requests)))
                assert all(s == 200 for s in statuses), statuses
                return time.perf_counter() - start

            for model in MODELS.values():  # warm both workers
                burst(model)
            seconds = {arm: 0.0 for arm in MODELS}
            for round_ in range(args.rounds):
                for arm in (list(MODELS) if round_ % 2 == 0 else list(MODELS)[::-1]):
                    seconds[arm] += burst(MODELS[arm])
    throughput = {arm: args.rounds * args.requests / s for arm, s in seconds.items()}
    ratio = throughput["on"] / throughput["off"]
    print(f"CPU: {cpu()}; {args.rounds} interleaved rounds of {args.requests} images from {args.clients} clients")
    print(f"metrics on:  {throughput['on']:.2f} req/s")
    print(f"metrics off: {throughput['off']:.2f} req/s")
    print(f"on / off: {ratio:.3f} (target >= 0.97)")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_metrics.json").write_text(json.dumps({"cpu": cpu(), "rounds": args.rounds, "requests": args.requests,
                                                            "clients": args.clients, "req_per_s": throughput,
                                                            "ratio": ratio}, indent=2))


if __name__ == "__main__":
    main()
