"""The job API as an outsider attacks it, on a real Redis, the API on uvicorn, a real analysis worker and
the real callback worker (no model server: jobs fail fast with ``server_unavailable``, which is all a
callback, a stream or a key needs). Each test fails on a front that lets the attack through: callbacks
that hold the analysis worker, follow redirects or reach loopback; versions that walk out of the model's
URL; event streams that lose events or open a Redis connection each; a reused key name that inherits."""

import json
import select
import socket
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from redis import Redis

from deepfake_serving.jobs.callbacks import REFUSED, Destination, post_once
from deepfake_serving.jobs.front import KeyRing
from deepfake_serving.jobs.launch import JobSystem
from deepfake_serving.jobs.settings import JobSettings
from deepfake_serving.jobs.store import DONE, JobRecords
from deepfake_serving.serving.client.clients import RestClient
from deepfake_serving.serving.launch.processes import free_ports

MODEL = "b4-mobile"


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    (closed,) = free_ports(1)  # the model server is down: a job fails at its first attempt
    settings = JobSettings(models=MODEL, max_job_s=20, lease_s=5, visibility_timeout_s=30, attempts=1,
                           retry_backoff_s=0.5, server_url=f"http://127.0.0.1:{closed}", callback_attempts=2,
                           callback_timeout_s=2.0, callback_allow="127.0.0.1/32", jobs_in_flight_per_key=8,
                           max_upload_bytes=8 * 1024 * 1024, upload_bytes_per_key_per_day=20 * 1024 * 1024)
    with JobSystem(tmp_path_factory.mktemp("front"), settings) as system:
        yield system


class Keys(KeyRing):
    """The module's keys: a high rate, so that polling a job is never what limits a test."""

    def add(self, name: str, rate_per_minute: int = 10_000, faces_per_day: int = 10_000) -> tuple[str, str]:
        return super().add(name, rate_per_minute, faces_per_day)


@pytest.fixture(scope="module")
def keys(jobs):
    return Keys(Redis.from_url(jobs.settings.redis_url))


def auth(secret: str) -> dict:
    return {"Authorization": f"Bearer {secret}"}


def submit(jobs, secret: str, **fields) -> requests.Response:
    return requests.post(f"{jobs.url}/v1/jobs", files={"file": ("a.jpg", b"\xff\xd8\xff not really a jpeg")},
                         data={"model": MODEL, **fields}, headers=auth(secret), timeout=30)


def job(jobs, secret: str, job_id: str) -> dict:
    return requests.get(f"{jobs.url}/v1/jobs/{job_id}", headers=auth(secret), timeout=10).json()


def until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout} s")


class Receiver(BaseHTTPRequestHandler):
    """A callback receiver; ``mode`` per server: 'ok' (204), 'tarpit' (a header byte every 1.5 s, for ever),
    'redirect' (307 to ``location``)."""

    def do_POST(self):
        server = self.server
        server.hits.append(time.monotonic())  # type: ignore[attr-defined]
        if server.mode == "tarpit":  # type: ignore[attr-defined]
            self.rfile.read(int(self.headers["Content-Length"]))
            start = time.monotonic()
            try:
                while time.monotonic() - start < 60:
                    self.wfile.write(b"H")
                    self.wfile.flush()
                    if select.select([self.connection], [], [], 1.5)[0] and not self.connection.recv(1):
                        break  # the sender hung up
            except OSError:
                pass
            server.held.append(time.monotonic() - start)  # type: ignore[attr-defined]
            return
        self.rfile.read(int(self.headers["Content-Length"]))
        if server.mode == "redirect":  # type: ignore[attr-defined]
            self.send_response(307)
            self.send_header("Location", server.location)  # type: ignore[attr-defined]
        else:
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver():
    servers = []

    def start(mode: str, location: str = ""):
        server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
        server.mode, server.location, server.hits, server.held = mode, location, [], []  # type: ignore[attr-defined]
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server, f"http://127.0.0.1:{server.server_port}/hook"

    yield start
    for server in servers:
        server.shutdown()


