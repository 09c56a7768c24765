"""The job API's and the front's own metrics (prometheus_client), on a loopback port of their own
(``DEEPFAKE_JOBS_METRICS_PORT``), never on the API's port: what a key holder can reach stays the API.

- ``deepfake_front_requests_total{route, status}`` and ``deepfake_front_request_duration_seconds{route}``:
  every request through the front (the gate's access-log entry), its route as a template (``/v1/jobs/{id}``),
  so neither job ids nor made-up model names grow the series.
- ``deepfake_jobs_submitted_total{media}``: jobs accepted by this API process.
- ``deepfake_jobs_queued`` (gauge), ``deepfake_jobs_finished_total{state}`` (done, failed) and
  ``deepfake_jobs_workers{queue}`` (workers alive by heartbeat): read from Redis at each scrape: the queue's
  length, the counts kept there as each job ends and the heartbeats (jobs.store; shared by every API
  replica: take ``max`` across instances, not ``sum``).

The prediction metrics of jobs and synchronous predictions are the model servers' own (monitoring/).
"""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from deepfake_serving.jobs.store import FINISHED, Heartbeats
from deepfake_serving.monitoring.catalogue import SECONDS_BUCKETS

ROUTES = [(re.compile(r"^/v1/jobs/[^/]+/events$"), "/v1/jobs/{id}/events"), (re.compile(r"^/v1/jobs/[^/]+$"), "/v1/jobs/{id}"),
          (re.compile(r"^/v1/predictions/[^/]+$"), "/v1/predictions/{model}")]
KNOWN = {"/", "/v1/jobs", "/v1/health"}


def route_template(path: str) -> str:
    for pattern, template in ROUTES:
        if pattern.match(path):
            return template
    return path if path in KNOWN else "other"


class JobQueueCollector:
    """The queue's length and the workers' counts of ended jobs, read from Redis when scraped."""

    def __init__(self, redis, queue: str):
        self.redis, self.queue = redis, queue

    def collect(self):
        queued = GaugeMetricFamily("deepfake_jobs_queued", "Jobs waiting in the broker's queue.")
        finished = CounterMetricFamily("deepfake_jobs_finished", "Jobs ended, by state (counted by the workers).",
                                       labels=["state"])
        workers = GaugeMetricFamily("deepfake_jobs_workers", "Workers alive (by heartbeat), by queue.", labels=["queue"])
        try:
            queued.add_metric([], self.redis.llen(self.queue))
            for queue, count in sorted(Heartbeats(self.redis).alive().items()):
                workers.add_metric([queue], count)
            for state, count in sorted(self.redis.hgetall(FINISHED).items()):
                finished.add_metric([state.decode()], int(count))
        except Exception:  # noqa: BLE001 - Redis down: the scrape answers without these (DeepfakeTargetDown is up's)
            return
        yield queued
        yield finished
        yield workers


class FrontMetrics:
    def __init__(self, redis, queue: str):
        self.registry = CollectorRegistry()
        self.requests = Counter("deepfake_front_requests_total", "Requests through the front, by route and status.",
                                ["route", "status"], registry=self.registry)
        self.seconds = Histogram("deepfake_front_request_duration_seconds", "Time of each request through the front.",
                                 ["route"], buckets=SECONDS_BUCKETS, registry=self.registry)
        self.submitted = Counter("deepfake_jobs_submitted_total", "Jobs accepted by this API process.", ["media"],
                                 registry=self.registry)
        self.registry.register(JobQueueCollector(redis, queue))

    def request(self, path: str, status: int | None, seconds: float) -> None:
        route = route_template(path)
        self.requests.labels(route, str(status or 0)).inc()
        self.seconds.labels(route).observe(seconds)

    def serve(self, port: int) -> None:
        start_http_server(port, addr="127.0.0.1", registry=self.registry)
