"""The job system's settings, in one place: from ``DEEPFAKE_JOBS_*`` environment variables (the API, every
worker and the launcher read the same ones), checked once at start-up."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from deepfake_serving.media.video import VideoLimits

PREFIX = "DEEPFAKE_JOBS_"
MULTIPART_OVERHEAD = 64 * 1024  # a job form's other fields and boundaries, on top of the upload's limit


@dataclass(frozen=True)
class JobSettings:
    redis_url: str = "redis://127.0.0.1:6379/0"
    store: Path = Path("runtime/jobs/store")  # uploads (content-addressed) and nothing else: records live in Redis
    access_log: Path = Path("runtime/jobs/access.jsonl")  # every request to the API (jobs.front.Gate), 0600
    audit_log: Path = Path("runtime/jobs/audit.jsonl")  # per job: who submitted which digest, which version answered
    backend: str = "torchserve"  # how workers analyse: torchserve, triton or in-process (jobs.analysis)
    server_url: str = "http://127.0.0.1:8080"  # TorchServe's inference API (or Triton's HTTP), through the clients
    key_file: str = ""  # TorchServe's key file (default: the clients' own search)
    archive: str = ""  # in-process: the .mar each worker unpacks and runs itself
    # The rollout's state folder (`deepfake-serving rollout --state-dir`): a call that names no version gets
    # the one its split gives its key (jobs.front.routed_version); empty: the server's default version.
    rollout_dir: str = ""
    models: str = "b4-mobile"  # the models a job may name (comma-separated; videos go to MODEL-video)
    max_upload_bytes: int = VideoLimits().max_bytes  # the video model's own limit: a bigger upload never succeeds
    retention_s: int = 24 * 3600  # uploads and records of ended jobs are removed after this
    max_job_s: int = 1800  # one attempt's longest run (a 600 s clip at 300 frames on a slow CPU fits)
    # Celery on Redis redelivers an unacknowledged task after this: it must exceed max_job_s, or a long job
    # would run twice at once (celery#5306); checked by ``check``.
    visibility_timeout_s: int = 3600
    lease_s: int = 60  # an attempt renews its lease while it works; a killed worker's lease lapses after this
    attempts: int = 3  # server errors are retried with backoff; after the last, the job fails (dead letter)
    retry_backoff_s: float = 5.0
    api_docs: bool = False  # serve FastAPI's /docs, /redoc and /openapi.json (off: they map the API for anyone)
    metrics_port: int = 0  # the API's Prometheus metrics on this loopback port (jobs.metrics); 0: none
    jobs_in_flight_per_key: int = 20  # a key's jobs queued or running at once; more are refused (429)
    upload_bytes_per_key_per_day: int = 10 * 1024**3  # a key's uploads stored per UTC day (429 past it)
    callback_attempts: int = 5  # signed with the submitting key's own secret (jobs.front.KeyRing)
    callback_timeout_s: float = 10.0  # one attempt in all: resolving, connecting, sending, the status line
    callback_per_key: int = 2  # a key's callbacks being sent at once (the callback workers are shared)
    callback_workers: int = 8  # threads of the callback worker (jobs.callbacks)
    # Networks callbacks may reach besides public addresses (comma-separated CIDRs): loopback, private and
    # link-local destinations are refused unless listed here.
    callback_allow: str = ""

    @classmethod
    def from_env(cls, environ=os.environ) -> "JobSettings":
        values: dict[str, Any] = {}
        for spec in fields(cls):
            raw = environ.get(f"{PREFIX}{spec.name.upper()}")
            if raw is not None:
                kind = type(getattr(cls, spec.name))
                # str, int, float, Path, or a bool written as environment.str() writes it ("True"/"False")
                values[spec.name] = raw.lower() in ("1", "true", "yes") if kind is bool else kind(raw)
        return cls(**values).check()

    def check(self) -> "JobSettings":
        if self.visibility_timeout_s <= self.max_job_s + self.lease_s:
            raise ValueError(f"the broker's visibility timeout ({self.visibility_timeout_s} s) must exceed the longest "
                             f"job ({self.max_job_s} s) plus a lease ({self.lease_s} s): a longer job would be "
                             "delivered again while it runs")
        if self.attempts < 1 or self.lease_s < 5:
            raise ValueError("attempts must be at least 1 and the lease at least 5 s")
        if self.backend not in ("torchserve", "triton", "in-process"):
            raise ValueError(f"unknown backend {self.backend!r}: torchserve, triton or in-process")
        if self.rollout_dir and self.backend != "torchserve":
            raise ValueError("the rollout's split is applied to TorchServe's versions (rollout_dir needs the "
                             "torchserve backend)")
        if self.jobs_in_flight_per_key < 1 or self.upload_bytes_per_key_per_day < self.max_upload_bytes:
            raise ValueError("a key may have at least one job in flight and store at least one upload a day")
        if self.callback_timeout_s <= 0 or self.callback_per_key < 1 or self.callback_workers < 1:
            raise ValueError("callbacks need a positive timeout, at least one per key and one worker thread")
        from deepfake_serving.jobs.callbacks import allowed_networks

        allowed_networks(self.callback_allow)  # ValueError for a network that does not parse
        if (self.backend == "in-process") != bool(self.archive):
            raise ValueError("the in-process backend, and it alone, takes an archive (DEEPFAKE_JOBS_ARCHIVE)")
        return self

    def environment(self) -> dict[str, str]:
        """These settings as the environment variables every process of the job system reads."""
        return {f"{PREFIX}{spec.name.upper()}": str(getattr(self, spec.name)) for spec in fields(self)}

    @property
    def max_request_bytes(self) -> int:
        """A job request's largest body: the upload's limit plus the form's other fields and boundaries."""
        return self.max_upload_bytes + MULTIPART_OVERHEAD

    @property
    def model_names(self) -> list[str]:
        return [name.strip() for name in self.models.split(",") if name.strip()]