def test_a_tarpit_and_a_closed_port_callback_hold_no_analysis_worker(jobs, keys, receiver):
    """One key's callbacks go to a receiver that drips a byte every 1.5 s and to a closed port; another key's
    job, submitted after them, ends as fast as if there were none, and each callback attempt ends at its
    deadline (2 s), not when the receiver lets go."""
    hostile, honest = keys.add("hostile")[0], keys.add("honest")[0]
    tarpit, tarpit_url = receiver("tarpit")
    (closed,) = free_ports(1)
    slow = [submit(jobs, hostile, callback_url=tarpit_url).json()["id"] for _ in range(3)]
    dead = submit(jobs, hostile, callback_url=f"http://127.0.0.1:{closed}/hook").json()["id"]
    other = submit(jobs, honest).json()["id"]
    until(lambda: job(jobs, honest, other)["state"] in ("done", "failed"), 60, "the honest key's job")
    # The one analysis worker took the honest job as soon as it had recorded the last hostile one: no
    # callback ran in between (each would hold it for its deadline at least).
    last_hostile_end = max(job(jobs, hostile, j)["updated"] for j in [*slow, dead])
    gap = job(jobs, honest, other)["started"] - last_hostile_end
    assert gap < 1.0, f"the worker waited {gap:.1f} s between jobs"
    for job_id in [*slow, dead]:
        until(lambda j=job_id: job(jobs, hostile, j).get("callback") == "failed", 60, f"job {job_id}'s callback")
        assert job(jobs, hostile, job_id)["state"] == "failed"  # the analysis was recorded before any callback
    until(lambda: len(tarpit.held) >= 6, 30, "the tarpit's attempts to end")
    assert max(tarpit.held) < 2.0 + 0.5, tarpit.held  # the deadline, whatever the receiver drips


def test_a_redirect_is_not_followed_and_loopback_is_refused_by_default(jobs, keys, receiver):
    secret = keys.add("redirected")[0]
    target, target_url = receiver("ok")
    _, redirect_url = receiver("redirect", location=target_url)
    job_id = submit(jobs, secret, callback_url=redirect_url).json()["id"]
    until(lambda: job(jobs, secret, job_id).get("callback") == "failed", 30, "the redirected callback")
    time.sleep(1)
    assert target.hits == []  # the worker never went where the 307 pointed
    for url in ("http://127.0.0.2:8090/", "http://[::1]:6379/", "http://10.0.0.1/", "http://169.254.169.254/latest",
                "http://0.0.0.0:8080/", "http://user:pw@example.com/"):
        refused = submit(jobs, secret, callback_url=url)
        assert (refused.status_code, refused.json()["error"]["code"]) == (400, "bad_option"), url
    # Without an allowance, a name that resolves to loopback is refused at delivery, before any connection.
    ok, ok_url = receiver("ok")
    assert post_once(Destination.parse(ok_url.replace("127.0.0.1", "localhost")), b"{}", {}, [], 2.0) == REFUSED
    assert ok.hits == []


@pytest.mark.parametrize("version", ["../internal-only", "../../api-description", "1.0/../../x", "%2e%2e", "a b"])
def test_a_version_that_walks_out_of_the_models_url_is_refused(jobs, keys, version):
    secret = keys.add(f"walker{abs(hash(version)) % 10_000}")[0]
    answer = requests.post(f"{jobs.url}/v1/predictions/{MODEL}", data=b"\xff\xd8\xff", timeout=10,
                           headers={**auth(secret), "X-Model-Version": version})
    # the model server is down: a request that reached it would answer 503, not 400
    assert (answer.status_code, answer.json()["error"]["code"]) == (400, "bad_option")
    (port,) = free_ports(1)
    listener = socket.create_server(("127.0.0.1", port))
    listener.settimeout(0.5)
    try:
        refused = RestClient(f"http://127.0.0.1:{port}").predict(MODEL, b"\xff\xd8\xff", version)
        assert (refused.status, refused.body["error"]["code"]) == (400, "bad_option")
        with pytest.raises(socket.timeout):
            listener.accept()  # the client never connected
    finally:
        listener.close()


def read_events(response) -> list[tuple[str | None, str, dict]]:
    """(id, event, data) of a Server-Sent Events stream until its end state."""
    events, current = [], {}
    for line in response.iter_lines(decode_unicode=True):
        if line.startswith(("id:", "event:", "data:")):
            field, value = line.split(":", 1)
            current[field] = value.strip()
        elif not line and "data" in current:
            events.append((current.get("id"), current.get("event", "message"), json.loads(current["data"])))
            if current.get("event") in ("done", "failed", "cancelled"):
                return events
            current = {}
    return events


def stream(jobs, secret: str, job_id: str, **headers):
    return requests.get(f"{jobs.url}/v1/jobs/{job_id}/events", headers={**auth(secret), **headers}, stream=True,
                        timeout=30)


