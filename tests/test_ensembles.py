"""Ensembles across architectures: the fusion rules (mean, weighted mean, stacking), calibration and its
fit, the abstention rule on constructed cases, and ensemble bundles whose image and video answers are
their members' own answers fused (one detection, each member's crops)."""

import json

import numpy as np
import pytest

from deepfake_serving.builder.ensemble import write_ensemble
from deepfake_serving.bundle.ensemble import ENSEMBLE_MANIFEST, Ensemble
from deepfake_serving.core.errors import CheckpointError
from deepfake_serving.core.fusion import MAX_MEMBERS, UNCERTAIN, Abstention, Calibration, Fusion, ensemble_label, logit, sigmoid
from deepfake_serving.evaluation.fusion_fit import fit_fusion
from deepfake_serving.media import samples
from deepfake_serving.media.video import Sampling
from deepfake_serving.pipeline import load_image_pipeline, load_video_pipeline
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


def test_stacking_is_a_logistic_regression_over_the_members_logits():
    scores = np.array([[0.2, 0.9, 0.5], [0.7, 0.1, 0.5]])
    fused, _ = Fusion("stacking", (1.0, 2.0), bias=-0.5).check(2).fuse(scores)
    np.testing.assert_allclose(fused, sigmoid(logit(scores[0]) + 2 * logit(scores[1]) - 0.5))
    np.testing.assert_allclose(sigmoid(logit(np.array([1e-9, 0.3, 1.0]))), [1e-6, 0.3, 1 - 1e-6], rtol=1e-9)
    for bad, members in ((Fusion("stacking", (1.0, 2.0)), 2), (Fusion("mean", bias=0.1), 2),
                         (Fusion("stacking", (1.0, float("nan")), bias=0.0), 2), (Fusion(), 1), (Fusion(), MAX_MEMBERS + 1)):
        with pytest.raises(ValueError):
            bad.check(members)


def test_calibrations_map_probabilities_and_refuse_what_cannot_be_a_map():
    p = np.array([0.1, 0.5, 0.9])
    np.testing.assert_allclose(Calibration("temperature", temperature=2.0).apply(p), sigmoid(logit(p) / 2))
    iso = Calibration("isotonic", x=(0.2, 0.8), y=(0.1, 0.7))
    np.testing.assert_allclose(iso.apply(np.array([0.0, 0.5, 1.0])), [0.1, 0.4, 0.7])  # clipped at the ends
    for bad in ({"method": "temperature", "temperature": 0.0}, {"method": "isotonic", "x": (0.2, 0.1), "y": (0.1, 0.2)},
                {"method": "isotonic", "x": (0.1, 0.2), "y": (0.3, 1.2)}, {"method": "platt"}):
        with pytest.raises(ValueError):
            Calibration(**bad)
    fusion = Fusion("stacking", (1.0, -1.0), bias=0.2, abstention=Abstention(band=(0.4, 0.6)), calibration=iso,
                    fit={"images": 3})
    assert Fusion.from_dict(json.loads(json.dumps(fusion.to_dict())), 2) == fusion


