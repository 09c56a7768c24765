"""Image serving benchmark: TorchServe against the same pipeline in-process, on the same cores.

Prints (and writes to benchmarks/results/bench_image.json):
  * per variant: parameters, archive size, worker RSS/USS after load, cold start to first prediction;
  * for one variant: single-image median latency and throughput with N concurrent clients,
    served (for each worker x thread x batch setting) and in-process, with the ratio.

Run: python benchmarks/bench_image.py [--variants all] [--variant b4-mobile] [--requests 96]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import requests
import torch

from deepfake_serving import samples
from deepfake_serving.bundle import load_bundle, write_bundle
from deepfake_serving.serving.archive import DEFAULT_MODEL_CONFIG, build_archive
from deepfake_serving.serving.torchserve import Ports, TorchServe
from deepfake_serving.variants import create_model, list_variants

RESULTS = Path(__file__).parent / "results"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def memory_mb(pid: int) -> dict:
    info = psutil.Process(pid).memory_full_info()
    return {"rss_mb": round(info.rss / 2**20, 1), "uss_mb": round(info.uss / 2**20, 1),
            "pss_mb": round(info.pss / 2**20, 1)}


def load(url: str, image: bytes, requests_total: int, concurrency: int) -> dict:
    """Closed loop: ``concurrency`` clients send ``requests_total`` requests; returns req/s and latencies."""
    session_per_thread: dict[int, requests.Session] = {}

    def one(_):
        import threading
        session = session_per_thread.setdefault(threading.get_ident(), requests.Session())
        start = time.perf_counter()
        response = session.post(url, data=image, timeout=300)
        response.raise_for_status()
        return time.perf_counter() - start

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = list(pool.map(one, range(requests_total)))
    elapsed = time.perf_counter() - start
    return {"rps": requests_total / elapsed, "p50_ms": percentile(latencies, 50) * 1000,
            "p95_ms": percentile(latencies, 95) * 1000}


def in_process(variant: str, image: bytes, requests_total: int, batch: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        write_bundle(tmp, variant, "bench")
        pipeline = load_bundle(tmp)
    pipeline.predict(image)  # warm-up
    singles = []
    for _ in range(15):
        start = time.perf_counter()
        pipeline.predict(image)
        singles.append(time.perf_counter() - start)
    start = time.perf_counter()
    for _ in range(requests_total // batch):
        pipeline.predict_batch([image] * batch)
    elapsed = time.perf_counter() - start
    return {"rps": (requests_total // batch) * batch / elapsed, "single_p50_ms": statistics.median(singles) * 1000}


def served(variant: str, image: bytes, store: Path, workers: int, threads: int, batch: int,
           requests_total: int, concurrency: int) -> dict:
    config = {**DEFAULT_MODEL_CONFIG, "minWorkers": workers, "maxWorkers": workers, "batchSize": batch,
              "handler": {"torch_threads": threads}}
    mar = build_archive(variant, f"{workers}.{threads}.{batch}", export_path=store, model_config=config)
    with tempfile.TemporaryDirectory() as work:
        start = time.perf_counter()
        server = TorchServe(store, work, models=[f"{variant}={mar.name}"], ports=Ports.free()).start()
        try:
            url = f"{server.inference_url}/predictions/{variant}"
            requests.post(url, data=image, timeout=300).raise_for_status()
            cold_start = time.perf_counter() - start
            singles = []
            for _ in range(15):
                t = time.perf_counter()
                requests.post(url, data=image, timeout=300).raise_for_status()
                singles.append(time.perf_counter() - t)
            result = load(url, image, requests_total, concurrency)
            pids = server.worker_pids(variant)
            result.update(single_p50_ms=statistics.median(singles) * 1000, cold_start_s=cold_start,
                          workers=workers, threads=threads, batch=batch,
                          worker_memory=[memory_mb(p) for p in pids])
            return result
        finally:
            server.stop()
            mar.unlink()


def variant_figures(variant: str, image: bytes, store: Path) -> dict:
    model = create_model(variant)
    params = sum(p.numel() for p in model.parameters())
    del model
    mar = build_archive(variant, "1.0", export_path=store)
    with tempfile.TemporaryDirectory() as work:
        start = time.perf_counter()
        server = TorchServe(store, work, models=[f"{variant}={mar.name}"], ports=Ports.free()).start()
        try:
            requests.post(f"{server.inference_url}/predictions/{variant}", data=image, timeout=600).raise_for_status()
            cold = time.perf_counter() - start
            mem = memory_mb(server.worker_pids(variant)[0])
        finally:
            server.stop()
    size = mar.stat().st_size
    mar.unlink()
    return {"variant": variant, "parameters": params, "archive_mb": round(size / 2**20, 1),
            "cold_start_s": round(cold, 1), **mem}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="b4-mobile")
    parser.add_argument("--variants", default="", help="'all' or a comma list for the per-variant table")
    parser.add_argument("--requests", type=int, default=96)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--settings", default="1x2b8,1x2b1,2x1b8",
                        help="workers x threads b batch, comma separated")
    args = parser.parse_args()
    image = samples.astronaut_jpeg()
    out: dict = {"machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "python": sys.version.split()[0]},
                 "variant": args.variant, "requests": args.requests, "concurrency": args.concurrency}
    with tempfile.TemporaryDirectory() as store_dir:
        store = Path(store_dir)
        if args.variants:
            names = list_variants() if args.variants == "all" else args.variants.split(",")
            out["variants"] = [variant_figures(v, image, store) for v in names]
            print(f"{'variant':<14}{'params':>12}{'archive MB':>12}{'RSS MB':>9}{'USS MB':>9}{'cold s':>8}")
            for row in out["variants"]:
                print(f"{row['variant']:<14}{row['parameters']:>12,}{row['archive_mb']:>12}{row['rss_mb']:>9}"
                      f"{row['uss_mb']:>9}{row['cold_start_s']:>8}")
        # In-process first (server stopped), then each served setting, all in this one run.
        cores = os.cpu_count() or 2
        local = {b: in_process(args.variant, image, args.requests, b, cores) for b in (1, 8)}
        limit = max(v["rps"] for v in local.values())
        out["in_process"] = local
        out["served"] = []
        for setting in args.settings.split(","):
            wt, batch = setting.split("b")
            workers, threads = (int(x) for x in wt.split("x"))
            out["served"].append(served(args.variant, image, store, workers, threads, int(batch),
                                        args.requests, args.concurrency))
    print(f"\n{args.variant}: {args.requests} requests, {args.concurrency} concurrent clients, {cores} cores")
    print(f"{'setting':<26}{'req/s':>8}{'ratio':>7}{'p50 ms':>9}{'p95 ms':>9}{'single p50':>12}{'RSS MB':>9}{'cold s':>8}")
    for b, r in local.items():
        print(f"{f'in-process batch {b}':<26}{r['rps']:>8.2f}{r['rps'] / limit:>7.2f}{'':>9}{'':>9}"
              f"{r['single_p50_ms']:>12.1f}")
    for r in out["served"]:
        name = f"TorchServe {r['workers']}w x {r['threads']}t b{r['batch']}"
        rss = "/".join(str(m["rss_mb"]) for m in r["worker_memory"])
        print(f"{name:<26}{r['rps']:>8.2f}{r['rps'] / limit:>7.2f}{r['p50_ms']:>9.0f}{r['p95_ms']:>9.0f}"
              f"{r['single_p50_ms']:>12.1f}{rss:>9}{r['cold_start_s']:>8.1f}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_image.json").write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
