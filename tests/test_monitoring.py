"""Prediction metrics and drift without a server: the catalogue's names, the PSI against hand-computed
values, the sliding window, the recorder's observations, TorchServe's metrics configuration."""

import math
import random

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from deepfake_serving.core.errors import RequestError
from deepfake_serving.core.observe import StageEvent
from deepfake_serving.monitoring.catalogue import COUNTER, HISTOGRAM, METRICS
from deepfake_serving.monitoring.drift import BINS, EPSILON, DriftWindow, decile_edges, histogram, psi
from deepfake_serving.monitoring.prometheus import PrometheusSink
from deepfake_serving.monitoring.recorder import PredictionRecorder


def test_names_follow_prometheus_conventions():
    for spec in METRICS:
        assert spec.name.startswith("deepfake_") and spec.name == spec.name.lower()
        assert spec.name.endswith("_total") == (spec.kind == COUNTER)
        if spec.unit == "seconds":
            assert spec.name.endswith("_seconds") or "_seconds_" in spec.name
        if spec.kind == HISTOGRAM:
            assert list(spec.buckets) == sorted(spec.buckets)
        assert spec.labels[:2] == ("model", "version")


def test_psi_against_hand_computed_values():
    assert psi([10] * BINS, [10] * BINS) == 0.0
    reference, current = [50, 50] + [0] * 8, [25, 75] + [0] * 8
    expected = (0.25 - 0.5) * math.log(0.25 / 0.5) + (0.75 - 0.5) * math.log(0.75 / 0.5)  # empty bins: 0
    assert psi(reference, current) == pytest.approx(expected, rel=1e-9)
    one_bin = [100] + [0] * 9
    moved = [0] * 9 + [100]
    assert psi(one_bin, moved) == pytest.approx(2 * (1 - EPSILON) * math.log(1 / EPSILON), rel=1e-9)  # floored shares
    assert decile_edges([i / 100 for i in range(100)]) == [i / 10 for i in range(1, 10)]
    assert decile_edges([0.5] * 50 + [0.7] * 50) == [0.5, 0.7]  # ties merge bins
    assert histogram([0.0, 0.5, 0.55, 0.7, 1.0], [0.5, 0.7]) == [1, 2, 2]


def test_the_window_learns_a_reference_then_slides():
    rng = random.Random(0)
    window = DriftWindow()  # 500
    assert all(window.observe(rng.betavariate(2, 5)) is None for _ in range(500))  # the reference
    assert all(window.observe(rng.betavariate(2, 5)) is None for _ in range(499))  # the window filling
    stable = [window.observe(rng.betavariate(2, 5)) for _ in range(3000)]
    assert max(stable) < 0.25  # sampling alone stays under the alert's threshold
    shifted = [window.observe(rng.betavariate(5, 2)) for _ in range(500)]
    assert shifted[-1] > 1.0 and shifted[-1] > shifted[0]
    given = DriftWindow(window=10, reference=[i / 10 for i in range(10)])
    assert [given.observe(i / 10) for i in range(10)][-1] == pytest.approx(0.0)
    narrow = DriftWindow(window=200, reference=[0.5 + rng.gauss(0, 0.01) for _ in range(200)])
    moved = [narrow.observe(0.52 + rng.gauss(0, 0.01)) for _ in range(200)]  # a shift within a narrow band
    assert moved[-1] > 0.25


def test_the_recorder_observes_stages_answers_and_errors():
    sink = PrometheusSink()
    recorder = PredictionRecorder(sink, "b4-mobile", "1.0", window=2)
    recorder.stage(StageEvent("image", "b4-mobile", "detect", 25.0, faces=1))
    recorder.stage(StageEvent("image", "b4-mobile", "decode", 3.0, outcome="corrupt_image"))  # not timed
    for p in (0.2, 0.3, 0.9, 0.95):
        recorder.answer({"version": "1.0", "label": "FAKE" if p > 0.5 else "REAL", "fake_probability": p, "face_count": 1,
                         "timings_ms": {"total": 40.0}})
    recorder.answer({"version": "1.0", "label": "NO_FACE", "fake_probability": None, "face_count": 0})
    recorder.answer({"version": "1.0", "label": "REAL", "fake_probability": 0.1, "frames_analyzed": 32,
                     "metrics": {"faces_classified": 40}})
    recorder.answer(RequestError("corrupt_image", "bad"))
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(generate_latest(sink.registry).decode())
               for s in family.samples}

    def value(name, **labels):
        return samples[(name, tuple(sorted({"model": "b4-mobile", "version": "1.0", **labels}.items())))]

    assert value("deepfake_predictions_total", label="REAL") == 3 and value("deepfake_predictions_total", label="NO_FACE") == 1
    assert value("deepfake_fake_probability_count") == 5 and value("deepfake_fake_probability_bucket", le="0.5") == 3
    assert value("deepfake_faces_per_request_sum") == 4 + 40
    assert value("deepfake_stage_duration_seconds_count", stage="detect") == 1
    assert value("deepfake_request_duration_seconds_sum") == pytest.approx(0.16)
    assert ("deepfake_stage_duration_seconds_count", (("model", "b4-mobile"), ("stage", "decode"), ("version", "1.0"))) not in samples
    assert value("deepfake_request_errors_total", code="corrupt_image") == 1
    assert value("deepfake_video_frames_analyzed_total") == 32
    # reference (0.2, 0.3); windows (0.9, 0.95) then (0.95, 0.1): the last index is of the last window
    edges = decile_edges([0.2, 0.3])
    assert value("deepfake_score_drift_psi") == pytest.approx(psi(histogram([0.2, 0.3], edges), histogram([0.95, 0.1], edges)))


def test_torchserve_metrics_configuration_declares_every_metric():
    pytest.importorskip("ts")
    from deepfake_serving.serving.launch.torchserve_metrics import metrics_config

    config = metrics_config()
    assert "ts_inference_requests_total" in str(config["ts_metrics"])  # TorchServe's own are kept
    declared = {m["name"]: (kind, m["dimensions"]) for kind, items in config["model_metrics"].items() for m in items}
    for spec in METRICS:
        assert declared[spec.name] == (spec.kind, list(spec.labels))