def _labelled_scores(n: int = 200, seed: int = 0):
    """Two members: the first informative and overconfident, the second noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    informative = sigmoid(4.0 * (labels - 0.5) + rng.normal(0, 2.5, n))
    return np.stack([informative, rng.uniform(0.05, 0.95, n)]), labels


@pytest.mark.parametrize("calibration", ["temperature", "isotonic"])
def test_fitting_weighs_the_informative_member_and_calibrates(calibration):
    scores, labels = _labelled_scores()
    fusion = fit_fusion(scores, labels, Fusion(abstention=Abstention(max_disagreement=0.4)), "stacking", calibration)
    fusion.check(2)
    assert fusion.rule == "stacking" and abs(fusion.weights[0]) > 3 * abs(fusion.weights[1])
    assert fusion.abstention == Abstention(max_disagreement=0.4) and fusion.calibration.method == calibration
    report = fusion.fit
    print(json.dumps({k: report[k] for k in ("before", "after_in_sample", "after_out_of_fold")}))
    assert report["images"] == 200 and report["real"] + report["fake"] == 200
    assert report["after_in_sample"]["log_loss"] < report["before"]["log_loss"]
    assert report["after_out_of_fold"]["log_loss"] < report["before"]["log_loss"]  # the noise member no longer halves it
    kept = fit_fusion(scores, labels, Fusion(), "keep", calibration)
    assert kept.rule == "mean" and kept.fit["after_in_sample"]["ece"] < kept.fit["before"]["ece"]


def test_fitting_refuses_too_few_examples_of_a_class():
    scores, labels = _labelled_scores(40)
    labels[:] = 0
    labels[:3] = 1
    with pytest.raises(ValueError, match="at least 4 scored images of each class"):
        fit_fusion(scores, labels, Fusion())


def test_a_calibrated_ensemble_answers_the_calibrated_probability(ensemble_bundle, two_faces_jpeg):
    ensemble = Ensemble.open(ensemble_bundle)
    members = [(b.variant, b.scorer(threads=2)) for b in ensemble.members]
    plain = EnsemblePipeline(members, Fusion(), model_name="plain").predict(two_faces_jpeg)
    hot = Calibration("temperature", temperature=0.05)  # sharpens: every face far from 0.5
    fitted = EnsemblePipeline(members, Fusion(calibration=hot, abstention=Abstention(band=(0.45, 0.55))),
                              model_name="fitted").predict(two_faces_jpeg)
    for before, after in zip(plain["faces"], fitted["faces"]):
        assert after["uncalibrated_fake_probability"] == pytest.approx(before["fake_probability"], abs=1e-9)
        assert after["fake_probability"] == pytest.approx(float(hot.apply(before["fake_probability"])), abs=1e-9)
        assert "uncalibrated_fake_probability" not in before
    assert fitted["fake_probability"] == max(f["fake_probability"] for f in fitted["faces"])
    assert fitted["label"] == ("FAKE" if fitted["fake_probability"] > 0.5 else "REAL")  # the band is judged calibrated
    assert fitted["ensemble"]["fusion"]["calibration"]["method"] == "temperature"


def test_the_video_ensemble_fuses_each_members_confident_verdict(ensemble_bundle):
    clip = samples.encode_video(samples.moving_face_frames(24, (480, 360), faces=2, no_face_between=(8, 12)), "mp4")
    sampling = Sampling("all")
    answer = load_video_pipeline(ensemble_bundle, threads=2).analyze(clip, sampling)
    separate = [load_video_pipeline(b.directory, threads=2).analyze(clip, sampling)
                for b in Ensemble.open(ensemble_bundle).members]
    names = ["b4-mobile", "b4-ff"]
    assert answer["model"] == "mobile-ff-video" and answer["ensemble"]["members"] == names
    verdicts = [s["fake_probability"] for s in separate]
    assert answer["ensemble"]["member_fake_probabilities"] == pytest.approx(dict(zip(names, verdicts)), abs=1e-6)
    assert answer["fake_probability"] == pytest.approx(np.mean(verdicts), abs=1e-6)
    assert answer["ensemble"]["disagreement"] == pytest.approx(np.std(verdicts), abs=1e-6)
    assert answer["threshold"] == 0.5 and answer["label"] == ("FAKE" if answer["fake_probability"] > 0.5 else "REAL")
    assert not any(f["faces"] for f in answer["frames"][8:12])
    for frame, *alone in zip(answer["frames"], *(s["frames"] for s in separate)):
        assert [f["box"] for f in frame["faces"]] == [f["box"] for f in alone[0]["faces"]] == [f["box"] for f in alone[1]["faces"]]
        if not frame["faces"]:
            assert "members" not in frame
            continue
        assert frame["members"] == pytest.approx({n: a["score"] for n, a in zip(names, alone)}, abs=1e-6)
        for i, face in enumerate(frame["faces"]):
            members = [a["faces"][i]["fake_probability"] for a in alone]
            assert face["members"] == pytest.approx(dict(zip(names, members)), abs=1e-6)
            assert face["fake_probability"] == pytest.approx(np.mean(members), abs=1e-6)
    json.dumps(answer)


def test_ensemble_fit_refits_an_archive_into_a_new_version(tmp_path, face_folders, capsys):
    import zipfile

    from PIL import Image

    from deepfake_serving.cli import main

    labelled = tmp_path / "labelled"
    for i, path in enumerate(sorted((face_folders / "calibration").glob("*.jpg"), key=lambda p: int(p.stem))):
        folder = labelled / ("Real" if i % 2 else "Fake")
        folder.mkdir(parents=True, exist_ok=True)
        image = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
        data = path.read_bytes() if i % 2 else samples.encode(np.clip(
            image * np.array([1.3, 0.8, 0.7]), 0, 255).astype(np.uint8))  # the fakes: a colour cast
        (folder / path.name).write_bytes(data)
    store = tmp_path / "store"
    assert main(["ensemble", "--name", "fitme", "--version", "1", "--member", "b4-mobile", "--member", "b4-ff",
                 "--engine", "onnxruntime", "--export-path", str(store)]) == 0
    assert main(["ensemble", "fit", "--labelled", str(labelled)]) == 2  # a usage error
    assert "needs --archive, --labelled and --version" in capsys.readouterr().err
    assert main(["ensemble", "fit", "--archive", str(store / "fitme-v1.mar"), "--labelled", str(labelled),
                 "--version", "2", "--calibration", "isotonic", "--abstain-band", "0.4,0.6",
                 "--export-path", str(store)]) == 0
    printed, target = capsys.readouterr().out.strip().rsplit("\n", 1)
    report = json.loads(printed)
    assert target == str(store / "fitme-v2.mar")
    assert report["images"] == 16 and report["real"] == report["fake"] == 8 and report["rule"] == "stacking"
    bundle = tmp_path / "v2"
    with zipfile.ZipFile(store / "fitme-v2.mar") as mar:
        assert "deepfake_ensemble_handler.py" in mar.namelist()
        mar.extractall(bundle)
    refitted = Ensemble.open(bundle)
    assert refitted.version == "2" and refitted.fusion.rule == "stacking" and refitted.fusion.calibration.method == "isotonic"
    assert refitted.fusion.abstention == Abstention(band=(0.4, 0.6)) and refitted.fusion.fit["images"] == 16
    answer = load_ensemble_pipeline(bundle, threads=2).predict((labelled / "Real").iterdir().__next__().read_bytes())
    assert answer["version"] == "2" and "uncalibrated_fake_probability" in answer["faces"][0]


def test_an_ensemble_installs_as_triton_models_and_keeps_its_members(ensemble_bundle, tmp_path):
    """install_ensemble: the configs parse, each member's version holds its own bundle, the fusion's and the
    video model's hold the ensemble manifest; a second version installs beside the first; another set of
    members under the same name, or a variant's name, is refused."""
    import shutil

    from google.protobuf import text_format
    from tritonclient.grpc.model_config_pb2 import ModelConfig

    from deepfake_serving.serving.launch.triton_ensemble import install_ensemble

    repository = tmp_path / "repository"
    names = install_ensemble(ensemble_bundle, 1, repository)
    assert names["members"] == ["mobile_ff_member0", "mobile_ff_member1"]
    ensemble = text_format.Parse((repository / "mobile_ff" / "config.pbtxt").read_text(), ModelConfig())
    assert [step.model_name for step in ensemble.ensemble_scheduling.step] == [
        "mobile_ff_preprocess", "mobile_ff_member0", "mobile_ff_member1", "mobile_ff_fusion"]
    for i, member in enumerate(Ensemble.open(ensemble_bundle).members):
        config = text_format.Parse((repository / names["members"][i] / "config.pbtxt").read_text(), ModelConfig())
        size = member.variant.preprocessing.input_size
        assert list(config.input[0].dims) == [3, size, size] and config.HasField("dynamic_batching")
        installed = repository / names["members"][i] / "1"
        assert (installed / "model.py").exists() and (installed / "deepfake_manifest.json").read_text() == \
            (member.directory / "deepfake_manifest.json").read_text()
    for role in ("fusion", "video"):
        assert (repository / names[role] / "1" / ENSEMBLE_MANIFEST).exists()
    install_ensemble(ensemble_bundle, 2, repository)
    assert (repository / "mobile_ff_member1" / "2" / "model.py").exists() and (repository / "mobile_ff_member1" / "1").exists()

    swapped = shutil.copytree(ensemble_bundle, tmp_path / "swapped")
    manifest = json.loads((swapped / ENSEMBLE_MANIFEST).read_text())
    manifest["members"].reverse()
    (swapped / ENSEMBLE_MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="with other members"):
        install_ensemble(swapped, 3, repository)
    manifest["name"] = "b4-mobile"
    (swapped / ENSEMBLE_MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="a variant's models have that name"):
        install_ensemble(swapped, 1, repository)


