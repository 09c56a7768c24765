"""deepfake-serving: package, serve and query deepfake detectors."""

from __future__ import annotations

import argparse
import json
import multiprocessing
import signal
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

from deepfake_serving.core.limits import DEFAULT_FRAMES
from deepfake_serving.core.naming import MODEL_STORE as DEFAULT_MODEL_STORE
from deepfake_serving.core.naming import TRITON_REPOSITORY
from deepfake_serving.evaluation import GATE_METRICS

DEFAULT_WORKDIR = "runtime/torchserve"  # deepfake_serving.serving.client.auth looks for key files here
DEFAULT_TRITON_WORKDIR = "runtime/triton"


def cmd_variants(args) -> int:
    from deepfake_serving.variants import get_variant, list_variants

    for name in list_variants():
        v = get_variant(name)
        print(json.dumps({"name": name, "source_document": v.source_document, "description": v.description, "output": v.output,
                          "preprocessing": v.preprocessing.to_dict()}))
    return 0


def cmd_samples(args) -> int:
    try:
        from deepfake_serving.media.samples import write_samples

        files = write_samples(args.directory)
    except ImportError as err:
        raise CommandError(f"the sample photographs come from scikit-image ({err.name}): pip install "
                           "'deepfake-serving[samples]'") from None
    print(json.dumps(files))
    return 0


def _training_run(args, workdir: Path) -> tuple[str, list[str], dict | None]:
    """(variant, checkpoints, training run) for an archive: ``--from-run`` fetches the run's checkpoint from
    MLflow; a checkpoint that ``train`` wrote (its run.json beside it) records its run too."""
    if not args.from_run:
        if not args.variant:
            raise CommandError("--variant is required (or --from-run RUN_ID)")
        checkpoints = args.checkpoint or []
        record = Path(checkpoints[0]).with_name("run.json") if len(checkpoints) == 1 else None
        if record is not None and record.is_file() and Path(checkpoints[0]).name == "checkpoint.pt":
            run = json.loads(record.read_text())
            return args.variant, checkpoints, {"run_id": run["run_id"], "tracking_uri": run["tracking_uri"]}
        return args.variant, checkpoints, None
    from deepfake_serving.training.tracking import TrackingError, default_uri, download_checkpoint, run_variant

    if args.checkpoint:
        raise CommandError("--from-run takes the run's checkpoint: no --checkpoint")
    uri = args.tracking_uri or default_uri()
    try:
        variant = run_variant(uri, args.from_run)
        checkpoint = download_checkpoint(uri, args.from_run, workdir)
    except TrackingError as err:
        raise CommandError(str(err)) from None
    if args.variant and args.variant != variant:
        raise CommandError(f"run {args.from_run} trained {variant}, not {args.variant}")
    return variant, [str(checkpoint)], {"run_id": args.from_run, "tracking_uri": uri}


def cmd_archive(args) -> int:
    from deepfake_serving.serving.launch.archive import build_archive

    config: dict[str, object] = {}
    if args.workers:
        config.update(minWorkers=args.workers, maxWorkers=args.workers)
    if args.batch_size:
        config["batchSize"] = args.batch_size
    handler = {"threads": args.threads, "max_decoded_pixels": args.max_decoded_pixels}
    if any(handler.values()):
        config["handler"] = {key: value for key, value in handler.items() if value}
    with tempfile.TemporaryDirectory(prefix="run-") as workdir:
        variant, checkpoints, run = _training_run(args, Path(workdir))
        path = build_archive(variant, args.version, checkpoints=checkpoints, export_path=args.export_path,
                             model_name=args.model_name, model_config=config, media=args.media, engine=args.engine,
                             quantize=args.quantize, calibration=args.calibration, holdout=args.holdout,
                             training_run=run)
    print(path)
    return 0


def cmd_train(args) -> int:
    """Train a variant with its recipe on labelled data (docs/training.md)."""
    from deepfake_serving.core.errors import CheckpointError
    from deepfake_serving.training.data import DataError
    from deepfake_serving.training.loop import DEFAULT_CACHE, Trainer, TrainOptions
    from deepfake_serving.training.tracking import TrackingError
    from deepfake_serving.variants import get_variant

    recipe = get_variant(args.recipe).recipe if args.recipe else None
    options = TrainOptions(args.variant, Path(args.data), Path(args.out), recipe=recipe, epochs=args.epochs,
                           batch_size=args.batch_size, lr=args.lr,
                           init_weights=Path(args.init_weights) if args.init_weights else None, seed=args.seed,
                           validation=args.validation, synthesize=args.synthesize_fakes,
                           cache=Path(args.cache) if args.cache else DEFAULT_CACHE, tracking_uri=args.tracking_uri,
                           device=args.device, precision=args.precision, threads=args.threads, progress=not args.no_progress,
                           augment=not args.no_augmentation)
    try:
        result = Trainer(options, log=lambda line: print(line, file=sys.stderr, flush=True)).run()
    except (DataError, TrackingError, CheckpointError) as err:
        raise CommandError(str(err)) from None
    summary = {k: result.report.get(k) for k in ("frame_auc", "video_auc", "eer", "average_precision", "ece",
                                                 "accuracy", "best_epoch", "initial_weights")}
    print(json.dumps({"out": str(result.out), "checkpoint": str(result.checkpoint), "run_id": result.run_id,
                      "validation": summary}, indent=2))
    return 0


def cmd_evaluate(args) -> int:
    """An archive on labelled data: the report per dataset, and the cross-dataset table."""
    from deepfake_serving.core.errors import CheckpointError
    from deepfake_serving.serving.launch.archive import extract_bundle
    from deepfake_serving.training.evaluate import evaluate_datasets
    from deepfake_serving.training.loop import DEFAULT_CACHE

    with tempfile.TemporaryDirectory(prefix="bundle-") as bundle:
        try:
            extract_bundle(Path(args.archive), Path(bundle))
            _, table = evaluate_datasets(bundle, args.data, args.out, args.cache or DEFAULT_CACHE, args.threads)
        except (CheckpointError, ValueError) as err:  # DataError is a ValueError
            raise CommandError(str(err)) from None
    print(table)
    print(f"reports in {args.out}", file=sys.stderr)
    return 0


