"""Video benchmark: a 10 s, 30 fps, 1280x720 clip through b7-dfdc at 380 with 32 frames.

Prints (and writes to benchmarks/results/bench_video.json), all in one run on the same cores:
  * in-process seconds end to end, split into decode / detect / crop / classify;
  * batched face detection (8 and 32 frames per MTCNN call) against one call per frame, same frames;
  * TorchServe against in-process for the same clip, and the video worker's RSS.

Run: python benchmarks/bench_video.py [--variant b7-dfdc] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch

from deepfake_serving import samples
from deepfake_serving.bundle import load_video_bundle, write_bundle
from deepfake_serving.faces import FaceDetector
from deepfake_serving.serving.archive import build_archive
from deepfake_serving.serving.client import RestClient
from deepfake_serving.serving.torchserve import Ports, TorchServe
from deepfake_serving.variants import get_variant
from deepfake_serving.video import Sampling, decode_video

RESULTS = Path(__file__).parent / "results"


def timed(fn, repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="b7-dfdc")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sampling = Sampling(frames=32)
    print("encoding the 10 s 1280x720 30 fps clip...", file=sys.stderr)
    clip = samples.encode_video(samples.moving_face_frames(300, size=(1280, 720)), "mp4", fps=30)
    out: dict = {"variant": args.variant, "threads": args.threads, "clip_bytes": len(clip),
                 "machine": {"cpus": os.cpu_count(), "torch": torch.__version__}}

    # Face detection: batched against one call per frame, on the same decoded frames.
    video = decode_video(clip, sampling)
    detector = FaceDetector(get_variant(args.variant).preprocessing.faces)
    scale = get_variant(args.variant).preprocessing.faces.frame_detect_scale
    frames = video.frames

    def detect_in_chunks(size: int):
        return [faces for i in range(0, len(frames), size)
                for faces in detector.detect(frames[i:i + size], [scale] * len(frames[i:i + size]))]

    detector.detect(frames[:2], [scale] * 2)  # warm-up
    detection = {}
    for _ in range(args.repeat):  # interleaved rounds
        for label, size in (("per_frame", 1), ("batch_8", 8), ("batch_32", 32)):
            start = time.perf_counter()
            found = detect_in_chunks(size)
            detection.setdefault(label, []).append(time.perf_counter() - start)
            detection.setdefault(f"{label}_faces", sum(len(f) for f in found))
    det = {k: (statistics.median(v) if isinstance(v, list) else v) for k, v in detection.items()}
    out["detection_s"] = det

    # In-process end to end.
    with tempfile.TemporaryDirectory() as tmp:
        write_bundle(tmp, args.variant, "bench")
        pipeline = load_video_bundle(tmp)
    pipeline.analyze(clip, Sampling(frames=2))  # warm-up
    local_s, local = timed(lambda: pipeline.analyze(clip, sampling), args.repeat)
    out["in_process"] = {"seconds": local_s, "timings_ms": local["timings_ms"],
                         "faces": local["metrics"]["faces_classified"], "rss_mb": psutil.Process().memory_info().rss / 2**20}
    pipeline = None  # free this copy of the model before the server loads its own

    # Served.
    with tempfile.TemporaryDirectory() as store, tempfile.TemporaryDirectory() as work:
        mar = build_archive(args.variant, "1.0", export_path=store, media="video",
                            model_config={"handler": {"torch_threads": args.threads}})
        server = TorchServe(store, work, models=[f"{args.variant}-video={mar.name}"], ports=Ports.free()).start()
        try:
            client = RestClient(server.inference_url, timeout=900)
            client.predict(f"{args.variant}-video", clip, options={"frames": 2})
            served_s, served = timed(lambda: client.predict(f"{args.variant}-video", clip), args.repeat)
            rss = psutil.Process(server.worker_pids(f"{args.variant}-video")[0]).memory_info().rss / 2**20
        finally:
            server.stop()
    out["served"] = {"seconds": served_s, "timings_ms": served.body["timings_ms"], "worker_rss_mb": rss}

    t = local["timings_ms"]
    print(f"\n{args.variant}, 10 s 1280x720 30 fps clip, 32 frames, {local['metrics']['faces_classified']} faces, "
          f"{args.threads} torch threads, medians of {args.repeat}")
    print(f"in-process end to end {local_s:.2f} s = decode {t['decode'] / 1000:.2f} + detect {t['detect'] / 1000:.2f}"
          f" + crop {t['crop'] / 1000:.2f} + classify {t['classify'] / 1000:.2f}")
    print(f"face detection on the 32 frames: one call per frame {det['per_frame']:.2f} s, batches of 8 "
          f"{det['batch_8']:.2f} s ({det['per_frame'] / det['batch_8']:.2f}x), one batch of 32 {det['batch_32']:.2f} s "
          f"({det['per_frame'] / det['batch_32']:.2f}x); faces found {det['per_frame_faces']}/{det['batch_8_faces']}/"
          f"{det['batch_32_faces']}")
    print(f"TorchServe end to end {served_s:.2f} s; served/in-process speed {local_s / served_s:.2f}; "
          f"worker RSS {rss:.0f} MB")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_video.json").write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
