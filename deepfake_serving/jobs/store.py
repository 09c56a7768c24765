"""Where jobs live: uploads in a content-addressed folder on disk (the job API writes, workers read by path)
and each job's record in Redis (a hash per job: state, options, progress, the answer or the error), with
the transitions that must be atomic done by Lua scripts on the server."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import BinaryIO

from redis import Redis
from redis import asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from deepfake_serving.core.errors import RequestError

CHUNK = 1 << 20
RETRIED = [RedisConnectionError, RedisTimeoutError]  # a Redis restart: reconnect and try again, 3 times


def redis_client(url: str, **options) -> Redis:
    return Redis.from_url(url, retry=Retry(ExponentialBackoff(), 3), retry_on_error=RETRIED, **options)


def async_redis_client(url: str, max_connections: int = 32, **options) -> aioredis.Redis:
    """The asyncio client (the API's gate): at most ``max_connections`` to Redis, however many requests come at
    once (a request waits up to 5 s for one, then answers 503): a burst cannot take Redis' clients."""
    pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=5,
                                                    retry=AsyncRetry(ExponentialBackoff(), 3), retry_on_error=RETRIED,
                                                    **options)
    return aioredis.Redis(connection_pool=pool)
QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
ENDED = (DONE, FAILED, CANCELLED)
# Progress events kept per job (a Redis stream, ``deepfake:job:<id>:stream``) for a late or reconnecting
# reader of /events: a clip sends about one a second, so the longest job's fit; the end is always the last.
EVENTS_KEPT = 2000


class UploadStore:
    """``<root>/uploads/<sha256>``: each upload once, whoever sends it again; the folder is the service
    user's alone (0700, files 0600), written through a private temporary file and renamed into place."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.uploads = self.root / "uploads"
        for folder in (self.root, self.uploads):
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(0o700)

    def save(self, source: BinaryIO, limit: int) -> tuple[str, Path, int]:
        """(sha256, path, size) of ``source``, read in chunks; RequestError body_too_large past ``limit``
        bytes (nothing is kept) and empty_body for nothing."""
        digest, size = hashlib.sha256(), 0
        handle, temporary = tempfile.mkstemp(dir=self.uploads, prefix=".upload-")  # 0600
        try:
            with os.fdopen(handle, "wb") as out:
                while chunk := source.read(CHUNK):
                    size += len(chunk)
                    if size > limit:
                        raise RequestError("body_too_large", f"the upload is over the job limit of {limit} bytes")
                    digest.update(chunk)
                    out.write(chunk)
            if size == 0:
                raise RequestError("empty_body", "the uploaded file is empty")
            path = self.uploads / digest.hexdigest()
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return digest.hexdigest(), path, size

    def path(self, digest: str) -> Path:
        if len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
            raise ValueError(f"not a sha256: {digest!r}")
        return self.uploads / digest

    def remove_unused(self, keep: set[str], older_than_s: float) -> list[str]:
        """Uploads no live job names and untouched for ``older_than_s``: removed; their digests."""
        removed, now = [], time.time()
        for path in self.uploads.iterdir():
            if path.name not in keep and now - path.stat().st_mtime > older_than_s:
                path.unlink(missing_ok=True)
                removed.append(path.name)
        return removed


FINISHED = "deepfake:metrics:jobs-finished"  # a Redis hash: state → jobs ended so far (jobs.metrics exports it)
# KEYS[1] the job hash, KEYS[2] its event stream, KEYS[3] FINISHED; ARGV[1] the attempt's token, ARGV[2] the
# answer's JSON field ("result" or "error"), ARGV[3] its JSON, ARGV[4] the final state, ARGV[5] now, ARGV[6]
# the retention in s. Only the attempt that holds the lease writes, and only once: a redelivered task's
# second attempt finds the job ended and writes nothing. The job is counted as it ends (whoever sees it
# ended sees it counted). An ended job's record expires after the retention.
FINISH = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'done' or state == 'failed' or state == 'cancelled' then return 0 end
if redis.call('HGET', KEYS[1], 'lease') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3], 'state', ARGV[4], 'updated', ARGV[5], 'lease', '')
redis.call('XADD', KEYS[2], '*', 'end', ARGV[4])
redis.call('HINCRBY', KEYS[3], ARGV[4], 1)
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('EXPIRE', KEYS[2], ARGV[6])
return 1
"""
# KEYS[1] the job hash; ARGV[1] a new token, ARGV[2] now, ARGV[3] the lease's length in s, ARGV[4] the
# worker (its Celery node name, host included). Claims the job
# for an attempt when it is queued, or running under a lease that lapsed (its worker died); the first
# claim's time is the job's ``started`` (its queue wait ends there).
CLAIM = """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'queued' and state ~= 'running' then return 0 end
local until_ = tonumber(redis.call('HGET', KEYS[1], 'lease_until') or '0')
if state == 'running' and redis.call('HGET', KEYS[1], 'lease') ~= '' and until_ > tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'state', 'running', 'lease', ARGV[1], 'lease_until', tonumber(ARGV[2]) + tonumber(ARGV[3]),
           'updated', ARGV[2], 'worker', ARGV[4])
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSETNX', KEYS[1], 'started', ARGV[2])
return 1
"""
# KEYS[1] the job hash; ARGV[1] the token, ARGV[2] now, ARGV[3] the lease's length: renews a lease it holds.
RENEW = """
if redis.call('HGET', KEYS[1], 'lease') ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[1], 'state') ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'lease_until', tonumber(ARGV[2]) + tonumber(ARGV[3]), 'updated', ARGV[2])
return 1
"""
# KEYS[1] the job hash, KEYS[2] its event stream; ARGV[1] now, ARGV[2] the retention. Queued or running →
# cancelled (its stream ends with it); 1, or 0 when it had ended.
CANCEL = """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'queued' and state ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'cancelled', 'updated', ARGV[1], 'lease', '', 'progress', '{"event": "cancelled"}')
redis.call('XADD', KEYS[2], '*', 'end', 'cancelled')
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 1
"""