def test_a_late_subscriber_gets_every_event_and_a_reconnect_resumes(jobs, keys):
    """Events written before anyone listens, then more while a client follows, then the end: the late
    subscriber sees all in order; one that reconnects with Last-Event-ID sees only what it missed."""
    secret = keys.add("follower")[0]
    key_id = keys.id_of("follower")
    records = JobRecords(Redis.from_url(jobs.settings.redis_url), 30, 3600)
    job_id = records.create(model=MODEL, media="video", digest="0" * 64, owner=key_id, owner_name="follower")
    token = records.claim(job_id, "test")
    for phase in ("decode", "detect"):
        records.event(job_id, {"event": "progress", "phase": phase})
    with stream(jobs, secret, job_id) as first:
        lines = first.iter_lines(decode_unicode=True)
        seen = []
        for line in lines:  # read the two stored events, then leave
            if line.startswith("id:"):
                seen.append(line.split(":", 1)[1].strip())
                if len(seen) == 2:
                    break
    records.event(job_id, {"event": "progress", "phase": "classify"})
    records.finish(job_id, token, "result", {"label": "REAL"}, DONE)
    with stream(jobs, secret, job_id, **{"Last-Event-ID": seen[1]}) as resumed:
        rest = read_events(resumed)
    assert [(e, d.get("phase")) for _, e, d in rest] == [("progress", "classify"), ("done", None)]
    assert rest[-1][2]["result"] == {"label": "REAL"}
    with stream(jobs, secret, job_id) as late:
        everything = read_events(late)
    assert [d.get("phase") for _, e, d in everything if e == "progress"] == ["decode", "detect", "classify"]
    assert everything[0][0] == seen[0] and everything[-1][1] == "done"


def test_many_streams_share_one_redis_connection_and_another_key_still_streams(jobs, keys):
    """300 open streams of a queued job from 50 keys: the API holds a handful of Redis connections, a key
    over its bound is refused with 429, and another key's own stream still answers at once."""
    redis = Redis.from_url(jobs.settings.redis_url)
    records = JobRecords(redis, 30, 3600)
    before = redis.info("clients")["connected_clients"]
    opened = []
    try:
        for k in range(50):
            secret = keys.add(f"streamer{k}")[0]
            for i in range(6):  # within the bounds: 6 of a key's 8, 3 of a job's 4
                if i % 3 == 0:
                    job_id = records.create(model=MODEL, media="video", digest="0" * 64, owner=keys.id_of(f"streamer{k}"))
                sock = socket.create_connection(("127.0.0.1", jobs.api_port))
                sock.sendall(f"GET /v1/jobs/{job_id}/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {secret}\r\n"
                             "\r\n".encode())
                opened.append(sock)
        for sock in opened:
            sock.settimeout(10)
            head = sock.recv(4096)
            assert head.startswith(b"HTTP/1.1 200"), head
        during = redis.info("clients")["connected_clients"]
        # bounded whatever the number of streams: the gate's pool (32), the hub (1 + 4), the handlers' threads (40)
        assert during - before <= 80, f"{during - before} Redis connections for 300 streams"
        # a key over its bound (8 per key): refused before any stream opens
        greedy = keys.add("greedy")[0]
        mine = records.create(model=MODEL, media="video", digest="0" * 64, owner=keys.id_of("greedy"))
        held = [stream(jobs, greedy, mine) for _ in range(4)]  # 4 per job
        over = stream(jobs, greedy, mine)
        assert (over.status_code, over.json()["error"]["code"]) == (429, "too_many_streams")
        for response in held:
            response.close()
        # another key's job ends: its stream answers at once
        other = keys.add("bystander")[0]
        job_id = records.create(model=MODEL, media="video", digest="0" * 64, owner=keys.id_of("bystander"))
        records.finish(job_id, records.claim(job_id, "test"), "result", {"label": "REAL"}, DONE)
        start = time.monotonic()
        with stream(jobs, other, job_id) as own:
            assert read_events(own)[-1][1] == "done"
        assert time.monotonic() - start < 2.0
    finally:
        for sock in opened:
            sock.close()


