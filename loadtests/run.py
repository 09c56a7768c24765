"""Start a server on demo weights (or use a running one), run Locust headless against it with the
target's thresholds, keep CSV and HTML reports, and exit with Locust's verdict.

    python loadtests/run.py --target torchserve-rest                 # 8 users, 60 s, local Locust
    python loadtests/run.py --target triton-grpc --workers 2         # one master + two workers on loopback
    python loadtests/run.py --target torchserve-grpc --host 127.0.0.1:7070   # a server already running

Targets are also thresholds.yaml scenarios; reports go to loadtests/reports/<target>*.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import tempfile
from pathlib import Path

from deepfake_serving.core.naming import video_model
from deepfake_serving.engines import AUTO_ENGINE, ENGINES
from deepfake_serving.serving.launch.processes import free_ports

HERE = Path(__file__).parent
TARGETS = {  # target → (Locust user class, backend, protocol)
    "torchserve-rest": ("TorchServeRestUser", "torchserve", "rest"),
    "torchserve-grpc": ("TorchServeGrpcUser", "torchserve", "grpc"),
    "triton-http": ("TritonHttpUser", "triton", "http"),
    "triton-grpc": ("TritonGrpcUser", "triton", "grpc"),
}


@contextlib.contextmanager
def demo_server(backend: str, variant: str, workdir: Path, engine: str = AUTO_ENGINE):
    """The variant on random (seeded) weights: an image and a video model, on free loopback ports. Yields
    the addresses by protocol, and the launcher as ``server``."""
    if backend == "torchserve":
        from deepfake_serving.serving.launch.archive import build_archive
        from deepfake_serving.serving.launch.torchserve import Ports, TorchServe

        store = workdir / "store"
        image = build_archive(variant, "1.0", export_path=store, engine=engine)
        video = build_archive(variant, "1.0", export_path=store, media="video", engine=engine)
        with TorchServe(store, workdir / "ts", ports=Ports.free(),
                        models=[f"{variant}={image.name}", f"{video_model(variant)}={video.name}"]) as server:
            yield {"rest": server.inference_url, "grpc": server.grpc_target, "server": server}
    else:
        from deepfake_serving.core.naming import model_names
        from deepfake_serving.serving.launch.triton import Triton, TritonPorts
        from deepfake_serving.serving.launch.triton_repository import build_classifier_version, write_configs

        repository = workdir / "model_repository"
        write_configs(repository, [variant])
        build_classifier_version(variant, 1, repository=repository, engine=engine)
        names = model_names(variant)
        with Triton(workdir / "triton", [names["ensemble"], names["video"]], repository=repository,
                    ports=TritonPorts.free()) as server:
            yield {"http": server.http_url, "grpc": server.grpc_target, "server": server}


def default_scenario(target: str, engine: str, running_server: bool) -> str:
    """The target's thresholds for a server in bf16 (what ``auto`` serves on a CPU with bf16 units, as a
    server on this machine would), else its ``-fp32`` set."""
    from deepfake_serving.builder.engine_choice import this_cpu

    bf16 = this_cpu().bf16_units and (running_server or engine == AUTO_ENGINE)
    return target if bf16 else f"{target}-fp32"


def run_locust(args, user: str, host: str) -> int:
    reports = Path(args.reports)
    reports.mkdir(parents=True, exist_ok=True)
    prefix = reports / args.target
    base = [sys.executable, "-m", "locust", "-f", str(HERE / "locustfile.py")]
    scenario = args.scenario or default_scenario(args.target, args.engine, bool(args.host))
    print(f"thresholds: scenario {scenario} of {HERE / 'thresholds.yaml'}", file=sys.stderr)
    common = ["--model", args.variant, "--scenario", scenario]
    distributed, workers = [], []
    if args.workers:
        port = free_ports(1)[0]
        distributed = ["--master", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port),
                       "--expect-workers", str(args.workers)]
        workers = [subprocess.Popen([*base, "--worker", "--master-host", "127.0.0.1", "--master-port", str(port),
                                     *common]) for _ in range(args.workers)]
    master = [*base, *distributed, "--headless", "-u", str(args.users), "-r", str(args.users), "-t", args.run_time,
              "--host", host, *common, "--csv", str(prefix), "--html", f"{prefix}.html", "--only-summary", user]
    try:
        code = subprocess.call(master)
    finally:
        for worker in workers:
            worker.wait(timeout=60)
    print(f"reports: {prefix}_stats.csv, {prefix}.html", file=sys.stderr)
    return code


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", choices=sorted(TARGETS), required=True)
    parser.add_argument("--host", help="a running server (default: start one on demo weights)")
    parser.add_argument("--variant", default="b4-mobile")
    parser.add_argument("--engine", choices=(AUTO_ENGINE, *ENGINES), default=AUTO_ENGINE, help="the demo archives' engine")
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--run-time", default="60s")
    parser.add_argument("--workers", type=int, default=0, help="distributed: this many Locust workers")
    parser.add_argument("--scenario", help="thresholds.yaml scenario (default: the target's, -fp32 where the server "
                                           "does not run bf16)")
    parser.add_argument("--reports", default=str(HERE / "reports"))
    args = parser.parse_args()
    user, backend, protocol = TARGETS[args.target]
    if args.host:
        return run_locust(args, user, args.host)
    with tempfile.TemporaryDirectory() as work, demo_server(backend, args.variant, Path(work), args.engine) as hosts:
        return run_locust(args, user, hosts[protocol])


if __name__ == "__main__":
    sys.exit(main())