# KEYS[1] the job hash, KEYS[2] its event stream; ARGV[1] the event's JSON, ARGV[2] how many are kept. Only a
# queued or running job gets events: after its end marker nothing is added, and an expired job's stream is
# never made again (it would have no expiry).
EVENT = """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'queued' and state ~= 'running' then return 0 end
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], '*', 'event', ARGV[1])
redis.call('HSET', KEYS[1], 'progress', ARGV[1])
return 1
"""

# KEYS[1] a key's jobs in flight (a sorted set); ARGV[1] the job, ARGV[2] now, ARGV[3] the limit.
TAKE_FLIGHT = """
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('EXPIRE', KEYS[1], 172800)
return 1
"""


def new_job_id() -> str:
    return secrets.token_urlsafe(16)  # 128 random bits: a job's id is also what lets its key read it


class JobRecords:
    """Job records in Redis (``deepfake:job:<id>``) and their events (``…:stream``: a capped Redis stream whose
    last entry, ``end``, is the job's end state, written in the same script as the state)."""

    def __init__(self, redis, lease_s: int, retention_s: int):
        self.redis, self.lease_s, self.retention_s = redis, lease_s, retention_s
        self._finish, self._claim = redis.register_script(FINISH), redis.register_script(CLAIM)
        self._renew, self._cancel = redis.register_script(RENEW), redis.register_script(CANCEL)
        self._event = redis.register_script(EVENT)
        self._take_flight = redis.register_script(TAKE_FLIGHT)

    @staticmethod
    def key(job_id: str) -> str:
        return f"deepfake:job:{job_id}"

    @staticmethod
    def stream(job_id: str) -> str:
        return f"deepfake:job:{job_id}:stream"

    def create(self, job_id: str | None = None, **fields) -> str:
        job_id = job_id or new_job_id()
        now = time.time()
        record = {"state": QUEUED, "created": now, "updated": now, "attempts": 0, "lease": "", **fields}
        self.redis.hset(self.key(job_id), mapping={k: v if isinstance(v, (str, int, float)) else json.dumps(v)
                                                    for k, v in record.items()})
        self.redis.sadd("deepfake:jobs", job_id)
        if fields.get("digest"):  # outlives the jobs it names by a retention at most (each job refreshes it)
            self.redis.sadd(self.users(str(fields["digest"])), job_id)
            self.redis.expire(self.users(str(fields["digest"])), 2 * self.retention_s)
        return job_id

    @staticmethod
    def flight(owner: str) -> str:
        return f"deepfake:in-flight:{owner}"

    def take_flight(self, owner: str, job_id: str, limit: int) -> bool:
        """Count ``job_id`` among the key's jobs queued or running, unless ``limit`` are already (ended jobs
        whose landing was missed are forgotten first). Atomic: concurrent submissions see each other."""
        for member in self.redis.zrange(self.flight(owner), 0, -1):
            state = self.redis.hget(self.key(member.decode()), "state")
            if state is not None and state.decode() in (DONE, FAILED, CANCELLED):
                self.redis.zrem(self.flight(owner), member)
        return bool(self._take_flight(keys=[self.flight(owner)], args=[job_id, time.time(), limit]))

    def land(self, owner: str, job_id: str) -> None:
        """The job has ended: it no longer counts against its key's jobs in flight."""
        self.redis.zrem(self.flight(owner), job_id)

    @staticmethod
    def users(digest: str) -> str:
        """The jobs that name an upload (a set): one upload serves every job that sent the same bytes."""
        return f"deepfake:upload-jobs:{digest}"

    def drop_upload(self, job_id: str, store: "UploadStore") -> bool:
        """A job that failed or was cancelled needs its upload no more: removed at once, unless another job
        that has not failed or been cancelled names the same bytes. True when it was removed."""
        digest = (self.redis.hget(self.key(job_id), "digest") or b"").decode()
        if not digest:
            return False
        self.redis.srem(self.users(digest), job_id)
        for other in self.redis.smembers(self.users(digest)):
            state = self.redis.hget(self.key(other.decode()), "state")
            if state is None:
                self.redis.srem(self.users(digest), other)
            elif state.decode() not in (FAILED, CANCELLED):
                return False
        store.path(digest).unlink(missing_ok=True)
        return True

    def get(self, job_id: str) -> dict | None:
        if not job_id.replace("-", "").replace("_", "").isalnum() or len(job_id) > 64:
            return None
        raw = self.redis.hgetall(self.key(job_id))
        return {k.decode(): v.decode() for k, v in raw.items()} if raw else None

    def claim(self, job_id: str, worker: str = "") -> str | None:
        """A token for this attempt, or None: the job ended, or another live attempt holds it."""
        token = secrets.token_hex(8)
        return token if self._claim(keys=[self.key(job_id)], args=[token, time.time(), self.lease_s, worker]) else None

    def renew(self, job_id: str, token: str) -> bool:
        """False when the attempt lost its lease (cancelled, or taken over): it should stop."""
        return bool(self._renew(keys=[self.key(job_id)], args=[token, time.time(), self.lease_s]))

    def finish(self, job_id: str, token: str, field: str, value: dict, state: str) -> bool:
        return bool(self._finish(keys=[self.key(job_id), self.stream(job_id), FINISHED],
                                 args=[token, field, json.dumps(value), state, time.time(), self.retention_s]))

    def release(self, job_id: str, token: str, error: dict) -> None:
        """An attempt that will be retried: back to queued with its last error, unless it lost the job."""
        key = self.key(job_id)
        with self.redis.pipeline() as pipe:
            pipe.watch(key)
            if pipe.hget(key, "lease") == token.encode() and pipe.hget(key, "state") == RUNNING.encode():
                pipe.multi()
                pipe.hset(key, mapping={"state": QUEUED, "lease": "", "last_error": json.dumps(error),
                                        "updated": time.time()})
                pipe.execute()

    def cancel(self, job_id: str) -> bool:
        return bool(self._cancel(keys=[self.key(job_id), self.stream(job_id)], args=[time.time(), self.retention_s]))

    def sweep(self, store: UploadStore) -> list[str]:
        """Forget jobs whose records expired, and remove uploads no remaining job names once they are older
        than the retention; the uploads removed."""
        keep = set()
        for raw in self.redis.smembers("deepfake:jobs"):
            job_id = raw.decode()
            digest = self.redis.hget(self.key(job_id), "digest")
            if digest is None:
                self.redis.srem("deepfake:jobs", job_id)
            else:
                keep.add(digest.decode())
        return store.remove_unused(keep, self.retention_s)

    def event(self, job_id: str, event: dict) -> None:
        self._event(keys=[self.key(job_id), self.stream(job_id)], args=[json.dumps(event), EVENTS_KEPT])

    def events(self, job_id: str) -> list[dict]:
        """The job's progress events so far (not its end marker)."""
        return [json.loads(fields[b"event"]) for _, fields in self.redis.xrange(self.stream(job_id))
                if b"event" in fields]

    def claim_callback(self, job_id: str) -> bool:
        """True once per job: the attempt that may send its callback."""
        return bool(self.redis.hsetnx(self.key(job_id), "callback_claimed", time.time()))


