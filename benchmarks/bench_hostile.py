"""Hostile-media probe: peak memory and time per clip for the worst videos, in process and served.

In process, each (clip, code) pair runs in its own Python process so its peak RSS (VmHWM) is its
own; ``--compare REV`` runs the same clips through the code of a git revision (a worktree on
PYTHONPATH, same venv) side by side. Served, a TorchServe with the b4-mobile video archive gets each
clip while its worker's RSS is sampled every 50 ms.

Clips: a 4K (3840x2160) 300-frame clip analysed with sampling=all; the DFDC-like 10 s 720p clip
(linspace 32); an MPEG-TS that declares 320x240 and turns 7680x4320 after 150 frames; an MP4 whose
sample table claims 2**32-1 frames; 8 honest 1080p frames of faces tiled at 40 px. Image: a 1024x1024
PNG of 625 tiled faces (sent to the image model).

Run: python benchmarks/bench_hostile.py [--compare 9a7d702] [--no-served] [--inputs tiled_faces_png ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parents[1]
CLIPS = {  # name: (sampling options)
    "4k_300_all": {"sampling": "all"},
    "720p_10s_linspace32": {"sampling": "linspace", "frames": 32},
    "ts_320x240_then_8k": {"sampling": "all"},
    "mp4_claims_2e32_frames": {"sampling": "all"},
    "tiled_faces_1080p_8": {"sampling": "all"},
    "tiled_faces_png": {"image": True},
}
# the inputs --compare also runs through the old code
HONEST = ("4k_300_all", "720p_10s_linspace32", "tiled_faces_1080p_8", "tiled_faces_png")

CHILD = """
import json, os, sys, time
if os.environ.get("BENCH_CODE"):  # another revision's package: ahead of the editable install's finder
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__.lower()]
    sys.path.insert(0, os.environ["BENCH_CODE"])
import deepfake_serving
assert deepfake_serving.__file__.startswith(os.environ.get("BENCH_CODE", "")), deepfake_serving.__file__
import torch
torch.set_num_threads(2)
from deepfake_serving.variants import create_model, get_variant
from deepfake_serving.media.video import Sampling
from deepfake_serving.pipeline.video import VideoPipeline
from deepfake_serving.pipeline.image import ImagePipeline
try:
    from deepfake_serving.core.errors import RequestError as Refusal
except ImportError:
    from deepfake_serving.core.errors import InputError as Refusal
options = json.loads(sys.argv[2])
kind = ImagePipeline if options.get("image") else VideoPipeline
pipeline = kind(get_variant("b4-mobile"), create_model("b4-mobile"))
start = time.perf_counter()
try:
    if options.get("image"):
        answer = pipeline.predict(open(sys.argv[1], "rb").read())
        outcome = f"200 faces={len(answer['faces'])}"
    else:
        answer = pipeline.analyze(open(sys.argv[1], "rb").read(), Sampling(strategy=options["sampling"],
                                  frames=options.get("frames", 32)))
        outcome = f"200 frames={answer['frames_analyzed']}"
except Refusal as err:
    outcome = f"{err.status} {err.code}"
except MemoryError:
    outcome = "MemoryError"
