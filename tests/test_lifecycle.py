"""The model lifecycle end to end on a small labelled set (real photographs and clips, their self-blended
versions as fakes): training learns (and does not on shuffled labels); a run is tracked in MLflow with its
report; its checkpoint is archived from the run, evaluated, served, and judged by the rollout gate against
the untrained version with the evaluation's own metrics.

Learning is shown on ``helpers.ci_variant`` (EfficientNet-B0 at 128 with seed 000's recipe): from random
weights on two CPU cores no CI-sized run of the product's B4s learns (docs/training.md, "What a CI-sized
run learns"); the lifecycle after it runs b4-mobile, which serves."""

import contextlib
import json
import subprocess
import sys

import mlflow
import pytest
import torch

from deepfake_serving.builder.engine_choice import has_bf16_units
from deepfake_serving.rollout.audit import AuditLog
from deepfake_serving.rollout.controller import Rollout, RolloutError, RolloutPolicy
from deepfake_serving.rollout.targets import TorchServeTarget
from deepfake_serving.serving.launch.archive import build_archive
from deepfake_serving.serving.launch.torchserve import Ports, TorchServe
from deepfake_serving.training.loop import Trainer, TrainOptions
from helpers.calibrated import calibrated_b4_mobile
from helpers.ci_variant import ci_variant
from helpers.training_data import write_training_set

MODEL = "b4-mobile"
EPOCHS, LR, BATCH = 1, 1e-3, 16


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("lifecycle")


@pytest.fixture(scope="module")
def labelled(workdir, face_folders):
    data = write_training_set(workdir / "data", photos=64, clips=3, frames=8)
    # "test-trained" initial weights: a random b4-mobile made well-conditioned on faces (no hub here)
    torch.save(calibrated_b4_mobile(face_folders).state_dict(), workdir / "init.pt")
    return data


def train(workdir, labelled, name: str, **kwargs):
    settings = {"variant": MODEL, "init_weights": workdir / "init.pt", "epochs": EPOCHS, "lr": LR, "batch_size": BATCH,
                **kwargs}
    options = TrainOptions(data=labelled, out=workdir / name, validation=0.34, cache=workdir / "faces",
                           progress=False, threads=2, tracking_uri=f"sqlite:///{workdir}/mlruns/mlflow.db", **settings)
    return Trainer(options, log=lambda line: print(f"{name}: {line}")).run()


@pytest.fixture(scope="module")
def trained(workdir, labelled):
    return train(workdir, labelled, "run")


def test_learning_happens_and_does_not_on_shuffled_labels(workdir, labelled):
    with ci_variant() as variant:
        learner = dict(variant=variant.name, init_weights=None, epochs=20, lr=1e-3, batch_size=16)
        learnt = train(workdir, labelled, "learnt", **learner)
        control = train(workdir, labelled, "shuffled", shuffle_labels=True, **learner)
    losses = [row["train_loss"] for row in learnt.history]
    print("curves:", [(r["epoch"], round(r["train_loss"], 3), round(r["val_loss"], 3), round(r["val_auc"], 3))
                      for r in learnt.history])
    print("report:", {k: learnt.report[k] for k in ("frame_auc", "video_auc", "average_precision", "eer", "ece",
                                                    "accuracy", "f1", "confusion", "items", "best_epoch")})
    assert min(losses[-5:]) < losses[0] / 3
    assert learnt.report["frame_auc"] > 0.9, learnt.report
    print("shuffled:", [(r["epoch"], round(r["train_loss"], 3), round(r["val_auc"], 3)) for r in control.history],
          "report AUC", control.report["frame_auc"])
    assert abs(control.report["frame_auc"] - 0.5) < 0.2, control.report


def test_the_run_is_tracked_and_its_report_written(workdir, trained):
    run = mlflow.MlflowClient(f"sqlite:///{workdir}/mlruns/mlflow.db").get_run(trained.run_id)
    assert run.info.status == "FINISHED" and run.data.params["variant"] == MODEL
    assert run.data.params["initial_weights"] == "the whole model from init.pt"
    assert run.data.params["recipe.optimizer"] == "adamw" and "final_frame_auc" in run.data.metrics
    assert run.data.params["autocast"] == ("bfloat16" if has_bf16_units() else "none")
    report = json.loads((trained.out / "report" / "report.json").read_text())
    assert [row["epoch"] for row in trained.history] == [1] and trained.history[0]["val_loss"] < 5
    for key in ("accuracy", "precision", "recall", "f1", "specificity", "frame_auc", "video_auc", "eer",
                "average_precision", "ece", "confusion", "reliability"):
        assert report[key] is not None, key
    assert all((trained.out / "report" / name).is_file() for name in ("roc.png", "pr.png", "reliability.png",
                                                                       "histogram.png"))


