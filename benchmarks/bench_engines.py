"""Engines side by side in one run: ONNX Runtime against PyTorch eager (and the code of another revision).

Sections (``--sections``, all by default):
  faces   per-face ms of the classifier alone: b4-mobile at 224 and b7-dfdc at 380, batch 1, 4 and 8, 2 threads
          (OpenVINO also in bf16, what ``archive`` serves by default on a CPU with bf16 units)
  detect  MTCNN ms per 720p frame with two real faces (its half-size detection copy): ONNX graphs + numpy vs
          facenet-pytorch
  image   b4-mobile images: in-process req/s and TorchServe req/s (8 clients, the astronaut JPEG), the
          worker's RSS after load and the cold start (server start to first answer) per engine (``auto``: the
          default archive's engine, said in the output)
  video   b7-dfdc, a 10 s 720p clip, 32 frames: seconds in process per engine (and ``--compare REV``'s
          code, run from a git worktree), and served on TorchServe per engine
  triton  b4-mobile on Triton: RSS of every python-backend process after load, cold start
  canary  TorchServe b4-mobile: the serving version's req/s alone, with a canary version loaded beside
          it (idle), and with the canary taking one client of nine

Every section runs its candidates at once and interleaves their rounds (``--image-rounds``, ``--video-rounds``;
served and in-process alternate), so machine noise falls on all of them; the CPU's model and flags are printed
and written with the figures. Prints a table per section and
writes benchmarks/results/bench_engines.json.

Run: python benchmarks/bench_engines.py [--sections faces,detect] [--compare e3db085]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import psutil

os.environ.setdefault("OMP_NUM_THREADS", "2")

from deepfake_serving.builder.write import write_bundle
from deepfake_serving.media import samples  # noqa: E402
from deepfake_serving.pipeline import load_image_pipeline, load_video_pipeline

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parents[1]
# "auto": what an archive serves by default (bf16 on OpenVINO where this CPU has bf16 units and the proof passes)
ENGINES = ("auto", "onnxruntime", "openvino", "torch")
THREADS = 2


def median_seconds(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved(candidates: dict, rounds: int) -> dict[str, float]:
    """Median seconds of each callable, rounds alternating between them (after one warm-up each)."""
    for fn in candidates.values():
        fn()
    times = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def face_crops(size: int, count: int) -> list[np.ndarray]:
    """Real face crops (the astronaut and the two-face picture) ready for a ``size`` input."""
    from deepfake_serving.pipeline.image import ImagePreprocessor
    from deepfake_serving.variants import get_variant

    variant = "b4-mobile" if size == 224 else "b7-dfdc"
    stage = ImagePreprocessor(get_variant(variant))
    crops = [c for item in stage.prepare([samples.astronaut_jpeg(), samples.encode(samples.two_faces())])
             for c in item.crops]
    return (crops * count)[:count]


def section_faces(args) -> dict:
    import torch

    from deepfake_serving.builder.export import export_onnx
    from deepfake_serving.engines import GRAPH_ENGINES, Device, graph_runtime
    from deepfake_serving.engines.scorers import GraphScorer
    from deepfake_serving.engines.torch_engine import TorchScorer
    from deepfake_serving.variants import create_model, get_variant

    torch.set_num_threads(THREADS)
    out = {}
    for name, rounds in (("b4-mobile", 7), ("b7-dfdc", 3)):
        variant = get_variant(name)
        torch.manual_seed(0)
        model = create_model(name)
        with tempfile.TemporaryDirectory() as tmp:
            data = export_onnx(variant, [model], Path(tmp) / "g.onnx").read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        crops = face_crops(variant.preprocessing.input_size, 8)
        for batch in (1, 4, 8):  # OpenVINO compiles each batch as its own static shape, as the engine serves it
            graphs = {engine: graph_runtime(engine, data, "g.onnx", digest, THREADS, Device(), batch=batch)
                      for engine in GRAPH_ENGINES}
            graphs["openvino-bf16"] = graph_runtime("openvino", data, "g.onnx", digest, THREADS, precision="bf16",
                                                    batch=batch)
            scorers = {**{e: GraphScorer(g, variant, batch) for e, g in graphs.items()},
                       "torch": TorchScorer(variant, model, batch)}
            seconds = interleaved({e: (lambda s=s: s.scores(crops)) for e, s in scorers.items()}, rounds)
            for engine, s in seconds.items():
                out[f"{name} batch {batch} {engine}"] = round(s * 1000 / len(crops), 1)
                print(f"faces   {name:10s} batch {batch}  {engine:12s} {s * 1000 / len(crops):8.1f} ms/face",
                      flush=True)
    return out


def section_detect(args) -> dict:
    import torch
    from facenet_pytorch import MTCNN

    from deepfake_serving.faces.detector import shrink
    from deepfake_serving.faces.mtcnn import OnnxMTCNN
    from deepfake_serving.media.video import Sampling, decode_video

    torch.set_num_threads(THREADS)
    # real photographs: the astronaut and her mirror image (two faces a frame), moving and changing size
    clip = samples.encode_video(samples.moving_face_frames(60, size=(1280, 720), faces=2), "mp4")
    frames = [shrink(f, 0.5) for f in decode_video(clip, Sampling(frames=12)).frames]
    ours = OnnxMTCNN(20, (0.7, 0.8, 0.8), THREADS)
    reference = MTCNN(margin=0, thresholds=[0.7, 0.8, 0.8], keep_all=True, device="cpu")
    seconds = interleaved({f"ours ({ours.runtime})": lambda: [ours.detect(f) for f in frames],
                           "facenet-pytorch": lambda: [reference.detect(f) for f in frames]}, 3)
    out = {k: round(v * 1000 / len(frames), 1) for k, v in seconds.items()}
    for k, v in out.items():
        print(f"detect  720p frame (640x360 copy), 2 faces  {k:16s} {v:8.1f} ms/frame", flush=True)
    return out


def closed_loop(send, total: int, clients: int) -> float:
    """req/s of ``clients`` threads calling ``send`` ``total`` times."""
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        answers = list(pool.map(lambda _: send(), range(total)))
    assert all(answers), "a request failed"
    return total / (time.perf_counter() - start)


def rss_mb(pid: int) -> float:
    return round(psutil.Process(pid).memory_info().rss / 2**20, 1)


def client_sender(url: str, model: str, data: bytes):
    """A ``send()`` for ``closed_loop``: one RestClient per client thread."""
    from deepfake_serving.serving.client.clients import RestClient

    local = threading.local()

    def send() -> bool:
        if not hasattr(local, "client"):
            local.client = RestClient(url, timeout=1800)
        return local.client.predict(model, data).ok

    return send


def section_image(args) -> dict:
    """In-process batches of 8 and TorchServe under 8 clients, every engine, all running at once and
    their rounds interleaved (served and in-process alternate), so machine noise falls on all of them."""
    from deepfake_serving.serving.launch.archive import build_archive
    from deepfake_serving.serving.launch.torchserve import Ports, TorchServe

    image = samples.astronaut_jpeg()
    out, candidates, servers = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        tmp = Path(tmp)
        for engine in ENGINES:
            decision = write_bundle(tmp / f"bundle-{engine}", "b4-mobile", "bench", engine=engine).engine_decision
            out[f"{engine} serves"] = f"{decision['engine']} {decision['precision']}"
            pipeline = load_image_pipeline(tmp / f"bundle-{engine}", threads=THREADS)
            candidates[f"in-process {engine}"] = lambda p=pipeline: p.predict_batch([image] * 8)
            store = tmp / f"store-{engine}"
            mar = build_archive("b4-mobile", "1.0", export_path=store, engine=engine)
            start = time.perf_counter()
            servers[engine] = ts = stack.enter_context(
                TorchServe(store, tmp / f"ts-{engine}", models=[f"b4-mobile={mar.name}"], ports=Ports.free()))
            send = client_sender(ts.inference_url, "b4-mobile", image)
            assert send()
            out[f"served {engine} cold start s"] = round(time.perf_counter() - start, 2)
            candidates[f"served {engine}"] = partial(closed_loop, send, args.requests, 8)
        seconds = interleaved(candidates, args.image_rounds)
        for engine, ts in servers.items():
            (pid,) = ts.worker_pids("b4-mobile")
            out[f"served {engine} worker RSS MB"] = rss_mb(pid)
            out[f"in-process {engine} req/s"] = round(8 / seconds[f"in-process {engine}"], 2)
            out[f"served {engine} req/s"] = round(args.requests / seconds[f"served {engine}"], 2)
            out[f"served/in-process {engine}"] = round(out[f"served {engine} req/s"] / out[f"in-process {engine} req/s"], 2)
        out["served auto/onnxruntime"] = round(out["served auto req/s"] / out["served onnxruntime req/s"], 2)
    out["rounds, interleaved"] = args.image_rounds
    for k, v in out.items():
        print(f"image   {k:36s} {v}", flush=True)
    return out


OLD_VIDEO = """
import json, os, sys, time
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__.lower()]
sys.path.insert(0, os.environ["BENCH_CODE"])
import deepfake_serving
assert deepfake_serving.__file__.startswith(os.environ["BENCH_CODE"]), deepfake_serving.__file__
import torch
torch.set_num_threads(2)
from deepfake_serving.variants import create_model, get_variant
from deepfake_serving.media.video import Sampling
from deepfake_serving.pipeline.video import VideoPipeline
torch.manual_seed(0)
pipeline = VideoPipeline(get_variant("b7-dfdc"), create_model("b7-dfdc"))
data = open(sys.argv[1], "rb").read()
times = []
for _ in range(int(sys.argv[2])):
    start = time.perf_counter()
    answer = pipeline.analyze(data, Sampling(frames=32))
    times.append(time.perf_counter() - start)