class Heartbeats:
    """Workers alive, by heartbeat: each sets its field of one hash (``deepfake:workers``: name → its queues
    and the time its beat lapses) every ``EVERY_S``; a worker that died is out of the count within ``TTL_S``.
    One hash, not a key per worker: counting them costs one read, whatever else Redis holds (the health
    check answers anyone)."""

    KEY, EVERY_S, TTL_S = "deepfake:workers", 2.0, 6

    def __init__(self, redis):
        self.redis = redis

    def beat_forever(self, name: str, queues: str) -> None:
        while True:
            try:
                self.redis.hset(self.KEY, name, json.dumps({"queues": queues, "until": time.time() + self.TTL_S}))
            except Exception:  # noqa: BLE001 - Redis restarting: the next beat tells again
                pass
            time.sleep(self.EVERY_S)

    def alive(self) -> dict[str, int]:
        """Live workers per queue (a worker whose beat lapsed an hour ago is forgotten)."""
        counts: dict[str, int] = {}
        now = time.time()
        for name, raw in self.redis.hgetall(self.KEY).items():
            beat = json.loads(raw)
            if beat["until"] < now - 3600:
                self.redis.hdel(self.KEY, name)
            elif beat["until"] >= now:
                for queue in beat["queues"].split(","):
                    counts[queue] = counts.get(queue, 0) + 1
        return counts
