"""Jobs on a real Redis (Debian's redis-server), real Celery worker processes, the job API on uvicorn and a
real TorchServe: the answer of a job is the synchronous answer; progress as Server-Sent Events; bad input
refused before anything is stored; a corrupt upload fails its job alone; cancelling; a worker SIGKILLed
mid-job (the job completes once, one callback, signed); Redis restarted with a job queued. The front door:
keys checked before any body is read, jobs private to their key, rate and quota shared by two API
processes, synchronous predictions through the same key, the access log and the audit."""

import hashlib
import hmac
import io
import json
import os
import signal
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from redis import Redis

from deepfake_serving.jobs.callbacks import SIGNATURE_HEADER
from deepfake_serving.jobs.front import KeyRing
from deepfake_serving.jobs.launch import JobSystem
from deepfake_serving.jobs.settings import JobSettings
from deepfake_serving.media import samples
from deepfake_serving.serving.client.clients import RestClient
from deepfake_serving.serving.launch.archive import build_archive
from deepfake_serving.serving.launch.torchserve import Ports, TorchServe
from helpers import media

MODEL = "b4-mobile"
# Short bounds so that a redelivery after SIGKILL happens within the test: the visibility timeout still
# exceeds the longest job plus a lease, as JobSettings.check requires.
SETTINGS = JobSettings(models=MODEL, max_job_s=20, lease_s=5, visibility_timeout_s=30, retry_backoff_s=1.0,
                       max_upload_bytes=8 * 1024 * 1024, callback_allow="127.0.0.1/32")


@pytest.fixture(scope="module")
def archives(tmp_path_factory) -> tuple[Path, Path]:
    store = tmp_path_factory.mktemp("store")
    return (build_archive(MODEL, "1.0", export_path=store, engine="onnxruntime"),
            build_archive(MODEL, "1.0", export_path=store, engine="onnxruntime", media="video"))


@pytest.fixture(scope="module")
def server(archives, tmp_path_factory):
    image, video = archives
    with TorchServe(image.parent, tmp_path_factory.mktemp("ts"), models=[f"{MODEL}={image.name}", f"{MODEL}-video={video.name}"],
                    ports=Ports.free()) as ts:
        yield ts


@pytest.fixture(scope="module")
def jobs(server, tmp_path_factory):
    settings = replace(SETTINGS, server_url=server.inference_url, key_file=str(server.key_file),
                       rollout_dir=str(tmp_path_factory.mktemp("rollout")))
    with JobSystem(tmp_path_factory.mktemp("jobs"), settings) as system:
        yield system


@pytest.fixture(scope="module")
def keys(jobs):
    return KeyRing(Redis.from_url(jobs.settings.redis_url))


@pytest.fixture(scope="module")
def key(keys):
    return keys.add("tester", rate_per_minute=10_000, faces_per_day=1_000_000)[0]


def auth(secret: str) -> dict:
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture(scope="module")
def clip():
    return samples.encode_video(samples.moving_face_frames(40, (480, 360), faces=2), "mp4")


