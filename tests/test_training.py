"""deepfake-serving train on real photographs and encoded clips (Real) and their self-blended versions
(Fake): bad input refused before any weight moves, with nothing written into --out."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from deepfake_serving.core.errors import CheckpointError
from deepfake_serving.media import samples
from deepfake_serving.training.data import DataError, split_by_source
from deepfake_serving.training.loop import Trainer, TrainOptions
from deepfake_serving.training.tracking import TrackingError
from deepfake_serving.variants import create_model
from helpers.training_data import write_training_set

MODEL = "b4-mobile"


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    return write_training_set(tmp_path_factory.mktemp("labelled") / "data", photos=6, clips=1, frames=6)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("faces")


def options(data, tmp_path, cache, **kwargs) -> TrainOptions:
    defaults = {"cache": cache, "tracking_uri": f"sqlite:///{tmp_path}/ml/mlflow.db", "progress": False, "threads": 2,
                "epochs": 1, "batch_size": 8}
    return TrainOptions(MODEL, data, tmp_path / "out", **{**defaults, **kwargs})


def refused(opts: TrainOptions, error, match: str):
    with pytest.raises(error, match=match):
        Trainer(opts, log=lambda line: None).run()
    out = opts.out
    assert not out.exists() and not out.with_name(out.name + ".partial").exists()  # nothing half-written


def test_an_empty_folder_or_one_class_is_refused(tmp_path, cache):
    (tmp_path / "empty").mkdir()
    refused(options(tmp_path / "empty", tmp_path, cache), DataError, "no images or videos")
    (tmp_path / "real_only" / "Real").mkdir(parents=True)
    (tmp_path / "real_only" / "Real" / "a.jpg").write_bytes(samples.astronaut_jpeg())
    refused(options(tmp_path / "real_only", tmp_path, cache), DataError, "no Fake files")


def test_files_without_faces_leave_a_class_empty(labelled, tmp_path, cache):
    data = tmp_path / "data"
    shutil.copytree(labelled / "Real", data / "Real")
    (data / "Fake").mkdir()
    (data / "Fake" / "cup.jpg").write_bytes(samples.encode(samples.no_face()))
    cups = [samples.moving_face_frames(6, (320, 240), no_face_between=(0, 6))[0]] * 6
    (data / "Fake" / "cups.mp4").write_bytes(samples.encode_video(cups))
    refused(options(data, tmp_path, cache), DataError, "files with a face.*no Fake")


def test_init_weights_of_another_architecture_name_their_keys(labelled, tmp_path, cache):
    torch.save(create_model("b4-keras-head", seed=0).state_dict(), tmp_path / "keras.pt")
    refused(options(labelled, tmp_path, cache, init_weights=tmp_path / "keras.pt"), CheckpointError,
            r"missing keys: efficientnet\..*unexpected keys: backbone\..*nor are they the weights of its backbone")


def test_init_weights_take_a_whole_checkpoint_or_torchvision_backbone_weights():
    """b4-ff's network is torchvision's EfficientNet-B4 with another head: its state dict initialises
    b4-mobile's backbone (as ImageNet weights from torchvision would), and a b4-mobile checkpoint all of it."""
    import tempfile
    from pathlib import Path

    from deepfake_serving.training.init_weights import load_init_weights
    from deepfake_serving.variants import get_variant

    variant = get_variant(MODEL)
    with tempfile.TemporaryDirectory() as tmp:
        ff = create_model("b4-ff", seed=1)
        torch.save(ff.state_dict(), Path(tmp) / "ff.pt")
        model = create_model(MODEL, seed=0)
        assert load_init_weights(model, variant, Path(tmp) / "ff.pt") == "the backbone"
        assert torch.equal(model.efficientnet.features[0][0].weight, ff.features[0][0].weight)
        torch.save(model.state_dict(), Path(tmp) / "mobile.pt")
        again = create_model(MODEL, seed=2)
        assert load_init_weights(again, variant, Path(tmp) / "mobile.pt") == "the whole model"
        assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))


def test_an_unreachable_tracking_server_is_refused_at_once(labelled, tmp_path, cache):
    refused(options(labelled, tmp_path, cache, tracking_uri="http://127.0.0.1:9"), TrackingError, "cannot be reached")


def test_a_non_empty_out_is_refused_and_kept(labelled, tmp_path, cache):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep me")
    with pytest.raises(DataError, match="not empty"):
        Trainer(options(labelled, tmp_path, cache), log=lambda line: None).run()
    assert (tmp_path / "out" / "mine.txt").read_text() == "keep me"