def cmd_ensemble(args) -> int:
    """Package several variants as one ensemble archive, or refit an archive's fusion (docs/ensembles.md)."""
    from deepfake_serving.core.fusion import Abstention, Fusion
    from deepfake_serving.serving.launch.archive import build_ensemble_archive, fit_ensemble_archive, repackage_ensemble

    band = tuple(float(v) for v in args.abstain_band.split(",")) if args.abstain_band else None
    if band is not None and len(band) != 2:
        raise CommandError("--abstain-band takes LO,HI")
    abstention = Abstention(args.abstain_disagreement, band) if (band or args.abstain_disagreement is not None) else None
    if args.action == "fit":
        if not (args.archive and args.labelled and args.version):
            raise CommandError("ensemble fit needs --archive, --labelled and --version")
        target, fusion = fit_ensemble_archive(args.archive, args.labelled, args.version, rule=args.rule,
                                              calibration=args.calibration, export_path=args.export_path,
                                              abstention=abstention)
        print(json.dumps(fusion.fit, indent=2))
        print(target)
        return 0
    if args.archive:
        if not (args.name and args.version) or args.member or args.weights or abstention:
            raise CommandError("ensemble build --archive takes --name, --version and --media (its members and "
                               "fusion are the archive's)")
        print(repackage_ensemble(args.archive, args.name, args.version, args.media, args.export_path))
        return 0
    if not (args.name and args.version and args.member and len(args.member) >= 2):
        raise CommandError("ensemble needs --name, --version and two or more --member, or --archive")
    members = []
    for spec in args.member:
        variant, _, checkpoints = spec.partition("=")
        members.append((variant, [c for c in checkpoints.split(",") if c]))
    fusion = Fusion("weighted_mean" if args.weights else "mean",
                    tuple(float(w) for w in args.weights.split(",")) if args.weights else None, abstention=abstention)
    print(build_ensemble_archive(args.name, args.version, members, fusion.check(len(members)),
                                 export_path=args.export_path, engine=args.engine, media=args.media))
    return 0


def _start_server(args, models: list[str]):
    from deepfake_serving.serving.launch.torchserve import Ports, TorchServe

    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    return TorchServe(args.model_store, args.workdir, models=models, ports=_ports(Ports, args)).start()


def _ports(kind, args):
    try:
        return kind.parse(args.ports, args.host)
    except ValueError as err:
        raise CommandError(str(err)) from None


def _bind_options(p, ports: str) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback; 0.0.0.0 for every "
                                                      "interface: put the front of the rollout docs before it)")
    p.add_argument("--ports", help=f"{ports}, comma-separated, or 'free' (default: the documented ones)")


