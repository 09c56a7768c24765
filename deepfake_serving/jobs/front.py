"""The front door of the job API: API keys, per-key rate limits and daily quotas shared by every front
process through Redis, and the structured access log.

- **Keys** (``deepfake-serving api-key add NAME``) are random (``dfk_`` + 32 bytes, URL-safe), shown once and
  stored as their SHA-256 (``deepfake:apikey:<hash>``: name, requests per minute, faces per day). A random
  key of that length needs no slow hash; nothing stored lets anyone present it.
- **Callback secrets**: each key gets its own (``dcs_`` + 32 bytes), shown once beside the key; its jobs'
  callbacks are signed with it (HMAC-SHA256), so one client cannot forge another's. The worker must sign,
  so it is kept as it is, in the job system's password-protected Redis.
- **Rate**: requests per minute per key, a sliding window in Redis (a sorted set of request times), so two
  front replicas never double a client's allowance, nor does a minute's edge.
- **Quota**: work per UTC day, counted in **faces classified**. Work is admitted while the day has some
  left and its estimate reserved at once (an image 1, a clip its sampled frames), then settled to what it
  cost when it ends (the faces classified, at least 1 for an answer or a failure a server reached; nothing
  for a job cancelled before it ran); a key over its quota is refused new work (POST) until midnight UTC,
  and can still read its jobs.
- The gate runs on the request's headers, **before any body is read**: a missing or unknown key is 401
  ``unauthorized``, a key over its rate or quota 429 ``rate_limited`` with ``Retry-After``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from deepfake_serving.core.errors import error_body
from deepfake_serving.core.jsonlines import append_line
from deepfake_serving.core.naming import check_name
from deepfake_serving.jobs.metrics import route_template
from deepfake_serving.monitoring.recorder import faces_classified
from deepfake_serving.rollout.routing import Split, split_file

KEYS = "deepfake:apikey:"
NAMES = "deepfake:apikey-names"
CALLBACK_SECRETS = "deepfake:callback-secrets"  # key id -> the secret its jobs' callbacks are signed with
KEY_IDS = "deepfake:apikey-ids"  # key name -> the id of the key that holds the name now
OPEN_PATHS = ("/", "/v1/health")  # what answers without a key: the analyst page (it asks for one) and liveness


@dataclass(frozen=True)
class ApiKey:
    id: str  # what jobs, rates and quotas belong to: a key added again under a revoked key's name inherits nothing
    name: str
    rate_per_minute: int
    faces_per_day: int


def key_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyRing:
    """API keys in Redis (sync client: the CLI and the API's handlers)."""

    def __init__(self, redis):
        self.redis = redis

    def add(self, name: str, rate_per_minute: int = 60, faces_per_day: int = 10_000) -> tuple[str, str]:
        """(the key, its callback secret): both shown once by the CLI."""
        check_name(name, "key name")
        if rate_per_minute < 1 or faces_per_day < 1:
            raise ValueError("a key's rate and quota are at least 1")
        if not self.redis.sadd(NAMES, name):
            raise ValueError(f"a key named {name!r} exists: revoke it first")
        secret, key_id = f"dfk_{secrets.token_urlsafe(32)}", f"key_{secrets.token_hex(8)}"
        self.redis.hset(KEYS + key_hash(secret), mapping={"id": key_id, "name": name, "rate_per_minute": rate_per_minute,
                                                          "faces_per_day": faces_per_day, "created": time.time()})
        callback_secret = f"dcs_{secrets.token_urlsafe(32)}"
        self.redis.hset(CALLBACK_SECRETS, key_id, callback_secret)
        self.redis.hset(KEY_IDS, name, key_id)
        return secret, callback_secret

    def revoke(self, name: str) -> bool:
        for key in self.redis.scan_iter(f"{KEYS}*"):
            if self.redis.hget(key, "name") == name.encode():
                self.redis.delete(key)
        self.redis.hdel(CALLBACK_SECRETS, self.id_of(name) or name)
        self.redis.hdel(KEY_IDS, name)
        return bool(self.redis.srem(NAMES, name))

    def id_of(self, name: str) -> str | None:
        """The id of the key that holds ``name`` now."""
        key_id = self.redis.hget(KEY_IDS, name)
        return key_id.decode() if key_id else None

    def callback_secret(self, key_id: str) -> str | None:
        secret = self.redis.hget(CALLBACK_SECRETS, key_id)
        return secret.decode() if secret else None

    def names(self) -> list[str]:
        return sorted(n.decode() for n in self.redis.smembers(NAMES))


def parse_key(record: dict) -> ApiKey:
    # a key added before keys had ids is known by its name, as it was then
    return ApiKey(record.get("id") or record["name"], record["name"], int(record["rate_per_minute"]),
                  int(record["faces_per_day"]))


def presented_key(headers: dict[bytes, bytes]) -> str | None:
    """``Authorization: Bearer <key>`` or ``X-API-Key: <key>``."""
    auth = headers.get(b"authorization", b"").decode("latin-1")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    key = headers.get(b"x-api-key")
    return key.decode("latin-1").strip() if key else None


def day_key(key_id: str, now: float) -> str:
    return f"deepfake:quota:{key_id}:{_dt.datetime.fromtimestamp(now, _dt.timezone.utc):%Y%m%d}"


def seconds_to_midnight(now: float) -> int:
    day = _dt.datetime.fromtimestamp(now, _dt.timezone.utc).date() + _dt.timedelta(days=1)
    midnight = _dt.datetime.combine(day, _dt.time(), _dt.timezone.utc).timestamp()
    return max(1, int(midnight - now) + 1)


# KEYS[1] the key's window (a sorted set of request times); ARGV[1] now (s), ARGV[2] the rate per minute,
# ARGV[3] a unique member (the request id). A sliding window: at most the rate in any 60 s, never twice
# the rate around a minute's edge. 0 when admitted, else the seconds until the oldest request leaves.
SLIDING_WINDOW = """
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return math.max(1, math.ceil(tonumber(oldest[2]) + 60 - now))
end
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('EXPIRE', KEYS[1], 61)
return 0
"""
# KEYS[1] the key's day counter; ARGV[1] the estimate, ARGV[2] the quota. Admits work while the day has
# some left, reserving its estimate at once (so concurrent requests see each other): a key goes over its
# quota by at most one request's estimate. 1 when reserved.
RESERVE = """
if tonumber(redis.call('GET', KEYS[1]) or '0') >= tonumber(ARGV[2]) then return 0 end
redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], 172800)
return 1
"""


# KEYS[1] the key's stored bytes today; ARGV[1] an upload's size, ARGV[2] the bound. 1 when counted.
STORE_BYTES = """
if tonumber(redis.call('GET', KEYS[1]) or '0') + tonumber(ARGV[1]) > tonumber(ARGV[2]) then return 0 end
redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], 172800)
return 1
"""


def store_bytes(redis, key_id: str, size: int, per_day: int) -> bool:
    """Count an upload's bytes against the key's bound for today (sync client); False when it would pass it."""
    day = f"deepfake:stored-bytes:{key_id}:{_dt.datetime.now(_dt.timezone.utc):%Y%m%d}"
    return bool(redis.eval(STORE_BYTES, 1, day, size, per_day))


async def admit(redis, key: ApiKey, now: float, spends_work: bool, request_id: str) -> int | None:
    """None when the key may go on; else the seconds to wait (the async client: inside the gate). The quota
    refuses requests that spend work (POST) only: a key over it can still read its jobs. (Work is reserved
    by ``reserve`` once its size is known.)"""
    if spends_work and int(await redis.get(day_key(key.id, now)) or 0) >= key.faces_per_day:
        return seconds_to_midnight(now)
    wait = int(await redis.eval(SLIDING_WINDOW, 1, f"deepfake:rate:{key.id}", now, key.rate_per_minute, request_id))
    return wait or None


@dataclass(frozen=True)
class Reservation:
    """Faces reserved against a key's quota for one piece of work, on the day it was admitted."""
    day: str
    faces: int


def reserve(redis, key_id: str, faces_per_day: int, estimate: int) -> Reservation | None:
    """Reserve ``estimate`` faces (sync client), or None when the key's day is spent. Estimates: an image 1,
    a clip its sampled frames (``frames``; 300, the most analysed, for ``every`` and ``all``)."""
    day = day_key(key_id, time.time())
    return Reservation(day, estimate) if redis.eval(RESERVE, 1, day, estimate, faces_per_day) else None


def cost(ok: bool, body: dict) -> int:
    """What an answer cost: its faces classified (at least 1); a failure a server reached, 1; a server that
    could not be reached, nothing."""
    if ok:
        return max(1, faces_classified(body))
    return 0 if (body.get("error") or {}).get("code") == "server_unavailable" else 1


def settle(redis, reservation: Reservation, faces: int) -> None:
    """Charge what the work cost instead of its estimate: the faces classified (at least 1 for work a server
    answered, failures included; 0 for work that never ran), on the day it was reserved."""
    redis.incrby(reservation.day, int(faces) - reservation.faces)


def routed_version(rollout_dir: str, model: str, version: str | None, route_key: str) -> tuple[str | None, str | None]:
    """(the version to ask for, the A/B arm) of a call to ``model`` (as served: ``b4-mobile`` or ``b4-mobile-video``).
    A version asked for is kept (arm ``pinned``); else the rollout's split file for ``model`` in ``rollout_dir``
    (re-read each call: the rollout moves live traffic) gives ``route_key`` its version, sticky per key, as
    the rollout's other routers do (rollout.routing); no split: the server's default version, no arm."""
    if version:
        return version, "pinned"
    path = split_file(rollout_dir, model) if rollout_dir else None
    if path is None or not path.is_file():
        return None, None
    split = Split.load(path)
    chosen = split.version_for(route_key)
    return chosen, "candidate" if chosen == split.candidate and chosen != split.serving else "serving"


ACCESS_LOG_BYTES = 100 * 1024 * 1024  # the access log rotates past this (3 old files kept: 400 MB at most)


def clipped(value, length: int = 64):
    """A field a client chose (a model's name in the path, a job id), as the log keeps it: 64 characters."""
    return value[:length] if isinstance(value, str) else value


class RefusalSampler:
    """Requests refused without a valid key are counted, not each written: at most one line a second says
    how many were refused since the last (``refused_since``), so a keyless flood cannot grow the log."""

    def __init__(self, every_s: float = 1.0):
        self.every_s, self.last, self.suppressed = every_s, float("-inf"), 0

    def write(self, entry: dict, now: float) -> bool:
        if entry.get("status") != 401:
            return True
        if now - self.last < self.every_s:
            self.suppressed += 1
            return False
        entry["refused_since"], self.last, self.suppressed = self.suppressed, now, 0
        return True


class Gate:
    """ASGI middleware: the key, its rate and its quota checked on the headers alone; every request written
    to the access log (JSON lines, 0600, rotated at ``ACCESS_LOG_BYTES``): time, request id, key name and id,
    method, route (its template: no client's path), model, version served, the A/B arm, status, error code,
    latency, bytes in and out; never the media nor a key. Keyless refusals are counted, one line a second."""

    def __init__(self, app, redis, access_log: Path, metrics=None):
        self.app, self.redis, self.access_log, self.metrics = app, redis, access_log, metrics
        self.refusals = RefusalSampler()

    async def _refusal(self, headers: dict, state: dict, entry: dict, now: float, spends_work: bool):
        """None when the presented key may go on; else the answer: 401, 429 (rate or quota) or 503 (Redis is
        not answering: the key cannot be checked)."""
        secret = presented_key(headers)
        try:
            record = await self.redis.hgetall(KEYS + key_hash(secret)) if secret else None
            if not record:
                state["error"] = "unauthorized"
                return JSONResponse(error_body("unauthorized", "send an API key as `Authorization: Bearer <key>` "
                                               "(deepfake-serving api-key add NAME)"), status_code=401)
            key = parse_key({k.decode(): v.decode() for k, v in record.items()})
            state["api_key"], state["api_key_name"] = entry["key_id"], entry["key"] = key.id, key.name
            state["api_key_quota"] = key.faces_per_day
            wait = await admit(self.redis, key, now, spends_work, state["request_id"])
        except RedisError:
            state["error"] = "server_unavailable"
            return JSONResponse(error_body("server_unavailable", "the job system's store is not answering: try again "
                                           "shortly"), status_code=503, headers={"Retry-After": "5"})
        if wait is None:
            return None
        state["error"] = "rate_limited"
        return JSONResponse(error_body("rate_limited", f"key {key.name} is over its rate ({key.rate_per_minute}/min) "
                                       f"or its quota ({key.faces_per_day} faces/day)"), status_code=429,
                            headers={"Retry-After": str(wait)})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, now = time.perf_counter(), time.time()
        headers = dict(scope.get("headers") or [])
        state = scope.setdefault("state", {})
        state["request_id"] = uuid.uuid4().hex
        length = headers.get(b"content-length", b"0")
        entry = {"time": _dt.datetime.fromtimestamp(now, _dt.timezone.utc).isoformat(timespec="milliseconds"),
                 "request_id": state["request_id"], "method": scope["method"][:16],
                 "route": route_template(scope["path"]), "key": None, "status": None, "error": None,
                 "bytes_in": int(length) if length.isdigit() else None, "bytes_out": 0}
        refusal = None if scope["path"] in OPEN_PATHS else await self._refusal(headers, state, entry, now,
                                                                               scope["method"] == "POST")

        def log_once():
            """Log and count the request once: before its last byte is sent, so a client that has its answer
            finds it in the log and the metrics; or when it ends without one."""
            if "latency_ms" in entry:
                return
            seconds = time.perf_counter() - start
            entry.update(latency_ms=round(seconds * 1000, 2),  # what a client named, cut to a name's length
                         **{k: clipped(state.get(k)) for k in ("model", "version", "arm", "error", "job")})
            if self.refusals.write(entry, time.monotonic()):
                append_line(self.access_log, entry, fsync=False, max_bytes=ACCESS_LOG_BYTES)
            if self.metrics is not None:
                self.metrics.request(scope["path"], entry["status"], seconds)

        async def logged(message):
            if message["type"] == "http.response.start":
                entry["status"] = message["status"]
            elif message["type"] == "http.response.body":
                entry["bytes_out"] += len(message.get("body", b""))
                if not message.get("more_body"):
                    log_once()
            await send(message)

        try:
            await (self.app if refusal is None else refusal)(scope, receive, logged)
        finally:
            log_once()