def test_a_reused_key_name_inherits_nothing(jobs, keys):
    first = keys.add("temp", faces_per_day=1)[0]
    job_id = submit(jobs, first).json()["id"]
    until(lambda: job(jobs, first, job_id)["state"] == "failed", 30, "the first key's job")
    keys.revoke("temp")
    second = keys.add("temp")[0]
    answer = requests.get(f"{jobs.url}/v1/jobs/{job_id}", headers=auth(second), timeout=10)
    assert (answer.status_code, answer.json()["error"]["code"]) == (404, "job_not_found")
    assert requests.get(f"{jobs.url}/v1/jobs/{job_id}", headers=auth(first), timeout=10).status_code == 401


def test_redis_down_answers_503_in_our_schema_and_docs_are_not_served(jobs, keys):
    secret = keys.add("while-down")[0]
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert requests.get(f"{jobs.url}{path}", headers=auth(secret), timeout=10).status_code == 404
    jobs.redis.stop()
    try:
        for method, path in (("GET", "/v1/jobs/x"), ("POST", "/v1/jobs"), ("GET", "/v1/health")):
            answer = requests.request(method, f"{jobs.url}{path}", headers=auth(secret), timeout=30)
            assert answer.status_code == 503, (path, answer.text)
            assert answer.json()["error"]["code"] == "server_unavailable", (path, answer.text)
    finally:
        jobs.redis.start()
    assert requests.get(f"{jobs.url}/v1/jobs/x", headers=auth(secret), timeout=30).status_code == 404


def test_settings_refuse_networks_that_do_not_parse():
    with pytest.raises(ValueError, match="callback_allow"):
        replace(JobSettings(), callback_allow="127.0.0.1/33").check()


def test_failed_and_cancelled_uploads_are_removed_unless_another_job_needs_them(jobs, keys):
    secret = keys.add("uploader")[0]
    uploads = jobs.settings.store / "uploads"

    def send(data: bytes) -> dict:
        return requests.post(f"{jobs.url}/v1/jobs", files={"file": ("a.jpg", data)}, data={"model": MODEL},
                             headers=auth(secret), timeout=30).json()

    failed = send(b"\xff\xd8\xff fails at the server " + bytes(range(256)))
    until(lambda: job(jobs, secret, failed["id"])["state"] == "failed", 30, "the failing job")
    until(lambda: not (uploads / failed["digest"]).exists(), 5, "the failed job's upload to go")
    # the worker is busy with these while the shared bytes wait in the queue behind them
    busy = [send(b"\xff\xd8\xff busy " + bytes([i]) * 64) for i in range(3)]
    shared = b"\xff\xd8\xff shared by two jobs " + bytes(range(256))
    first, second = send(shared), send(shared)
    assert first["digest"] == second["digest"]
    assert requests.delete(f"{jobs.url}/v1/jobs/{second['id']}", headers=auth(secret), timeout=10).status_code == 200
    assert (uploads / first["digest"]).exists()  # the first job still needs the bytes
    until(lambda: job(jobs, secret, first["id"])["state"] == "failed", 60, "the first job")
    until(lambda: not (uploads / first["digest"]).exists(), 5, "the shared upload to go")
    assert all(job(jobs, secret, b["id"])["state"] == "failed" for b in busy)


def test_a_prediction_body_over_the_image_limit_is_refused_as_it_arrives(jobs, keys):
    secret = keys.add("big-image")[0]
    body = b"\xff\xd8\xff\xe0" + bytes(21 * 1024 * 1024)  # a JPEG's signature, past the image limit of 20 MB
    answer = requests.post(f"{jobs.url}/v1/predictions/{MODEL}", data=body, headers=auth(secret), timeout=30)
    # refused by the front (the model server is down: anything forwarded would answer 503)
    assert (answer.status_code, answer.json()["error"]["code"]) == (413, "body_too_large"), answer.text

    def chunks():
        yield body[:1024]
        for start in range(1024, len(body), 1 << 20):
            yield body[start:start + (1 << 20)]

    streamed = requests.post(f"{jobs.url}/v1/predictions/{MODEL}", data=chunks(), headers=auth(secret), timeout=30)
    assert (streamed.status_code, streamed.json()["error"]["code"]) == (413, "body_too_large"), streamed.text


