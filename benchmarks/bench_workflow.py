"""The ensemble archive against a TorchServe Workflow of the same members (issue 21's comparison).

- ensemble  one archive (``deepfake-serving ensemble``): its worker decodes and detects once per image and
            runs b4-mobile's and b4-ff's classifiers in turn over the batch's faces, then fuses
- workflow  a TorchServe Workflow (``.war``, ``/wfpredict``): a pass-through node, each member's own image
            archive as a model node (each decodes and detects again), and a function node that takes the
            mean of the members' P(fake) face by face

Both run on one TorchServe each, with the same checkpoints and engine, each given the machine's cores by
the threads rule (the ensemble's one worker all of them, the workflow's two workers half each). Rounds
interleave: one request to each in turn (latency), then the same load from ``--clients`` threads to each in
turn (throughput). The answers are compared face by face.

Needs torch-workflow-archiver (pip install torch-workflow-archiver==0.2.15, Apache-2.0): a benchmark tool,
not a dependency of the package.

Run: python benchmarks/bench_workflow.py [--rounds 10] [--clients 4] [--requests 24]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import requests
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_engines import RESULTS, cpu  # noqa: E402

from deepfake_serving.media import samples  # noqa: E402
from deepfake_serving.serving.client.clients import RestClient  # noqa: E402
from deepfake_serving.serving.launch.archive import DEFAULT_MODEL_CONFIG, build_archive, build_ensemble_archive  # noqa: E402
from deepfake_serving.serving.launch.torchserve import CONFIG, Ports, TorchServe  # noqa: E402
from deepfake_serving.variants import get_variant  # noqa: E402

MEMBERS = ("b4-mobile", "b4-ff")
WORKFLOW = "mobile_ff_wf"
ENGINE = "onnxruntime"  # one engine for both, fp32: the answers can be compared to 1e-4

WORKFLOW_HANDLER = '''
import json


def start(data, context):
    """The DAG has one start node: it hands each request's image to both members. TorchServe calls each
    function once with no data when its worker starts."""
    if not data:
        return None
    return [row.get("data") or row.get("body") for row in data]


def fuse(data, context):
    """The mean of the members' P(fake) per face (in each member's own face order) and the largest of them."""
    if not data:
        return None
    answers = []
    for row in data:
        members = [json.loads(row[name]) for name in ("m0", "m1")]
        counts = {len(m.get("faces", [])) for m in members}
        faces = [sum(m["faces"][i]["fake_probability"] for m in members) / len(members)
                 for i in range(min(counts))]
        answers.append(json.dumps({"faces": faces, "fake_probability": max(faces) if faces else None,
                                   "face_counts": [len(m.get("faces", [])) for m in members]}))
    return answers
'''


def build(store: Path, wf_store: Path) -> Path:
    """Member archives, the ensemble archive over the same checkpoints, and the workflow archive."""
    checkpoints = []
    for seed, variant in enumerate(MEMBERS):
        torch.manual_seed(seed)
        path = store / f"{variant}.pt"
        torch.save(get_variant(variant).build().state_dict(), path)
        checkpoints.append(path)
        build_archive(variant, "1", checkpoints=[str(path)], export_path=store, model_name=f"wf-{variant}", engine=ENGINE)
    ensemble = build_ensemble_archive("mobile-ff", "1", [(v, [str(c)]) for v, c in zip(MEMBERS, checkpoints)],
                                      export_path=store, engine=ENGINE)
    work = store / "workflow"
    work.mkdir()
    batch = {"batch-size": DEFAULT_MODEL_CONFIG["batchSize"], "max-batch-delay": DEFAULT_MODEL_CONFIG["maxBatchDelay"]}
    spec = {"models": {"min-workers": 1, "max-workers": 1, **batch,
                       **{f"m{i}": {"url": f"wf-{v}-v1.mar"} for i, v in enumerate(MEMBERS)}},
            "dag": {"start": ["m0", "m1"], "m0": ["fuse"], "m1": ["fuse"]}}
    (work / "spec.yaml").write_text(json.dumps(spec))  # YAML is a superset of JSON
    (work / "handler.py").write_text(textwrap.dedent(WORKFLOW_HANDLER))
    subprocess.run([str(Path(sys.executable).parent / "torch-workflow-archiver"), "--workflow-name", WORKFLOW,
                    "--spec-file", str(work / "spec.yaml"), "--handler", str(work / "handler.py"),
                    "--export-path", str(wf_store), "-f"], check=True)
    return ensemble


def start_servers(store: Path, wf_store: Path, ensemble: Path, work: Path) -> tuple[TorchServe, TorchServe]:
    config = work / "workflow.properties"
    config.write_text(CONFIG.read_text() + f"\nworkflow_store={wf_store}\n")
    fused = TorchServe(store, work / "ensemble", models=[f"mobile-ff={ensemble.name}"], ports=Ports.free(), workers=1)
    flow = TorchServe(store, work / "workflow", ports=Ports.free(), config=config, workers=len(MEMBERS))
    try:
        fused.start()
        flow.start()
        response = requests.post(f"{flow.management_url}/workflows", params={"url": f"{WORKFLOW}.war"}, timeout=600,
                                 headers=flow.keys.headers("management"))
        if not response.ok:
            log = [line for line in (flow.workdir / "logs" / "model_log.log").read_text(errors="replace").splitlines()
                   if "__start" in line or "__fuse" in line][-25:]
            raise RuntimeError(f"registering the workflow: {response.status_code} {response.text}\n" + "\n".join(log))
    except BaseException:
        fused.stop()
        flow.stop()
        raise
    return fused, flow


def tree(server: TorchServe) -> list[psutil.Process]:
    root = psutil.Process(server.process.pid)
    return [root, *root.children(recursive=True)]


def cpu_seconds(server: TorchServe) -> float:
    """CPU time (user + system) of the server's whole process tree: Java and every worker."""
    total = 0.0
    for process in tree(server):
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            continue
    return total


