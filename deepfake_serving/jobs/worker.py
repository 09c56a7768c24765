"""The Celery app and its two tasks: ``deepfake_serving.jobs.analyze`` runs a job's analysis (through the
project's clients against TorchServe or Triton, or in process: jobs.analysis) and records it once;
``deepfake_serving.jobs.deliver_callback``, on its own queue and workers, sends the job's callback
(jobs.callbacks), so that no receiver, however slow, holds a worker that analyses.

Delivery is at least once (Celery on Redis, late acknowledgement: a task whose worker dies is delivered
again after the broker's visibility timeout). Exactly-once effects come from the job record, not the
broker: an attempt claims the job with a lease it renews while it works (``JobRecords.claim``); a second
delivery while a live attempt holds it does nothing; the answer is written only by the attempt that holds
the lease and only once (a Lua script), and the callback is claimed once per job. Server errors are
retried with backoff (a new message each time) up to ``attempts``; then the job fails with the attempts
and the last error: the dead-letter state. Only JSON crosses the broker: no pickle.

Start a worker: ``celery -A deepfake_serving.jobs.worker worker --concurrency 1 -Q deepfake-jobs``, and one
for callbacks: ``celery -A deepfake_serving.jobs.worker worker --pool threads --concurrency 8 -Q
deepfake-callbacks`` (the job launcher starts both), with the ``DEEPFAKE_JOBS_*`` environment (jobs.settings).
"""

from __future__ import annotations

import json
import threading
import time
from typing import Callable

from celery import Celery
from celery.signals import worker_ready
from redis import Redis

from deepfake_serving.core.errors import error_body
from deepfake_serving.core.jsonlines import append_line
from deepfake_serving.core.naming import video_model
from deepfake_serving.jobs.analysis import Stop, make_analyser
from deepfake_serving.jobs.callbacks import CallbackSender
from deepfake_serving.jobs.front import Reservation, cost, routed_version, settle
from deepfake_serving.jobs.settings import JobSettings
from deepfake_serving.jobs.store import DONE, FAILED, Heartbeats, JobRecords, UploadStore, redis_client
from deepfake_serving.serving.client.clients import Prediction, retryable

QUEUE = "deepfake-jobs"
TASK = "deepfake_serving.jobs.analyze"
CALLBACK_QUEUE = "deepfake-callbacks"  # served by the callback workers only: no analysis waits on a receiver
CALLBACK_TASK = "deepfake_serving.jobs.deliver_callback"
SWEEP_EVERY_S = 60.0  # expired jobs' uploads are looked for after a job, at most this often


def make_app(settings: JobSettings) -> Celery:
    app = Celery("deepfake_serving.jobs", broker=settings.redis_url)
    app.conf.update(
        task_serializer="json", accept_content=["json"],  # never pickle: a broker message is not code
        task_ignore_result=True, task_default_queue=QUEUE,
        task_routes={CALLBACK_TASK: {"queue": CALLBACK_QUEUE}},
        task_acks_late=True, task_reject_on_worker_lost=True,  # a killed worker's task is delivered again
        worker_prefetch_multiplier=1,  # a SIGKILLed worker loses at most the task it runs (celery#7924)
        # An unacknowledged task (its worker died) is delivered again once the visibility timeout has passed,
        # found by a scan kombu runs every interval × throttle seconds (10 × 10 by default): scan every 10 s.
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_s,
                                  "unacked_restore_interval": 10, "unacked_restore_throttle": 1},
        broker_connection_retry_on_startup=True,
        task_time_limit=settings.max_job_s + settings.lease_s,  # the hard stop: the lease has lapsed by then
        worker_hijack_root_logger=False,
    )
    return app


class Cancelled(Stop):
    """The attempt lost its lease: the job was cancelled, or another attempt took it over."""


class TooLong(Stop):
    """The analysis ran past ``max_job_s``."""


