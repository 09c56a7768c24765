"""Locust load tests for deepfake-serving: TorchServe REST/gRPC and Triton HTTP/gRPC users,
image and video tasks (weighted), real media, and a pass/fail verdict against thresholds.

    locust -f loadtests/locustfile.py --headless -u 8 -r 8 -t 60s \
        --host http://127.0.0.1:8080 --scenario torchserve-rest TorchServeRestUser \
        --csv loadtests/reports/torchserve-rest --html loadtests/reports/torchserve-rest.html

Hosts: TorchServeRestUser http://host:8080, TorchServeGrpcUser host:7070,
TritonHttpUser http://host:8000, TritonGrpcUser host:8001, JobUser http://host:8090 (the job API, with
--api-key or DEEPFAKE_API_KEY). The run exits 1 when a
threshold of ``--scenario`` (loadtests/thresholds.yaml) is breached; in distributed
mode the master decides on the aggregated figures.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import time
from collections import Counter
from pathlib import Path

from grpc.experimental import gevent as grpc_gevent
from locust import User, between, events, tag, task
from locust.runners import WorkerRunner
from thresholds import Observed, breaches, load_thresholds  # beside this file: Locust puts its folder on sys.path

from deepfake_serving.core.naming import video_model
from deepfake_serving.media import samples
from deepfake_serving.rollout.routing import RoutedClient, RoutedTritonClient
from deepfake_serving.serving.client.clients import GrpcClient, RestClient, TritonClient

grpc_gevent.init_gevent()  # gRPC's own threads would block Locust's gevent loop

THRESHOLDS = Path(__file__).with_name("thresholds.yaml")
USER_NUMBERS = itertools.count()  # Routed*User keys: user-<worker index>-<n>, stable across runs
RETRIES = Counter()  # the clients' retry stats (ClientStats), summed over users (and workers, on the master)
IMAGES = [samples.astronaut_jpeg(), samples.encode(samples.two_faces(), quality=90)]
CLIP = samples.encode_video(samples.moving_face_frames(24), "mp4")


@events.init_command_line_parser.add_listener
def _arguments(parser):
    parser.add_argument("--model", default="b4-mobile", help="variant served (videos go to {model}-video)")
    parser.add_argument("--video-frames", type=int, default=8, help="frames sampled per video request")
    parser.add_argument("--scenario", default="", help="thresholds.yaml scenario that decides pass/fail")
    parser.add_argument("--thresholds", default=str(THRESHOLDS))
    parser.add_argument("--split-file", default="", help="Routed*User: the rollout's traffic split")
    parser.add_argument("--api-key", default="", env_var="DEEPFAKE_API_KEY", help="JobUser: the job API's key")


class PredictionUser(User):
    """Sends images (weight 9) and clips (weight 1) through one of our clients and reports every
    call to Locust; a call fails when the server's answer is not a 200 with a verdict."""

    abstract = True
    wait_time = between(0.0, 0.05)
    request_type = ""

    def make_client(self):
        raise NotImplementedError

    def on_start(self):
        self.client = self.make_client()
        self.model = self.environment.parsed_options.model
        self.image_index = 0

    def on_stop(self):
        RETRIES.update(dataclasses.asdict(self.client.stats))
        self.client.close()  # an open tritonclient gRPC channel keeps the process from exiting

    def _call(self, name: str, send) -> None:
        start = time.perf_counter()
        exception, length = None, 0
        try:
            prediction = send()
            length = len(str(prediction.body))
            exception = failure(prediction)
        except Exception as err:  # noqa: BLE001 - a failed request, reported as such
            exception = err
        report(self, self.request_type, name, start, exception, length)

    @tag("image")
    @task(9)
    def image(self):
        data = IMAGES[self.image_index % len(IMAGES)]
        self.image_index += 1
        self._call("image", lambda: self.client.predict(self.model, data))

    @tag("video")
    @task(1)
    def video(self):
        frames = self.environment.parsed_options.video_frames
        self._call("video", lambda: self.client.predict(video_model(self.model), CLIP, options={"frames": frames}))


class TorchServeRestUser(PredictionUser):
    request_type = "torchserve-rest"

    def make_client(self):
        return RestClient(self.host or "http://127.0.0.1:8080")


class TorchServeGrpcUser(PredictionUser):
    request_type = "torchserve-grpc"

    def make_client(self):
        return GrpcClient(self.host or "127.0.0.1:7070")


class TritonHttpUser(PredictionUser):
    request_type = "triton-http"

    def make_client(self):
        return TritonClient(self.host or "http://127.0.0.1:8000", "http")


class TritonGrpcUser(PredictionUser):
    request_type = "triton-grpc"

    def make_client(self):
        return TritonClient(self.host or "127.0.0.1:8001", "grpc")


class RoutedUser(User):
    """Live traffic during a rollout: each simulated user has a key and sticks to the version the
    split file gives it (sticky weighted routing); requests are named by the version that answered."""

    abstract = True
    wait_time = between(0.0, 0.05)
    reports_routed_version = False  # whether answers carry the routed version as their "version"

    def make_client(self):
        raise NotImplementedError

    def on_start(self):
        self.client = self.make_client()
        self.key = f"user-{getattr(self.environment.runner, 'worker_index', 0)}-{next(USER_NUMBERS)}"

    def on_stop(self):
        RETRIES.update(dataclasses.asdict(self.client.client.stats))
        self.client.client.close()

    @task
    def image(self):
        start = time.perf_counter()
        version, exception = "?", None
        try:
            version, prediction = self.client.predict(IMAGES[0], self.key)
            exception = failure(prediction, version if self.reports_routed_version else None)
        except Exception as err:  # noqa: BLE001
            exception = err
        report(self, "routed", f"image {version}", start, exception)