def rss_mb(server: TorchServe) -> float:
    return sum(p.memory_info().rss for p in tree(server)) / 2**20


def workflow_predict(flow: TorchServe, image: bytes) -> dict:
    response = requests.post(f"{flow.inference_url}/wfpredict/{WORKFLOW}", data=image, timeout=300,
                             headers=flow.keys.headers("inference"))
    response.raise_for_status()
    return response.json()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=24, help="per throughput round and side")
    args = parser.parse_args()
    images = {"one face": samples.astronaut_jpeg(), "two faces": samples.encode(samples.two_faces(), quality=95)}
    print(f"CPU: {cpu()}; {args.rounds} interleaved latency rounds, 2 throughput rounds of "
          f"{args.requests} requests from {args.clients} clients")
    with tempfile.TemporaryDirectory() as tmp:
        store, wf_store = Path(tmp) / "store", Path(tmp) / "wf_store"
        store.mkdir()
        wf_store.mkdir()
        ensemble = build(store, wf_store)
        fused, flow = start_servers(store, wf_store, ensemble, Path(tmp))
        try:
            rest = RestClient(fused.inference_url)
            sides = {"ensemble": lambda image: rest.predict("mobile-ff", image).body,
                     "workflow": lambda image: workflow_predict(flow, image)}
            results: dict = {"cpu": cpu(), "engine": ENGINE, "members": MEMBERS}
            for name, image in images.items():
                answers = {side: call(image) for side, call in sides.items()}
                ours = [f["fake_probability"] for f in answers["ensemble"]["faces"]]
                theirs = answers["workflow"]["faces"]
                gap = max((abs(a - b) for a, b in zip(ours, theirs)), default=None)
                times: dict[str, list[float]] = {side: [] for side in sides}
                for _ in range(args.rounds):
                    for side, call in sides.items():
                        start = time.perf_counter()
                        call(image)
                        times[side].append(time.perf_counter() - start)
                latency = {side: statistics.median(t) * 1000 for side, t in times.items()}
                results[name] = {"latency_ms": latency, "ratio": latency["workflow"] / latency["ensemble"],
                                 "largest_face_gap": gap, "faces": len(ours)}
                print(f"{name}: ensemble {latency['ensemble']:.0f} ms, workflow {latency['workflow']:.0f} ms "
                      f"(workflow / ensemble {results[name]['ratio']:.2f}×); fused P(fake) per face differs by at "
                      f"most {gap if gap is None else f'{gap:.1e}'} over {len(ours)} face(s)")
            throughput: dict[str, list[float]] = {side: [] for side in sides}
            work: dict[str, list[float]] = {side: [] for side in sides}
            servers = {"ensemble": fused, "workflow": flow}
            image = images["one face"]
            for _ in range(2):
                for side, call in sides.items():
                    spent, start = cpu_seconds(servers[side]), time.perf_counter()
                    with ThreadPoolExecutor(max_workers=args.clients) as pool:
                        list(pool.map(lambda _: call(image), range(args.requests)))
                    throughput[side].append(args.requests / (time.perf_counter() - start))
                    work[side].append((cpu_seconds(servers[side]) - spent) / args.requests * 1000)
            rates = {side: max(r) for side, r in throughput.items()}
            cpu_ms = {side: min(w) for side, w in work.items()}
            memory = {side: rss_mb(server) for side, server in servers.items()}
            results.update(throughput_req_s=rates, cpu_ms_per_request=cpu_ms, server_rss_mb=memory,
                           workers={side: len(tree(server)) - 2 for side, server in servers.items()})
            print(f"one face, {args.clients} clients: ensemble {rates['ensemble']:.2f} req/s, workflow "
                  f"{rates['workflow']:.2f} req/s (ensemble / workflow {rates['ensemble'] / rates['workflow']:.2f}×); "
                  f"CPU per request: ensemble {cpu_ms['ensemble']:.0f} ms, workflow {cpu_ms['workflow']:.0f} ms; "
                  f"server RSS (Java and workers): ensemble {memory['ensemble']:.0f} MB, workflow "
                  f"{memory['workflow']:.0f} MB")
        finally:
            fused.stop()
            flow.stop()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_workflow.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
