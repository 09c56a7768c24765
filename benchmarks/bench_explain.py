"""Explanations and ensembles side by side in one run (issue 21's targets), rounds interleaved.

  explain   per variant (``--variants``, default b4-mobile): one image with one face (the astronaut),
            predicted on the torch engine (decode, detect, classify) against explained (the same plus
            Grad-CAM and ROAD on that face); the ratio per face
  video     per variant: a 16-frame two-face clip (8 frames sampled) analysed against analysed and explained
            (the decisive faces, at most 8); the ratio, the faces explained, and this process's peak memory
  ensemble  b4-mobile + b4-ff on one detection (the two-face picture): the ensemble's predict against one
            detection plus each member's classify of the same faces, measured apart

Run: python benchmarks/bench_explain.py [--sections explain,video,ensemble] [--rounds 5] [--variants b4-mobile,b7-dfdc]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")

sys.path.insert(0, str(Path(__file__).parent))
from bench_engines import RESULTS, THREADS, cpu, interleaved  # noqa: E402

from deepfake_serving.builder.ensemble import write_ensemble  # noqa: E402
from deepfake_serving.builder.write import write_bundle  # noqa: E402
from deepfake_serving.explain.image import load_image_explainer  # noqa: E402
from deepfake_serving.explain.video import load_video_explainer  # noqa: E402
from deepfake_serving.media import samples  # noqa: E402
from deepfake_serving.media.video import Sampling  # noqa: E402
from deepfake_serving.pipeline import load_image_pipeline, load_video_pipeline  # noqa: E402
from deepfake_serving.pipeline.ensemble import load_ensemble_pipeline  # noqa: E402


def section_explain(args, work: Path) -> dict:
    image = samples.astronaut_jpeg()
    figures = {}
    for variant in args.variants.split(","):
        write_bundle(work / variant, variant, "1", engine="torch")
        pipeline = load_image_pipeline(work / variant, threads=THREADS)
        explainer = load_image_explainer(work / variant, pipeline, threads=THREADS)
        times = interleaved({"predict": lambda: pipeline.predict(image), "explain": lambda: explainer.explain(image)},
                            args.rounds)
        figures[variant] = {**{k: round(v * 1000, 1) for k, v in times.items()},
                            "ratio": round(times["explain"] / times["predict"], 2)}
        print(f"{variant}: predict (torch engine) {times['predict'] * 1000:.0f} ms, explain {times['explain'] * 1000:.0f} ms "
              f"per one-face image: {figures[variant]['ratio']:.2f}× (target ≤ 3×)")
    return figures


def section_video(args, work: Path) -> dict:
    import resource

    clip = samples.encode_video(samples.moving_face_frames(16, (640, 480), faces=2), "mp4")
    sampling, figures = Sampling(frames=8), {}
    for variant in args.variants.split(","):
        if not (work / variant).exists():
            write_bundle(work / variant, variant, "1", engine="torch")
        pipeline = load_video_pipeline(work / variant, threads=THREADS)
        explainer = load_video_explainer(work / variant, pipeline, threads=THREADS)
        explained = explainer.analyze(clip, sampling)
        times = interleaved({"analyze": lambda: pipeline.analyze(clip, sampling),
                             "explain": lambda: explainer.analyze(clip, sampling)}, args.rounds)
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        figures[variant] = {**{k: round(v * 1000, 1) for k, v in times.items()},
                            "ratio": round(times["explain"] / times["analyze"], 2),
                            "faces_explained": explained["explanation"]["faces_explained"], "peak_rss_mb": round(peak_mb)}
        print(f"{variant} video (8 of 16 frames, 2 faces): analyze {times['analyze'] * 1000:.0f} ms, explained "
              f"{times['explain'] * 1000:.0f} ms ({figures[variant]['faces_explained']} faces explained): "
              f"{figures[variant]['ratio']:.2f}×; peak RSS so far {peak_mb:.0f} MB")
    return figures


def section_ensemble(args, work: Path) -> dict:
    image = samples.encode(samples.two_faces())
    write_ensemble(work / "ensemble", "mobile-ff", "1", [("b4-mobile", []), ("b4-ff", [])])
    ensemble = load_ensemble_pipeline(work / "ensemble", threads=THREADS)
    (prepared,) = ensemble.preprocessor.prepare([image])
    members = ensemble.members
    candidates = {
        "ensemble": lambda: ensemble.predict(image),
        "detect": lambda: ensemble.preprocessor.prepare([image]),
        **{f"classify {variant.name}": (lambda m=m, scorer=scorer: scorer.scores(
            prepared.crops if m == 0 else prepared.more_crops[m - 1])) for m, (variant, scorer) in enumerate(members)},
    }
    times = interleaved(candidates, args.rounds)
    parts = sum(v for k, v in times.items() if k != "ensemble")
    ratio = times["ensemble"] / parts
    for name, seconds in times.items():
        print(f"  {name}: {seconds * 1000:.1f} ms")
    print(f"ensemble {times['ensemble'] * 1000:.0f} ms against detection + members' classify {parts * 1000:.0f} ms: "
          f"{ratio:.2f}× (target ≤ 1.2×)")
    return {**{k: round(v * 1000, 1) for k, v in times.items()}, "ratio": round(ratio, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default="explain,video,ensemble")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--variants", default="b4-mobile")
    args = parser.parse_args()
    print(f"CPU: {cpu()}")
    results: dict = {"cpu": cpu(), "rounds": args.rounds}
    with tempfile.TemporaryDirectory() as tmp:
        for section in args.sections.split(","):
            results[section] = {"explain": section_explain, "video": section_video,
                                 "ensemble": section_ensemble}[section](args, Path(tmp))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_explain.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