# VmHWM, not ru_maxrss: Linux keeps ru_maxrss across fork and exec, so it would report the parent's peak.
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"seconds": time.perf_counter() - start, "outcome": outcome, "peak_rss_mb": hwm / 1024}))
"""


def make_clips(directory: Path) -> dict[str, Path]:
    sys.path.insert(0, str(ROOT / "tests"))
    from deepfake_serving.media import samples
    from helpers import media  # the test corpus's builders

    builders = {
        "4k_300_all": lambda: samples.encode_video(samples.moving_face_frames(300, size=(3840, 2160)), "mp4"),
        "720p_10s_linspace32": lambda: samples.encode_video(samples.moving_face_frames(300, size=(1280, 720)),
                                                           "mp4", fps=30),
        "ts_320x240_then_8k": lambda: media.resolution_switch_ts(small=150),
        "mp4_claims_2e32_frames": media.claims_frames,
        "tiled_faces_1080p_8": media.tiled_faces_clip,
        "tiled_faces_png": media.tiled_faces_png,
    }
    paths = {}
    for name, build in builders.items():
        path = directory / f"{name}.bin"
        if not path.exists():
            print(f"encoding {name}...", file=sys.stderr)
            path.write_bytes(build())
        paths[name] = path
    return paths


def in_process(clip: Path, options: dict, pythonpath: str | None) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    if pythonpath:
        env["BENCH_CODE"] = pythonpath
    run = subprocess.run([sys.executable, "-c", CHILD, str(clip), json.dumps(options)], env=env,
                         capture_output=True, text=True, timeout=3600)
    if run.returncode:
        return {"outcome": f"exit {run.returncode}: {run.stderr.strip().splitlines()[-1:]}"}
    return json.loads(run.stdout.strip().splitlines()[-1])


def served(clips: dict[str, Path], workdir: Path) -> dict:
    from deepfake_serving.serving.client.clients import RestClient
    from deepfake_serving.serving.launch.archive import build_archive
    from deepfake_serving.serving.launch.torchserve import Ports, TorchServe

    store = workdir / "store"
    archive = build_archive("b4-mobile", "1.0", export_path=store, media="video")
    image_archive = build_archive("b4-mobile", "1.0", export_path=store)
    results = {}
    models = [f"b4-mobile-video={archive.name}", f"b4-mobile={image_archive.name}"]
    with TorchServe(store, workdir / "ts", models=models, ports=Ports.free()) as server:
        client = RestClient(server.inference_url, timeout=3600)
        results["corpus_with_good_traffic"] = corpus_under_good_traffic(server)
        print(f"served     corpus + good traffic       {results['corpus_with_good_traffic']}", flush=True)
        for name, path in clips.items():
            model = "b4-mobile" if CLIPS[name].get("image") else "b4-mobile-video"
            (pid,) = server.worker_pids(model)
            worker = psutil.Process(pid)
            baseline = worker.memory_info().rss
            peak, done = [baseline], threading.Event()

            def sample():
                while not done.is_set():
                    try:
                        peak.append(worker.memory_info().rss)
                    except psutil.Error:
                        return
                    time.sleep(0.05)

            sampler = threading.Thread(target=sample)
            sampler.start()
            start = time.perf_counter()
            options = None if model == "b4-mobile" else CLIPS[name]
            answer = client.predict(model, path.read_bytes(), options=options)
            seconds = time.perf_counter() - start
            done.set()
            sampler.join()
            found = f"faces={len(answer.body.get('faces', []))}" if model == "b4-mobile" else \
                f"frames={answer.body.get('frames_analyzed')}"
            outcome = f"200 {found}" if answer.ok else f"{answer.status} {answer.body['error']['code']}"
            results[name] = {"seconds": seconds, "outcome": outcome, "worker_rss_before_mb": baseline / 2**20,
                             "worker_peak_rss_mb": max(peak) / 2**20,
                             "worker_pid_unchanged": server.worker_pids(model) == [pid]}
    return results


def corpus_under_good_traffic(server, rounds: int = 3) -> dict:
    """Every bad image and video of the test corpus, ``rounds`` times, sent while 4 clients send good
    photographs and clips: how many good requests failed, and whether every bad one got its own code."""
    from concurrent.futures import ThreadPoolExecutor

    from deepfake_serving.media import samples
    from deepfake_serving.serving.client.clients import RestClient
    from helpers import media

    clip = samples.encode_video(samples.moving_face_frames(20, size=(320, 240)), "mp4")
    bad = [("b4-mobile", data, code, None) for data, _, code in media.BAD_IMAGES.values()]
    bad += [("b4-mobile-video", make(clip), code, {"sampling": "all"}) for make, _, code in media.BAD_VIDEOS.values()]
    # heavy but honest: answered 200 (code None is a good request's; these count as the corpus's)
    bad += [("b4-mobile", media.tiled_faces_png(), "", None),
            ("b4-mobile-video", media.tiled_faces_clip(), "", {"sampling": "all"})]
    good = [("b4-mobile", samples.astronaut_jpeg(), None, None), ("b4-mobile-video", clip, None, {"frames": 4})]
    jobs = bad * rounds
    jobs += good * (len(jobs) // 2)
    jobs.sort(key=lambda job: hash(job[1][:64]) % 997)  # interleave good and bad

    def send(job):
        model, data, code, options = job
        answer = RestClient(server.inference_url, timeout=600).predict(model, data, options=options)
        return code, answer

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(send, jobs))
    good_failed = sum(1 for code, answer in answers if code is None and not answer.ok)
    wrong_code = sum(1 for code, answer in answers if code and answer.body.get("error", {}).get("code") != code)
    wrong_code += sum(1 for code, answer in answers if code == "" and not answer.ok)  # tiled faces: must be 200
    return {"requests": len(answers), "good": sum(1 for code, _ in answers if code is None),
            "good_failed": good_failed, "bad_with_a_wrong_code": wrong_code}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare", help="a git revision to run side by side in process (e.g. 9a7d702)")
    parser.add_argument("--no-served", action="store_true")
    parser.add_argument("--inputs", nargs="+", choices=list(CLIPS), help="only these inputs (default: all)")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    clips = {name: path for name, path in make_clips(RESULTS).items() if not args.inputs or name in args.inputs}
    out: dict = {"in_process": {}, "served": {}}
    with tempfile.TemporaryDirectory() as tmp:
        codes = {"this tree": None}
        if args.compare:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", f"{tmp}/old", args.compare],
                           check=True, capture_output=True)
            codes[args.compare] = f"{tmp}/old"
        try:
            for name, path in clips.items():
                for label, pythonpath in codes.items():
                    if pythonpath and name not in HONEST:
                        continue  # the old decoder has no bound on these (up to out of memory): not rerun
                    result = in_process(path, CLIPS[name], pythonpath)
                    out["in_process"].setdefault(name, {})[label] = result
                    print(f"in process {name:24s} {label:10s} {result}", flush=True)
        finally:
            if args.compare:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", f"{tmp}/old"])
        if not args.no_served:
            out["served"] = served(clips, Path(tmp))
            for name, result in out["served"].items():
                print(f"served     {name:24s} {result}", flush=True)
    (RESULTS / "bench_hostile.json").write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
