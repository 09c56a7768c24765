"""The seams the next issues build on: one Bundle (manifest read once, each file checked once), detection
once with crops per variant, video sources from a file path, stage observers, batch isolation."""

import os

import numpy as np
import pytest

from deepfake_serving.builder.write import write_bundle
from deepfake_serving.bundle import Bundle, BundleManifest, load
from deepfake_serving.core import batching, observe
from deepfake_serving.core.batching import in_place, isolated
from deepfake_serving.core.errors import RequestError
from deepfake_serving.engines import onnx_runtime
from deepfake_serving.faces.detector import FaceDetector
from deepfake_serving.media import samples
from deepfake_serving.media.image import decode_image
from deepfake_serving.media.video import VideoSource
from deepfake_serving.pipeline import load_image_pipeline, load_video_pipeline
from deepfake_serving.pipeline.image import ImagePreprocessor
from deepfake_serving.variants import get_variant


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("seams") / "b"
    write_bundle(directory, "b4-mobile", "1.0", seed=3)
    return directory


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    path.write_bytes(samples.encode_video(samples.moving_face_frames(20, size=(320, 240)), "mp4"))
    return path


def counting(monkeypatch, module, name):
    calls = []
    original = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


@pytest.mark.parametrize("engine", ["onnxruntime", "torch"])
def test_a_bundle_reads_its_manifest_once_and_checks_each_file_once(bundle_dir, monkeypatch, engine):
    reads = counting(monkeypatch, BundleManifest, "read")
    files = counting(monkeypatch, load, "check_file")
    engines_bytes = counting(monkeypatch, onnx_runtime, "check_bytes")  # the graph, checked on the bytes it runs
    pipeline = load_image_pipeline(bundle_dir, engine=engine)
    assert pipeline.predict(samples.astronaut_jpeg())["face_count"] == 1
    assert len(reads) == 1
    manifest = Bundle.open(bundle_dir).manifest
    checked = [entry["file"] for _, entry in files] + [name for _, name, _ in engines_bytes if name == "classifier.onnx"]
    assert sorted(checked) == sorted(entry["file"] for entry in manifest.files)  # every file, each once


def test_a_bundle_for_another_variant_is_refused_whole(bundle_dir, tmp_path):
    tampered = tmp_path / "b"
    tampered.mkdir()
    for path in bundle_dir.iterdir():
        (tampered / path.name).write_bytes(path.read_bytes())
    weights = tampered / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(ValueError, match="weights.safetensors has sha256"):
        Bundle.open(tampered).scorer()  # the graph engine does not read the weights, and still refuses them


def test_one_detection_gives_crops_for_variants_of_other_sizes_and_rules(monkeypatch, astronaut_jpeg):
    image = decode_image(astronaut_jpeg)
    mobile, keras = get_variant("b4-mobile"), get_variant("b4-keras-head")  # 224 isotropic 1/10; 380 stretch 1/3
    detector = FaceDetector(mobile.preprocessing.faces)
    runs = counting(monkeypatch, detector.mtcnn, "detect")
    found = detector.find(image, 1.0)
    assert len(runs) == 1
    per_variant = {}
    for variant in (mobile, keras):
        kept, crops = found.crops(variant.preprocessing)
        size = variant.preprocessing.input_size
        assert len(kept) == 1 and crops[0].shape == (size, size, 3)
        (alone,) = ImagePreprocessor(variant).prepare([astronaut_jpeg])  # what the variant's own stage cuts
        np.testing.assert_array_equal(crops[0], alone.crops[0])
        per_variant[variant.name] = crops[0]
    assert len(runs) == 1  # both variants' crops came from the one detection
    found.release()
    with pytest.raises(ValueError, match="released"):
        found.crops(mobile.preprocessing)


def test_a_video_from_a_file_path_gets_the_answer_of_its_bytes_and_the_same_limits(bundle_dir, clip, tmp_path):
    from deepfake_serving.media.video import VideoLimits

    pipeline = load_video_pipeline(bundle_dir)
    from_path, from_bytes = pipeline.analyze(clip), pipeline.analyze(clip.read_bytes())
    for answer in (from_path, from_bytes):
        answer.pop("timings_ms")
    assert from_path == from_bytes and from_path["frames_analyzed"] > 0
    assert VideoSource.of(clip).data is None  # read by the demuxer as it goes, never whole
    small = load_video_pipeline(bundle_dir, limits=VideoLimits(max_bytes=clip.stat().st_size - 1))
    with pytest.raises(RequestError) as refused:
        small.analyze(clip)
    assert refused.value.code == "body_too_large"
    fifo = tmp_path / "upload.mp4"
    os.mkfifo(fifo)
    with pytest.raises(RequestError) as refused:  # refused at once: opening a FIFO would block forever
        pipeline.analyze(fifo)
    assert refused.value.code == "unsupported_media"


def test_stage_observers_see_every_stage_and_outcome(bundle_dir, clip, astronaut_jpeg):
    image = load_image_pipeline(bundle_dir)
    events = []
    unsubscribe = image.observers.subscribe(events.append)
    answers = image.predict_batch([astronaut_jpeg, b"not an image"])
    assert isinstance(answers[1], RequestError)
    stages = [(e.stage, e.outcome, e.faces) for e in events]
    assert ("decode", "ok", 0) in stages and ("decode", answers[1].code, 0) in stages
    assert ("detect", "ok", 1) in stages and ("crop", "ok", 1) in stages and ("classify", "ok", 1) in stages
    assert all(e.pipeline == "image" and e.model == "b4-mobile" and e.ms >= 0 for e in events)
    unsubscribe()
    image.predict(astronaut_jpeg)
    assert len(events) == len(stages)  # nothing after unsubscribing

    video = load_video_pipeline(bundle_dir)
    seen = []
    video.observers.subscribe(seen.append)
    video.observers.subscribe(lambda event: 1 / 0)  # a broken subscriber never fails the request
    answer = video.analyze(clip)
    assert [e.stage for e in seen] == list(observe.STAGES)
    assert {e.frames for e in seen} == {answer["frames_analyzed"]}
    with pytest.raises(RequestError):
        video.analyze(b"\x1a\x45\xdf\xa3 not a matroska file")
    assert (seen[-1].stage, seen[-1].outcome) == ("decode", "corrupt_video")


def test_observers_cost_nothing_when_nobody_listens(bundle_dir, monkeypatch, astronaut_jpeg):
    def never(*args, **kwargs):
        raise AssertionError("an event was built with no subscriber")

    monkeypatch.setattr(observe, "StageEvent", never)
    assert load_image_pipeline(bundle_dir).predict(astronaut_jpeg)["face_count"] == 1


def test_batch_isolation_runs_once_then_item_by_item():
    calls = []

    def batch(items):
        calls.append(list(items))
        if 0 in items:
            raise ZeroDivisionError
        return [10 / x for x in items]

    assert isolated([1, 2], lambda x: 10 / x, batch) == [10.0, 5.0] and calls == [[1, 2]]
    answers = isolated([1, 0, 5], lambda x: 10 / x, batch)
    assert answers[0] == 10.0 and isinstance(answers[1], ZeroDivisionError) and answers[2] == 2.0
    refused = RequestError("empty_body", "x")
    assert in_place([refused, 4, 2], lambda items: [x * 2 for x in items]) == [refused, 8, 4]
    failed = in_place([1, refused], lambda items: 1 / 0)
    assert isinstance(failed[0], ZeroDivisionError) and failed[1] is refused
    assert batching.isolated([], lambda x: x) == []