class Callbacks(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Callbacks.received.append((dict(self.headers), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def callback_url():
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Callbacks)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{receiver.server_port}/hook"
    receiver.shutdown()


KEY: dict = {}  # the module's key, set by the ``key`` fixture through ``submit``/``get``


def submit(jobs, data: bytes, key: str | None = None, url: str | None = None, **fields) -> requests.Response:
    return requests.post(f"{url or jobs.url}/v1/jobs", files={"file": ("upload", data)}, data=fields, timeout=60,
                         headers=auth(key or KEY["secret"]))


def get(jobs, path: str, key: str | None = None, method: str = "GET", **options) -> requests.Response:
    return requests.request(method, f"{jobs.url}{path}", headers=auth(key or KEY["secret"]), timeout=30, **options)


@pytest.fixture(scope="module", autouse=True)
def _module_key(key, keys):
    KEY["secret"], KEY["id"] = key, keys.id_of("tester")  # a job belongs to its key's id


def wait(jobs, job_id: str, states=("done", "failed", "cancelled"), timeout: float = 180.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = get(jobs, f"/v1/jobs/{job_id}").json()
        if job["state"] in states:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {job['state']} after {timeout} s")


def audit_of(jobs, job_id: str, timeout: float = 30.0) -> list[dict]:
    """The job's audit lines once its ending is there: the worker writes it just after the job shows as ended."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [json.loads(line) for line in jobs.settings.audit_log.read_text().splitlines()]
        mine = [e for e in lines if e["job"] == job_id]
        if any(e["event"] != "submitted" for e in mine) or time.monotonic() > deadline:
            return mine
        time.sleep(0.1)


def test_an_image_job_answers_the_synchronous_answer(jobs, server, astronaut_jpeg):
    accepted = submit(jobs, astronaut_jpeg, model=MODEL)
    assert accepted.status_code == 202, accepted.text
    body = accepted.json()
    assert body["state"] == "queued" and body["media"] == "image"
    assert body["digest"] == hashlib.sha256(astronaut_jpeg).hexdigest()
    job = wait(jobs, body["id"])
    direct = RestClient(server.inference_url).predict(MODEL, astronaut_jpeg).body
    assert job["state"] == "done" and job["attempts"] == 1
    assert job["result"]["fake_probability"] == pytest.approx(direct["fake_probability"], abs=1e-6)
    assert [f["box"] for f in job["result"]["faces"]] == [f["box"] for f in direct["faces"]]
    upload = jobs.settings.store / "uploads" / body["digest"]
    assert upload.stat().st_mode & 0o777 == 0o600 and (jobs.settings.store / "uploads").stat().st_mode & 0o777 == 0o700


def test_a_video_job_streams_its_progress_as_server_sent_events(jobs, server, clip):
    accepted = submit(jobs, clip, model=MODEL, frames="8")
    assert accepted.status_code == 202 and accepted.json()["media"] == "video"
    job_id = accepted.json()["id"]
    events, names = [], []
    with get(jobs, f"/v1/jobs/{job_id}/events", stream=True) as stream:
        name = None
        for line in stream.iter_lines(decode_unicode=True):
            if line.startswith("event:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                names.append(name)
                events.append(json.loads(line.split(":", 1)[1]))
                if name in ("done", "failed", "cancelled"):
                    break
    assert names[-1] == "done", events[-1]
    phases = {e.get("phase") for e in events[:-1]}
    assert "detect" in phases and "classify" in phases
    result = events[-1]["result"]
    direct = RestClient(server.inference_url).predict(f"{MODEL}-video", clip, options={"frames": 8}).body
    assert result["frames_analyzed"] == 8 and result["fake_probability"] == pytest.approx(direct["fake_probability"], abs=1e-6)


@pytest.mark.parametrize("case, status, code", [
    ("no file", 400, "missing_file"),
    ("unknown model", 400, "bad_option"),
    ("bad version", 400, "bad_option"),
    ("bad sampling", 400, "bad_sampling"),
    ("bad callback", 400, "bad_option"),
    ("over the limit", 413, "body_too_large"),
    ("empty", 400, "empty_body"),
])
def test_bad_job_requests_store_and_queue_nothing(jobs, astronaut_jpeg, case, status, code):
    uploads = jobs.settings.store / "uploads"
    before = sorted(p.name for p in uploads.iterdir())
    url = f"{jobs.url}/v1/jobs"
    sent = {
        "no file": lambda: requests.post(url, data={"model": MODEL}, timeout=30, headers=auth(KEY["secret"])),
        "unknown model": lambda: submit(jobs, astronaut_jpeg, model="b9-secret"),
        "bad version": lambda: submit(jobs, astronaut_jpeg, model=MODEL, version="../1"),
        "bad sampling": lambda: submit(jobs, astronaut_jpeg, model=MODEL, frames="many"),
        "bad callback": lambda: submit(jobs, astronaut_jpeg, model=MODEL, callback_url="file:///etc/passwd"),
        "over the limit": lambda: submit(jobs, os.urandom(jobs.settings.max_upload_bytes + 1), model=MODEL),
        "empty": lambda: submit(jobs, b"", model=MODEL),
    }[case]()
    assert (sent.status_code, sent.json()["error"]["code"]) == (status, code), sent.text
    assert sorted(p.name for p in uploads.iterdir()) == before


def test_unknown_jobs_and_cancelling_an_ended_job(jobs, astronaut_jpeg):
    missing = get(jobs, "/v1/jobs/nosuchjob")
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "job_not_found")
    assert get(jobs, "/v1/jobs/nosuchjob", method="DELETE").status_code == 404
    job_id = submit(jobs, astronaut_jpeg, model=MODEL).json()["id"]
    wait(jobs, job_id)
    ended = get(jobs, f"/v1/jobs/{job_id}", method="DELETE")
    assert (ended.status_code, ended.json()["error"]["code"]) == (409, "job_finished")


def test_a_corrupt_upload_fails_its_job_with_the_synchronous_code(jobs, astronaut_jpeg):
    pids = [w.pid for w in jobs.workers]
    job = wait(jobs, submit(jobs, media.truncated_jpeg(), model=MODEL).json()["id"])
    assert job["state"] == "failed" and job["error"]["code"] == "corrupt_image" and job["attempts"] == 1
    assert [w.pid for w in jobs.workers if w.poll() is None] == pids
    assert wait(jobs, submit(jobs, astronaut_jpeg, model=MODEL).json()["id"])["state"] == "done"


def test_a_job_past_its_time_limit_fails_with_a_clear_reason(jobs):
    """An attempt (run here, as a worker would) whose clip outlasts ``max_job_s`` records job_too_long, once."""
    from deepfake_serving.jobs.store import JobRecords, UploadStore
    from deepfake_serving.jobs.worker import JobRunner

    settings = replace(jobs.settings, max_job_s=1)
    clip = samples.encode_video(samples.moving_face_frames(120, (640, 480), faces=2), "mp4")
    digest, _, size = UploadStore(settings.store).save(io.BytesIO(clip), settings.max_upload_bytes)
    records = JobRecords(Redis.from_url(settings.redis_url), settings.lease_s, settings.retention_s)
    job_id = records.create(model=MODEL, version="", media="video", digest=digest, size=size,
                            options={"sampling": "all"}, callback_url="", owner=KEY["id"])
    assert JobRunner(settings).run(job_id, 0) is None  # not retried
    job = get(jobs, f"/v1/jobs/{job_id}").json()
    assert job["state"] == "failed" and job["error"]["code"] == "job_too_long" and job["error"]["status"] == 504


def test_a_job_whose_server_is_down_is_retried_then_fails_with_the_attempts(jobs, astronaut_jpeg):
    """No model server at the worker's address: the attempt is retried (the job queued again with its last
    error) up to ``attempts``, then fails with server_unavailable and the attempts: the dead letter."""
    from deepfake_serving.jobs.store import JobRecords, UploadStore
    from deepfake_serving.jobs.worker import JobRunner
    from deepfake_serving.serving.launch.processes import free_ports

    settings = replace(jobs.settings, server_url=f"http://127.0.0.1:{free_ports(1)[0]}", attempts=2, rollout_dir="")
    digest, _, size = UploadStore(settings.store).save(io.BytesIO(astronaut_jpeg), settings.max_upload_bytes)
    records = JobRecords(Redis.from_url(settings.redis_url), settings.lease_s, settings.retention_s)
    job_id = records.create(model=MODEL, version="", media="image", digest=digest, size=size, options={},
                            callback_url="", owner=KEY["id"])
    runner = JobRunner(settings)
    assert runner.run(job_id, 0) == settings.retry_backoff_s  # retried after the backoff
    queued = get(jobs, f"/v1/jobs/{job_id}").json()
    assert queued["state"] == "queued" and queued["last_error"]["code"] == "server_unavailable"
    assert runner.run(job_id, 1) is None
    failed = get(jobs, f"/v1/jobs/{job_id}").json()
    assert failed["state"] == "failed" and failed["error"]["code"] == "server_unavailable"
    assert failed["error"]["attempts"] == failed["attempts"] == 2


def test_cancelling_a_running_job_stops_it(jobs):
    long_clip = samples.encode_video(samples.moving_face_frames(120, (640, 480), faces=2), "mp4")
    job_id = submit(jobs, long_clip, model=MODEL, sampling="all").json()["id"]
    wait(jobs, job_id, states=("running",), timeout=60)
    cancelled = get(jobs, f"/v1/jobs/{job_id}", method="DELETE")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    time.sleep(jobs.settings.lease_s / 3 + 2)  # the attempt's next heartbeat sees it, and its next event stops it
    events = get(jobs, f"/v1/jobs/{job_id}").json()["progress"]
    time.sleep(4)  # a clip this long sends a progress event every second or so while it is analysed
    job = get(jobs, f"/v1/jobs/{job_id}").json()
    assert job["state"] == "cancelled" and "result" not in job and job["progress"] == events


def test_a_worker_killed_mid_job_is_redelivered_and_the_job_completes_once(jobs, keys, callback_url):
    """SIGKILL of the worker's pool (the process running the task) and of the worker: after the broker's
    visibility timeout a new worker gets the task again; one result, one callback, with a valid signature."""
    Callbacks.received.clear()
    clip = samples.encode_video(samples.moving_face_frames(80, (640, 480), faces=2), "mp4")
    job_id = submit(jobs, clip, model=MODEL, sampling="all", callback_url=callback_url).json()["id"]
    wait(jobs, job_id, states=("running",), timeout=60)
    import psutil

    worker = jobs.workers[0]
    for process in [*psutil.Process(worker.pid).children(recursive=True), psutil.Process(worker.pid)]:
        process.send_signal(signal.SIGKILL)
    worker.wait(timeout=10)
    jobs.workers.remove(worker)
    jobs.start_worker()
    job = wait(jobs, job_id, timeout=jobs.settings.visibility_timeout_s + 150)
    assert job["state"] == "done" and job["attempts"] == 2, job
    deadline = time.monotonic() + 30
    while not Callbacks.received and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(2)
    assert len(Callbacks.received) == 1
    headers, body = Callbacks.received[0]
    secret = keys.callback_secret(keys.id_of("tester"))  # the submitting key's own secret
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    assert secret.startswith("dcs_")
    assert headers[SIGNATURE_HEADER] == f"sha256={expected}"
    assert json.loads(body)["result"] == job["result"] and json.loads(body)["id"] == job_id


def test_twenty_clips_at_once_on_two_workers_complete_once_each(jobs, callback_url):
    """20 clips submitted together, a second worker beside the first: every job done, one attempt each, one
    result and one callback each; jobs per minute and the queue wait printed."""
    from concurrent.futures import ThreadPoolExecutor

    Callbacks.received.clear()
    while len(jobs.workers) < 2:
        jobs.start_worker()
    clips = [samples.encode_video(samples.moving_face_frames(12 + i % 4, (320, 240), faces=1), "mp4") for i in range(20)]
    start = time.time()
    with ThreadPoolExecutor(max_workers=20) as pool:
        accepted = list(pool.map(lambda c: submit(jobs, c, model=MODEL, sampling="all", callback_url=callback_url), clips))
    assert all(a.status_code == 202 for a in accepted)
    done = [wait(jobs, a.json()["id"], timeout=300) for a in accepted]
    elapsed = time.time() - start
    assert all(job["state"] == "done" and job["attempts"] == 1 for job in done), [j["state"] for j in done]
    deadline = time.monotonic() + 60
    while len(Callbacks.received) < 20 and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1)
    posted = sorted(json.loads(body)["id"] for _, body in Callbacks.received)
    assert posted == sorted(job["id"] for job in done)  # each job's callback once, none twice
    waits = sorted(job["started"] - job["created"] for job in done)
    print(f"20 clips on 2 workers: {20 / elapsed * 60:.1f} jobs/min, queue wait p50 {waits[9]:.1f} s, "
          f"p95 {waits[18]:.1f} s")


def test_the_locust_job_user_follows_jobs_to_their_verdict(jobs, keys):
    """Locust's JobUser against the job API: every job it submits ends done with a verdict (the smoke
    scenario's thresholds: at least 5 jobs, none failed)."""
    import subprocess
    import sys

    from helpers.live_load import LOCUSTFILE

    run = subprocess.run([sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
                          "-u", "3", "-r", "3", "-t", "15s", "--host", jobs.url, "--scenario", "smoke-pass", "JobUser"],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "DEEPFAKE_API_KEY": keys.add("locust", rate_per_minute=10_000)[0]})
    assert run.returncode == 0 and "LOADTEST PASS [smoke-pass]" in run.stdout, run.stdout[-2000:] + run.stderr[-2000:]
    assert "job image" in run.stdout + run.stderr and "job video" in run.stdout + run.stderr  # the summary table


def test_queued_jobs_survive_a_redis_restart(jobs, astronaut_jpeg):
    for worker in jobs.workers:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
    jobs.workers.clear()
    job_id = submit(jobs, astronaut_jpeg, model=MODEL).json()["id"]
    time.sleep(1.5)  # the append-only file is synced every second
    jobs.redis.stop()
    jobs.redis.start()
    assert get(jobs, f"/v1/jobs/{job_id}").json()["state"] == "queued"
    jobs.start_worker()
    assert wait(jobs, job_id)["state"] == "done"


# -- the front door -----------------------------------------------------------------------------------
def test_requests_without_a_valid_key_are_refused_before_the_body_is_read(jobs, astronaut_jpeg):
    uploads = jobs.settings.store / "uploads"
    before = sorted(p.name for p in uploads.iterdir())
    for headers in ({}, auth("dfk_not-a-key"), {"X-API-Key": ""}):
        refused = requests.post(f"{jobs.url}/v1/jobs", files={"file": ("a.jpg", astronaut_jpeg)}, headers=headers,
                                timeout=30)
        assert (refused.status_code, refused.json()["error"]["code"]) == (401, "unauthorized")
    assert requests.get(f"{jobs.url}/v1/jobs/anything", timeout=10).status_code == 401
    assert requests.get(f"{jobs.url}/v1/health", timeout=10).status_code == 200
    assert sorted(p.name for p in uploads.iterdir()) == before


def test_a_job_is_private_to_the_key_that_submitted_it(jobs, keys, astronaut_jpeg):
    job_id = submit(jobs, astronaut_jpeg, model=MODEL).json()["id"]
    other = keys.add("other")[0]
    for method in ("GET", "DELETE"):
        answer = get(jobs, f"/v1/jobs/{job_id}", key=other, method=method)
        assert (answer.status_code, answer.json()["error"]["code"]) == (404, "job_not_found")
    assert wait(jobs, job_id)["state"] == "done"


def test_rate_and_quota_are_counted_once_across_two_front_processes(jobs, keys, astronaut_jpeg):
    """A second API process on the same Redis: a key's per-minute rate and its daily quota of faces are
    shared, so two replicas never double a client's allowance."""
    from deepfake_serving.serving.launch.processes import free_ports, stop_group

    (port,) = free_ports(1)
    second = jobs.start_api(port)
    try:
        replicas = [jobs.url, f"http://127.0.0.1:{port}"]
        if time.time() % 60 > 45:  # the rate is counted per minute: start in a fresh window
            time.sleep(61 - time.time() % 60)
        limited = keys.add("limited", rate_per_minute=3)[0]
        answers = [requests.get(f"{replicas[i % 2]}/v1/jobs/none", headers=auth(limited), timeout=10) for i in range(4)]
        assert [a.status_code for a in answers] == [404, 404, 404, 429]
        assert answers[3].json()["error"]["code"] == "rate_limited" and 0 < int(answers[3].headers["Retry-After"]) <= 60

        small = keys.add("small", faces_per_day=1)[0]  # one face a day: the astronaut's
        job_id = submit(jobs, astronaut_jpeg, key=small, model=MODEL).json()["id"]
        assert get(jobs, f"/v1/jobs/{job_id}", key=small).status_code == 200
        deadline = time.monotonic() + 120
        while get(jobs, f"/v1/jobs/{job_id}", key=small).json()["state"] != "done" and time.monotonic() < deadline:
            time.sleep(0.3)  # reading a job spends no quota: it answers after the quota is spent
        over = submit(jobs, astronaut_jpeg, key=small, url=replicas[1], model=MODEL)
        assert (over.status_code, over.json()["error"]["code"]) == (429, "rate_limited")
        assert int(over.headers["Retry-After"]) > 60  # the quota: back after midnight UTC, not in a minute
    finally:
        stop_group(second, 10.0)


def test_synchronous_predictions_go_through_the_front_with_an_access_log_and_an_audit(jobs, server, astronaut_jpeg):
    answer = requests.post(f"{jobs.url}/v1/predictions/{MODEL}", data=astronaut_jpeg, headers=auth(KEY["secret"]),
                           timeout=60)
    direct = RestClient(server.inference_url).predict(MODEL, astronaut_jpeg).body
    assert answer.status_code == 200 and answer.json()["fake_probability"] == pytest.approx(direct["fake_probability"])
    refused = requests.post(f"{jobs.url}/v1/predictions/{MODEL}", data=media.truncated_jpeg(),
                            headers=auth(KEY["secret"]), timeout=60)
    assert (refused.status_code, refused.json()["error"]["code"]) == (400, "corrupt_image")
    job_id = submit(jobs, astronaut_jpeg, model=MODEL).json()["id"]
    wait(jobs, job_id)

    text = jobs.settings.access_log.read_text()
    assert KEY["secret"] not in text and jobs.settings.access_log.stat().st_mode & 0o777 == 0o600
    lines = [json.loads(line) for line in text.splitlines()]
    predicted = [e for e in lines if e["route"] == "/v1/predictions/{model}" and e["model"] == MODEL and e["key"] == "tester"][-2:]
    assert [(e["status"], e["error"], e["model"]) for e in predicted] == [(200, None, MODEL), (400, "corrupt_image", MODEL)]
    assert predicted[0]["version"] == "1.0" and predicted[0]["bytes_in"] == len(astronaut_jpeg) and predicted[0]["latency_ms"] > 0
    assert any(e["status"] == 401 and e["error"] == "unauthorized" and e["key"] is None for e in lines)
    submitted, ended = audit_of(jobs, job_id)
    assert (submitted["event"], submitted["key"], submitted["digest"]) == ("submitted", "tester", hashlib.sha256(
        astronaut_jpeg).hexdigest())
    assert (ended["event"], ended["version"], ended["attempts"]) == ("done", "1.0", 1)


def test_a_clip_through_the_front_is_sent_from_a_file_and_answers_as_directly(jobs, server, clip):
    """A clip to /v1/predictions is spooled to a private file as it arrives (not held in the API's memory)
    and streamed from it to the video model: the answer is TorchServe's own."""
    answer = requests.post(f"{jobs.url}/v1/predictions/{MODEL}", data=clip, headers=auth(KEY["secret"]), timeout=120)
    assert answer.status_code == 200, answer.text
    direct = RestClient(server.inference_url).predict(f"{MODEL}-video", clip).body
    assert answer.json()["frames_analyzed"] == direct["frames_analyzed"]
    assert answer.json()["fake_probability"] == pytest.approx(direct["fake_probability"], abs=1e-6)


def test_the_front_and_the_job_queue_have_their_own_metrics(jobs, astronaut_jpeg):
    """On the API's own loopback metrics port (not the API's: there /metrics needs a key like any route):
    requests by route template and status, jobs submitted, queued and finished (counted by the workers)."""
    from helpers.metrics import grown, metric_samples

    before = metric_samples(jobs.metrics_url)
    job_id = submit(jobs, astronaut_jpeg, model=MODEL).json()["id"]
    wait(jobs, job_id)
    get(jobs, "/v1/jobs/no-such-job")
    after = metric_samples(jobs.metrics_url)
    assert grown(before, after, "deepfake_front_requests_total", route="/v1/jobs", status="202") == 1
    assert grown(before, after, "deepfake_front_requests_total", route="/v1/jobs/{id}", status="404") == 1
    assert grown(before, after, "deepfake_jobs_submitted_total", media="image") == 1
    assert grown(before, after, "deepfake_jobs_finished_total", state="done") == 1
    assert ("deepfake_jobs_queued", ()) in after
    assert not any(job_id in str(labels) for _, labels in after)  # no job id grows the series
    assert requests.get(f"{jobs.url}/metrics", timeout=10).status_code == 401


def test_the_rollouts_split_routes_predictions_and_jobs_through_the_front(jobs, server, archives, astronaut_jpeg):
    """A split of 1.0 / 2.0 at 50 % in the rollout's state folder: each caller (X-User-Id, else its key) lands
    on its bucket's version, a pinned version is kept, a job follows its key's arm; the arm is logged."""
    from deepfake_serving.rollout.routing import Split, bucket, split_file

    candidate = build_archive(MODEL, "2.0", export_path=archives[0].parent, engine="onnxruntime")
    server.register(candidate.name)
    users = [f"user{i}" for i in range(64)]
    on_candidate = next(u for u in users if bucket(u) < 0.5)
    on_serving = next(u for u in users if bucket(u) >= 0.5)
    path = split_file(jobs.settings.rollout_dir, MODEL)
    split = Split(MODEL, "1.0", "2.0", 50)
    split.save(path)
    try:
        def predict(user: str, **headers) -> dict:
            answer = requests.post(f"{jobs.url}/v1/predictions/{MODEL}", data=astronaut_jpeg, timeout=60,
                                   headers={**auth(KEY["secret"]), "X-User-Id": user, **headers})
            assert answer.status_code == 200, answer.text
            return answer.json()

        assert predict(on_candidate)["version"] == "2.0" and predict(on_serving)["version"] == "1.0"
        assert predict(on_candidate, **{"X-Model-Version": "1.0"})["version"] == "1.0"
        job = wait(jobs, submit(jobs, astronaut_jpeg, model=MODEL).json()["id"])
        assert job["result"]["version"] == split.version_for("tester")
    finally:
        path.unlink()
    lines = [json.loads(line) for line in jobs.settings.access_log.read_text().splitlines()]
    arms = [(e["arm"], e["version"]) for e in lines if e["route"] == "/v1/predictions/{model}"][-3:]
    assert arms == [("candidate", "2.0"), ("serving", "1.0"), ("pinned", "1.0")]
    ended = audit_of(jobs, job["id"])[-1]
    assert ended["event"] == "done" and ended["arm"] == ("candidate" if split.version_for("tester") == "2.0" else "serving")


def test_an_image_job_can_ask_for_heatmaps(jobs, server, astronaut_jpeg):
    job = wait(jobs, submit(jobs, astronaut_jpeg, model=MODEL, explain="true").json()["id"])
    direct = RestClient(server.inference_url).explain(MODEL, astronaut_jpeg).body
    assert job["state"] == "done" and job["result"]["explanation"]["faces_explained"] >= 1
    for face, expected in zip(job["result"]["faces"], direct["faces"]):
        assert face["explanation"]["region"] == expected["explanation"]["region"]
        assert face["explanation"]["heatmap_png"]
    refused = submit(jobs, astronaut_jpeg, model=MODEL, explain="maybe")
    assert (refused.status_code, refused.json()["error"]["code"]) == (400, "bad_option")


def test_an_in_process_worker_answers_as_torchserve(jobs, server, archives, keys, astronaut_jpeg, clip):
    """The in-process backend (the archive unpacked and run by the worker itself): an image, a clip with its
    progress events, a version it does not run, and a corrupt upload; answers equal TorchServe's."""
    from deepfake_serving.jobs.store import JobRecords, UploadStore
    from deepfake_serving.jobs.worker import JobRunner

    settings = replace(jobs.settings, backend="in-process", archive=str(archives[1]), rollout_dir="")
    store = UploadStore(settings.store)
    records = JobRecords(Redis.from_url(settings.redis_url), settings.lease_s, settings.retention_s)
    runner = JobRunner(settings, worker="in-process@test")

    def run(data: bytes, media_kind: str, version: str = "", **options) -> dict:
        digest, _, size = store.save(io.BytesIO(data), settings.max_upload_bytes)
        job_id = records.create(model=MODEL, version=version, media=media_kind, digest=digest, size=size,
                                options=options, callback_url="", owner=KEY["id"])
        assert runner.run(job_id, 0) is None
        return get(jobs, f"/v1/jobs/{job_id}").json() | {"events": records.events(job_id)}

    image = run(astronaut_jpeg, "image")
    direct = RestClient(server.inference_url).predict(MODEL, astronaut_jpeg).body
    assert image["state"] == "done" and image["worker"] == "in-process@test"
    assert image["result"]["fake_probability"] == pytest.approx(direct["fake_probability"], abs=1e-5)
    assert [f["box"] for f in image["result"]["faces"]] == [f["box"] for f in direct["faces"]]
    video = run(clip, "video", frames="8")
    direct = RestClient(server.inference_url).predict(f"{MODEL}-video", clip, options={"frames": 8}).body
    assert video["state"] == "done" and video["result"]["frames_analyzed"] == 8
    assert video["result"]["fake_probability"] == pytest.approx(direct["fake_probability"], abs=1e-5)
    assert {"detect", "classify"} <= {e.get("phase") for e in video["events"]}
    other = run(astronaut_jpeg, "image", version="9.9")
    assert other["state"] == "failed" and other["error"]["code"] == "model_not_found"
    corrupt = run(media.truncated_jpeg(), "image")
    assert corrupt["state"] == "failed" and corrupt["error"]["code"] == "corrupt_image"


# -- the analyst page, in a real browser -----------------------------------------------------------
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).parent / "artifacts"  # screenshots kept by the browser test (not committed)