print(json.dumps({"seconds": sorted(times)[len(times) // 2], "score": answer["fake_probability"]}))
"""


def old_revision(rev: str, clip: Path, rounds: int) -> dict:
    tree = Path(tempfile.gettempdir()) / f"bench-engines-{rev}"
    if not tree.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), rev], check=True,
                       capture_output=True)
    run = subprocess.run([sys.executable, "-c", OLD_VIDEO, str(clip), str(rounds)], capture_output=True, text=True,
                         env={**os.environ, "BENCH_CODE": str(tree)}, check=True)
    return json.loads(run.stdout.strip().splitlines()[-1])


def section_video(args) -> dict:
    import torch

    from deepfake_serving.media.video import Sampling
    from deepfake_serving.serving.launch.archive import build_archive
    from deepfake_serving.serving.launch.torchserve import Ports, TorchServe

    torch.set_num_threads(THREADS)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clip = tmp / "clip.mp4"
        clip.write_bytes(samples.encode_video(samples.moving_face_frames(300, size=(1280, 720)), "mp4", fps=30))
        data = clip.read_bytes()
        candidates = {}
        for engine in ENGINES:
            decision = write_bundle(tmp / f"bundle-{engine}", "b7-dfdc", "bench", engine=engine).engine_decision
            out[f"{engine} serves"] = f"{decision['engine']} {decision['precision']}"
            pipeline = load_video_pipeline(tmp / f"bundle-{engine}", threads=THREADS)
            candidates[f"in-process {engine}"] = lambda p=pipeline: p.analyze(data, Sampling(frames=32))
        with contextlib.ExitStack() as stack:
            for engine in ENGINES:
                store = tmp / f"store-{engine}"
                mar = build_archive("b7-dfdc", "1.0", export_path=store, engine=engine, media="video")
                ts = stack.enter_context(TorchServe(store, tmp / f"ts-{engine}", models=[f"b7-dfdc-video={mar.name}"],
                                                    ports=Ports.free()))
                candidates[f"served {engine}"] = client_sender(ts.inference_url, "b7-dfdc-video", data)
            seconds = interleaved(candidates, args.video_rounds)  # served and in-process alternate
        for name, s in seconds.items():
            out[f"{name} s"] = round(s, 2)
            print(f"video   {name:24s} {s:.2f} s", flush=True)
        for engine in ENGINES:
            out[f"served/in-process {engine}"] = round(seconds[f"in-process {engine}"] / seconds[f"served {engine}"], 2)
        if args.compare:
            old = old_revision(args.compare, clip, args.video_rounds)
            out[f"in-process {args.compare} (torch) s"] = round(old["seconds"], 2)
            out[f"in-process {args.compare}/onnxruntime"] = round(old["seconds"] / out["in-process onnxruntime s"], 2)
            print(f"video   in-process {args.compare} {old['seconds']:.2f} s (its own run, not interleaved)", flush=True)
        out["rounds, interleaved"] = args.video_rounds
    return out


def section_triton(args) -> dict:
    from deepfake_serving.core.naming import model_names
    from deepfake_serving.serving.client.clients import TritonClient
    from deepfake_serving.serving.launch.triton import Triton, TritonPorts
    from deepfake_serving.serving.launch.triton_repository import build_classifier_version, write_configs

    out = {}
    names = model_names("b4-mobile")
    with tempfile.TemporaryDirectory() as tmp:
        repository = Path(tmp) / "repository"
        write_configs(repository, ["b4-mobile"])
        build_classifier_version("b4-mobile", 1, repository=repository)
        start = time.perf_counter()
        with Triton(Path(tmp) / "triton", [names["ensemble"], names["video"]], repository=repository,
                    ports=TritonPorts.free()) as server:
            client = TritonClient(server.http_url, "http")
            assert client.predict(names["ensemble"], samples.astronaut_jpeg()).ok
            out["cold start s"] = round(time.perf_counter() - start, 2)
            for pid in server.stub_pids():
                model = next((a for a in psutil.Process(pid).cmdline() if "/" in a and "model.py" in a), str(pid))
                out[f"RSS MB {Path(model).parent.parent.name if model != str(pid) else pid}#{pid}"] = rss_mb(pid)
    for k, v in out.items():
        print(f"triton  {k:40s} {v}", flush=True)
    return out


def section_canary(args) -> dict:
    from deepfake_serving.serving.client.clients import RestClient
    from deepfake_serving.serving.launch.archive import build_archive
    from deepfake_serving.serving.launch.torchserve import Ports, TorchServe

    image = samples.astronaut_jpeg()
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        v1 = build_archive("b4-mobile", "1.0", export_path=store)
        v2 = build_archive("b4-mobile", "2.0", export_path=store, seed=1)
        with TorchServe(store, Path(tmp) / "ts", models=[f"b4-mobile={v1.name}"], ports=Ports.free(), workers=2) as ts:
            local = threading.local()

            def sender(version):
                def send():
                    if not hasattr(local, "client"):
                        local.client = RestClient(ts.inference_url)
                    return local.client.predict("b4-mobile", image, version=version).ok
                return send

            closed_loop(sender("1.0"), 16, 8)
            out["serving alone req/s"] = round(closed_loop(sender("1.0"), args.requests, 8), 2)
            ts.register(v2.name)
            closed_loop(sender("2.0"), 4, 1)
            out["serving, canary loaded (idle) req/s"] = round(closed_loop(sender("1.0"), args.requests, 8), 2)
            stop = threading.Event()

            def canary_traffic():
                client = RestClient(ts.inference_url)
                while not stop.is_set():
                    client.predict("b4-mobile", image, version="2.0")

            thread = threading.Thread(target=canary_traffic)
            thread.start()
            try:
                out["serving, canary taking 1 client of 9 req/s"] = round(closed_loop(sender("1.0"), args.requests, 8), 2)
            finally:
                stop.set()
                thread.join()
    alone = out["serving alone req/s"]
    out["cost, canary idle"] = round(1 - out["serving, canary loaded (idle) req/s"] / alone, 3)
    out["cost, canary busy"] = round(1 - out["serving, canary taking 1 client of 9 req/s"] / alone, 3)
    for k, v in out.items():
        print(f"canary  {k:44s} {v}", flush=True)
    return out


SECTIONS = {"faces": section_faces, "detect": section_detect, "image": section_image, "video": section_video,
            "triton": section_triton, "canary": section_canary}


def cpu() -> str:
    """lscpu's model name and the flags that decide the engine (bf16 units, AMX, AVX-512, VNNI)."""
    info = Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    wanted = [f for f in flags if f.startswith(("amx", "avx512_bf16", "avx512_vnni", "avx512f", "avx_vnni"))]
    return f"{model}; {' '.join(sorted(wanted)) or 'no AVX-512/AMX'}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--compare", help="a git revision whose video path runs beside (its code, this venv)")
    parser.add_argument("--requests", type=int, default=96)
    parser.add_argument("--image-rounds", type=int, default=3, help="interleaved rounds of the image section")
    parser.add_argument("--video-rounds", type=int, default=3, help="interleaved rounds of the video section")
    args = parser.parse_args()
    results = {"threads": THREADS, "cores": os.cpu_count(), "cpu": cpu()}
    print(f"cpu: {results['cpu']}", flush=True)
    for name in args.sections.split(","):
        results[name] = SECTIONS[name](args)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "bench_engines.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**previous, **results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
