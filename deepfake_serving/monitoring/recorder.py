"""What a server records per request, from the pipeline's stage observer and from each answer, into a
``Sink`` (the server's own metrics API)."""

from __future__ import annotations

import logging
from typing import Protocol

from deepfake_serving.core.errors import RequestError
from deepfake_serving.core.observe import StageEvent
from deepfake_serving.monitoring.catalogue import (
    DRIFT,
    ERRORS,
    FACES,
    FAKE_PROBABILITY,
    FRAMES,
    PREDICTIONS,
    REQUEST_SECONDS,
    STAGE_SECONDS,
    MetricSpec,
)
from deepfake_serving.monitoring.drift import WINDOW, DriftWindow

logger = logging.getLogger(__name__)


class Sink(Protocol):
    def observe(self, spec: MetricSpec, value: float, labels: tuple[str, ...]) -> None:
        """Add ``value`` to a counter, set a gauge, or observe it in a histogram."""


def faces_classified(answer: dict) -> int:
    """The work an answer represents: its faces (an image), or the faces classified over a video's frames."""
    metrics = answer.get("metrics") or {}
    return int(metrics.get("faces_classified", answer.get("face_count") or 0) or 0)


class PredictionRecorder:
    """One served model's metrics: ``stage`` subscribes to its pipeline's observers, ``answer`` takes each
    request's answer or error. The drift index is kept per version that answered."""

    def __init__(self, sink: Sink, model: str, version: str, window: int = WINDOW):
        self.sink, self.model, self.version, self.window = sink, model, version, window
        self.drift: dict[str, DriftWindow] = {}

    def stage(self, event: StageEvent, version: str | None = None) -> None:
        """A stage's time (``version``: the one that answered, when this model serves several)."""
        if event.outcome == "ok":
            self.sink.observe(STAGE_SECONDS, event.ms / 1000.0, (self.model, version or self.version, event.stage))

    def answer(self, answer: dict | RequestError) -> None:
        """Record one request's answer or error; a sink that fails is logged, never raised: a metric never
        fails a request (as StageObservers drops a failing subscriber's event)."""
        try:
            self._answer(answer)
        except Exception:  # noqa: BLE001
            logger.exception("recording the metrics of a request failed")

    def _answer(self, answer: dict | RequestError) -> None:
        if isinstance(answer, RequestError):
            self.sink.observe(ERRORS, 1, (self.model, self.version, answer.code))
            return
        labels = (self.model, str(answer.get("version") or self.version))
        self.sink.observe(PREDICTIONS, 1, (*labels, str(answer.get("label"))))
        self.sink.observe(FACES, faces_classified(answer), labels)
        total_ms = (answer.get("timings_ms") or {}).get("total")
        if total_ms is not None:
            self.sink.observe(REQUEST_SECONDS, float(total_ms) / 1000.0, labels)
        if answer.get("frames_analyzed"):
            self.sink.observe(FRAMES, int(answer["frames_analyzed"]), labels)
        probability = answer.get("fake_probability")
        if probability is not None:
            self.sink.observe(FAKE_PROBABILITY, float(probability), labels)
            index = self.drift.setdefault(labels[1], DriftWindow(self.window)).observe(float(probability))
            if index is not None:
                self.sink.observe(DRIFT, index, labels)