class RoutedTorchServeUser(RoutedUser):
    reports_routed_version = True  # archive versions ("2.0") are what TorchServe's answers report

    def make_client(self):
        return RoutedClient(RestClient(self.host or "http://127.0.0.1:8080"),
                            self.environment.parsed_options.split_file)


class RoutedTritonUser(RoutedUser):
    """Triton's versions are classifier versions ("2"); the answers report the version's label ("2.0")."""

    def make_client(self):
        return RoutedTritonClient(TritonClient(self.host or "http://127.0.0.1:8000", "http"),
                                  self.environment.parsed_options.split_file)


class JobUser(User):
    """The job API: submits a clip (or, at weight 3, an image) as a job with an API key (``--api-key``), follows
    its Server-Sent Events to the end and reports the whole job, submission to verdict, as one request
    (``job video`` / ``job image``); it fails unless the job ends ``done`` with a verdict. Host: the job API
    (http://host:8090)."""

    wait_time = between(0.0, 0.5)

    def on_start(self):
        import requests

        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {self.environment.parsed_options.api_key}"
        self.url = (self.host or "http://127.0.0.1:8090").rstrip("/")

    def on_stop(self):
        self.session.close()

    def _job(self, name: str, data: bytes, **fields) -> None:
        start, exception = time.perf_counter(), None
        try:
            accepted = self.session.post(f"{self.url}/v1/jobs", files={"file": ("upload", data)},
                                         data={"model": self.environment.parsed_options.model, **fields}, timeout=60)
            if accepted.status_code != 202:
                raise RuntimeError(f"{accepted.status_code}: {accepted.text[:200]}")
            state, record = None, {}
            with self.session.get(f"{self.url}/v1/jobs/{accepted.json()['id']}/events", stream=True,
                                  timeout=600) as stream:
                for line in stream.iter_lines(decode_unicode=True):
                    if line.startswith("event:"):
                        state = line.split(":", 1)[1].strip()
                    elif line.startswith("data:") and state in ("done", "failed", "cancelled"):
                        record = json.loads(line.split(":", 1)[1])
                        break
            if state != "done" or (record.get("result") or {}).get("label") not in ("FAKE", "REAL", "NO_FACE"):
                raise RuntimeError(f"job ended {state}: {str(record.get('error'))[:200]}")
        except Exception as err:  # noqa: BLE001 - a failed job, reported as such
            exception = err
        report(self, "job", name, start, exception)

    @task(1)
    def video(self):
        self._job("job video", CLIP, frames=str(self.environment.parsed_options.video_frames))

    @task(3)
    def image(self):
        self._job("job image", IMAGES[0])


def failure(prediction, version: str | None = None) -> Exception | None:
    """A call fails unless the server answered 200 with a verdict (from ``version`` when given)."""
    if not prediction.ok or prediction.body.get("label") not in ("FAKE", "REAL", "NO_FACE"):
        return RuntimeError(f"{prediction.status}: {str(prediction.body)[:200]}")
    if version is not None and prediction.body.get("version") != version:
        return RuntimeError(f"routed to {version}, answered by {prediction.body.get('version')}")
    return None


def report(user: User, request_type: str, name: str, start: float, exception: Exception | None, length: int = 0):
    user.environment.events.request.fire(
        request_type=request_type, name=name, response_time=(time.perf_counter() - start) * 1000,
        response_length=length, exception=exception, context={})


@events.report_to_master.add_listener
def _send_retries(client_id, data):
    data["client_retries"] = dict(RETRIES)
    RETRIES.clear()


@events.worker_report.add_listener
def _add_retries(client_id, data):
    RETRIES.update(data.get("client_retries", {}))


def retries_line() -> str:
    return (f"client retries: {RETRIES['retries']} ({RETRIES['retried']} of {RETRIES['predictions']} predictions "
            f"retried, {RETRIES['gave_up']} gave up)")


@events.quitting.add_listener
def _print_retries(environment, **_):
    if not isinstance(environment.runner, WorkerRunner):
        print(retries_line(), flush=True)


@events.quitting.add_listener
def _verdict(environment, **_):
    """Pass/fail on the whole run's figures (on the master when distributed)."""
    options = environment.parsed_options
    if isinstance(environment.runner, WorkerRunner) or not options.scenario:
        return
    total = environment.stats.total
    observed = Observed(requests=total.num_requests, failures=total.num_failures, rps=total.total_rps,
                        p95_ms=total.get_response_time_percentile(0.95) or 0.0,
                        p99_ms=total.get_response_time_percentile(0.99) or 0.0)
    found = breaches(observed, load_thresholds(options.thresholds, options.scenario))
    figures = (f"{observed.requests} requests, {observed.rps:.2f} req/s, failure ratio {observed.failure_ratio:.3f}, "
               f"p95 {observed.p95_ms:.0f} ms, p99 {observed.p99_ms:.0f} ms")
    if found:
        print(f"LOADTEST FAIL [{options.scenario}] {figures}: " + "; ".join(found), flush=True)
        environment.process_exit_code = 1
    else:
        print(f"LOADTEST PASS [{options.scenario}] {figures}", flush=True)
        environment.process_exit_code = 0
