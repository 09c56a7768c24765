"""Where a worker's memory goes: RSS (anonymous / file-backed) after each stage of loading and serving.

Run: python benchmarks/memory_profile.py [--variant b4-mobile] [--threads 1]
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
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    bundle_dir = tempfile.mkdtemp(prefix="bundle-")
    subprocess.run([sys.executable, "-c", "import sys; from deepfake_serving.bundle import write_bundle; "
                    "write_bundle(sys.argv[1], sys.argv[2], '1')", bundle_dir, args.variant], check=True)
    rows = [("python", rss())]
    import torch
    rows.append(("import torch", rss()))
    torch.set_num_threads(args.threads)
    import torchvision  # noqa: F401
    rows.append(("import torchvision", rss()))
    from deepfake_serving import samples
    from deepfake_serving.bundle import load_bundle
    rows.append(("import facenet-pytorch, deepfake_serving", rss()))
    pipeline = load_bundle(bundle_dir)
    rows.append(("model (+ timm where the variant needs it) + MTCNN", rss()))
    image = samples.astronaut_jpeg()
    pipeline.predict(image)
    rows.append(("first prediction", rss()))
    for _ in range(5):
        pipeline.predict_batch([image] * 8)
    rows.append(("batches of 8", rss()))
    print(f"{args.variant}, {args.threads} torch thread(s), torch {torch.__version__}")
    print(f"{'stage':<44}{'RSS MB':>8}{'anon MB':>9}{'file MB':>9}")
    for name, r in rows:
        print(f"{name:<44}{r['VmRSS']:>8.0f}{r['RssAnon']:>9.0f}{r['RssFile']:>9.0f}")


if __name__ == "__main__":
    main()
