"""Engines: MTCNN without torch equals facenet-pytorch, ONNX Runtime equals PyTorch, bad graphs are refused,
the serving path imports no torch, and the threads rule."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import skimage.data
import torch
from facenet_pytorch import MTCNN

import dfdc_reference
from deepfake_serving import samples
from deepfake_serving.bundle import GRAPH_NAME, MANIFEST_NAME, load_bundle, load_video_bundle, write_bundle
from deepfake_serving.cli import main
from deepfake_serving.engines import OnnxScorer, ort_session
from deepfake_serving.errors import CheckpointError
from deepfake_serving.faces import FaceDetector, shrink
from deepfake_serving.mtcnn import OnnxMTCNN
from deepfake_serving.onnx_export import export_onnx
from deepfake_serving.runtime import sha256_of
from deepfake_serving.threads import intra_op_threads, threads_for, worker_environment
from deepfake_serving.variants import create_model, get_variant
from deepfake_serving.video import Sampling, decode_video
from deepfake_serving.video_pipeline import VideoPipeline

THRESHOLDS = (0.7, 0.8, 0.8)


def corpus() -> dict[str, np.ndarray]:
    """Photographs and frames of encoded clips, at the sizes MTCNN sees them (videos: half size)."""
    images = {"astronaut": samples.astronaut(), "two faces": samples.two_faces(), "no face": samples.no_face(),
              "coffee": skimage.data.coffee(), "chelsea": skimage.data.chelsea()}
    for size, faces in (((1280, 720), 2), ((640, 480), 1)):
        clip = samples.encode_video(samples.moving_face_frames(30, size, faces=faces), "mp4")
        for frame in decode_video(clip, Sampling(frames=6)).frames:
            images[f"{size} frame {len(images)}"] = shrink(frame, 0.5)
    return images


@pytest.fixture(scope="module")
def images():
    return corpus()


def test_mtcnn_without_torch_gives_facenet_pytorchs_boxes(images):
    reference = MTCNN(margin=0, thresholds=list(THRESHOLDS), min_face_size=20, keep_all=True, select_largest=True,
                      post_process=False, device="cpu")
    ours = OnnxMTCNN(20, THRESHOLDS)
    faces = 0
    for name, image in images.items():
        boxes, probs = reference.detect(image)
        our_boxes, our_probs = ours.detect(image)
        if boxes is None:
            assert len(our_boxes) == 0, name
            continue
        assert our_boxes.shape == boxes.shape, name
        np.testing.assert_allclose(our_boxes, boxes.astype(np.float32), atol=1.0, err_msg=name)
        np.testing.assert_allclose(our_probs, probs.astype(np.float32), atol=1e-4, err_msg=name)
        faces += len(boxes)
    assert faces >= 20  # the corpus really has faces


def test_an_images_faces_do_not_depend_on_its_neighbours(images):
    detector = FaceDetector(get_variant("b4-mobile").preprocessing.faces)
    batch = list(images.values())[:6]
    together = detector.detect(batch, [1.0] * len(batch))
    alone = [detector.detect([image], [1.0])[0] for image in batch]
    assert together == alone and any(together)


def test_a_shipped_mtcnn_graph_that_was_changed_is_refused(tmp_path, monkeypatch):
    import shutil

    from deepfake_serving import mtcnn

    shutil.copytree(str(mtcnn.ASSETS), tmp_path / "mtcnn")
    graph = tmp_path / "mtcnn" / "pnet.onnx"
    graph.write_bytes(graph.read_bytes()[:-1] + b"\0")
    monkeypatch.setattr(mtcnn, "ASSETS", tmp_path / "mtcnn")
    with pytest.raises(CheckpointError, match="pnet.onnx has sha256"):
        OnnxMTCNN()


@pytest.fixture(scope="module")
def mobile_bundle(tmp_path_factory):
    directory = tmp_path_factory.mktemp("bundle")
    torch.manual_seed(7)
    checkpoint = directory / "fold.pth"
    torch.save(create_model("b4-mobile").state_dict(), checkpoint)
    write_bundle(directory / "b", "b4-mobile", "1.0", checkpoints=[checkpoint])
    return directory / "b"


def test_onnxruntime_and_torch_engines_agree_per_face(mobile_bundle, astronaut_jpeg, two_faces_jpeg):
    manifest = json.loads((mobile_bundle / MANIFEST_NAME).read_text())
    assert manifest["engine"] == "onnxruntime" and manifest["onnx"]["opset"] == 17
    assert "torch" in manifest["onnx"]["exporter"] and manifest["onnx"]["checkpoints"] == 1
    answers = {engine: load_bundle(mobile_bundle, engine=engine).predict_batch([astronaut_jpeg, two_faces_jpeg])
               for engine in ("onnxruntime", "torch")}
    faces = 0
    for ours, reference in zip(answers["onnxruntime"], answers["torch"]):
        assert [f["box"] for f in ours["faces"]] == [f["box"] for f in reference["faces"]]
        for face, face_ref in zip(ours["faces"], reference["faces"]):
            assert abs(face["fake_probability"] - face_ref["fake_probability"]) <= 1e-3
            assert (face["fake_probability"] > 0.5) == (face_ref["fake_probability"] > 0.5)
            faces += 1
        assert ours["label"] == reference["label"]
    assert faces >= 3


def test_video_engines_agree_with_the_dfdc_reference(tmp_path):
    """The reference procedure with two B7 checkpoints: torch engine to 1e-5 (tests/test_video.py),
    ONNX Runtime to 1e-3."""
    variant = get_variant("b7-dfdc")
    models = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        models.append(create_model("b7-dfdc"))
    clip = samples.encode_video(samples.moving_face_frames(40, faces=2), "mp4")
    sampling = Sampling(frames=6)
    video = decode_video(clip, sampling)
    graph = export_onnx(variant, models, tmp_path / GRAPH_NAME)
    scorer = OnnxScorer(ort_session(graph.read_bytes(), graph.name, sha256_of(graph)), variant, 16)
    ours = VideoPipeline(variant, scorer).analyze_decoded(video, sampling)
    expected, n_faces = dfdc_reference.predict_on_frames(video.frames, models)
    assert ours["metrics"]["faces_classified"] == n_faces == 12
    assert ours["fake_probability"] == pytest.approx(expected, abs=1e-3)


# -- bad graphs and options ---------------------------------------------------------------------------
def replace_graph(bundle, data: bytes) -> None:
    (bundle / GRAPH_NAME).write_bytes(data)
    manifest = json.loads((bundle / MANIFEST_NAME).read_text())
    manifest["onnx"]["sha256"] = sha256_of(bundle / GRAPH_NAME)
    (bundle / MANIFEST_NAME).write_text(json.dumps(manifest))


def copy_bundle(source, target):
    import shutil

    shutil.copytree(source, target)
    return target


def test_a_graph_for_another_input_size_is_refused(mobile_bundle, tmp_path):
    bundle = copy_bundle(mobile_bundle, tmp_path / "b")
    other = get_variant("b7-dfdc")  # 380 px; b4-mobile takes 224
    torch.manual_seed(0)
    replace_graph(bundle, export_onnx(other, [create_model("b7-dfdc")], tmp_path / "other.onnx").read_bytes())
    with pytest.raises(CheckpointError, match=r"classifier.onnx takes input .*380.*needs \[faces, 3, 224, 224\]"):
        load_bundle(bundle)


def test_a_corrupt_graph_is_refused_by_name(mobile_bundle, tmp_path):
    bundle = copy_bundle(mobile_bundle, tmp_path / "b")
    replace_graph(bundle, b"\x08\x07" + b"not a protobuf" * 100)
    with pytest.raises(CheckpointError, match="classifier.onnx is not a usable ONNX graph"):
        load_bundle(bundle)


def test_unknown_and_unavailable_engines_are_refused(mobile_bundle, tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown engine 'tensorrt'; known: onnxruntime, openvino, torch"):
        load_bundle(mobile_bundle, engine="tensorrt")
    with pytest.raises(SystemExit):
        main(["archive", "--variant", "b4-mobile", "--version", "1", "--engine", "tensorrt",
              "--export-path", str(tmp_path)])
    assert "invalid choice: 'tensorrt'" in capsys.readouterr().err
    import onnxruntime

    if "OpenVINOExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(CheckpointError, match="needs onnxruntime-openvino"):
            load_bundle(mobile_bundle, engine="openvino")


# -- torch-free serving path --------------------------------------------------------------------------
def test_the_serving_path_imports_no_torch(mobile_bundle):
    """Image and video pipelines over a bundle on ONNX Runtime, in a fresh interpreter."""
    code = (
        "import sys, json\n"
        "from deepfake_serving import samples\n"
        "from deepfake_serving.bundle import load_bundle, load_video_bundle\n"
        f"image = load_bundle({str(mobile_bundle)!r}).predict(samples.astronaut_jpeg())\n"
        "clip = samples.encode_video(samples.moving_face_frames(8, size=(320, 240)), 'mp4')\n"
        f"video = load_video_bundle({str(mobile_bundle)!r}).analyze(clip)\n"
        "print(json.dumps([image['label'], video['label'], sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'torchvision', 'facenet_pytorch', 'timm'))]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    image_label, video_label, torch_modules = json.loads(out.splitlines()[-1])
    assert image_label in ("REAL", "FAKE") and video_label in ("REAL", "FAKE")
    assert torch_modules == []


def test_video_bundle_on_each_engine_gives_the_same_verdict(mobile_bundle):
    clip = samples.encode_video(samples.moving_face_frames(12, size=(320, 240)), "mp4")
    scores = [load_video_bundle(mobile_bundle, engine=e).analyze(clip)["fake_probability"] for e in ("onnxruntime", "torch")]
    assert scores[0] == pytest.approx(scores[1], abs=1e-3)


# -- the threads rule ---------------------------------------------------------------------------------
def test_threads_are_cores_divided_by_workers(monkeypatch):
    assert [threads_for(2, w) for w in (1, 2, 3)] == [2, 1, 1]
    assert threads_for(8, 3) == 2
    monkeypatch.setenv("DEEPFAKE_CORES", "8")
    monkeypatch.delenv("DEEPFAKE_THREADS", raising=False)
    monkeypatch.setenv("DEEPFAKE_WORKERS", "4")
    assert intra_op_threads() == 2
    assert intra_op_threads(3) == 3  # an archive's handler.threads
    monkeypatch.setenv("DEEPFAKE_THREADS", "5")
    assert intra_op_threads() == 5
    env = worker_environment(4)
    assert env["DEEPFAKE_WORKERS"] == "4" and env["OMP_WAIT_POLICY"] == "PASSIVE" and env["OMP_NUM_THREADS"] == "2"
