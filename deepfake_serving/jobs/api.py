"""The job API (FastAPI; served by uvicorn: ``uvicorn deepfake_serving.jobs.api:app``):

- ``POST /v1/jobs``: multipart ``file`` plus ``model``, ``version``, ``sampling``, ``frames``, ``every``,
  ``callback_url``; options are checked before anything is stored, the upload is stored (content-addressed,
  within the size limit) and a task queued: ``202 {"id", "state": "queued", ...}`` at once;
- ``GET /v1/jobs/{id}``: queued / running (progress) / done (the usual answer) / failed (the usual error) /
  cancelled;
- ``DELETE /v1/jobs/{id}``: cancels a queued or running job (409 ``job_finished`` once it ended);
- ``GET /v1/jobs/{id}/events``: Server-Sent Events, the progress so far and as it comes, then the end state;
- ``GET /``: the analyst's page (upload, progress, verdict, boxes, the video's suspicion timeline, the JSON);
- ``POST /v1/predictions/{model}``: a synchronous prediction (the raw image or clip as the body), forwarded
  to TorchServe through the project's client, under the same key, rate and quota as jobs.

Every route but ``/`` and ``/v1/health`` needs an API key (jobs.front.Gate, checked before any body is read); a job is
seen and cancelled by the key that submitted it only (another key gets 404). Every error is the project's
JSON (core.errors) with its status.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import tempfile
import time
from importlib.resources import files
from pathlib import Path
from typing import IO

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from redis.exceptions import RedisError
from sse_starlette import EventSourceResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from deepfake_serving.core.errors import RequestError, error_body
from deepfake_serving.core.formats import video_container
from deepfake_serving.core.jsonlines import append_line
from deepfake_serving.core.naming import check_name, video_model
from deepfake_serving.jobs.callbacks import Destination, allowed_networks
from deepfake_serving.jobs.events import EventHub, StreamLimits, sse
from deepfake_serving.jobs.front import Gate, Reservation, cost, reserve, routed_version, settle, store_bytes
from deepfake_serving.jobs.metrics import FrontMetrics
from deepfake_serving.jobs.settings import JobSettings
from deepfake_serving.jobs.store import Heartbeats, JobRecords, UploadStore, async_redis_client, new_job_id, redis_client
from deepfake_serving.jobs.worker import CALLBACK_QUEUE, QUEUE, TASK, make_app
from deepfake_serving.media.image import ImageLimits
from deepfake_serving.media.video import Sampling, VideoLimits
from deepfake_serving.serving.client.clients import RestClient, make_client

REDIS_DOWN = RequestError("server_unavailable", "the job system's store is not answering: try again shortly")


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes is refused with 413 ``body_too_large`` as soon as
    its Content-Length says so or its bytes pass the limit, before the multipart parser spools it to disk."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await too_large(self.limit)(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                scope.setdefault("state", {})["body_too_large"] = True  # the form parser may wrap what we raise
                raise RequestError("body_too_large", f"the request is over the job limit of {self.limit} bytes")
            return message

        try:
            await self.app(scope, counted, send)
        except RequestError:
            await too_large(self.limit)(scope, receive, send)


async def media_body(request: Request, video_limit: int, spool: Path) -> tuple[bool, bytes | IO[bytes]]:
    """(is it a clip, the body) of a prediction, refused with 413 ``body_too_large`` as soon as its
    ``Content-Length`` or its bytes pass its media's own limit (an image's 20 MB, known from its first
    bytes), not the video limit. An image comes back as bytes; a clip as a private temporary file in
    ``spool`` (the job store's folder), written as it arrives: 14 clips of 99 MB at once cost disk, not the
    API's memory."""
    image_limit = min(ImageLimits().max_bytes, video_limit)
    declared = request.headers.get("content-length", "")
    head, size, limit = b"", 0, None  # the limit is known once the first 64 bytes tell an image from a clip
    body = tempfile.SpooledTemporaryFile(max_size=1 << 20, mode="w+b", dir=str(spool))  # a file past 1 MB, 0600

    def check(limit: int) -> None:
        if size > limit or (declared.isdigit() and int(declared) > limit):
            kind = "video" if limit == video_limit else "image"
            raise RequestError("body_too_large", f"the {kind} is over its limit of {limit} bytes")

    try:
        async for chunk in request.stream():
            if len(head) < 64:
                head += chunk[:64 - len(head)]
            size += len(chunk)
            if limit is None and len(head) >= 64:
                limit = video_limit if video_container(head) else image_limit
            check(limit or video_limit)
            body.write(chunk)
        video = video_container(head)
        check(video_limit if video else image_limit)
    except BaseException:
        body.close()
        raise
    body.seek(0)
    if video:
        return True, body
    with body:
        return False, body.read()


def too_large(limit: int) -> JSONResponse:
    body = error_body("body_too_large", f"the request is over the job limit of {limit} bytes")
    return JSONResponse(body, status_code=413, headers={"Connection": "close"})


def job_view(job_id: str, record: dict) -> dict:
    """What a client sees of a job record (never the lease or the upload's path)."""
    view = {"id": job_id, "state": record["state"], "model": record.get("model"), "media": record.get("media"),
            "version": record.get("version") or None, "digest": record.get("digest"),
            "created": float(record["created"]), "updated": float(record["updated"]),
            "attempts": int(record.get("attempts", 0)),
            "started": float(record["started"]) if record.get("started") else None,
            "worker": record.get("worker") or None}
    for field in ("progress", "result", "error", "last_error"):
        if record.get(field):
            view[field] = json.loads(record[field])
    if record.get("callback"):
        view["callback"] = record["callback"]
    return view


def checked_version(version: str | None) -> str | None:
    """A version a client names (a job's ``version``, ``X-Model-Version``): one safe name or bad_option, before
    it goes anywhere near a server's URL."""
    if version:
        try:
            check_name(version, "version")
        except ValueError as err:
            raise RequestError("bad_option", str(err)) from None
    return version or None


def checked_options(settings: JobSettings, model: str, version: str | None, sampling: str | None, frames: str | None,
                    every: str | None, callback_url: str | None, explain: str | None) -> dict:
    if model not in settings.model_names:
        raise RequestError("bad_option", f"unknown model {model!r}; this job API serves {', '.join(settings.model_names)}")
    checked_version(version)
    options = {k: v for k, v in {"sampling": sampling, "frames": frames, "every": every}.items() if v not in (None, "")}
    Sampling.from_options(options).validate(VideoLimits())  # bad_sampling, before anything is stored
    if (explain or "false").lower() not in ("true", "false"):
        raise RequestError("bad_option", "explain is true or false")
    if explain and explain.lower() == "true":
        options["explain"] = "true"  # the answer carries each face's heatmap (docs/explanations.md)
    if callback_url and Destination.parse(callback_url).literal_refused(allowed_networks(settings.callback_allow)):
        raise RequestError("bad_option", "callback_url names a loopback, private or reserved address: callbacks "
                           "go to public addresses (or the networks this deployment allows)")
    return options


def analyst_page() -> tuple[str, str]:
    """The analyst's page (one static file in the package: no build step) and its Content-Security-Policy,
    which allows its own inline script by hash and nothing from elsewhere."""
    page = (files(__package__) / "page" / "index.html").read_text()
    script = page.split("<script>", 1)[1].split("</script>", 1)[0]
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    policy = (f"default-src 'none'; script-src 'sha256-{digest}'; style-src 'unsafe-inline'; img-src blob: data:; "
              "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'")
    return page, policy


def create_app(settings: JobSettings | None = None, metrics: FrontMetrics | None = None) -> FastAPI:
    settings = settings or JobSettings.from_env()
    redis = redis_client(settings.redis_url)
    records, store = JobRecords(redis, settings.lease_s, settings.retention_s), UploadStore(settings.store)
    celery = make_app(settings)
    hub = EventHub(settings.redis_url, StreamLimits(max_s=float(settings.max_job_s + settings.lease_s)))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await hub.close()

    # The OpenAPI document and its pages describe every route to whoever asks: served only when asked for.
    docs = "/docs" if settings.api_docs else None
    app = FastAPI(title="deepfake-serving jobs", version="1", lifespan=lifespan, docs_url=docs,
                  redoc_url=docs and "/redoc", openapi_url=docs and "/openapi.json")

    client = None if settings.backend == "in-process" else make_client(
        "rest", settings.server_url, settings.max_job_s, settings.backend, settings.key_file or None)

    def reserved(request: Request, video: bool, options: dict) -> Reservation:
        """The work's estimate reserved against the key's quota for today, or 429 when the day is spent."""
        sampling = Sampling.from_options(options)
        estimate = (sampling.frames if sampling.strategy == "linspace" else VideoLimits().max_frames_analyzed) if video else 1
        reservation = reserve(redis, request.state.api_key, request.state.api_key_quota, estimate)
        if reservation is None:
            raise RequestError("rate_limited", f"key {request.state.api_key_name} has spent its quota of "
                               f"{request.state.api_key_quota} faces today")
        return reservation

    @app.exception_handler(RequestError)
    async def request_error(request: Request, err: RequestError) -> JSONResponse:
        request.state.error = err.code
        return JSONResponse(err.to_dict(), status_code=err.status)

    @app.exception_handler(StarletteHTTPException)
    async def framework_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        """Starlette's and FastAPI's own refusals (a form it cannot parse or over its 1,000 fields, a route or
        method that does not exist) in the project's JSON: ``bad_request`` with their status, or 413
        ``body_too_large`` when the body limit is what broke the form."""
        if getattr(request.state, "body_too_large", False):
            return await request_error(request, RequestError("body_too_large", "the request is over the job "
                                                             f"limit of {settings.max_request_bytes} bytes"))
        body = error_body("bad_request", str(err.detail)[:300])
        body["error"]["status"] = err.status_code
        request.state.error = "bad_request"
        return JSONResponse(body, status_code=err.status_code, headers=err.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_form(request: Request, err: RequestValidationError) -> JSONResponse:
        fields = ", ".join(".".join(str(p) for p in e.get("loc", ())[1:]) for e in err.errors()[:5])
        return await request_error(request, RequestError("bad_option", f"fields that are not allowed: {fields}"))

    @app.exception_handler(RedisError)
    async def redis_down(request: Request, err: RedisError) -> JSONResponse:
        return await request_error(request, REDIS_DOWN)

    @app.post("/v1/jobs", status_code=202)
    def submit(request: Request, file: UploadFile | None = File(None), model: str = Form("b4-mobile"),
               version: str | None = Form(None), sampling: str | None = Form(None), frames: str | None = Form(None),
               every: str | None = Form(None), callback_url: str | None = Form(None),
               explain: str | None = Form(None)) -> dict:
        request.state.model = model
        options = checked_options(settings, model, version, sampling, frames, every, callback_url, explain)
        if file is None:
            raise RequestError("missing_file", "send the image or video as the multipart field `file`")
        digest, path, size = store.save(file.file, settings.max_upload_bytes)
        with open(path, "rb") as upload:
            media = "video" if video_container(upload.read(64)) else "image"
        owner, owner_name, job_id = request.state.api_key, request.state.api_key_name, new_job_id()
        reservation = None
        try:
            if not store_bytes(redis, owner, size, settings.upload_bytes_per_key_per_day):
                raise RequestError("rate_limited", f"key {owner_name} has stored its "
                                   f"{settings.upload_bytes_per_key_per_day} bytes of uploads for today")
            reservation = reserved(request, media == "video", options)
            if not records.take_flight(owner, job_id, settings.jobs_in_flight_per_key):
                raise RequestError("rate_limited", f"key {owner_name} has {settings.jobs_in_flight_per_key} jobs "
                                   "queued or running: wait for one to end")
        except RequestError:
            if reservation is not None:
                settle(redis, reservation, 0)
            if not records.redis.scard(records.users(digest)):
                path.unlink(missing_ok=True)  # no job names these bytes: nothing is kept of a refused upload
            raise
        records.create(job_id, model=model, version=version or "", media=media, digest=digest, size=size,
                       options=options, callback_url=callback_url or "", owner=owner, owner_name=owner_name,
                       reserved=reservation.faces, reserved_day=reservation.day)
        request.state.job = job_id
        append_line(settings.audit_log, {"time": time.time(), "event": "submitted", "job": job_id, "key": owner_name,
                                         "key_id": owner,
                                         "digest": digest, "bytes": size, "media": media, "model": model,
                                         "version_asked": version})
        celery.send_task(TASK, args=[job_id], task_id=job_id)
        if metrics is not None:
            metrics.submitted.labels(media).inc()
        return {"id": job_id, "state": "queued", "media": media, "digest": digest,
                "links": {"self": f"/v1/jobs/{job_id}", "events": f"/v1/jobs/{job_id}/events"}}

    def found(request: Request, job_id: str) -> dict:
        """The job, when the request's key submitted it (another key learns nothing, not even that it exists)."""
        request.state.job = job_id
        record = records.get(job_id)
        if record is None or record.get("owner") != request.state.api_key:
            raise RequestError("job_not_found", f"no job {job_id!r}")
        return record

    @app.get("/v1/jobs/{job_id}")
    def status(request: Request, job_id: str) -> dict:
        return job_view(job_id, found(request, job_id))

    @app.delete("/v1/jobs/{job_id}")
    def cancel(request: Request, job_id: str) -> dict:
        record = found(request, job_id)
        if not records.cancel(job_id):
            raise RequestError("job_finished", f"job {job_id} has already ended ({record['state']})")
        records.drop_upload(job_id, store)
        records.land(record.get("owner", ""), job_id)
        if record.get("reserved_day") and record["state"] == "queued":  # it never ran: it cost nothing
            settle(redis, Reservation(record["reserved_day"], int(record["reserved"])), 0)
        return job_view(job_id, found(request, job_id))

    @app.get("/v1/jobs/{job_id}/events")
    async def events(request: Request, job_id: str) -> EventSourceResponse:
        """The job's events from the start (or after ``Last-Event-ID``), each with its id, then its end state."""
        await run_in_threadpool(found, request, job_id)
        entries = hub.follow(JobRecords.stream(job_id), request.state.api_key, request.headers.get("last-event-id"))

        async def stream():
            async for entry_id, fields in entries:
                view = job_view(job_id, await hub.record(JobRecords.key(job_id))) if "end" in fields else None
                yield sse(entry_id, fields, view)

        return EventSourceResponse(stream())

    @app.post("/v1/predictions/{model}")
    async def predict(request: Request, model: str) -> JSONResponse:
        """The body as it came, to MODEL (images) or MODEL-video (clips) on TorchServe, at the version the
        rollout's split gives the caller (``X-User-Id``, else the key's name; ``X-Model-Version`` pins one);
        the answer as it came back, its faces charged to the key."""
        request.state.model = model
        if model not in settings.model_names:
            raise RequestError("bad_option", f"unknown model {model!r}; this API serves {', '.join(settings.model_names)}")
        if client is None:
            raise RequestError("server_unavailable", "this job API analyses in its workers only (the in-process "
                               "backend): submit a job")
        pinned = checked_version(request.headers.get("x-model-version"))
        video, body = await media_body(request, settings.max_upload_bytes, store.uploads)
        served = video_model(model) if video else model
        version, request.state.arm = routed_version(settings.rollout_dir, served, pinned,
                                                    request.headers.get("x-user-id") or request.state.api_key_name)
        reservation = await run_in_threadpool(reserved, request, served != model, {})
        try:  # a clip is streamed from its file by the REST client; the Triton client takes bytes
            data = body.read() if not isinstance(body, bytes) and not isinstance(client, RestClient) else body
            answer = await run_in_threadpool(client.predict, served, data, version)
        finally:
            if not isinstance(body, bytes):
                body.close()
        if answer.ok:
            request.state.version = answer.body.get("version")
        else:
            request.state.error = answer.body.get("error", {}).get("code")
        await run_in_threadpool(settle, redis, reservation, cost(answer.ok, answer.body))
        return JSONResponse(answer.body, status_code=answer.status)

    page, policy = analyst_page()

    @app.get("/", include_in_schema=False)
    def analyst() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": policy, "X-Content-Type-Options": "nosniff",
                                           "Referrer-Policy": "no-referrer"})

    @app.get("/v1/health")
    def health() -> JSONResponse:
        """Redis answers and workers are alive (their heartbeats): 200; no analysis worker alive: 503
        ``server_unavailable``, so that a balancer sends work elsewhere and an operator sees why."""
        redis.ping()
        workers = Heartbeats(redis).alive()
        body = {"redis": "ok", "workers": workers.get(QUEUE, 0), "callback_workers": workers.get(CALLBACK_QUEUE, 0),
                "time": time.time()}
        if not body["workers"]:
            return JSONResponse({**body, **error_body("server_unavailable", "no job worker is alive")}, status_code=503)
        return JSONResponse(body)

    return app


def build() -> Gate:
    """The served app (``uvicorn --factory deepfake_serving.jobs.api:build``): the key gate (and access log),
    then the body limit, then the API."""
    settings = JobSettings.from_env()
    metrics = FrontMetrics(redis_client(settings.redis_url), QUEUE)
    if settings.metrics_port:
        metrics.serve(settings.metrics_port)
    limited = BodyLimit(create_app(settings, metrics), settings.max_request_bytes)
    return Gate(limited, async_redis_client(settings.redis_url), settings.access_log, metrics)