def test_a_one_face_quota_admits_one_request_however_many_come_at_once(jobs, keys):
    """16 predictions and 20 jobs at once on a key with 1 face a day: one is admitted (its estimate reserved
    as it is admitted), the rest 429; a refused job keeps no upload."""
    from concurrent.futures import ThreadPoolExecutor

    uploads = jobs.settings.store / "uploads"
    for kind in ("predictions", "jobs"):
        secret = keys.add(f"one-face-{kind}", faces_per_day=1)[0]
        bodies = [b"\xff\xd8\xff" + f"{kind} {i}".encode() * 20 for i in range(16 if kind == "predictions" else 20)]

        def send(body: bytes) -> requests.Response:
            if kind == "predictions":
                return requests.post(f"{jobs.url}/v1/predictions/{MODEL}", data=body, headers=auth(secret), timeout=60)
            return requests.post(f"{jobs.url}/v1/jobs", files={"file": ("a.jpg", body)}, data={"model": MODEL},
                                 headers=auth(secret), timeout=60)

        before = {p.name for p in uploads.iterdir()}
        with ThreadPoolExecutor(len(bodies)) as pool:
            answers = list(pool.map(send, bodies))
        admitted = [a for a in answers if a.status_code != 429]
        assert len(admitted) == 1, [a.status_code for a in answers]
        assert all(a.json()["error"]["code"] == "rate_limited" for a in answers if a.status_code == 429)
        if kind == "jobs":
            kept = {p.name for p in uploads.iterdir()} - before
            assert kept <= {admitted[0].json()["digest"]}, "a refused job's upload was kept"


def test_the_rate_is_a_sliding_window_with_no_double_at_a_minutes_edge(jobs):
    """Three requests a minute: three at :59.9 and three at :00.1 of the next minute (the gate's own clock,
    given here) admit three, not six; a minute after the first, one more."""
    import asyncio

    from deepfake_serving.jobs.front import ApiKey, admit
    from deepfake_serving.jobs.store import async_redis_client

    async def run() -> list:
        redis = async_redis_client(jobs.settings.redis_url)
        key, edge = ApiKey("key_edge", "edge", 3, 1000), (time.time() // 60 + 1) * 60
        moments = [edge - 0.1] * 3 + [edge + 0.1] * 3 + [edge + 59.95]
        waits = [await admit(redis, key, now, False, f"r{i}") for i, now in enumerate(moments)]
        await redis.aclose()
        return waits

    waits = asyncio.run(run())
    assert waits[:3] == [None] * 3 and all(w is not None and w >= 59 for w in waits[3:6]) and waits[6] is None, waits


def test_twenty_thousand_half_open_connections_leave_the_api_answering(jobs, keys):
    """20,000 connections from another address, each having sent one byte of its head: /v1/health and a keyed
    request still answer within 1 s, and the edge closes the half-open ones after its header timeout."""
    import resource

    from deepfake_serving.jobs.edge import HEADER_TIMEOUT_S

    secret = keys.add("patient")[0]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:  # root may raise its own hard limit
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 24_000), max(hard, 24_000)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    count = min(20_000, resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 1_000)
    opened = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.setblocking(False)
            sock.bind(("127.0.0.2", 0))
            try:
                sock.connect(("127.0.0.1", jobs.api_port))
            except BlockingIOError:
                pass
            opened.append(sock)
        time.sleep(1.0)
        for sock in opened:
            try:
                sock.send(b"G")
            except OSError:
                pass
        for path, headers in (("/v1/health", {}), ("/v1/jobs/none", auth(secret))):
            start = time.monotonic()
            answer = requests.get(f"{jobs.url}{path}", headers=headers, timeout=5)
            assert answer.status_code in (200, 404) and time.monotonic() - start <= 1.0, (path, time.monotonic() - start)
        time.sleep(HEADER_TIMEOUT_S + 3)
        closed = 0
        for sock in opened[:200]:
            sock.setblocking(True)
            sock.settimeout(1)
            try:
                sock.recv(1024)  # nginx's 408 or the end of the stream: it has given up on the head
                closed += 1
            except socket.timeout:  # still waiting for the rest of its head
                pass
            except OSError:  # reset
                closed += 1
        assert closed == 200, f"{200 - closed} of 200 half-open connections still open"
    finally:
        for sock in opened:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_edges_workers_run_as_the_launcher_and_another_user_reads_nothing(jobs):
    """nginx's workers run as the user that started the job system, never ``nobody``: another local account
    (``nobody`` here) can neither read their memory nor reach the API's socket past nginx."""
    import os
    import shutil
    import subprocess

    import psutil

    edge = jobs.edges[0]
    workers = psutil.Process(edge.process.pid).children()
    assert workers and all(w.uids().real == os.getuid() for w in workers), [w.username() for w in workers]
    if os.getuid() != 0 or not shutil.which("runuser"):
        pytest.skip("needs root and runuser to act as another user")
    for target in [f"/proc/{workers[0].pid}/mem", f"/proc/{workers[0].pid}/environ", str(edge.socket),
                   str(jobs.workdir / "redis" / "redis.secret")]:
        read = subprocess.run(["runuser", "-u", "nobody", "--", "head", "-c", "1", target], capture_output=True)
        assert read.returncode != 0 and read.stdout == b"", target


