"""Server-Sent Events of jobs, for every stream an API process serves, over one Redis connection.

A job's events are a Redis stream (jobs.store: ``XADD`` by the worker, the end marker written with the
end state), so nothing is lost between a subscriber connecting and an event being published: a stream
reads what is stored from where it starts (the beginning, or after ``Last-Event-ID`` when a client
reconnects), then what comes. Each API process runs one ``EventHub``: a single connection blocks in
``XREAD`` on every job its clients follow and hands each new entry to their queues; what is stored is read
through a small bounded pool. So 650 streams cost the process 1 + ``POOL`` Redis connections, not 1,800.

Streams are bounded per key, per job and per process, and each lasts at most ``max_s``; a client over a
bound gets 429 ``too_many_streams`` before any stream opens.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, AsyncIterator

from deepfake_serving.core.errors import RequestError
from deepfake_serving.jobs.store import async_redis_client

POOL = 4  # connections for reading what is stored (XRANGE) and the job's record at the end
BLOCK_MS = 1000  # how long the hub's XREAD waits; a newly followed job joins the next one
EVENT_ID = re.compile(r"\d{1,20}-\d{1,20}")


@dataclass(frozen=True)
class StreamLimits:
    per_key: int = 8  # open streams per API key in one API process
    per_job: int = 4
    per_process: int = 1000
    max_s: float = 3600.0  # a stream closes after this (the client reconnects with Last-Event-ID)


def start_id(last_event_id: str | None) -> str:
    """Where a stream starts: after ``Last-Event-ID`` (a reconnecting client), else at the beginning."""
    if last_event_id and EVENT_ID.fullmatch(last_event_id.strip()):
        return last_event_id.strip()
    return "0-0"


def after(entry_id: str, last: str) -> bool:
    first, second = (tuple(int(p) for p in i.split("-")) for i in (entry_id, last))
    return first > second


class EventHub:
    def __init__(self, redis_url: str, limits: StreamLimits = StreamLimits()):
        self.limits = limits
        # redis-py's stream commands are typed loosely (a reply is "Any | int | str"): kept as Any here
        self.reader: Any = async_redis_client(redis_url, 1, decode_responses=True)  # the one blocking XREAD
        self.pool: Any = async_redis_client(redis_url, POOL, decode_responses=True)
        self.queues: dict[str, set[asyncio.Queue]] = defaultdict(set)
        self.cursors: dict[str, str] = {}
        self.per_key: Counter = Counter()
        self.task: asyncio.Task | None = None

    def _open(self, stream: str, owner: str, begin: str) -> asyncio.Queue:
        if sum(self.per_key.values()) >= self.limits.per_process or self.per_key[owner] >= self.limits.per_key \
                or len(self.queues.get(stream, ())) >= self.limits.per_job:
            raise RequestError("too_many_streams", f"at most {self.limits.per_key} event streams per key and "
                               f"{self.limits.per_job} per job are open at once: close one first")
        queue: asyncio.Queue = asyncio.Queue()
        self.queues[stream].add(queue)
        self.cursors.setdefault(stream, begin)
        self.per_key[owner] += 1
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._tail())
        return queue

    def _close(self, stream: str, owner: str, queue: asyncio.Queue) -> None:
        self.per_key[owner] -= 1
        if self.per_key[owner] <= 0:
            del self.per_key[owner]
        self.queues[stream].discard(queue)
        if not self.queues[stream]:
            del self.queues[stream]
            self.cursors.pop(stream, None)

    async def _tail(self) -> None:
        """XREAD on every followed stream from the hub's cursor; each entry to each of its followers."""
        while self.queues:
            try:
                read = await self.reader.xread(dict(self.cursors), block=BLOCK_MS, count=500)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - Redis restarting: the followers' timeouts read what is stored
                await asyncio.sleep(1.0)
                continue
            for stream, entries in read or []:
                if stream not in self.cursors:
                    continue
                self.cursors[stream] = entries[-1][0]
                for queue in self.queues.get(stream, ()):
                    for entry in entries:
                        queue.put_nowait(entry)

    def follow(self, stream: str, owner: str, last_event_id: str | None) -> AsyncIterator[tuple[str, dict]]:
        """(entry id, fields) of ``stream`` after ``last_event_id``, in order, each once, until its end marker
        or ``max_s``. Counted against the bounds at once: RequestError too_many_streams over one."""
        last = start_id(last_event_id)
        return self._entries(stream, owner, last, self._open(stream, owner, last))

    async def _entries(self, stream: str, owner: str, last: str, queue: asyncio.Queue):
        deadline = asyncio.get_running_loop().time() + self.limits.max_s
        try:
            pending = await self._stored(stream, last)
            while True:
                for entry_id, fields in pending:
                    if after(entry_id, last):
                        last = entry_id
                        yield entry_id, fields
                        if "end" in fields:
                            return
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    return
                try:
                    pending = [await asyncio.wait_for(queue.get(), timeout=min(remaining, 15.0))]
                except asyncio.TimeoutError:  # the hub may have missed a restart of Redis: read what is stored
                    pending = await self._stored(stream, last)
                    continue
                while not queue.empty():
                    pending.append(queue.get_nowait())
        finally:
            self._close(stream, owner, queue)

    async def _stored(self, stream: str, last: str) -> list:
        return await self.pool.xrange(stream, min=f"({last}" if last != "0-0" else "-", count=10_000)

    async def record(self, key: str) -> dict:
        return await self.pool.hgetall(key)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task
        await self.reader.aclose()
        await self.pool.aclose()


def sse(entry_id: str, fields: dict, end_view: dict | None) -> dict:
    """One Server-Sent Event: ``progress`` with the event's JSON, or the end state with the job's view."""
    if "end" in fields:
        return {"id": entry_id, "event": fields["end"], "data": json.dumps(end_view or {})}
    return {"id": entry_id, "event": "progress", "data": fields["event"]}
