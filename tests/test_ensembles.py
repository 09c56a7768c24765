"""Ensembles across architectures: the fusion rules, the abstention rule on constructed cases, and an
ensemble bundle whose answer is its members' own answers fused (one detection, each member's crops)."""

import json

import numpy as np
import pytest

from deepfake_serving.builder.ensemble import write_ensemble
from deepfake_serving.bundle.ensemble import ENSEMBLE_MANIFEST, Ensemble
from deepfake_serving.core.errors import CheckpointError
from deepfake_serving.core.fusion import UNCERTAIN, Abstention, Fusion, ensemble_label
from deepfake_serving.pipeline import load_image_pipeline
from deepfake_serving.pipeline.ensemble import EnsemblePipeline, load_ensemble_pipeline

MEMBERS = [("b4-mobile", []), ("b4-ff", [])]


def test_the_mean_and_the_weighted_mean_with_the_members_disagreement():
    scores = np.array([[0.2, 0.9], [0.4, 0.1], [0.6, 0.5]])
    fused, spread = Fusion().fuse(scores)
    np.testing.assert_allclose(fused, [0.4, 0.5])
    np.testing.assert_allclose(spread, scores.std(axis=0))
    fused, _ = Fusion("weighted_mean", (2.0, 1.0, 1.0)).check(3).fuse(scores)
    np.testing.assert_allclose(fused, [(0.4 + 0.4 + 0.6) / 4, (1.8 + 0.1 + 0.5) / 4])
    for bad in (Fusion("vote"), Fusion("weighted_mean", (1.0,)), Fusion("weighted_mean", (-1.0, 1.0, 1.0)),
                Fusion("mean", (1.0, 1.0, 1.0))):
        with pytest.raises(ValueError):
            bad.check(3)


@pytest.mark.parametrize("abstention, fused, spread, expected", [
    (None, 0.51, 0.45, "FAKE"),  # off by default: no new label
    (Abstention(max_disagreement=0.2), 0.9, 0.21, UNCERTAIN),
    (Abstention(max_disagreement=0.2), 0.9, 0.2, "FAKE"),  # the bound itself is not over it
    (Abstention(band=(0.4, 0.6)), 0.55, 0.0, UNCERTAIN),
    (Abstention(band=(0.4, 0.6)), 0.6, 0.0, "FAKE"),  # the band is open
    (Abstention(band=(0.4, 0.6)), 0.3, 0.0, "REAL"),
    (Abstention(0.1, (0.4, 0.6)), 0.3, 0.15, UNCERTAIN),
])
def test_uncertain_fires_exactly_where_the_rule_says(abstention, fused, spread, expected):
    label = "FAKE" if fused > 0.5 else "REAL"
    assert ensemble_label(label, fused, spread, Fusion(abstention=abstention)) == expected
    assert ensemble_label("NO_FACE", None, None, Fusion(abstention=abstention)) == "NO_FACE"


def test_abstention_rules_that_cannot_hold_are_refused():
    for options in ({}, {"band": (0.6, 0.4)}, {"band": (0.2, 1.5)}, {"max_disagreement": 0.7}):
        with pytest.raises(ValueError):
            Abstention(**options)


@pytest.fixture(scope="module")
def ensemble_bundle(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ensemble") / "bundle"
    write_ensemble(directory, "mobile-ff", "1", MEMBERS, engine="onnxruntime")
    return directory


def test_the_ensemble_answers_its_members_answers_fused_on_one_detection(ensemble_bundle, two_faces_jpeg):
    answer = load_ensemble_pipeline(ensemble_bundle, threads=2).predict(two_faces_jpeg)
    ensemble = Ensemble.open(ensemble_bundle)
    separate = [load_image_pipeline(b.directory, threads=2).predict(two_faces_jpeg) for b in ensemble.members]
    assert answer["model"] == "mobile-ff" and answer["ensemble"]["members"] == ["b4-mobile", "b4-ff"]
    assert answer["face_count"] == 2 and all([f["box"] for f in s["faces"]] == [f["box"] for f in answer["faces"]]
                                             for s in separate)
    for i, face in enumerate(answer["faces"]):
        members = [s["faces"][i]["fake_probability"] for s in separate]
        assert face["members"] == pytest.approx(dict(zip(["b4-mobile", "b4-ff"], members)), abs=1e-6)
        assert face["fake_probability"] == pytest.approx(np.mean(members), abs=1e-6)
        assert face["disagreement"] == pytest.approx(np.std(members), abs=1e-6)
    assert answer["fake_probability"] == max(f["fake_probability"] for f in answer["faces"])
    assert answer["label"] in ("FAKE", "REAL")
    json.dumps(answer)


def test_an_ensemble_that_opts_in_answers_uncertain(ensemble_bundle, two_faces_jpeg, no_face_jpeg):
    ensemble = Ensemble.open(ensemble_bundle)
    members = [(b.variant, b.scorer(threads=2)) for b in ensemble.members]
    unsure = EnsemblePipeline(members, Fusion(abstention=Abstention(band=(0.0, 1.0))), model_name="unsure")
    assert unsure.predict(two_faces_jpeg)["label"] == UNCERTAIN
    assert unsure.predict(no_face_jpeg)["label"] == "NO_FACE"


def test_an_ensemble_manifest_cannot_point_outside_its_members(ensemble_bundle, tmp_path):
    import shutil

    bundle = shutil.copytree(ensemble_bundle, tmp_path / "copy")
    manifest = json.loads((bundle / ENSEMBLE_MANIFEST).read_text())
    manifest["members"][1]["directory"] = "members/../../elsewhere"
    (bundle / ENSEMBLE_MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="is not under members/"):
        Ensemble.open(bundle)
    manifest["members"] = manifest["members"][:1]
    (bundle / ENSEMBLE_MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="at least two members"):
        Ensemble.open(bundle)