def test_every_refusal_of_a_form_is_in_our_schema(jobs, keys):
    """A chunked body over the limit, 1,001 form fields, a 5,000-character filename, a field of the wrong
    kind and an unknown route: each a status and the project's JSON error, never Starlette's ``detail``."""
    secret = keys.add("former")[0]
    limit = jobs.settings.max_request_bytes

    def chunks():  # a multipart form, sent chunked (no Content-Length), whose file runs past the limit
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.mp4"\r\n\r\n'
        for _ in range(limit // (1 << 20) + 2):
            yield bytes(1 << 20)

    cases = {
        "chunked over the limit": dict(data=chunks(), headers={"Content-Type": "multipart/form-data; boundary=b"}),
        "1,001 fields": dict(data={f"f{i}": "x" for i in range(1001)}, files={"file": ("a.jpg", b"\xff\xd8\xff")}),
        "a long filename": dict(files={"file": ("a" * 5000 + ".jpg", b"\xff\xd8\xff")}),
        "a field of the wrong kind": dict(files={"file": ("a.jpg", b"\xff\xd8\xff"), "model": ("m.txt", b"x" * 10)}),
    }
    for case, options in cases.items():
        answer = requests.post(f"{jobs.url}/v1/jobs", headers={**auth(secret), **options.pop("headers", {})},
                               timeout=60, **options)
        assert 400 <= answer.status_code < 500 and "detail" not in answer.json(), (case, answer.text[:300])
        error = answer.json()["error"]
        assert error["status"] == answer.status_code and error["code"] in ("body_too_large", "bad_request",
                                                                           "bad_option", "missing_file"), case
        if case == "chunked over the limit":
            assert (answer.status_code, error["code"]) == (413, "body_too_large")
    unknown = requests.get(f"{jobs.url}/v1/nothing-here", headers=auth(secret), timeout=10)
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "bad_request")


def test_a_killed_worker_and_a_killed_redis_are_started_again_and_health_tells_meanwhile(jobs, keys, tmp_path):
    """SIGKILL of the only worker: health answers 503 (no worker alive) until the healer has started it again,
    and a job queued meanwhile ends; SIGKILL of Redis: 503 in our schema, then Redis again with its jobs. The
    healer is driven by hand here, so that the window in which nothing is alive is the test's to see."""
    import psutil

    from deepfake_serving.jobs.healing import Healer

    secret = keys.add("healed")[0]
    health = f"{jobs.url}/v1/health"
    worker = jobs.workers[0]
    for process in [*psutil.Process(worker.pid).children(recursive=True), psutil.Process(worker.pid)]:
        process.kill()
    worker.wait(timeout=10)
    until(lambda: requests.get(health, timeout=10).status_code == 503, 20, "health to say no worker is alive")
    assert requests.get(health, timeout=10).json()["workers"] == 0
    queued = submit(jobs, secret).json()["id"]
    healer = Healer(jobs.parts, tmp_path / "healing.jsonl")
    healer.check(time.monotonic())
    until(lambda: requests.get(health, timeout=10).status_code == 200, 60, "health once the worker is back")
    until(lambda: job(jobs, secret, queued)["state"] in ("done", "failed"), 60, "the job queued meanwhile")

    jobs.redis.process.kill()
    jobs.redis.process.wait(timeout=10)
    down = requests.get(f"{jobs.url}/v1/jobs/{queued}", headers=auth(secret), timeout=30)
    assert (down.status_code, down.json()["error"]["code"]) == (503, "server_unavailable")
    healer.check(time.monotonic())
    until(lambda: requests.get(f"{jobs.url}/v1/jobs/{queued}", headers=auth(secret), timeout=30).status_code == 200,
          30, "the job's record after Redis came back (append-only file)")
    events = [json.loads(line) for line in (tmp_path / "healing.jsonl").read_text().splitlines()]
    assert [(e["part"], e["event"]) for e in events] == [("worker0", "restarted"), ("redis", "restarted")]


