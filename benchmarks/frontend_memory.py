"""TorchServe's Java frontend under a soak, with the repository's heap bound (``vmargs`` in
config.properties) and without it, one after the other in this run: four clients send images while a fifth
sends 100 MB uploads (the largest body the server accepts; the handler refuses them as undecodable, but the
frontend aggregates and forwards every byte). Prints the frontend's RSS after start, its peak and its end,
the failed requests (the target is zero besides the refused uploads), and whether the frontend survived.

Run: python benchmarks/frontend_memory.py [--seconds 120] [--large-every 2]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import psutil

from deepfake_serving.media import samples
from deepfake_serving.serving.client.clients import RestClient
from deepfake_serving.serving.launch.archive import build_archive
from deepfake_serving.serving.launch.torchserve import CONFIG, Ports, TorchServe

VARIANT = "b4-mobile"
LARGE = 100 * 2**20 - 4096  # under max_request_size (104857600)


def java(server: TorchServe) -> psutil.Process:
    return next(p for p in psutil.Process(server.process.pid).children(recursive=True) if p.name() == "java")


def soak(store: Path, mar: str, workdir: Path, config: Path, seconds: float, large_every: float) -> dict:
    with TorchServe(store, workdir, models=[f"{VARIANT}={mar}"], ports=Ports.free(), config=config) as server:
        frontend, image, large = java(server), samples.astronaut_jpeg(), b"\1" * LARGE
        figures = {"start": frontend.memory_info().rss, "peak": 0, "images": 0, "failed": 0, "uploads": 0}
        done = threading.Event()

        def images():
            client = RestClient(server.inference_url, timeout=120)
            while not done.is_set():
                answer = client.predict(VARIANT, image)
                figures["images"] += 1
                figures["failed"] += 0 if answer.ok else 1

        def uploads():
            client = RestClient(server.inference_url, timeout=120)
            while not done.wait(large_every):
                client.predict(VARIANT, large)
                figures["uploads"] += 1

        threads = [threading.Thread(target=images) for _ in range(4)] + [threading.Thread(target=uploads)]
        for thread in threads:
            thread.start()
        start = time.monotonic()
        while time.monotonic() - start < seconds and frontend.is_running():
            figures["peak"] = max(figures["peak"], frontend.memory_info().rss)
            time.sleep(0.5)
        done.set()
        for thread in threads:
            thread.join()
        figures["alive"] = frontend.is_running() and frontend.status() != psutil.STATUS_ZOMBIE
        figures["end"] = frontend.memory_info().rss if figures["alive"] else 0
        return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--large-every", type=float, default=2.0, help="seconds between 100 MB uploads")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        root = Path(work)
        mar = build_archive(VARIANT, "1.0", export_path=root / "store", engine="onnxruntime").name
        unbounded = root / "unbounded.properties"
        unbounded.write_text("".join(line for line in CONFIG.read_text().splitlines(keepends=True)
                                     if not line.startswith("vmargs=")))
        mb = 2**20
        for name, config in (("vmargs (config.properties)", CONFIG), ("no vmargs", unbounded)):
            f = soak(root / "store", mar, root / name.split()[0], config, args.seconds, args.large_every)
            print(f"{name}: frontend RSS {f['start'] / mb:.0f} MB after start, peak {f['peak'] / mb:.0f} MB, "
                  f"{f['end'] / mb:.0f} MB at the end; {f['images']} images ({f['failed']} failed), "
                  f"{f['uploads']} 100 MB uploads; frontend alive: {f['alive']}", flush=True)


if __name__ == "__main__":
    main()