def test_the_analyst_page_shows_what_the_api_answers(jobs, server, tmp_path, astronaut_jpeg, clip):
    """Headless Chromium (Debian's) driven by Playwright: upload a real photograph and a clip with the
    page, wait for the verdict, compare what is drawn with the job's JSON, keep screenshots."""
    import shutil

    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (make install installs it)")
    from playwright.sync_api import sync_playwright

    (tmp_path / "face.jpg").write_bytes(astronaut_jpeg)
    (tmp_path / "clip.mp4").write_bytes(clip)
    ARTIFACTS.mkdir(exist_ok=True)
    page_response = requests.get(f"{jobs.url}/", timeout=10)
    assert "script-src 'sha256-" in page_response.headers["Content-Security-Policy"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 1400})
            errors: list[str] = []
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.goto(f"{jobs.url}/")
            page.fill("#key", "dfk_wrong")
            page.set_input_files("#file", str(tmp_path / "face.jpg"))
            page.click("#submit")
            page.wait_for_selector("#verdict[data-state=error]", state="attached", timeout=30_000)
            assert "unauthorized" in page.inner_text("#status")

            page.fill("#key", KEY["secret"])
            page.click("#submit")
            page.wait_for_selector("#verdict[data-state=done]", state="attached", timeout=120_000)
            page.wait_for_selector("#overlay[data-faces]", timeout=10_000)
            shown = page.evaluate("window.lastAnswer")
            direct = RestClient(server.inference_url).predict(MODEL, astronaut_jpeg).body
            assert shown["label"] == direct["label"] and shown["fake_probability"] == pytest.approx(direct["fake_probability"])
            assert page.get_attribute("#verdict", "data-label") == direct["label"]
            assert page.get_attribute("#overlay", "data-faces") == str(direct["face_count"])
            assert page.locator("#faces li").count() == direct["face_count"]
            assert page.is_visible("#download")
            page.screenshot(path=str(ARTIFACTS / "analyst_image.png"), full_page=True)

            page.check("#explain")  # the same photograph with each face's heatmap drawn under its box
            page.click("#submit")
            page.wait_for_selector("#overlay[data-heatmaps]", state="attached", timeout=120_000)
            shown = page.evaluate("window.lastAnswer")
            assert shown["explanation"]["faces_explained"] >= 1
            assert page.get_attribute("#overlay", "data-heatmaps") == str(shown["explanation"]["faces_explained"])
            page.screenshot(path=str(ARTIFACTS / "analyst_heatmaps.png"), full_page=True)
            page.uncheck("#explain")

            page.set_input_files("#file", str(tmp_path / "clip.mp4"))
            page.click("#submit")
            page.wait_for_selector("#verdict[data-state=done]", state="attached", timeout=180_000)
            shown = page.evaluate("window.lastAnswer")
            scored = [f for f in shown["frames"] if f["score"] is not None]
            suspicious = [f for f in scored if f["score"] > shown["threshold"]]
            assert page.locator("#timeline circle").count() == len(scored) > 0
            assert page.locator("#timeline circle.decisive").count() == len(suspicious)
            assert page.evaluate("document.getElementById('progress').value") == 1
            page.screenshot(path=str(ARTIFACTS / "analyst_video.png"), full_page=True)
            assert not [e for e in errors if "401" not in e], errors  # the wrong key's 401 is the only error
        finally:
            browser.close()