def _supervisor_option(p) -> None:
    p.add_argument("--no-supervisor", action="store_true",
                   help="do not restart a server that dies or stops answering (docs/monitoring.md)")


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _in_a_child(build, *args, **kwargs):
    """Run an archive build in a spawned process and return its result: a process that then serves until
    Ctrl-C must not hold the build's OpenVINO and torch runtimes (their threads crashed it on SIGINT,
    leaving the server behind) nor their memory."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(build, *args, **kwargs).result()


def _wait_forever(server, message: str | None = None, supervisor=None) -> int:
    """Serve until Ctrl-C or SIGTERM (a service manager's stop), then stop the server cleanly. Both
    handlers are set here: a shell starts background jobs with SIGINT ignored, and Python then
    leaves it ignored. With a ``supervisor`` (serving.launch.supervisor), a server that dies is restarted
    instead of ending the command."""
    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop_signal, _interrupt)
    try:  # from here a Ctrl-C stops everything, however early it comes
        if supervisor is not None:
            supervisor.start()
        print(message or f"TorchServe is serving on {server.inference_url} (REST) and {server.grpc_target} (gRPC). "
                         "Ctrl-C stops it.", flush=True)
        while supervisor is not None or server.process.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        for stop_signal in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut the stop short
            signal.signal(stop_signal, signal.SIG_IGN)
        if supervisor is not None:
            supervisor.stop()
        server.stop()
    return 0


def _torchserve_supervisor(args, server):
    from deepfake_serving.serving.launch.torchserve import torchserve_supervisor

    return None if args.no_supervisor else torchserve_supervisor(server)


def cmd_serve(args) -> int:
    models = args.models or [p.name for p in sorted(Path(args.model_store).glob("*.mar"))]
    server = _start_server(args, models)
    return _wait_forever(server, supervisor=_torchserve_supervisor(args, server))


def cmd_demo(args) -> int:
    """Build a demo archive (random weights, flagged untrained), serve it, and predict a real face."""
    from deepfake_serving.core.naming import archive_file_name
    from deepfake_serving.media import samples
    from deepfake_serving.serving.client.clients import GrpcClient, RestClient
    from deepfake_serving.serving.launch.archive import build_archive

    mar = Path(args.model_store) / archive_file_name(args.variant, "1.0")
    if not mar.exists():
        print(f"building demo archive {mar} (random weights)...", file=sys.stderr)
        _in_a_child(build_archive, args.variant, "1.0", export_path=args.model_store)
    server = _start_server(args, [f"{args.variant}={mar.name}"])
    try:
        image = samples.astronaut_jpeg()
        rest = RestClient(server.inference_url).predict(args.variant, image)
        grpc_answer = GrpcClient(server.grpc_target).predict(args.variant, image)
        print(json.dumps(rest.body, indent=2))
        same = rest.body.get("fake_probability") == grpc_answer.body.get("fake_probability")
        print(f"REST {rest.status}, gRPC {grpc_answer.status}, same answer over both: {same}", file=sys.stderr)
    except BaseException:
        server.stop()
        raise
    if args.exit:
        server.stop()
        return 0 if rest.ok and grpc_answer.ok else 1
    return _wait_forever(server, supervisor=_torchserve_supervisor(args, server))


def _predict_video(client, model: str, data: bytes, args):
    """Send a clip; with --stream, show the server's progress events as a progress bar."""
    from tqdm import tqdm

    options = {"sampling": args.sampling, "frames": args.frames, "every": args.every}
    if not args.stream:
        return client.predict(model, data, args.version, options)
    bar, prediction = None, None
    for prediction in client.stream(model, data, args.version, options):
        event = prediction.body
        if event.get("event") == "decoded":
            bar = tqdm(total=event["frames_total"], unit="frame", desc="analysing", file=sys.stderr)
        elif event.get("phase") == "detect" and bar is not None:
            bar.update(event["frames_done"] - bar.n)
            bar.set_postfix(faces=event["faces_so_far"])
    if bar is not None:
        bar.close()
    return prediction


def cmd_triton_build(args) -> int:
    """Write the variant's configs into the repository (if missing) and export one classifier version."""
    from deepfake_serving.core.naming import model_names
    from deepfake_serving.serving.launch.triton_repository import build_classifier_version, write_configs

    if not (Path(args.repository) / model_names(args.variant)["classifier"] / "config.pbtxt").exists():
        write_configs(args.repository, [args.variant])
    print(build_classifier_version(args.variant, args.version, args.checkpoint or (), label=args.label,
                                   seed=args.seed, repository=args.repository))
    return 0


def cmd_triton_serve(args) -> int:
    """Build classifier version 1 when it is missing (or from --checkpoint), then serve the variant (images,
    videos, explanations) and any installed ensembles."""
    from deepfake_serving.core.naming import model_names, triton_model_name
    from deepfake_serving.serving.launch.triton import Triton, TritonPorts, triton_supervisor
    from deepfake_serving.serving.launch.triton_repository import built_versions

    if args.checkpoint or not built_versions(args.variant, args.repository):
        args.version, args.label, args.seed = 1, None, 0
        _in_a_child(cmd_triton_build, args)
    names = model_names(args.variant)
    ensembles = [triton_model_name(name) for name in args.ensemble or ()]
    for name in ensembles:
        if not (Path(args.repository) / name / "config.pbtxt").exists():
            raise CommandError(f"no ensemble {name} in {args.repository}: install it with `triton ensemble`")
    models = [names["ensemble"], names["video"], names["explain"], *ensembles, *(f"{e}_video" for e in ensembles)]
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    server = Triton(args.workdir, models, repository=args.repository, threads=args.threads,
                    ports=_ports(TritonPorts, args), server_root=args.tritonserver)
    supervisor = None if args.no_supervisor else triton_supervisor(server)  # before the start: nothing left behind
    server.start()
    return _wait_forever(server, f"Triton is serving {', '.join(models)} on "
                                 f"{server.http_url} (HTTP) and {server.grpc_target} (gRPC), metrics on "
                                 f"{server.metrics_url}. Ctrl-C stops it.", supervisor)


def cmd_triton_ensemble(args) -> int:
    """Install an ensemble archive (``deepfake-serving ensemble``) into the repository as version N."""
    from deepfake_serving.serving.launch.triton_ensemble import install_ensemble

    try:
        names = install_ensemble(args.archive, args.version, args.repository)
    except (ValueError, OSError) as err:
        raise CommandError(str(err)) from None
    print(json.dumps(names))
    return 0


def cmd_jobs(args) -> int:
    """Redis, the job API and Celery workers on this host, analysing through TorchServe or Triton at
    --server-url, or in the workers themselves (--backend in-process --archive X.mar)."""
    from deepfake_serving.jobs.launch import JobSystem
    from deepfake_serving.jobs.settings import JobSettings

    server_url = args.server_url or ("http://127.0.0.1:8000" if args.backend == "triton" else "http://127.0.0.1:8080")
    try:
        settings = replace(JobSettings.from_env(), backend=args.backend, server_url=server_url, models=args.models,
                           key_file=args.key_file or "", archive=args.archive or "",
                           rollout_dir=args.rollout_dir if args.backend == "torchserve" else "")
        system = JobSystem(args.workdir, settings.check(), api_port=args.port, workers=args.workers, heal=True).start()
    except (ValueError, OSError, RuntimeError, TimeoutError) as err:
        raise CommandError(str(err)) from None
    where = args.archive if args.backend == "in-process" else f"{args.backend} at {server_url}"
    return _wait_forever(system, f"The job API is serving on {system.url} (POST /v1/jobs), {args.workers} worker(s), "
                                 f"analysing with {where}. Ctrl-C stops it.")


def cmd_monitor(args) -> int:
    """Prometheus (the alert rules) and Alertmanager on loopback, scraping the servers named."""
    from deepfake_serving.serving.launch.monitor import Monitor, Targets

    targets = Targets(tuple(args.torchserve or args.torchserve_default), tuple(args.triton), tuple(args.jobs))
    try:
        monitor = Monitor(Path(args.workdir), targets, args.webhook, ports=(args.port, args.alertmanager_port)).start()
    except (OSError, RuntimeError, TimeoutError) as err:
        raise CommandError(str(err)) from None
    return _wait_forever(monitor, f"Prometheus is on {monitor.prometheus_url} (alerts: /alerts), Alertmanager on "
                                  f"{monitor.alertmanager_url}, scraping {targets}; both ask for user "
                                  f"{monitor.auth[0]!r} and the password in {monitor.workdir / 'credentials.json'}. "
                                  "Ctrl-C stops them.")


def cmd_api_key(args) -> int:
    """Add, revoke or list the job API's keys, in the Redis of the job system in --workdir."""
    from redis import Redis

    from deepfake_serving.jobs.front import KeyRing

    url_file = Path(args.workdir) / "redis.url"
    if not url_file.exists():
        raise CommandError(f"no job system in {args.workdir}: start it with `deepfake-serving jobs`")
    ring = KeyRing(Redis.from_url(url_file.read_text().strip()))
    if args.action == "list":
        print("\n".join(ring.names()))
    elif not args.name:
        raise CommandError(f"api-key {args.action} needs a NAME")
    elif args.action == "add":
        try:
            key, callback_secret = ring.add(args.name, args.rate, args.faces_per_day)
            print(key)  # shown once, alone on stdout for scripts: only its hash is kept
            print(f"callback secret (signs this key's job callbacks, X-Deepfake-Signature): {callback_secret}",
                  file=sys.stderr)
        except ValueError as err:
            raise CommandError(str(err)) from None
    elif not ring.revoke(args.name):
        raise CommandError(f"no key named {args.name!r}")
    return 0


def cmd_rollout(args) -> int:
    """Register the candidate archive next to the serving version and take it through every step."""
    from deepfake_serving.media import samples
    from deepfake_serving.rollout.audit import AuditLog
    from deepfake_serving.rollout.controller import Rollout, RolloutError, RolloutPolicy, RolloutStopped, stop_on_signals
    from deepfake_serving.rollout.routing import split_file
    from deepfake_serving.rollout.targets import RolloutTarget, TorchServeTarget, TritonTarget

    if args.abort:
        args.model = args.abort
    elif not args.candidate:
        raise CommandError("rollout: give the candidate (or --abort MODEL)")

    target: RolloutTarget
    if args.backend == "triton":
        target = TritonTarget(args.model, args.inference_url, args.metrics_url, args.key_file)
    else:
        target = TorchServeTarget(args.model, args.inference_url, args.management_url, args.metrics_url, args.key_file)
    probes = [p.read_bytes() for p in sorted(Path(args.probes).iterdir()) if p.is_file()] if args.probes \
        else [samples.astronaut_jpeg()]
    policy = RolloutPolicy(canary_weight=args.weight, watch_s=args.watch, check_every_s=args.check_every,
                           gate_metric=args.gate_metric, gate_tolerance=args.gate_tolerance,
                           max_latency_ratio=args.max_latency_ratio,
                           max_error_ratio_increase=args.max_error_ratio_increase, max_score_psi=args.max_score_psi)
    on_split = None
    if args.nginx_prefix:
        if args.backend != "torchserve":
            raise CommandError("--nginx-prefix: nginx's split_clients fronts TorchServe")
        from deepfake_serving.rollout.nginx import Nginx

        on_split = Nginx.attach(args.nginx_prefix).apply
    state = Path(args.state_dir)
    job = Rollout(target, AuditLog(state / "audit.jsonl"), split_file(state, args.model), policy=policy,
                  probes=probes, labelled_folder=Path(args.labelled) if args.labelled else None,
                  reports=state / "reports", on_split=on_split)
    stop_on_signals()
    try:
        if args.abort:
            print(job.abort())
            return 0
        version = job.run(args.candidate)
    except RolloutError as err:
        print(f"rollout stopped at {err.step}: {err}; the serving version keeps serving "
              f"(audit: {state / 'audit.jsonl'})", file=sys.stderr)
        return 1
    except RolloutStopped as stop:
        print(f"rollout {stop}: rolled back, the serving version keeps serving (audit: {state / 'audit.jsonl'})",
              file=sys.stderr)
        return 128 + stop.signum
    print(json.dumps({"serving": version, "audit": str(state / "audit.jsonl"), "figures": job.figures}, default=str))
    return 0


def cmd_nginx(args) -> int:
    """nginx in front of TorchServe with the model's current split (the rollout's split file when
    there is one, else everyone on the default version); ``rollout --nginx-prefix`` reloads it."""
    from deepfake_serving.rollout.nginx import Nginx
    from deepfake_serving.rollout.routing import Split, split_file
    from deepfake_serving.rollout.targets import TorchServeTarget

    current = split_file(args.state_dir, args.model)
    if current.exists():
        split = Split.load(current)
    else:
        target = TorchServeTarget(args.model, args.inference_url, args.management_url, "", args.key_file)
        split = Split(args.model, target.serving_version())
    proxy = Nginx(args.prefix, args.port, args.inference_url, args.key_file).start(split)
    return _wait_forever(proxy, f"nginx on {proxy.url} routes POST /predictions/{args.model} by X-User-Id "
                                f"({split}); `deepfake-serving rollout --nginx-prefix {args.prefix}` reloads it. "
                                "Ctrl-C stops it.")


def cmd_kserve(args) -> int:
    from deepfake_serving.rollout.kserve import inference_service, to_yaml

    print(to_yaml(inference_service(args.name, args.backend, args.storage_uri, args.canary, args.candidate_version)),
          end="")
    return 0


def cmd_kserve_export(args) -> int:
    """Write the storage layout the backend's KServe runtime mounts, then print its InferenceService."""
    from deepfake_serving.rollout import kserve_storage

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise CommandError(f"{out} is not empty: export into a new folder")
    if args.backend == "torchserve":
        if not args.archive:
            raise CommandError("--archive: at least one .mar for TorchServe")
        written = kserve_storage.export_torchserve(out, [Path(a) for a in args.archive])
    else:
        written = kserve_storage.export_triton(out, args.variant, Path(args.repository))
    print("\n".join(f"wrote {path}" for path in written), file=sys.stderr)
    return cmd_kserve(args)


def cmd_key(args) -> int:
    from deepfake_serving.serving.client.auth import ServerKeys

    url = args.url or ("127.0.0.1:8000" if args.backend == "triton" else "http://127.0.0.1:8080")
    keys = ServerKeys.for_url(url, args.key_file)
    key = keys.key(args.kind)
    if key is None:
        raise CommandError(f"no {args.kind} key for {url}: {keys.describe()}")
    for note in keys.notes:
        print(note, file=sys.stderr)
    print(key)
    return 0


def cmd_predict(args) -> int:
    from deepfake_serving.core.formats import video_container
    from deepfake_serving.core.naming import video_model
    from deepfake_serving.serving.client.clients import make_client

    if args.backend == "triton" and args.stream:
        raise CommandError("--stream needs TorchServe (Triton's video model answers once)")
    client = make_client(args.protocol, args.url, backend=args.backend, key_file=args.key_file)
    for note in getattr(client, "keys", None) and client.keys.notes or ():
        print(f"warning: {note}", file=sys.stderr)
    worst = 0
    for path in args.files:
        data = Path(path).read_bytes()
        if video_container(data):
            model = video_model(args.model)
            prediction = _predict_video(client, model, data, args)
        else:
            prediction = client.predict(args.model, data, args.version)
        answer = {"file": path, "status": prediction.status, **prediction.body}
        print(json.dumps(answer))
        if args.save:
            Path(args.save).write_text(json.dumps(answer, indent=2))
        worst = max(worst, 0 if prediction.ok else 1)
    return worst


def cmd_explain(args) -> int:
    """Ask the server for explanations: each image is written with its faces' heatmaps blended in; a
    video's answer (heatmaps of its deciding faces) is saved as JSON for ``visualize``."""
    import cv2

    from deepfake_serving.core.formats import video_container
    from deepfake_serving.core.naming import video_model
    from deepfake_serving.media.image import decode_image
    from deepfake_serving.serving.client.clients import make_client

    client = make_client(args.protocol, args.url, key_file=args.key_file, backend=args.backend)
    worst = 0
    for path in args.files:
        data = Path(path).read_bytes()
        video = bool(video_container(data))
        answer = client.explain(video_model(args.model) if video else args.model, data, args.version)
        if not answer.ok:
            print(json.dumps({"file": path, "status": answer.status, **answer.body}))
            worst = 1
            continue
        out = Path(args.out_dir or Path(path).parent) / f"{Path(path).stem}_explained.{'json' if video else 'png'}"
        if video:
            out.write_text(json.dumps(answer.body, indent=2))
            faces = [face for frame in answer.body["frames"] for face in frame["faces"] if face.get("explanation")]
        else:
            from deepfake_serving.evaluation.visualize import render_explanation  # matplotlib: not on a lean worker

            overlay = render_explanation(decode_image(data), answer.body)
            if not cv2.imwrite(str(out), overlay[..., ::-1]):
                raise CommandError(f"could not write {out}")
            faces = answer.body["faces"]
        if args.save:
            Path(args.save).write_text(json.dumps(answer.body, indent=2))
        shown = [{"box": f["box"], "fake_probability": f["fake_probability"],
                  "road_drop": (f.get("explanation") or {}).get("faithfulness", {}).get("fake_probability_drop")}
                 for f in faces]
        print(json.dumps({"file": path, ("answer" if video else "overlay"): str(out), "label": answer.body["label"],
                          "faces": shown}))
    return worst


def cmd_visualize(args) -> int:
    """Render seed 001's overlay video and a score plot from a saved response, without the model."""
    from tqdm import tqdm

    from deepfake_serving.evaluation.visualize import plot_scores, render_overlay

    response = json.loads(Path(args.response).read_text())
    if response.get("media_type") != "video":
        raise CommandError("the response is not a video analysis (save one with predict --save)")
    stem = Path(args.out or Path(args.clip).with_suffix(""))
    png = plot_scores(response, f"{stem}_scores.png")
    with tqdm(total=response["frame_count"], unit="frame", desc="rendering", file=sys.stderr) as bar:
        video = render_overlay(response, Path(args.clip).read_bytes(), f"{stem}_overlay.mp4", bar.update)
    print(json.dumps({"overlay": str(video), "plot": str(png)}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deepfake-serving", description=__doc__)
    parser.add_argument("--key-file", help="the server's API keys (default: the key file of the server at that address: "
                        "a launcher's, $DEEPFAKE_KEY_FILE, or the default --workdir's, whichever is current)")
    parser.add_argument("--debug", action="store_true", help="show a traceback on errors")
    sub = parser.add_subparsers(dest="command", required=True)

    from deepfake_serving.bundle.manifest import REDUCED_PRECISIONS as QUANTIZE_MODES
    from deepfake_serving.engines import AUTO_ENGINE, ENGINES

    sub.add_parser("variants", help="list the registered variants and their parameters").set_defaults(func=cmd_variants)

    p = sub.add_parser("samples", help="write sample media to DIR: face.jpg, no_face.jpg (real photographs) and "
                                       "clip.mp4 (a moving face)")
    p.add_argument("directory")
    p.set_defaults(func=cmd_samples)

    p = sub.add_parser("archive", help="package a variant as a versioned .mar")
    p.add_argument("--variant", help="the variant (required unless --from-run)")
    p.add_argument("--version", required=True)
    p.add_argument("--checkpoint", action="append",
                   help="user checkpoint; repeat to average several checkpoints of the variant; "
                        "without one the weights are random and flagged untrained")
    p.add_argument("--media", choices=["image", "video"], default="image",
                   help="video archives are served as {variant}-video")
    p.add_argument("--model-name", help="TorchServe model name (default: the variant, or {variant}-video)")
    p.add_argument("--export-path", default=DEFAULT_MODEL_STORE)
    p.add_argument("--workers", type=int)
    p.add_argument("--engine", choices=(AUTO_ENGINE, *ENGINES), default=AUTO_ENGINE,
                   help="what runs the classifier in the worker (the archive carries the ONNX graph and the "
                        "safetensors weights either way); auto: bf16 on OpenVINO where this CPU has bf16 units "
                        "and the bf16 graph passes its agreement proof, else fp32 on ONNX Runtime")
    p.add_argument("--threads", type=int, help="intra-op threads per worker (default: cores ÷ workers on the server)")
    p.add_argument("--quantize", choices=QUANTIZE_MODES,
                   help="reduced precision: int8 (ONNX Runtime static quantization, needs --calibration), fp16 (for "
                        "ONNX Runtime's CUDA provider), bf16 (OpenVINO); refused when it strays from fp32 on the "
                        "held-out faces beyond the limits of docs/engines.md")
    p.add_argument("--calibration", help="folder of face images to calibrate the int8 graph on")
    p.add_argument("--holdout", help="another folder of face images: the reduced graph must agree with fp32 on "
                                     "their faces (default: the built-in sample faces)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--max-decoded-pixels", type=int,
                   help="video archives: decoded pixels allowed per request (default 3e9; 413 above)")
    p.add_argument("--from-run", help="the checkpoint of this MLflow run (deepfake-serving train), recorded in the manifest")
    p.add_argument("--tracking-uri", help="the run's MLflow store (default: ./mlruns/mlflow.db)")
    p.set_defaults(func=cmd_archive)

    p = sub.add_parser("train", help="train a variant with its recipe on labelled data (Real/ and Fake/, or a CSV)")
    p.add_argument("--variant", required=True)
    p.add_argument("--data", required=True, help="a folder with Real/ and Fake/ (images and videos) or a CSV of path,label")
    p.add_argument("--out", required=True, help="a new folder: checkpoint.pt, report/, history.json, run.json")
    p.add_argument("--recipe", help="another variant's recipe (default: the variant's own; docs/training.md)")
    p.add_argument("--init-weights", help="a checkpoint of the variant, or ImageNet weights of its backbone (timm or "
                                          "torchvision); without it training starts from random weights")
    p.add_argument("--epochs", type=int, help="the recipe's epochs cut or stretched to this many")
    p.add_argument("--batch-size", type=int, help="instead of the recipe's")
    p.add_argument("--lr", type=float, help="the first phase's learning rate (the others keep their ratio)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--validation", type=float, default=0.2, help="share of each class's files held out (by file)")
    p.add_argument("--synthesize-fakes", choices=["sbi"], help="self-blended fakes from every real face")
    p.add_argument("--cache", help="where the extracted faces are kept (default ~/.cache/deepfake-serving/faces)")
    p.add_argument("--tracking-uri", help="MLflow: sqlite:///PATH, file:PATH or http(s)://HOST (default "
                                          "./mlruns/mlflow.db)")
    p.add_argument("--device", default="auto", help="auto (the GPU when there is one), cpu, cuda")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32"],
                   help="auto: mixed precision (fp16 on a GPU, bf16 on a CPU with bf16 units); fp32")
    p.add_argument("--threads", type=int, help="torch's threads on the CPU")
    p.add_argument("--no-augmentation", action="store_true",
                   help="train without the recipe's augmentations (a network far from any pretraining on tiny data)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="an archive on labelled data: metrics, plots, a cross-dataset table")
    p.add_argument("--archive", required=True)
    p.add_argument("--data", required=True, action="append", help="a folder with Real/ and Fake/, or a CSV; repeat "
                                                                   "for a cross-dataset table")
    p.add_argument("--out", required=True, help="a folder per dataset (report.json, scores.jsonl, plots)")
    p.add_argument("--cache", help="where the extracted faces are kept (default ~/.cache/deepfake-serving/faces)")
    p.add_argument("--threads", type=int)
    p.set_defaults(func=cmd_evaluate)

    for name, func, helptext in (("serve", cmd_serve, "run TorchServe on the model store"),
                                 ("demo", cmd_demo, "build a demo archive, serve it and predict a real face")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--model-store", default=DEFAULT_MODEL_STORE)
        p.add_argument("--workdir", default=DEFAULT_WORKDIR)
        _bind_options(p, "inference,management,metrics,grpc-inference,grpc-management (8080,8081,8082,7070,7071)")
        _supervisor_option(p)
        p.set_defaults(func=func)
    sub.choices["serve"].add_argument("--models", nargs="*", help="name=file.mar entries (default: every .mar)")
    sub.choices["demo"].add_argument("--variant", default="b4-mobile")
    sub.choices["demo"].add_argument("--exit", action="store_true", help="stop the server after the prediction")

    triton = sub.add_parser("triton", help="build and serve the Triton model repository").add_subparsers(
        dest="triton_command", required=True)
    for name, func, helptext in (
            ("build", cmd_triton_build, "export a classifier version (ONNX) from checkpoints"),
            ("serve", cmd_triton_serve, "build version 1 if missing, then start Triton on loopback")):
        p = triton.add_parser(name, help=helptext)
        p.add_argument("--variant", default="b4-mobile")
        p.add_argument("--checkpoint", action="append", help="as for archive: repeat to average checkpoints")
        p.add_argument("--repository", default=TRITON_REPOSITORY)
        p.set_defaults(func=func)
    build = triton.choices["build"]
    build.add_argument("--version", type=int, required=True, help="Triton version directory (1, 2, ...)")
    build.add_argument("--label", help="the version responses report, as an archive's --version (default N.0)")
    build.add_argument("--seed", type=int, default=0, help="seed of the random weights when no checkpoint")
    serve = triton.choices["serve"]
    serve.add_argument("--ensemble", action="append", help="also serve this installed ensemble (repeatable)")
    serve.add_argument("--workdir", default=DEFAULT_TRITON_WORKDIR)
    serve.add_argument("--threads", type=int, help="intra-op threads per model instance (default: cores ÷ instances)")
    serve.add_argument("--tritonserver", help="the root of a Triton install to run (/opt/tritonserver in NVIDIA's "
                                              "container; default: the server the nvidia-pytriton wheel bundles)")
    _bind_options(serve, "http,grpc,metrics (8000,8001,8002)")
    _supervisor_option(serve)

    p = triton.add_parser("ensemble", help="install an ensemble archive as Triton models: one detection, each "
                                           "member its own classifier model, a fusion step")
    p.add_argument("--archive", required=True, help="an ensemble .mar (deepfake-serving ensemble)")
    p.add_argument("--version", type=int, required=True, help="Triton version directory (1, 2, ...)")
    p.add_argument("--repository", default=TRITON_REPOSITORY)
    p.set_defaults(func=cmd_triton_ensemble)

    p = sub.add_parser("jobs", help="queue videos and images as jobs: Redis, the job API and Celery workers")
    p.add_argument("--workdir", default="runtime/jobs")
    p.add_argument("--port", type=int, default=8090, help="the job API's port (loopback)")
    p.add_argument("--backend", choices=["torchserve", "triton", "in-process"], default="torchserve",
                   help="where workers analyse: through TorchServe or Triton, or in their own process")
    p.add_argument("--server-url", help="TorchServe's inference API (default :8080) or Triton's HTTP (:8000)")
    p.add_argument("--archive", help="in-process: the .mar each worker runs")
    p.add_argument("--rollout-dir", default="runtime/rollout",
                   help="the rollout's state folder: calls that name no version follow its A/B split (TorchServe)")
    p.add_argument("--models", default="b4-mobile", help="models a job may name, comma-separated")
    p.add_argument("--workers", type=int, default=1)
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("monitor", help="Prometheus with the alert rules and Alertmanager, scraping the servers")
    p.add_argument("--workdir", default="runtime/monitor")
    p.add_argument("--torchserve", action="append", default=None, metavar="HOST:PORT",
                   help="a TorchServe metrics address (default 127.0.0.1:8082; repeat for several)")
    p.add_argument("--triton", action="append", default=[], metavar="HOST:PORT", help="a Triton metrics address (:8002)")
    p.add_argument("--jobs", action="append", default=[], metavar="HOST:PORT", help="a job API's metrics address")
    p.add_argument("--webhook", help="where Alertmanager delivers alerts (a webhook receiver's URL)")
    p.add_argument("--port", type=int, default=9090, help="Prometheus (loopback)")
    p.add_argument("--alertmanager-port", type=int, default=9093)
    p.set_defaults(func=cmd_monitor, torchserve_default=["127.0.0.1:8082"])

    p = sub.add_parser("api-key", help="the job API's keys: add NAME (prints the key once), revoke NAME, list")
    p.add_argument("action", choices=["add", "revoke", "list"])
    p.add_argument("name", nargs="?")
    p.add_argument("--rate", type=int, default=60, help="requests per minute")
    p.add_argument("--faces-per-day", type=int, default=10_000, help="the daily quota, in faces classified")
    p.add_argument("--workdir", default="runtime/jobs")
    p.set_defaults(func=cmd_api_key)

    p = sub.add_parser("rollout", help="A/B rollout of a candidate archive: shadow, gate, canary, promote/rollback")
    p.add_argument("candidate", nargs="?", help="TorchServe: the candidate .mar in the model store; Triton: a built "
                                                 "classifier version number")
    p.add_argument("--abort", metavar="MODEL", help="stop MODEL's running rollout (it rolls back), or recover what a "
                                                    "killed one left: every user on the serving version, the "
                                                    "orphaned candidate unregistered")
    p.add_argument("--backend", choices=["torchserve", "triton"], default="torchserve")
    p.add_argument("--model", default="b4-mobile", help="TorchServe model name, or the variant on Triton")
    p.add_argument("--inference-url", default="http://127.0.0.1:8080")
    p.add_argument("--management-url", default="http://127.0.0.1:8081")
    p.add_argument("--metrics-url", default="http://127.0.0.1:8082/metrics")
    p.add_argument("--probes", help="folder of probe images for the shadow comparison (default: the astronaut)")
    p.add_argument("--labelled", help="folder with Real/ and Fake/ for the promotion gate")
    p.add_argument("--weight", type=float, default=10.0, help="canary share of keys, percent")
    p.add_argument("--watch", type=float, default=60.0, help="seconds the canary is watched")
    p.add_argument("--gate-metric", default="f1", choices=GATE_METRICS)
    p.add_argument("--gate-tolerance", type=float, default=0.02)
    p.add_argument("--max-latency-ratio", type=float, default=2.0)
    p.add_argument("--max-score-psi", type=float, help="roll back when the canary's P(fake) distribution moves "
                   "from the serving version's by more than this PSI (e.g. 0.25; TorchServe; off by default)")
    p.add_argument("--max-error-ratio-increase", type=float, default=0.01)
    p.add_argument("--check-every", type=float, default=5.0, help="seconds between canary checks")
    p.add_argument("--state-dir", default="runtime/rollout", help="split file, audit log, reports")
    p.add_argument("--nginx-prefix", help="reload the nginx that `deepfake-serving nginx` started there at each "
                                          "split change (TorchServe)")
    p.set_defaults(func=cmd_rollout)

    p = sub.add_parser("nginx", help="nginx split_clients in front of TorchServe, for clients that are not ours")
    p.add_argument("--model", default="b4-mobile")
    p.add_argument("--port", type=int, default=8090, help="nginx listens on 127.0.0.1:PORT")
    p.add_argument("--inference-url", default="http://127.0.0.1:8080")
    p.add_argument("--management-url", default="http://127.0.0.1:8081")
    p.add_argument("--prefix", default="runtime/nginx", help="nginx's config, pid file and logs")
    p.add_argument("--state-dir", default="runtime/rollout", help="where the rollout keeps the split file")
    p.set_defaults(func=cmd_nginx)

    kserve = sub.add_parser("kserve", help="KServe: an InferenceService, and the storage its runtime mounts"
                            ).add_subparsers(dest="kserve_command", required=True)
    for name, func, helptext in (
            ("manifest", cmd_kserve, "print an InferenceService (canaryTrafficPercent for a rollout)"),
            ("export", cmd_kserve_export, "write the storage layout (TorchServe: config/ + model-store/; Triton: "
                                          "the variant's repository), then print its InferenceService")):
        p = kserve.add_parser(name, help=helptext)
        p.add_argument("--name", default="b4-mobile")
        p.add_argument("--backend", choices=["torchserve", "triton"], default="torchserve")
        p.add_argument("--storage-uri", required=True, help="where the cluster finds the exported folder")
        p.add_argument("--canary", type=int, help="percent of traffic to this new revision")
        p.add_argument("--candidate-version", default="")
        p.set_defaults(func=func)
    export = kserve.choices["export"]
    export.add_argument("--out", required=True, help="a new folder to copy to the storage URI")
    export.add_argument("--archive", action="append", help="TorchServe: a model archive to serve (repeatable)")
    export.add_argument("--variant", default="b4-mobile", help="Triton: the variant whose models to export")
    export.add_argument("--repository", default=TRITON_REPOSITORY, help="Triton: the repository to export from")

    p = sub.add_parser("key", help="print a server key from the key file (for curl)")
    p.add_argument("kind", choices=["inference", "management", "API"])
    p.add_argument("--backend", choices=["torchserve", "triton"], default="torchserve")
    p.add_argument("--url", help="the server's address (default: the backend's documented port)")
    p.set_defaults(func=cmd_key)

    p = sub.add_parser("predict", help="send images or videos to a running server")
    p.add_argument("files", nargs="+")
    p.add_argument("--model", default="b4-mobile", help="videos go to {model}-video")
    p.add_argument("--version")
    p.add_argument("--backend", choices=["torchserve", "triton"], default="torchserve")
    p.add_argument("--protocol", choices=["rest", "grpc"], default="rest", help="rest is HTTP on Triton")
    p.add_argument("--url", help="REST base URL or gRPC host:port (defaults: the backend's own ports)")
    p.add_argument("--sampling", choices=["linspace", "every_nth", "all"], default="linspace")
    p.add_argument("--frames", type=int, default=DEFAULT_FRAMES, help="frames for linspace sampling")
    p.add_argument("--every", type=int, default=10, help="N for every_nth sampling")
    p.add_argument("--stream", action="store_true", help="show the server's progress while a video runs")
    p.add_argument("--save", help="write the (last) response to this JSON file")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("ensemble", help="package several variants as one archive (one detection, fused scores), "
                                        "or fit an ensemble archive's fusion and calibration on a labelled folder")
    p.add_argument("action", nargs="?", choices=["build", "fit"], default="build")
    p.add_argument("--name", help="build: the served model name")
    p.add_argument("--version", help="the archive's version (fit: the refitted archive's)")
    p.add_argument("--member", action="append", metavar="VARIANT[=CKPT,...]",
                   help="build: a member and its checkpoints (random weights without); repeat, 2 or more; the "
                        "first member's face settings detect the faces")
    p.add_argument("--media", choices=["image", "video"], default="image", help="build: what the archive answers")
    p.add_argument("--weights", help="build: comma-separated member weights, the weighted_mean rule (default: the mean)")
    p.add_argument("--archive", help="fit: the ensemble archive (.mar) whose members score the folder; build: "
                                     "the archive whose members and fusion to package again (another --media)")
    p.add_argument("--labelled", help="fit: a folder with Real/ and Fake/ images")
    p.add_argument("--rule", choices=["stacking", "keep"], default="stacking",
                   help="fit: logistic stacking over the members' logits, or the archive's rule kept")
    p.add_argument("--calibration", choices=["temperature", "isotonic", "none"], default="temperature",
                   help="fit: the map from the rule's P(fake) to the answer's")
    p.add_argument("--abstain-disagreement", type=float, metavar="STD",
                   help="answer UNCERTAIN when the members' P(fake) spread (std) exceeds this")
    p.add_argument("--abstain-band", metavar="LO,HI",
                   help="answer UNCERTAIN when the answer's P(fake) (calibrated when fitted) lies in (LO, HI)")
    p.add_argument("--engine", choices=(AUTO_ENGINE, *ENGINES), default=AUTO_ENGINE)
    p.add_argument("--export-path", default=DEFAULT_MODEL_STORE)
    p.set_defaults(func=cmd_ensemble)

    p = sub.add_parser("explain", help="ask the server for each face's heatmap: FILE_explained.png for an image, "
                                       "FILE_explained.json for a video (draw it with visualize)")
    p.add_argument("files", nargs="+", help="images or videos (a video goes to MODEL-video)")
    p.add_argument("--backend", choices=["torchserve", "triton"], default="torchserve",
                   help="triton: the variant's explain model")
    p.add_argument("--model", default="b4-mobile")
    p.add_argument("--version")
    p.add_argument("--protocol", choices=["rest", "grpc"], default="rest")
    p.add_argument("--url", help="REST base URL or gRPC host:port (defaults: TorchServe's own ports)")
    p.add_argument("--out-dir", help="where the overlays go (default: beside each image)")
    p.add_argument("--save", help="write the (last) explanation to this JSON file")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("visualize", help="overlay video and score plot from a saved video response")
    p.add_argument("response")
    p.add_argument("clip")
    p.add_argument("--out", help="output path stem (default: next to the clip)")
    p.set_defaults(func=cmd_visualize)
    return parser


class CommandError(Exception):
    """A refusal the command line prints as one line (exit code 2)."""


def main(argv: list[str] | None = None) -> int:
    """Errors are one line and exit code 2; ``--debug`` shows the traceback."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as err:  # noqa: BLE001 - the one place errors become a line
        if args.debug:
            raise
        message = (err.args[0] if isinstance(err, KeyError) and err.args else str(err)) or type(err).__name__
        if isinstance(err, OSError) and err.filename and str(err.filename) not in message:
            message = f"{message}: {err.filename}"
        print(f"deepfake-serving {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