def test_restarts_back_off_and_stop_at_the_limit():
    from deepfake_serving.jobs.healing import Restarts

    record, now, started = Restarts(limit=3, window_s=600), 0.0, []
    while now < 100:
        due = record.due(now)
        if due is None:
            break
        if due:
            record.times.append(now)
            started.append(now)
        now += 0.5
    assert started == [0.0, 1.0, 3.0] and record.due(now) is None  # 1 s, then 2 s between; then no more
    assert record.due(700.0) is True  # the window has passed


def test_a_keyless_flood_with_long_paths_barely_grows_the_access_log(jobs, keys):
    """2,000 keyless requests with 60 KB paths in a few seconds: refused (431 or 401 in our JSON) and
    counted, a line a second at most, each naming the route's template, never the path it was sent."""
    from concurrent.futures import ThreadPoolExecutor

    log = jobs.settings.access_log
    before = log.stat().st_size if log.exists() else 0
    start = time.monotonic()
    path = "/v1/jobs/" + "x" * 60_000

    def hit(_):
        with requests.Session() as session:
            answer = session.get(f"{jobs.url}{path}", timeout=30)
            return answer.status_code, answer.json()["error"]["code"]

    with ThreadPoolExecutor(16) as pool:
        answers = set(pool.map(hit, range(2000)))
    assert answers <= {(401, "unauthorized"), (431, "headers_too_large")}, answers
    grown = log.stat().st_size - before
    lines = [json.loads(line) for line in log.read_text().splitlines()][-50:]
    assert grown <= (time.monotonic() - start + 2) * 1000, f"{grown} bytes for 2,000 refusals"
    assert all("x" * 100 not in line["route"] for line in lines)


def test_the_access_log_rotates_at_its_cap(tmp_path):
    from deepfake_serving.core.jsonlines import append_line

    log = tmp_path / "access.jsonl"
    for i in range(100):
        append_line(log, {"i": i, "pad": "x" * 100}, fsync=False, max_bytes=1000, keep=2)
    assert log.stat().st_size <= 1000 and (tmp_path / "access.jsonl.1").stat().st_size <= 1000
    assert (tmp_path / "access.jsonl.2").exists() and not (tmp_path / "access.jsonl.3").exists()
    assert json.loads(log.read_text().splitlines()[-1])["i"] == 99


def test_a_key_has_at_most_its_bound_of_jobs_in_flight(jobs, keys):
    """12 jobs at once from one key whose bound is 8: 8 accepted, 4 refused (429) keeping nothing; once they
    have ended the key submits again."""
    from concurrent.futures import ThreadPoolExecutor

    secret = keys.add("eager")[0]
    bodies = [b"\xff\xd8\xff eager " + bytes([i]) * 32 for i in range(12)]
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda body: requests.post(
            f"{jobs.url}/v1/jobs", files={"file": ("a.jpg", body)}, data={"model": MODEL}, headers=auth(secret),
            timeout=60), bodies))
    accepted = [a.json()["id"] for a in answers if a.status_code == 202]
    assert len(accepted) == 8 and sorted(a.status_code for a in answers if a.status_code != 202) == [429] * 4
    for job_id in accepted:
        until(lambda j=job_id: job(jobs, secret, j)["state"] in ("done", "failed"), 90, "the accepted jobs")
    assert submit(jobs, secret).status_code == 202


def test_a_key_stores_at_most_its_bytes_a_day(jobs, keys):
    """8 MB uploads from a key allowed 20 MB a day: two are stored, the third refused (429) and not kept."""
    secret = keys.add("hoarder")[0]
    uploads = jobs.settings.store / "uploads"
    answers = []
    for i in range(3):
        body = b"\xff\xd8\xff" + bytes([i]) * (8 * 1024 * 1024 - 16)
        answers.append(requests.post(f"{jobs.url}/v1/jobs", files={"file": ("a.jpg", body)}, data={"model": MODEL},
                                     headers=auth(secret), timeout=60))
    assert [a.status_code for a in answers] == [202, 202, 429], [a.text[:200] for a in answers]
    assert answers[2].json()["error"]["code"] == "rate_limited"
    import hashlib

    third = hashlib.sha256(b"\xff\xd8\xff" + bytes([2]) * (8 * 1024 * 1024 - 16)).hexdigest()
    assert not (uploads / third).exists()
