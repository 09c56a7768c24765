"""Hostile media in process: every file fails alone with its own code, and a video's memory follows
the frames in use, not the clip (the served versions of these cases are in test_bad_input_corpus.py)."""

import tracemalloc

import pytest

from deepfake_serving import samples
from deepfake_serving.errors import RequestError
from deepfake_serving.mtcnn import OnnxMTCNN
from deepfake_serving.pipeline import ImagePipeline
from deepfake_serving.variants import create_model, get_variant
from deepfake_serving.video import Sampling, VideoLimits, decode_video
from deepfake_serving.video_pipeline import VideoPipeline
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
