"""The evaluation report's metrics against values computed by hand on constructed score sets."""

import json

import pytest

from deepfake_serving.evaluation.metrics import equal_error_rate, expected_calibration_error
from deepfake_serving.evaluation.report import Scored, cross_dataset_table, per_picture, report, video_scores, write_report


def test_equal_error_rate_where_false_positives_and_misses_are_equal():
    # At 0.5: one real of three above it (FPR 1/3) and one fake of three below it (FNR 1/3).
    assert equal_error_rate([0, 0, 0, 1, 1, 1], [0.1, 0.4, 0.6, 0.35, 0.7, 0.9]) == pytest.approx(1 / 3)
    assert equal_error_rate([0, 1], [0.2, 0.8]) == pytest.approx(0.0)  # separated: no error
    assert equal_error_rate([0, 1], [0.8, 0.2]) == pytest.approx(1.0)  # inverted: every decision wrong


def test_calibration_error_is_the_share_weighted_gap_per_bin():
    # bins 0, 1, 8, 9 hold one face each: gaps 0.05, 0.15, 0.15, 0.05, each a quarter of the faces
    assert expected_calibration_error([0, 0, 1, 1], [0.05, 0.15, 0.85, 0.95]) == pytest.approx(0.1)
    assert expected_calibration_error([0, 1], [0.0, 1.0]) == pytest.approx(0.0)


def test_video_auc_averages_each_videos_frames_first():
    items = [Scored("a.mp4", 0, 0.2, 0), Scored("a.mp4", 0, 0.4, 1),   # real, mean 0.30
             Scored("b.mp4", 1, 0.5, 0), Scored("b.mp4", 1, 0.9, 1),   # fake, mean 0.70
             Scored("c.mp4", 0, 0.6, 0),                               # real, mean 0.60
             Scored("d.mp4", 1, 0.1, 0), Scored("d.mp4", 1, 0.8, 1),   # fake, mean 0.45
             Scored("e.jpg", 1, None)]                                 # no face: not scored
    data = report(items)
    assert data["video_auc"] == pytest.approx(3 / 4)  # fake means above real means in 3 of 4 pairs
    assert data["frame_auc"] == pytest.approx(8 / 12)  # frames: 8 of 12 (fake, real) pairs in order
    assert (data["videos"], data["sources"], data["scored"], data["no_verdict"]) == (4, 5, 7, 1)
    assert sum(b["count"] for b in data["reliability"]) == 7


def test_one_class_gives_no_auc_rather_than_a_wrong_one(tmp_path):
    data = write_report([Scored("a.jpg", 0, 0.2), Scored("b.jpg", 0, 0.3)], tmp_path)
    assert data["frame_auc"] is None and data["eer"] is None and data["video_auc"] is None
    assert json.loads((tmp_path / "report.json").read_text())["accuracy"] == 1.0
    assert {p.split("/")[-1] for p in data["plots"]} == {"reliability.png", "histogram.png"}


def test_the_report_files_and_the_cross_dataset_table(tmp_path):
    items = [Scored(f"{i}.jpg", i % 2, 0.3 + 0.4 * (i % 2) + 0.01 * i) for i in range(10)]
    data = write_report(items, tmp_path, name="set-a", failed=["broken.jpg: image_undecodable"])
    assert data["frame_auc"] == 1.0 and data["unreadable"] == ["broken.jpg: image_undecodable"]
    assert {p.split("/")[-1] for p in data["plots"]} == {"roc.png", "pr.png", "reliability.png", "histogram.png"}
    assert all((tmp_path / name).stat().st_size > 1000 for name in ("roc.png", "pr.png", "reliability.png"))
    assert len((tmp_path / "scores.jsonl").read_text().splitlines()) == 10
    table = cross_dataset_table([data, {**data, "dataset": "set-b", "frame_auc": 0.5, "video_auc": None}], "b4-mobile 2.0")
    assert "| frame_auc | set-a | set-b | avg |" in table and "| b4-mobile 2.0 | 1.0000 | 0.5000 | 0.7500 |" in table
    assert "| b4-mobile 2.0 | n/a | n/a | n/a |" in table  # no videos in either


def test_a_picture_is_scored_by_its_most_suspicious_face_as_the_server_scores_it():
    items = per_picture([("a.jpg", 1, None, 0.2), ("a.jpg", 1, None, 0.9), ("v.mp4", 0, 0, 0.1), ("v.mp4", 0, 0, 0.3),
                         ("v.mp4", 0, 4, 0.4)])
    assert sorted((i.source, i.frame, i.score) for i in items) == [("a.jpg", None, 0.9), ("v.mp4", 0, 0.3),
                                                                   ("v.mp4", 4, 0.4)]
    assert video_scores(items) == ([0], [pytest.approx(0.35)])