@pytest.mark.server
def test_the_trained_run_archives_serves_and_is_judged_by_the_gate_as_evaluate_judges_it(workdir, labelled, trained, tmp_path):
    store = workdir / "store"
    build_archive(MODEL, "1.0", export_path=store, engine="onnxruntime")  # untrained: what serves today
    archived = subprocess.run([sys.executable, "-m", "deepfake_serving.cli", "archive", "--from-run", trained.run_id,
                               "--version", "2.0", "--export-path", str(store), "--engine", "onnxruntime",
                               "--tracking-uri", f"sqlite:///{workdir}/mlruns/mlflow.db"],
                              capture_output=True, text=True, check=True)
    mar = archived.stdout.strip().splitlines()[-1]
    evaluated = subprocess.run([sys.executable, "-m", "deepfake_serving.cli", "evaluate", "--archive", mar, "--data",
                                str(labelled), "--out", str(tmp_path / "eval"), "--cache", str(workdir / "faces")],
                               capture_output=True, text=True, check=True)
    assert "| frame_auc | data | avg |" in evaluated.stdout
    report = json.loads((tmp_path / "eval" / "data" / "report.json").read_text())
    assert report["training_run"]["run_id"] == trained.run_id and report["trained"] is True
    assert mlflow.MlflowClient(report["training_run"]["tracking_uri"]).get_run(trained.run_id).info.run_id

    gate = workdir / "gate"  # the gate judges images: the labelled photographs
    for label in ("Real", "Fake"):
        (gate / label).mkdir(parents=True)
        for photo in (labelled / label).glob("*.jpg"):
            (gate / label / photo.name).write_bytes(photo.read_bytes())
    judged = subprocess.run([sys.executable, "-m", "deepfake_serving.cli", "evaluate", "--archive", mar, "--data",
                             str(gate), "--out", str(tmp_path / "judged"), "--cache", str(workdir / "faces")],
                            capture_output=True, text=True, check=True)
    offline = json.loads((tmp_path / "judged" / "gate" / "report.json").read_text())
    with TorchServe(store, tmp_path / "ts", models=[f"{MODEL}={MODEL}-v1.0.mar"], ports=Ports.free(), workers=2) as ts:
        target = TorchServeTarget(MODEL, ts.inference_url, ts.management_url, f"{ts.metrics_url}/metrics")
        policy = RolloutPolicy(warmup_requests=1, shadow_rounds=1, gate_metric="eer", watch_s=2, check_every_s=1,
                               canary_weight=10, min_canary_requests=0)
        rollout = Rollout(target, AuditLog(tmp_path / "audit.jsonl"), tmp_path / "split.json", policy=policy,
                          labelled_folder=gate, probes=[(gate / "Real" / "photo0.jpg").read_bytes()])
        with contextlib.suppress(RolloutError):  # the verdict depends on what one epoch learnt; the figures do not
            rollout.run(store / f"{MODEL}-v2.0.mar")
    gate_entry = next(e for e in AuditLog(tmp_path / "audit.jsonl").entries() if e["step"] == "gate")
    print("gate:", gate_entry["outcome"], gate_entry["message"], judged.stdout.strip().splitlines()[-1])
    served = gate_entry["figures"]["candidate"]
    # the gate's figures over the served answers are the offline evaluation's of the same archive and files
    for key in ("roc_auc", "average_precision", "eer", "ece"):
        assert served[key] == pytest.approx(offline["frame_auc" if key == "roc_auc" else key], abs=1e-4), key
    assert served["confusion"] == offline["confusion"]
    assert gate_entry["outcome"] == ("failed" if served["eer"] > gate_entry["figures"]["serving"]["eer"] + 0.02
                                     else "ok")
