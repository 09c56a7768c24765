"""Image serving benchmark: TorchServe and Triton against the same pipeline in-process, on the same cores.

Prints (and writes to benchmarks/results/bench_image.json):
  * per variant: parameters, archive size, worker RSS/USS after load, cold start to first prediction;
  * for one variant: single-image median latency and throughput with N concurrent clients,
    in-process (the limit), TorchServe and Triton for each setting, with the ratio to the limit;
    server-side batch sizes (TorchServe: from the responses; Triton: the classifier's statistics).

Settings: local:WxTbB and ts:WxTbB (processes or workers x torch threads, batch B);
triton:PpCcTt (P preprocess instances, C classifier instances, T threads per instance).

Run: python benchmarks/bench_image.py [--variants all] [--variant b4-mobile] [--requests 96]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import psutil
import requests
import torch

from deepfake_serving.builder.write import write_bundle
from deepfake_serving.core.naming import model_names
from deepfake_serving.media import samples
from deepfake_serving.pipeline import load_image_pipeline
from deepfake_serving.serving.client.clients import TritonClient
from deepfake_serving.serving.launch.archive import DEFAULT_MODEL_CONFIG, build_archive
from deepfake_serving.serving.launch.torchserve import Ports, TorchServe
from deepfake_serving.serving.launch.triton import Triton, TritonPorts
from deepfake_serving.serving.launch.triton_repository import build_classifier_version, write_configs
from deepfake_serving.variants import create_model, list_variants

RESULTS = Path(__file__).parent / "results"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def memory_mb(pid: int) -> dict:
    info = psutil.Process(pid).memory_full_info()
    return {"rss_mb": round(info.rss / 2**20, 1), "uss_mb": round(info.uss / 2**20, 1),
            "pss_mb": round(info.pss / 2**20, 1)}


def cpu_seconds(processes: dict[str, psutil.Process]) -> dict[str, float]:
    times = {}
    for name, proc in processes.items():
        t = proc.cpu_times()
        times[name] = t.user + t.system
    return times


def rest_sender(url: str, image: bytes):
    """A per-thread TorchServe REST call returning the server-side batch size."""
    local = threading.local()

    def send() -> int:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        response = local.session.post(url, data=image, timeout=300)
        response.raise_for_status()
        return response.json().get("batch_size", 1)
    return send


def triton_sender(url: str, model: str, image: bytes):
    """A per-thread Triton HTTP call (tritonclient, binary tensors) through the image ensemble."""
    local = threading.local()

    def send() -> int:
        if not hasattr(local, "client"):
            local.client = TritonClient(url, "http")
        answer = local.client.predict(model, image)
        if not answer.ok:
            raise RuntimeError(answer.body)
        return 1
    return send


def load(send, requests_total: int, concurrency: int, processes: dict[str, psutil.Process] | None = None) -> dict:
    """Closed loop: ``concurrency`` clients call ``send`` ``requests_total`` times.

    Returns req/s, latency percentiles, the server-side batch sizes seen, and the
    CPU milliseconds each process spent per request (where the time goes).
    """
    def one(_):
        start = time.perf_counter()
        batch = send()
        return time.perf_counter() - start, batch

    processes = {**(processes or {}), "client": psutil.Process()}
    cpu_before = cpu_seconds(processes)
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(requests_total)))
    elapsed = time.perf_counter() - start
    cpu_after = cpu_seconds(processes)
    latencies = [r[0] for r in results]
    return {"rps": requests_total / elapsed, "p50_ms": percentile(latencies, 50) * 1000,
            "p95_ms": percentile(latencies, 95) * 1000,
            "batch_sizes": dict(sorted(Counter(r[1] for r in results).items())),
            "cpu_ms_per_request": {k: round((cpu_after[k] - cpu_before[k]) * 1000 / requests_total, 1)
                                   for k in processes}}


_PIPELINE = None


def _init_worker(variant: str, threads: int) -> None:
    global _PIPELINE
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        write_bundle(tmp, variant, "bench")
        _PIPELINE = load_image_pipeline(tmp)


def _run_batch(images: list[bytes]) -> int:
    return len(_PIPELINE.predict_batch(images))


def in_process(variant: str, image: bytes, requests_total: int, batch: int, processes: int, threads: int) -> dict:
    """The same pipeline without a server: ``processes`` processes of ``threads`` torch threads
    take batches of ``batch`` images from one queue, as TorchServe's workers do."""
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(processes, mp_context=ctx, initializer=_init_worker,
                             initargs=(variant, threads)) as pool:
        list(pool.map(_run_batch, [[image] * batch] * processes * 3))  # load and warm every process
        singles = []
        for _ in range(15):
            start = time.perf_counter()
            pool.submit(_run_batch, [image]).result()
            singles.append(time.perf_counter() - start)
        pids = [p.pid for p in pool._processes.values()]
        procs = {f"proc{i}": psutil.Process(pid) for i, pid in enumerate(pids)}
        cpu_before = cpu_seconds(procs)
        start = time.perf_counter()
        done = sum(pool.map(_run_batch, [[image] * batch] * (requests_total // batch)))
        elapsed = time.perf_counter() - start
        cpu_after = cpu_seconds(procs)
    return {"rps": done / elapsed, "single_p50_ms": statistics.median(singles) * 1000,
            "processes": processes, "threads": threads, "batch": batch,
            "cpu_ms_per_request": {k: round((cpu_after[k] - cpu_before[k]) * 1000 / done, 1) for k in procs}}


def served(variant: str, image: bytes, store: Path, workers: int, threads: int, batch: int,
           requests_total: int, concurrency: int) -> dict:
    config = {**DEFAULT_MODEL_CONFIG, "minWorkers": workers, "maxWorkers": workers, "batchSize": batch,
              "handler": {"threads": threads}}
    mar = build_archive(variant, f"{workers}.{threads}.{batch}", export_path=store, model_config=config)
    with tempfile.TemporaryDirectory() as work:
        start = time.perf_counter()
        server = TorchServe(store, work, models=[f"{variant}={mar.name}"], ports=Ports.free()).start()
        try:
            send = rest_sender(f"{server.inference_url}/predictions/{variant}", image)
            send()
            cold_start = time.perf_counter() - start
            singles = warm_up(send, concurrency)
            pids = server.worker_pids(variant)
            java = [p for p in psutil.Process(server.process.pid).children(recursive=True) if p.name() == "java"]
            processes = {f"worker{i}": psutil.Process(pid) for i, pid in enumerate(pids)}
            processes.update({"java": p for p in java})
            result = load(send, requests_total, concurrency, processes)
            result.update(single_p50_ms=statistics.median(singles) * 1000, cold_start_s=cold_start,
                          workers=workers, threads=threads, batch=batch,
                          worker_memory=[memory_mb(p) for p in pids])
            return result
        finally:
            server.stop()
            mar.unlink()


def warm_up(send, concurrency: int) -> list[float]:
    """The first ~20 requests after a start are slow (JIT, allocators): send them, one concurrent round,
    then time 15 single requests."""
    for _ in range(20):
        send()
    load(send, 2 * concurrency, concurrency)
    singles = []
    for _ in range(15):
        start = time.perf_counter()
        send()
        singles.append(time.perf_counter() - start)
    return singles


def classifier_batches(server: Triton, model: str) -> Counter:
    """Executions per batch size so far (Triton's statistics for every loaded version)."""
    counts: Counter = Counter()
    for stats in server.statistics(model)["model_stats"]:
        for entry in stats.get("batch_stats", []):
            counts[int(entry["batch_size"])] += int(entry["compute_infer"]["count"])
    return counts


def triton_served(variant: str, image: bytes, repository: Path, preprocess: int, classifiers: int, threads: int,
                  requests_total: int, concurrency: int) -> dict:
    """The image ensemble with ``preprocess`` and ``classifiers`` instances of ``threads`` threads each."""
    names = model_names(variant)
    write_configs(repository, [variant], instances={"preprocess": preprocess, "classifier": classifiers})
    with tempfile.TemporaryDirectory() as work:
        start = time.perf_counter()
        server = Triton(work, [names["ensemble"]], repository=repository, ports=TritonPorts.free(),
                        threads=threads).start()
        try:
            send = triton_sender(server.http_url, variant, image)
            send()
            cold_start = time.perf_counter() - start
            singles = warm_up(send, concurrency)
            stubs = psutil.Process(server.process.pid).children(recursive=True)
            processes = {"tritonserver": psutil.Process(server.process.pid)}
            for i, stub in enumerate(stubs):
                role = next((r for r in ("preprocess", "classifier", "postprocess")
                             if f"{names['ensemble']}_{r}" in " ".join(stub.cmdline())), "stub")
                processes[f"{role}{i}"] = stub
            batches_before = classifier_batches(server, names["classifier"])
            result = load(send, requests_total, concurrency, processes)
            batches = classifier_batches(server, names["classifier"]) - batches_before
            result.update(single_p50_ms=statistics.median(singles) * 1000, cold_start_s=cold_start,
                          batch_sizes=dict(sorted(batches.items())),
                          worker_memory=[memory_mb(p.pid) for p in stubs])
            return result
        finally:
            server.stop()


def variant_figures(variant: str, image: bytes, store: Path) -> dict:
    model = create_model(variant)
    params = sum(p.numel() for p in model.parameters())
    del model
    mar = build_archive(variant, "1.0", export_path=store)
    with tempfile.TemporaryDirectory() as work:
        start = time.perf_counter()
        server = TorchServe(store, work, models=[f"{variant}={mar.name}"], ports=Ports.free()).start()
        try:
            requests.post(f"{server.inference_url}/predictions/{variant}", data=image, timeout=600,
                          headers=server.keys.headers("inference")).raise_for_status()
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
    parser.add_argument("--settings",
                        default="local:1x2b8,local:2x1b8,ts:1x2b8,ts:2x1b8,ts:1x2b4,ts:1x2b1,"
                                "triton:1p1c1t,triton:2p1c1t,triton:3p1c1t",
                        help="local|ts:WxTbB, triton:PpCcTt; comma separated")
    parser.add_argument("--repeat", type=int, default=2, help="interleaved rounds (the machine is noisy)")
    args = parser.parse_args()
    image = samples.astronaut_jpeg()
    out: dict = {"machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "python": sys.version.split()[0]},
                 "variant": args.variant, "requests": args.requests, "concurrency": args.concurrency}
    with tempfile.TemporaryDirectory() as store_dir:
        store = Path(store_dir)
        repository = store / "model_repository"
        if "triton:" in args.settings:  # the same weights as the archives: seed 0, no checkpoint
            write_configs(repository, [args.variant])
            build_classifier_version(args.variant, 1, repository=repository)
        if args.variants:
            names = list_variants() if args.variants == "all" else args.variants.split(",")
            out["variants"] = [variant_figures(v, image, store) for v in names]
            print(f"{'variant':<14}{'params':>12}{'archive MB':>12}{'RSS MB':>9}{'USS MB':>9}{'cold s':>8}")
            for row in out["variants"]:
                print(f"{row['variant']:<14}{row['parameters']:>12,}{row['archive_mb']:>12}{row['rss_mb']:>9}"
                      f"{row['uss_mb']:>9}{row['cold_start_s']:>8}")
        # Every setting, in-process and served, in this one run; --repeat interleaves rounds.
        cores = os.cpu_count() or 2
        rows = []
        for _ in range(args.repeat):
            for setting in args.settings.split(","):
                where, spec = setting.split(":")
                if where == "triton":
                    pre, rest = spec.split("p")
                    cls, threads = rest.rstrip("t").split("c")
                    row = triton_served(args.variant, image, repository, int(pre), int(cls), int(threads),
                                        args.requests, args.concurrency)
                    rows.append({"where": where, "setting": spec, **row})
                    continue
                wt, batch = spec.split("b")
                workers, threads = (int(x) for x in wt.split("x"))
                if where == "local":
                    row = in_process(args.variant, image, args.requests, int(batch), workers, threads)
                else:
                    row = served(args.variant, image, store, workers, threads, int(batch), args.requests,
                                 args.concurrency)
                rows.append({"where": where, "setting": spec, **row})
    out["rows"] = rows
    by_setting: dict[tuple, list[dict]] = {}
    for row in rows:
        by_setting.setdefault((row["where"], row["setting"]), []).append(row)
    medians = {k: statistics.median(r["rps"] for r in v) for k, v in by_setting.items()}
    limit = max(v for (where, _), v in medians.items() if where == "local")
    out["in_process_limit_rps"] = limit
    print(f"\n{args.variant}: {args.requests} requests per round, {args.repeat} rounds, "
          f"{args.concurrency} concurrent clients, {cores} cores; medians over rounds")
    print(f"{'setting':<36}{'req/s':>7}{'ratio':>7}{'p50 ms':>8}{'p95 ms':>8}"
          f"{'1-img p50':>10}{'RSS MB':>20}  CPU ms/request, batch sizes (last round)")
    for (where, setting), group in by_setting.items():
        last = group[-1]
        name = {"local": "in-process ", "ts": "TorchServe ", "triton": "Triton "}[where] + setting
        p50 = statistics.median(r["p50_ms"] for r in group) if "p50_ms" in last else float("nan")
        p95 = statistics.median(r["p95_ms"] for r in group) if "p95_ms" in last else float("nan")
        single = statistics.median(r["single_p50_ms"] for r in group)
        rss = "/".join(str(round(m["rss_mb"])) for m in last.get("worker_memory", []))
        print(f"{name:<36}{medians[(where, setting)]:>7.2f}{medians[(where, setting)] / limit:>7.2f}{p50:>8.0f}"
              f"{p95:>8.0f}{single:>10.1f}{rss:>20}  {last['cpu_ms_per_request']} {last.get('batch_sizes', '')}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_image.json").write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
