"""Hostile media in process: every file fails alone with its own code, and a video's memory follows
the frames in use, not the clip (the served versions of these cases are in test_bad_input_corpus.py)."""

import tracemalloc

import numpy as np
import pytest

from deepfake_serving.core.errors import RequestError
from deepfake_serving.faces import mtcnn
from deepfake_serving.faces.mtcnn import OnnxMTCNN
from deepfake_serving.media import samples
from deepfake_serving.media.video import Sampling, VideoLimits, decode_video
from deepfake_serving.pipeline.image import ImagePipeline
from deepfake_serving.pipeline.video import VideoPipeline
from deepfake_serving.variants import create_model, get_variant
from helpers import media


@pytest.fixture(scope="module")
def images():
    return ImagePipeline(get_variant("b4-mobile"), create_model("b4-mobile"))


@pytest.fixture(scope="module")
def videos():
    return VideoPipeline(get_variant("b4-mobile"), create_model("b4-mobile"))


def test_every_bad_image_fails_alone_in_a_batch_of_good_ones(images, astronaut_jpeg):
    names = list(media.BAD_IMAGES)
    batch = [astronaut_jpeg]
    for name in names:
        batch += [media.BAD_IMAGES[name][0], astronaut_jpeg]
    answers = images.predict_batch(batch)
    for i, answer in enumerate(answers):
        if i % 2 == 0:
            assert isinstance(answer, dict) and answer["face_count"] == 1, answer
        else:
            _, status, code = media.BAD_IMAGES[names[i // 2]]
            assert isinstance(answer, RequestError) and (answer.status, answer.code) == (status, code), names[i // 2]


@pytest.mark.parametrize("name", media.GOOD_IMAGES)
def test_accepted_formats_find_the_face(images, name):
    assert images.predict(media.GOOD_IMAGES[name]())["face_count"] == 1


def test_a_detector_fault_fails_only_its_own_request(images, astronaut_jpeg, monkeypatch):
    """An unexpected exception (not a bad input) for one image: 500 internal_error for it, answers for the rest."""
    odd = samples.encode(samples.astronaut()[:300, :300])
    detect = OnnxMTCNN.detect

    def fails_on_300px(self, image):
        if image.shape[:2] == (300, 300):
            raise RuntimeError("detector fault")
        return detect(self, image)

    monkeypatch.setattr(OnnxMTCNN, "detect", fails_on_300px)
    answers = images.predict_batch([astronaut_jpeg, odd, astronaut_jpeg])
    assert isinstance(answers[1], RequestError) and (answers[1].status, answers[1].code) == (500, "internal_error")
    assert "detector fault" in answers[1].message
    assert all(isinstance(a, dict) and a["face_count"] == 1 for a in (answers[0], answers[2]))


def test_a_classifier_fault_in_a_shared_forward_pass_is_retried_request_by_request(images, astronaut_jpeg,
                                                                                   two_faces_jpeg, monkeypatch):
    classify = images.classify

    def fails_on_batches(crops):
        if len(crops) > 2:
            raise RuntimeError("batch fault")
        return classify(crops)

    monkeypatch.setattr(images, "classify", fails_on_batches)
    answers = images.predict_batch([astronaut_jpeg, two_faces_jpeg])
    assert [a["face_count"] for a in answers] == [1, 2]


@pytest.mark.parametrize("name", media.BAD_VIDEOS)
def test_bad_videos_in_process(videos, name):
    make, status, code = media.BAD_VIDEOS[name]
    clip = samples.encode_video(samples.moving_face_frames(20, size=(320, 240)), "mp4")
    with pytest.raises(RequestError) as err:
        videos.analyze(make(clip), Sampling("all"))
    assert (err.value.status, err.value.code) == (status, code), err.value.message


def test_a_mid_stream_resolution_change_is_refused_at_the_first_big_frame():
    clip = media.resolution_switch_ts(small=20)
    with pytest.raises(RequestError) as err:
        decode_video(clip, Sampling("all"))
    assert err.value.code == "frame_too_large" and "frame 20 is 7680x4320" in err.value.message
    assert "320x240" in err.value.message  # what the header claimed


def test_the_decoded_pixel_budget_counts_every_frame_decoded():
    clip = samples.encode_video(samples.moving_face_frames(40, size=(320, 240)), "mp4")
    budget = 320 * 240 * 30
    assert len(decode_video(clip, Sampling(frames=4), VideoLimits(max_decoded_pixels=320 * 240 * 40)).sampled) == 4
    with pytest.raises(RequestError) as err:  # linspace reads 4 frames but decodes all 40
        decode_video(clip, Sampling(frames=4), VideoLimits(max_decoded_pixels=budget))
    assert err.value.code == "decode_budget_exceeded" and err.value.status == 413


def test_sampling_counts_header_claims_without_building_lists():
    huge = 2**32 - 1
    assert Sampling("all").count(huge) == huge
    assert Sampling("every_nth", every=10).count(huge) == 429496730
    assert Sampling().count(huge) == 32


def test_video_memory_follows_the_chunk_not_the_clip(videos):
    """60 sampled 1080p frames: the pipeline holds about one frame at a time (and its detection copy);
    holding them all (the old decoder) would be 60 frames' worth of numpy memory."""
    frames = 60
    clip = samples.encode_video(samples.moving_face_frames(frames, size=(1920, 1080)), "mp4")
    frame_bytes = 1920 * 1080 * 3
    tracemalloc.start()
    try:
        result = videos.analyze(clip, Sampling("all"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result["frames_analyzed"] == frames and result["metrics"]["total_faces_detected"] >= frames
    assert peak < 6 * frame_bytes, f"peak {peak / frame_bytes:.1f} frames"


def test_decoding_stops_at_the_last_selected_frame():
    assert [Sampling(s, frames=4, every=7).last(20) for s in ("linspace", "every_nth", "all")] == [19, 14, 19]
    assert Sampling("every_nth", every=100).last(48) == 0


def reference_nms(boxes, scores, threshold):
    """torchvision's greedy NMS as a plain loop (what mtcnn.nms computed before it was vectorised)."""
    x1, y1, x2, y2 = (boxes[:, k] for k in range(4))
    areas = (x2 - x1) * (y2 - y1)
    order = np.argsort(-scores, kind="stable")
    suppressed, keep = np.zeros(len(scores), bool), []
    for pos, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(i)
        rest = order[pos + 1:]
        w = np.maximum(np.float32(0), np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(np.float32(0), np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        suppressed[rest[inter / (areas[i] + areas[rest] - inter) > np.float32(threshold)]] = True
    return np.array(keep, dtype=np.int64)


@pytest.mark.parametrize("count", [0, 1, 7, 600, 1500])
def test_vectorised_nms_keeps_what_the_greedy_loop_keeps(count):
    rng = np.random.default_rng(count)
    corners = rng.uniform(0, 300, (count, 2)).astype(np.float32)
    boxes = np.concatenate([corners, corners + rng.uniform(1, 60, (count, 2)).astype(np.float32)], axis=1)
    scores = rng.uniform(0.6, 1, count).astype(np.float32)
    scores[: count // 3] = scores[count // 3: 2 * (count // 3)]  # ties keep their order
    for threshold in (0.5, 0.7):
        np.testing.assert_array_equal(mtcnn.nms(boxes, scores, threshold), reference_nms(boxes, scores, threshold))


def test_tiled_faces_are_detected_within_the_stage_caps():
    """625 faces tiled at 40 px asked R-net for ~8,900 boxes and O-net for ~3,900 in one call each (9 s,
    3.4 GB here); the caps take the best-scoring ones, in chunks."""
    detector = OnnxMTCNN()
    sizes = []
    run = detector._run
    detector._run = lambda net, batch: sizes.append((net, len(batch))) or run(net, batch)
    boxes, probs = detector.detect(media.tiled_faces())
    assert 100 < len(boxes) <= mtcnn.MAX_ONET_CANDIDATES and (probs > 0.7).all()
    assert sum(n for net, n in sizes if net == "rnet") == mtcnn.MAX_RNET_CANDIDATES
    assert sum(n for net, n in sizes if net == "onet") == mtcnn.MAX_ONET_CANDIDATES
    assert max(n for net, n in sizes if net != "pnet") <= max(mtcnn.CHUNKS.values())
    assert detector.candidates == mtcnn.MAX_RNET_CANDIDATES + mtcnn.MAX_ONET_CANDIDATES


def test_the_detection_budget_refuses_a_clip_of_tiled_faces(videos):
    lean = VideoPipeline(get_variant("b4-mobile"), videos.classifier, limits=VideoLimits(max_detector_candidates=3000))
    clip = media.tiled_faces_clip(frames=3, size=(1280, 720))
    with pytest.raises(RequestError) as err:
        lean.analyze(clip, Sampling("all"))
    assert (err.value.code, err.value.status) == ("detection_budget_exceeded", 413)
    assert "by frame 1" in err.value.message
    honest = samples.encode_video(samples.moving_face_frames(3, size=(1280, 720), faces=2), "mp4")
    assert lean.analyze(honest, Sampling("all"))["frames_analyzed"] == 3