class JobRunner:
    """One attempt at one job (what the task runs; no Celery in here)."""

    def __init__(self, settings: JobSettings, redis: Redis | None = None, worker: str = "",
                 notify: Callable[[str], None] | None = None):
        """``notify(job_id)``: queue a job's callback (the task sends it to the callback queue)."""
        self.settings, self.worker, self.notify = settings, worker, notify
        self.records = JobRecords(redis or redis_client(settings.redis_url), settings.lease_s,
                                  settings.retention_s)
        self.store = UploadStore(settings.store)
        self.swept = float("-inf")
        self.analyser = make_analyser(settings)

    def run(self, job_id: str, attempt: int) -> float | None:
        """Analyse the job; None when it is recorded (or not this attempt's), else the seconds after which
        the task should retry (a server error with attempts left; the job is queued again meanwhile)."""
        try:
            return self._run(job_id, attempt)
        finally:
            if time.monotonic() - self.swept > SWEEP_EVERY_S:
                self.swept = time.monotonic()
                self.records.sweep(self.store)

    def _run(self, job_id: str, attempt: int) -> float | None:
        token = self.records.claim(job_id, self.worker)
        if token is None:
            return None  # ended, cancelled, or a live attempt holds it: a redelivery does nothing
        job = self.records.get(job_id) or {}
        lost = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(job_id, token, lost), daemon=True)
        beat.start()
        try:
            prediction, arm = self._analyse(job_id, job, lost)
        except Cancelled:
            return None
        except TooLong:
            prediction, arm = Prediction(504, error_body("job_too_long", f"the analysis ran past the job limit of "
                                                         f"{self.settings.max_job_s} s; it is not retried")), None
        finally:
            lost.set()
        if prediction.ok:
            if self.records.finish(job_id, token, "result", prediction.body, DONE):
                self._settle(job_id, job, cost(True, prediction.body))
                self._ended(job_id, job, {"id": job_id, "state": DONE, "result": prediction.body},
                            version=prediction.body.get("version"), arm=arm)
            return None
        error = {**prediction.body.get("error", {}), "attempts": attempt + 1}
        if retryable(prediction) and attempt + 1 < self.settings.attempts:
            self.records.release(job_id, token, error)
            return self.settings.retry_backoff_s * 2 ** attempt
        if self.records.finish(job_id, token, "error", error, FAILED):
            self.records.drop_upload(job_id, self.store)
            self._settle(job_id, job, cost(False, {"error": error}))
            self._ended(job_id, job, {"id": job_id, "state": FAILED, "error": error}, error=error.get("code"), arm=arm)
        return None

    def _settle(self, job_id: str, job: dict, faces: int) -> None:
        """The job has ended: its reserved estimate becomes what it cost (jobs.front.settle), and it no longer
        counts against its key's jobs in flight."""
        self.records.land(job.get("owner", ""), job_id)
        if job.get("reserved_day"):
            settle(self.records.redis, Reservation(job["reserved_day"], int(job.get("reserved", 0))), faces)

    def _ended(self, job_id: str, job: dict, body: dict, **audit) -> None:
        """The job's audit line (which version answered, on which A/B arm, or the error), then its callback."""
        append_line(self.settings.audit_log, {"time": time.time(), "event": body["state"], "job": job_id,
                                              "key": job.get("owner_name"), "key_id": job.get("owner"), "digest": job.get("digest"),
                                              "model": job.get("model"), "attempts": int(job.get("attempts", 0)),
                                              "worker": self.worker, **audit})
        self._callback(job_id, job)

    def _heartbeat(self, job_id: str, token: str, lost: threading.Event) -> None:
        while not lost.wait(self.settings.lease_s / 3):
            if not self.records.renew(job_id, token):
                lost.set()

    def _analyse(self, job_id: str, job: dict, lost: threading.Event) -> tuple[Prediction, str | None]:
        """(the answer, the A/B arm that chose its version). A version the job names is asked for; else the
        rollout's split gives the job's key its version, as the front does."""
        path = self.store.path(job.get("digest", ""))
        if not path.is_file():
            return Prediction(500, error_body("internal_error", "the job's upload is gone from the job store")), None
        served = video_model(job["model"]) if job.get("media") == "video" else job["model"]
        version, arm = routed_version(self.settings.rollout_dir, served, job.get("version") or None,
                                      job.get("owner_name") or job.get("owner", ""))  # sticky per key name, as the front
        deadline = time.monotonic() + self.settings.max_job_s

        def on_event(event: dict) -> None:
            if lost.is_set():
                raise Cancelled  # leaving a stream closes our connection; TorchServe finishes the clip alone
            if time.monotonic() > deadline:  # before Celery's hard time limit kills the attempt unrecorded
                raise TooLong
            self.records.event(job_id, event)

        options = json.loads(job.get("options") or "{}")
        explain = options.pop("explain", "") == "true"
        prediction = self.analyser.analyse(job["model"], path, job.get("media") == "video", version, options, explain,
                                           on_event)
        if lost.is_set():
            raise Cancelled
        return prediction, arm

    def _callback(self, job_id: str, job: dict) -> None:
        """Queue the job's callback for the callback workers (jobs.callbacks), claimed once per job."""
        if job.get("callback_url") and self.records.claim_callback(job_id) and self.notify is not None:
            self.records.redis.hset(self.records.key(job_id), "callback", "pending")
            self.notify(job_id)


SETTINGS = JobSettings.from_env()
app = make_app(SETTINGS)
_runner: JobRunner | None = None
_sender: CallbackSender | None = None


@worker_ready.connect
def _start_heartbeat(sender=None, **_) -> None:
    """The worker's heartbeat in Redis (jobs.store.Heartbeats), from its main process while it lives: what
    the API's health and the launcher read to know a worker is alive, whatever its task is doing."""
    queues = sorted(q.name for q in sender.app.amqp.queues.consume_from.values()) if sender is not None else []
    beats = Heartbeats(redis_client(SETTINGS.redis_url))
    name = sender.hostname if sender is not None else "worker"
    threading.Thread(target=beats.beat_forever, args=(name, ",".join(queues)), daemon=True).start()


def queue_callback(job_id: str) -> None:
    app.send_task(CALLBACK_TASK, args=[job_id], queue=CALLBACK_QUEUE)


@app.task(name=TASK, bind=True, max_retries=None)
def analyze(self, job_id: str) -> None:
    global _runner
    _runner = _runner or JobRunner(SETTINGS, worker=self.request.hostname or "", notify=queue_callback)
    delay = _runner.run(job_id, self.request.retries)
    if delay is not None:
        raise self.retry(countdown=delay)


@app.task(name=CALLBACK_TASK, bind=True, max_retries=None, time_limit=SETTINGS.callback_timeout_s + 30)
def deliver(self, job_id: str) -> None:
    """One attempt at a job's callback, on the callback queue; a retry is a new message, not a sleep."""
    global _sender
    _sender = _sender or CallbackSender(SETTINGS, JobRecords(redis_client(SETTINGS.redis_url), SETTINGS.lease_s,
                                                             SETTINGS.retention_s))
    delay = _sender.deliver(job_id)
    if delay is not None:
        raise self.retry(countdown=delay, queue=CALLBACK_QUEUE)
