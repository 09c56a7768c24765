"""Video decoding, sampling and the in-process video pipeline on real encoded videos."""

import numpy as np
import pytest
import torch

from deepfake_serving.core.errors import RequestError
from deepfake_serving.media import samples
from deepfake_serving.media.video import Sampling, VideoLimits, decode_video
from deepfake_serving.pipeline.video import VideoPipeline
from deepfake_serving.variants import create_model, get_variant
from helpers import dfdc_reference, media


def test_linspace_matches_the_dfdc_indices():
    assert Sampling().indices(300) == [int(i) for i in np.linspace(0, 299, 32)]
    assert Sampling().indices(300)[:4] == [0, 9, 19, 28] and Sampling().indices(300)[-1] == 299
    # Short clips: repeats dropped, every distinct frame read.
    assert Sampling().indices(10) == list(range(10))
    assert Sampling("every_nth", every=7).indices(20) == [0, 7, 14]
    assert Sampling("all").indices(5) == [0, 1, 2, 3, 4]
    assert Sampling().indices(0) == []


@pytest.mark.parametrize("fmt", ["mp4", "avi", "mov", "webm", "mkv"])
def test_every_container_decodes_the_sampled_frames(fmt):
    frames = samples.moving_face_frames(40, size=(320, 240))
    video = decode_video(samples.encode_video(frames, fmt), Sampling(frames=8))
    assert video.info.frame_count == 40 and video.info.fps == pytest.approx(25)
    assert video.indices == Sampling(frames=8).indices(40)
    assert video.timestamps[1] == pytest.approx(video.indices[1] / 25, abs=1e-3)
    for index, frame in zip(video.indices, video.frames):
        assert frame.shape == (240, 320, 3)
        assert np.abs(frame.astype(int) - frames[index]).mean() < 8  # lossy codecs


def test_variable_frame_rate_timestamps_come_from_the_stream():
    stamps = [i * 0.04 + (0.5 if i >= 10 else 0.0) for i in range(20)]
    video = decode_video(samples.encode_video(samples.moving_face_frames(20, size=(320, 240)), "mkv",
                                              timestamps=stamps), Sampling("all"))
    assert video.timestamps[9] == pytest.approx(0.36, abs=1e-3)
    assert video.timestamps[10] == pytest.approx(0.90, abs=1e-3)


def error_of(data, sampling=Sampling(), limits=VideoLimits()):
    with pytest.raises(RequestError) as err:
        decode_video(data, sampling, limits)
    return err.value