def test_an_ensemble_installs_only_what_its_members_list_and_no_link(ensemble_bundle, tmp_path):
    """A member folder with a file its manifest does not list, then with a listed file that is a link to an
    operator's file: the first is installed without the extra file, the second refused."""
    import shutil

    from deepfake_serving.bundle.manifest import BundleManifest
    from deepfake_serving.serving.launch.triton_ensemble import install_ensemble

    bundle = shutil.copytree(ensemble_bundle, tmp_path / "bundle")
    member = Ensemble.open(bundle).members[0].directory
    (member / "notes-of-the-operator.txt").write_text("not part of the model")
    names = install_ensemble(bundle, 1, tmp_path / "repository")
    installed = tmp_path / "repository" / names["members"][0] / "1"
    assert not (installed / "notes-of-the-operator.txt").exists() and (installed / "deepfake_manifest.json").exists()

    weights = member / BundleManifest.read(member).files[0]["file"]
    secret = tmp_path / "operator-secret"
    secret.write_bytes(weights.read_bytes())
    weights.unlink()
    weights.symlink_to(secret)
    with pytest.raises(ValueError, match="no links"):
        install_ensemble(bundle, 2, tmp_path / "repository")
    assert not (tmp_path / "repository" / names["members"][0] / "2").exists()
