"""Where a worker's memory goes: RSS (anonymous / file-backed) after each stage of loading and serving.

Run: python benchmarks/memory_profile.py [--variant b4-mobile] [--engine onnxruntime|torch] [--threads 1]
Each stage is measured in this one fresh process, in the order a TorchServe worker goes through them.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile


def rss() -> dict[str, float]:
    fields = {}
    for line in open("/proc/self/status"):
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant", default="b4-mobile")
    parser.add_argument("--engine", default="onnxruntime", choices=["onnxruntime", "torch"])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    bundle_dir = tempfile.mkdtemp(prefix="bundle-")
    subprocess.run([sys.executable, "-c", "import sys; from deepfake_serving.builder.write import write_bundle; "
                    "write_bundle(sys.argv[1], sys.argv[2], '1')", bundle_dir, args.variant], check=True)
    rows = [("python", rss())]
    if args.engine == "torch":
        import torch  # noqa: F401
        import torchvision  # noqa: F401
        rows.append(("import torch, torchvision", rss()))
    import onnxruntime  # noqa: F401

    from deepfake_serving.media import samples
    from deepfake_serving.pipeline import load_image_pipeline
    rows.append(("import onnxruntime, deepfake_serving", rss()))
    pipeline = load_image_pipeline(bundle_dir, engine=args.engine, threads=args.threads)
    rows.append((f"classifier ({args.engine}) + MTCNN (ONNX Runtime)", rss()))
    image = samples.astronaut_jpeg()
    pipeline.predict(image)
    rows.append(("first prediction", rss()))
    for _ in range(5):
        pipeline.predict_batch([image] * 8)
    rows.append(("batches of 8", rss()))
    torch_loaded = "torch" in sys.modules
    print(f"{args.variant}, engine {args.engine}, {args.threads} thread(s), torch imported: {torch_loaded}")
    print(f"{'stage':<52}{'RSS MB':>8}{'anon MB':>9}{'file MB':>9}")
    for name, r in rows:
        print(f"{name:<52}{r['VmRSS']:>8.0f}{r['RssAnon']:>9.0f}{r['RssFile']:>9.0f}")


if __name__ == "__main__":
    main()