def test_bad_videos_get_clear_errors():
    clip = samples.encode_video(samples.moving_face_frames(20, size=(320, 240)), "mp4")
    assert error_of(b"").code == "empty_body"
    assert error_of(b"no video here at all, just text").status == 415
    assert error_of(samples.astronaut_jpeg()).code == "image_sent_to_video_endpoint"
    assert error_of(media.audio_only("mp4")).code == "no_video_stream"
    assert error_of(media.audio_only("mp4")).status == 422
    assert error_of(media.zero_frame_video()).code == "empty_video"
    truncated = error_of(clip[: len(clip) // 3])
    assert (truncated.status, truncated.code) == (400, "corrupt_video")
    assert error_of(clip, limits=VideoLimits(max_duration_s=0.5)).code == "video_too_long"
    assert error_of(clip, limits=VideoLimits(max_bytes=1000)).status == 413
    assert error_of(clip, Sampling("bogus")).code == "bad_sampling"
    assert error_of(clip, Sampling("all"), VideoLimits(max_frames_analyzed=10)).code == "too_many_frames"


def test_a_clip_cut_short_is_analysed_as_far_as_it_decodes():
    clip = samples.encode_video(samples.moving_face_frames(60, size=(320, 240)), "webm")
    video = decode_video(clip[: int(len(clip) * 0.6)], Sampling("all"))
    assert 0 < len(video.frames) < 60 and video.info.notes


def test_rotation_metadata_turns_frames_upright():
    clip, upright = media.rotated_video()
    video = decode_video(clip, Sampling(frames=4))
    assert video.info.rotation == -90  # FFmpeg: degrees counter-clockwise
    for index, frame in zip(video.indices, video.frames):
        assert frame.shape == (320, 240, 3)
        assert np.abs(frame.astype(int) - upright[index]).mean() < 8


def test_4k_frames_decode():
    clip = samples.encode_video(samples.moving_face_frames(3, size=(3840, 2160)), "mp4")
    video = decode_video(clip, Sampling(frames=2))
    assert video.frames[0].shape == (2160, 3840, 3)
    assert error_of(clip, limits=VideoLimits(max_pixels=1920 * 1080)).code == "frame_too_large"


@pytest.fixture(scope="module")
def mobile_video():
    return VideoPipeline(get_variant("b4-mobile"), create_model("b4-mobile"), version="1.0")


def test_video_pipeline_faces_stretches_without_faces_and_progress(mobile_video):
    clip = samples.encode_video(samples.moving_face_frames(48, faces=2, no_face_between=(16, 24)), "mp4")
    events = []
    result = mobile_video.analyze(clip, Sampling("all"), progress=events.append, progress_every=8)
    assert result["frame_count"] == 48 and result["frames_analyzed"] == 48
    for frame in result["frames"]:
        if 16 <= frame["index"] < 24:
            assert frame["faces"] == [] and frame["score"] is None
        else:
            assert len(frame["faces"]) == 2
            assert frame["score"] == max(f["fake_probability"] for f in frame["faces"])
    assert result["metrics"]["total_faces_detected"] == 80
    assert result["metrics"]["faces_classified"] == 80
    assert result["label"] in ("FAKE", "REAL")
    detect_events = [e["frames_done"] for e in events if e.get("phase") == "detect"]
    assert detect_events == [8, 16, 24, 32, 40, 48]


def test_the_face_pool_is_capped(mobile_video):
    clip = samples.encode_video(samples.moving_face_frames(72, faces=2), "mp4")
    result = mobile_video.analyze(clip, Sampling("all"))
    assert result["metrics"]["total_faces_detected"] > 127
    assert result["metrics"]["faces_classified"] == 127
    assert any("127" in note for note in result["notes"])


def test_no_face_video_gets_no_verdict(mobile_video):
    clip = samples.encode_video([samples.moving_face_frames(1, no_face_between=(0, 1))[0]] * 10, "mp4")
    result = mobile_video.analyze(clip)
    assert result["label"] == "NO_FACE" and result["fake_probability"] is None and result["notes"]


@pytest.mark.parametrize("engine, tolerance", [("torch", 1e-5), ("onnxruntime", 1e-3), ("auto", 1e-3)])
def test_video_score_equals_the_dfdc_reference_procedure(tmp_path, engine, tolerance):
    """Same two B7 checkpoints, same frames: our pipeline and the reference give the same score, to 1e-5
    on the torch engine and to 1e-3 on ONNX Runtime (the checkpoints exported as one graph) and on what an
    archive serves by default (bf16 on OpenVINO on a CPU with bf16 units)."""
    from deepfake_serving.builder.export import export_onnx
    from deepfake_serving.core.digest import sha256_of
    from deepfake_serving.engines import Device
    from deepfake_serving.engines.onnx_runtime import OrtGraph
    from deepfake_serving.engines.scorers import GraphScorer

    variant = get_variant("b7-dfdc")
    models = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        models.append(create_model("b7-dfdc"))
    clip = samples.encode_video(samples.moving_face_frames(40, faces=2), "mp4")
    sampling = Sampling(frames=6)
    video = decode_video(clip, sampling)
    scorer = models
    if engine == "onnxruntime":
        graph = export_onnx(variant, models, tmp_path / "classifier.onnx")
        scorer = GraphScorer(OrtGraph(graph.read_bytes(), graph.name, sha256_of(graph), None, Device()), variant, 4)
    elif engine == "auto":
        from deepfake_serving.builder.write import write_bundle
        from deepfake_serving.bundle import Bundle

        checkpoints = [tmp_path / f"{seed}.pth" for seed in (1, 2)]
        for model, path in zip(models, checkpoints):
            torch.save(model.state_dict(), path)
        decision = write_bundle(tmp_path / "bundle", "b7-dfdc", "1", checkpoints=checkpoints).engine_decision
        assert decision["engine"] == ("openvino" if decision["cpu"]["bf16_units"] else "onnxruntime")
        scorer = Bundle.open(tmp_path / "bundle").scorer()
    ours = VideoPipeline(variant, scorer).analyze_decoded(video, sampling)
    expected, n_faces = dfdc_reference.predict_on_frames(video.frames, models)
    assert ours["metrics"]["faces_classified"] == n_faces == 12
    assert ours["checkpoints_averaged"] == 2
    assert ours["fake_probability"] == pytest.approx(expected, abs=tolerance)