def test_the_command_line_says_what_is_wrong_in_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    result = subprocess.run([sys.executable, "-m", "deepfake_serving.cli", "train", "--variant", MODEL, "--data",
                             str(tmp_path / "empty"), "--out", str(tmp_path / "out"), "--tracking-uri",
                             f"sqlite:///{tmp_path}/mlflow.db"], capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "no images or videos" in result.stderr


def test_the_split_keeps_every_file_on_one_side(labelled, tmp_path, cache):
    trainer = Trainer(options(labelled, tmp_path, cache, validation=0.34), log=lambda line: None)
    train, validation, extracted = trainer.prepare()
    assert {f.source for f in train}.isdisjoint({f.source for f in validation})
    # Real/photoN.jpg and its self-blend Fake/photoN.jpg on one side: apart, who is in the photograph decides
    assert {Path(f.source).stem for f in train}.isdisjoint({Path(f.source).stem for f in validation})
    assert {f.label for f in validation} == {0, 1} and {f.label for f in train} == {0, 1}
    clips = {f.source for f in extracted.faces if f.frame is not None}
    assert clips and all(len({f.frame for f in extracted.faces if f.source == c}) > 1 for c in clips)
    with pytest.raises(DataError, match="at least 2"):
        split_by_source([f for f in extracted.faces if f.source in {"Real/photo0.jpg", "Fake/photo0.jpg"}])


def test_a_killed_run_resumes_to_the_weights_of_an_uninterrupted_one(labelled, tmp_path, cache):
    """The command SIGKILLed once its first epoch's state is on disk, started again: it resumes after that
    epoch and ends with the weights the same command ends with when nobody kills it."""
    import os
    import signal
    import time

    def command(out):
        return [sys.executable, "-m", "deepfake_serving.cli", "train", "--variant", MODEL, "--data", str(labelled),
                "--out", str(out), "--epochs", "3", "--batch-size", "8", "--lr", "1e-3", "--threads", "2",
                "--cache", str(cache), "--tracking-uri", f"sqlite:///{tmp_path}/ml/mlflow.db", "--no-progress"]

    subprocess.run(command(tmp_path / "whole"), check=True, capture_output=True)
    killed = subprocess.Popen(command(tmp_path / "cut"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "cut.partial" / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 600
    while not last.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert last.exists() and not (tmp_path / "cut").exists()
    resumed = subprocess.run(command(tmp_path / "cut"), check=True, capture_output=True, text=True)
    assert "resuming" in resumed.stderr and "epoch 1:" not in resumed.stderr and "epoch 3:" in resumed.stderr
    whole = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)
    cut = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert whole.keys() == cut.keys()
    for key in whole:
        assert torch.allclose(whole[key].float(), cut[key].float(), atol=1e-5, rtol=1e-4), key
    assert not (tmp_path / "cut.partial").exists()
    losses = [[round(row["val_loss"], 4) for row in json.loads((tmp_path / name / "history.json").read_text())]
              for name in ("whole", "cut")]
    assert len(losses[0]) == 3 and losses[0] == losses[1]


def test_a_face_cache_it_creates_only_its_owner_can_enter(tmp_path):
    import stat

    from deepfake_serving.training.data import FaceExtractor
    from deepfake_serving.variants import get_variant

    FaceExtractor(get_variant(MODEL), tmp_path / "new" / "faces")
    assert stat.S_IMODE((tmp_path / "new" / "faces").stat().st_mode) == 0o700


def test_mixed_precision_where_the_hardware_has_it():
    from deepfake_serving.builder.engine_choice import has_bf16_units
    from deepfake_serving.training.loop import _autocast_dtype

    cpu = torch.device("cpu")
    assert _autocast_dtype(cpu, "auto") == (torch.bfloat16 if has_bf16_units() else None)
    assert _autocast_dtype(torch.device("cuda"), "auto") == torch.float16 and _autocast_dtype(cpu, "fp32") is None
    with pytest.raises(DataError, match="auto or fp32"):
        _autocast_dtype(cpu, "fp8")


def test_a_file_whose_size_or_kind_is_wrong_is_refused_before_a_byte_is_read(tmp_path):
    """A 3 GB sparse file named .jpg and a FIFO named .jpg (reading it would block for ever): each refused by
    stat() alone, listed as unreadable, in well under a second."""
    import os
    import time

    from deepfake_serving.training.data import FaceExtractor, Source, extract
    from deepfake_serving.variants import get_variant

    big, fifo = tmp_path / "big.jpg", tmp_path / "pipe.jpg"
    with open(big, "wb") as handle:
        handle.truncate(3 * 1024**3)
    os.mkfifo(fifo)
    start = time.monotonic()
    result = extract([Source(big, 0), Source(fifo, 1)], FaceExtractor(get_variant(MODEL), tmp_path / "faces"), tmp_path)
    assert time.monotonic() - start < 5.0
    reasons = dict(result.unreadable)
    assert reasons["big.jpg"].startswith("body_too_large") and reasons["pipe.jpg"].startswith("unsupported_media")


def test_the_tracking_store_it_creates_only_its_owner_can_enter(tmp_path):
    import stat

    from deepfake_serving.training.tracking import check_reachable

    check_reachable(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    assert stat.S_IMODE((tmp_path / "mlruns").stat().st_mode) == 0o700
