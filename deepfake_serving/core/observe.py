"""A per-stage observer for the pipelines: decode, detect, crop and classify each report their time, the
faces and frames they handled and their outcome (``ok`` or an error code) to whoever subscribed
(TorchServe metrics, Triton custom metrics, a Prometheus exporter). Nothing is built when nobody listens."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from deepfake_serving.core.errors import internal_error

STAGES = ("decode", "detect", "crop", "classify")


@dataclass(frozen=True)
class StageEvent:
    pipeline: str  # "image" or "video"
    model: str
    stage: str  # one of STAGES
    ms: float
    faces: int = 0
    frames: int = 0
    outcome: str = "ok"  # or the error code the stage ended with


Subscriber = Callable[[StageEvent], None]


class StageObservers:
    """The subscribers of one pipeline; a subscriber that raises is dropped from that event, never the request."""

    def __init__(self, pipeline: str, model: str):
        self.pipeline, self.model = pipeline, model
        self.subscribers: list[Subscriber] = []

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Add ``subscriber``; returns the call that removes it."""
        self.subscribers.append(subscriber)
        return lambda: self.subscribers.remove(subscriber)

    def __bool__(self) -> bool:
        return bool(self.subscribers)

    def emit(self, stage: str, ms: float, *, faces: int = 0, frames: int = 0, outcome: str = "ok") -> None:
        if not self.subscribers:
            return
        event = StageEvent(self.pipeline, self.model, stage, ms, faces, frames, outcome)
        for subscriber in list(self.subscribers):
            try:
                subscriber(event)
            except Exception:  # noqa: BLE001 - an observer never fails a request
                pass


def ms_since(start: float) -> float:
    """Milliseconds since a ``time.perf_counter()`` reading (every step's timing)."""
    return (time.perf_counter() - start) * 1000.0


def outcome_of(exc: BaseException) -> str:
    """The error code an exception ends a stage with (``internal_error`` for a fault of ours)."""
    return internal_error(exc).code