# -- workers on several hosts ----------------------------------------------------------------------
def test_workers_on_two_hosts_share_the_jobs_and_survive_one_hosts_worker_killed(jobs, server, keys, callback_url):
    """Two test hosts (network namespaces on veth pairs, tests/helpers/hosts.py), a worker on each, reaching
    Redis and TorchServe through this machine's gateway; no worker on this machine. Six clips: all done
    once, shared by both hosts. Then a long clip each, and host0's worker SIGKILLed mid-job: its job is
    delivered again to host1 and completes once, with one callback."""
    import psutil

    from deepfake_serving.serving.launch.processes import stop_group
    from helpers.hosts import TestHosts, can_make_hosts

    why_not = can_make_hosts()
    if why_not:
        pytest.skip(why_not)
    for worker in jobs.workers:
        stop_group(worker, 30.0)
    jobs.workers.clear()
    Callbacks.received.clear()
    try:
        with TestHosts(2) as hosts:
            redis_port, server_port = hosts.relay(jobs.redis.port), hosts.relay(int(server.inference_url.rsplit(":", 1)[1]))
            here = hosts.address
            for host in hosts.hosts:
                jobs.start_worker(host.name, host.run_here, server_url=f"http://{here}:{server_port}",
                                  redis_url=f"redis://:{jobs.redis.password}@{here}:{redis_port}/0")
            hook = callback_url  # callbacks are sent by the callback worker on this host, not by the hosts' workers
            clips = [samples.encode_video(samples.moving_face_frames(12 + i, (320, 240), faces=1), "mp4") for i in range(6)]
            accepted = [submit(jobs, c, model=MODEL, sampling="all").json()["id"] for c in clips]
            done = [wait(jobs, job_id, timeout=240) for job_id in accepted]
            assert all(job["state"] == "done" and job["attempts"] == 1 for job in done), done
            assert {job["worker"].split("@")[1] for job in done} == {"host0", "host1"}

            long_clip = samples.encode_video(samples.moving_face_frames(80, (640, 480), faces=2), "mp4")
            ids = [submit(jobs, long_clip, model=MODEL, sampling="all", callback_url=hook).json()["id"]
                   for _ in range(2)]
            running = [wait(jobs, job_id, states=("running",), timeout=60) for job_id in ids]
            assert {job["worker"].split("@")[1] for job in running} == {"host0", "host1"}
            killed = next(job["id"] for job in running if job["worker"].endswith("@host0"))
            victim = jobs.workers[0]
            for process in [*psutil.Process(victim.pid).children(recursive=True), psutil.Process(victim.pid)]:
                process.send_signal(signal.SIGKILL)
            victim.wait(timeout=10)
            ended = [wait(jobs, job_id, timeout=jobs.settings.visibility_timeout_s + 240) for job_id in ids]
            assert all(job["state"] == "done" for job in ended), ended
            again = next(job for job in ended if job["id"] == killed)
            assert again["attempts"] == 2 and again["worker"].endswith("@host1")
            deadline = time.monotonic() + 30
            while len(Callbacks.received) < 2 and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(2)
            assert sorted(json.loads(body)["id"] for _, body in Callbacks.received) == sorted(ids)
            for worker in jobs.workers:
                if worker.poll() is None:
                    stop_group(worker, 30.0)
            jobs.workers.clear()
    finally:
        jobs.start_worker()
