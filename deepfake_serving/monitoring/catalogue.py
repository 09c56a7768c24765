"""Every prediction metric, in one place: its Prometheus name (units in the name, ``_total`` counters),
kind, unit, labels and help. The TorchServe metrics configuration, the Triton metric families, the
job API's registry, the alert rules and the dashboard are all written from it."""

from __future__ import annotations

from dataclasses import dataclass

COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"
LABELS = ("model", "version")  # every metric's first labels: which model and which of its versions answered


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: str
    unit: str
    help: str
    extra_labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()  # histograms (servers that cannot set buckets use their defaults)

    @property
    def labels(self) -> tuple[str, ...]:
        return LABELS + self.extra_labels


PROBABILITY_BUCKETS = tuple(round(0.1 * i, 1) for i in range(1, 11))
FACE_BUCKETS = (0, 1, 2, 3, 4, 6, 8, 16, 32, 64)
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0)

PREDICTIONS = MetricSpec("deepfake_predictions_total", COUNTER, "count",
                         "Answered requests by label (FAKE, REAL, NO_FACE, UNCERTAIN).", ("label",))
FAKE_PROBABILITY = MetricSpec("deepfake_fake_probability", HISTOGRAM, "probability",
                              "P(fake) of each answer that found a face.", buckets=PROBABILITY_BUCKETS)
FACES = MetricSpec("deepfake_faces_per_request", HISTOGRAM, "count",
                   "Faces classified per answered request (a video: over its sampled frames).", buckets=FACE_BUCKETS)
STAGE_SECONDS = MetricSpec("deepfake_stage_duration_seconds", HISTOGRAM, "seconds",
                           "Time of each pipeline stage (decode, detect, crop, classify) per request.", ("stage",),
                           buckets=SECONDS_BUCKETS)
REQUEST_SECONDS = MetricSpec("deepfake_request_duration_seconds", HISTOGRAM, "seconds",
                             "Time of each answered request in the model (the answer's timings_ms.total).",
                             buckets=SECONDS_BUCKETS)
ERRORS = MetricSpec("deepfake_request_errors_total", COUNTER, "count",
                    "Requests answered with an error, by the project's error code (docs/schema.md).", ("code",))
FRAMES = MetricSpec("deepfake_video_frames_analyzed_total", COUNTER, "count", "Video frames analysed.")
DRIFT = MetricSpec("deepfake_score_drift_psi", GAUGE, "psi",
                   "Population stability index of P(fake) over the last window against the version's reference.")

METRICS = (PREDICTIONS, FAKE_PROBABILITY, FACES, STAGE_SECONDS, REQUEST_SECONDS, ERRORS, FRAMES, DRIFT)
