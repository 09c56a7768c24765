"""Archives built with torch-model-archiver from checkpoints in the real formats."""

import hashlib
import json
import zipfile

import pytest
import torch

from deepfake_serving.builder.write import write_bundle
from deepfake_serving.bundle.manifest import MANIFEST_NAME
from deepfake_serving.cli import main
from deepfake_serving.core.digest import sha256_of
from deepfake_serving.core.errors import CheckpointError
from deepfake_serving.pipeline import load_image_pipeline
from deepfake_serving.variants import create_model, to_array
from helpers.checkpoint_formats import save_dfdc_checkpoint

DFDC_NAME = "final_111_DeepFakeClassifier_tf_efficientnet_b7_ns_0_36"


@pytest.fixture(scope="module")
def dfdc_checkpoint(tmp_path_factory):
    torch.manual_seed(7)
    path = tmp_path_factory.mktemp("ckpt") / DFDC_NAME
    save_dfdc_checkpoint(create_model("b7-dfdc"), path)
    return path


def test_cli_archives_a_dfdc_checkpoint_with_a_manifest(tmp_path, dfdc_checkpoint):
    store = tmp_path / "store"
    assert main(["archive", "--variant", "b7-dfdc", "--checkpoint", str(dfdc_checkpoint),
                 "--version", "1.1", "--export-path", str(store)]) == 0
    mar = store / "b7-dfdc-v1.1.mar"
    with zipfile.ZipFile(mar) as z:
        ts_manifest = json.loads(z.read("MAR-INF/MANIFEST.json"))
        ours = json.loads(z.read(MANIFEST_NAME))
        weights = z.read("weights.safetensors")
        assert "model-config.yaml" in z.namelist() and "deepfake_image_handler.py" in z.namelist()
    assert ts_manifest["model"]["modelName"] == "b7-dfdc" and ts_manifest["model"]["modelVersion"] == "1.1"
    assert ours["variant"] == "b7-dfdc" and ours["version"] == "1.1" and ours["input_size"] == 380
    assert ours["trained"] is True
    (entry,) = ours["weights"]
    assert entry["source_checkpoint"] == {"name": DFDC_NAME, "sha256": sha256_of(dfdc_checkpoint)}
    assert ours["preprocessing"]["faces"]["crop_margin"] == "1/3"
    assert hashlib.sha256(weights).hexdigest() == entry["sha256"]


def test_bundle_gives_the_checkpoints_answers(tmp_path, astronaut_jpeg):
    torch.manual_seed(5)
    source = create_model("b4-ff")
    ckpt = tmp_path / "best.pth"
    torch.save({"model_state_dict": source.state_dict(), "epoch": 3}, ckpt)
    write_bundle(tmp_path / "bundle", "b4-ff", "3.0", checkpoints=[ckpt], engine="onnxruntime")  # fp32 fidelity
    pipeline = load_image_pipeline(tmp_path / "bundle")
    assert pipeline.weights_trained and pipeline.version == "3.0"
    answer = pipeline.predict(astronaut_jpeg)
    prepared = pipeline.prepare([astronaut_jpeg])[0]
    with torch.inference_mode():
        expected = torch.softmax(source(torch.from_numpy(to_array(prepared.crops, pipeline.variant.preprocessing.mean,
                                                                  pipeline.variant.preprocessing.std))), 1)[:, 1]
    assert answer["fake_probability"] == pytest.approx(float(expected.max()), abs=1e-6)


@pytest.mark.parametrize("engine", ["onnxruntime", "torch"])
@pytest.mark.parametrize("tampered", ["weights.safetensors", "classifier.onnx"])
def test_tampered_files_are_refused(tmp_path, tampered, engine):
    write_bundle(tmp_path, "b4-mobile", "1.0")
    path = tmp_path / tampered
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"{tampered} has sha256"):
        load_image_pipeline(tmp_path, engine=engine)


def test_a_checkpoint_for_another_variant_is_refused_before_archiving(tmp_path, dfdc_checkpoint):
    with pytest.raises(CheckpointError, match="missing keys"):
        main(["--debug", "archive", "--variant", "b4-mobile", "--checkpoint", str(dfdc_checkpoint),
              "--version", "1.0", "--export-path", str(tmp_path)])
    assert not list(tmp_path.glob("*.mar"))


def test_a_video_archive_with_server_side_batches_is_refused(tmp_path):
    with pytest.raises(ValueError, match="one clip per request .*not 4.*streamed progress"):
        main(["--debug", "archive", "--variant", "b4-mobile", "--media", "video", "--batch-size", "4", "--version", "1.0",
              "--export-path", str(tmp_path)])
    assert not list(tmp_path.glob("*.mar"))


def test_several_checkpoints_are_averaged_after_the_confident_strategy(tmp_path):
    from deepfake_serving.media import samples
    from deepfake_serving.pipeline import load_video_pipeline
    from deepfake_serving.pipeline.video import VideoPipeline
    from deepfake_serving.variants import get_variant

    paths, models = [], []
    for seed in (3, 4):
        torch.manual_seed(seed)
        models.append(create_model("b4-mobile"))
        paths.append(tmp_path / f"fold{seed}.pth")
        torch.save(models[-1].state_dict(), paths[-1])
    assert main(["archive", "--variant", "b4-mobile", "--media", "video", "--version", "1.0", "--engine", "onnxruntime",
                 "--checkpoint", str(paths[0]), "--checkpoint", str(paths[1]),
                 "--export-path", str(tmp_path / "store")]) == 0
    mar = tmp_path / "store" / "b4-mobile-video-v1.0.mar"
    with zipfile.ZipFile(mar) as z:
        z.extractall(tmp_path / "unpacked")
        config = z.read("model-config.yaml").decode()
    assert "media: video" in config and "batchSize: 1" in config
    ensemble = load_video_pipeline(tmp_path / "unpacked")
    clip = samples.encode_video(samples.moving_face_frames(16, size=(320, 240)), "mp4")
    both = ensemble.analyze(clip)
    singles = [VideoPipeline(get_variant("b4-mobile"), m).analyze(clip)["fake_probability"] for m in models]
    assert both["checkpoints_averaged"] == 2 and both["weights_trained"] is True
    assert both["fake_probability"] == pytest.approx(sum(singles) / 2, abs=1e-9)
