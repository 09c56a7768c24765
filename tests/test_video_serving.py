"""Videos through a real TorchServe: REST body and multipart, gRPC, streamed progress, bad input,
and the CLI's visualisation of a served answer."""

import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import requests

from deepfake_serving.cli import main
from deepfake_serving.media import samples
from deepfake_serving.serving.launch.archive import build_archive
from deepfake_serving.serving.launch.torchserve import Ports, TorchServe
from helpers import media

pytestmark = pytest.mark.server
VIDEO = "b4-mobile-video"
IMAGE = "b4-mobile"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    store = tmp_path_factory.mktemp("model_store")
    video = build_archive(IMAGE, "1.0", export_path=store, media="video")
    image = build_archive(IMAGE, "1.0", export_path=store)
    ts = TorchServe(store, tmp_path_factory.mktemp("ts"), models=[f"{VIDEO}={video.name}", f"{IMAGE}={image.name}"],
                    ports=Ports.free())
    yield ts.start()
    ts.stop()


@pytest.fixture(scope="module")
def clip():
    return samples.encode_video(samples.moving_face_frames(48, faces=2, no_face_between=(16, 24)), "mp4")


def test_rest_and_grpc_give_the_same_video_answer(rest, grpc_client, clip):
    over_rest = rest.predict(VIDEO, clip)
    over_grpc = grpc_client.predict(VIDEO, clip)
    assert over_rest.status == over_grpc.status == 200
    body = over_rest.body
    assert body["media_type"] == "video" and body["frame_count"] == 48 and body["frames_analyzed"] == 32
    assert body["label"] in ("FAKE", "REAL") and body["metrics"]["total_faces_detected"] > 40
    assert [f["index"] for f in body["frames"]] == [f["index"] for f in over_grpc.body["frames"]]
    assert over_grpc.body["fake_probability"] == pytest.approx(body["fake_probability"], abs=1e-6)
    no_face_frames = [f for f in body["frames"] if 16 <= f["index"] < 24]
    assert no_face_frames and all(f["score"] is None for f in no_face_frames)


def test_sampling_per_request_over_headers_multipart_and_grpc(server, rest, grpc_client, clip):
    assert rest.predict(VIDEO, clip, options={"sampling": "every_nth", "every": 6}).body["frames_analyzed"] == 8
    url = f"{server.inference_url}/predictions/{VIDEO}"
    multipart = requests.post(url, files={"data": ("clip.mp4", clip)}, data={"sampling": "all"}, timeout=300,
                              headers=server.keys.headers("inference"))
    assert multipart.status_code == 200 and multipart.json()["frames_analyzed"] == 48
    assert grpc_client.predict(VIDEO, clip, options={"frames": 4}).body["frames_analyzed"] == 4


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_progress_is_streamed_and_the_last_message_is_the_result(rest, grpc_client, clip, protocol):
    client = rest if protocol == "rest" else grpc_client
    messages = [m.body for m in client.stream(VIDEO, clip, options={"sampling": "all"})]
    assert messages[0]["event"] == "decoded" and messages[0]["frames_total"] == 48
    detect = [m["frames_done"] for m in messages if m.get("phase") == "detect"]
    assert detect == [8, 16, 24, 32, 40, 48]
    final = messages[-1]
    assert final["media_type"] == "video" and final["frames_analyzed"] == 48


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
@pytest.mark.parametrize("name", media.BAD_VIDEOS)
def test_bad_videos_get_json_errors_and_the_worker_survives(server, rest, grpc_client, clip, name, protocol):
    make, status, code = media.BAD_VIDEOS[name]
    client = rest if protocol == "rest" else grpc_client
    pids = server.worker_pids(VIDEO)
    answer = client.predict(VIDEO, make(clip), options={"sampling": "all"})
    assert (answer.status, answer.body["error"]["code"]) == (status, code), answer.body
    assert answer.body["error"]["message"]
    assert rest.predict(VIDEO, clip, options={"frames": 2}).status == 200
    assert server.worker_pids(VIDEO) == pids


def test_a_video_sent_to_the_image_model_is_refused(rest, clip, astronaut_jpeg):
    answer = rest.predict(IMAGE, clip)
    assert (answer.status, answer.body["error"]["code"]) == (415, "video_sent_to_image_endpoint")
    assert answer.body["error"]["message"].endswith(f"send videos to {IMAGE}-video")  # the real name
    assert rest.predict(IMAGE, astronaut_jpeg).status == 200


def test_bad_sampling_and_limits(rest, clip):
    assert rest.predict(VIDEO, clip, options={"sampling": "sometimes"}).body["error"]["code"] == "bad_sampling"
    assert rest.predict(VIDEO, clip, options={"frames": "many"}).status == 400
    assert rest.predict(VIDEO, clip, options={"sampling": "every_nth", "every": 0}).status == 400


def test_rotated_and_variable_frame_rate_clips(rest):
    rotated, _ = media.rotated_video()
    body = rest.predict(VIDEO, rotated, options={"frames": 4}).body
    assert body["video"]["rotation"] == -90 and (body["video"]["width"], body["video"]["height"]) == (240, 320)
    stamps = [i * 0.04 + (0.5 if i >= 10 else 0.0) for i in range(20)]
    vfr = samples.encode_video(samples.moving_face_frames(20), "mkv", timestamps=stamps)
    body = rest.predict(VIDEO, vfr, options={"sampling": "all"}).body
    assert body["frames"][10]["timestamp"] == pytest.approx(0.90, abs=1e-3)


def test_cli_predicts_with_progress_and_visualises_the_saved_answer(server, clip, tmp_path, capsys):
    path = tmp_path / "clip.mp4"
    path.write_bytes(clip)
    saved = tmp_path / "answer.json"
    assert main(["predict", str(path), "--url", server.inference_url, "--stream", "--save", str(saved)]) == 0
    answer = json.loads(saved.read_text())
    assert answer["model"] == VIDEO and answer["status"] == 200
    assert "analysing" in capsys.readouterr().err  # the progress bar
    assert main(["visualize", str(saved), str(path), "--out", str(tmp_path / "vis")]) == 0
    import av
    with av.open(str(tmp_path / "vis_overlay.mp4")) as rendered:
        frames = [f.to_ndarray(format="rgb24") for f in rendered.decode(video=0)]
    assert len(frames) == 48
    # The suspicion bar: grey where no face was found, coloured elsewhere.
    assert abs(int(frames[20][-5, 5, 0]) - 128) < 12 and abs(int(frames[20][-5, 5, 1]) - 128) < 12
    assert abs(int(frames[2][-5, 5, 0]) - int(frames[2][-5, 5, 1])) > 40 or frames[2][-5, 5, 2] < 40
    assert (tmp_path / "vis_scores.png").stat().st_size > 5000


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_a_stream_whose_worker_dies_ends_with_an_error_event(server, rest, grpc_client, clip, protocol):
    """Kill the video worker after the first progress event: the client's last message is an error."""
    client = rest if protocol == "rest" else grpc_client
    long_clip = samples.encode_video(samples.moving_face_frames(160, size=(640, 480)), "mp4")
    (pid,) = server.worker_pids(VIDEO)
    messages = []
    for message in client.stream(VIDEO, long_clip, options={"sampling": "all"}):
        messages.append(message)
        if message.body.get("phase") == "detect" and len(messages) == 2:
            os.kill(pid, signal.SIGKILL)
    assert messages[0].body["event"] == "decoded"
    last = messages[-1]
    assert (last.status, last.body["error"]["code"]) == (502, "stream_interrupted"), last.body
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:  # TorchServe starts a new worker
        if rest.predict(VIDEO, clip, options={"frames": 2}).status == 200:
            break
        time.sleep(1)
    assert server.worker_pids(VIDEO) not in ([], [pid])


def peak_rss_during(pid: int, call):
    """(result of call(), peak RSS in bytes of process ``pid`` while it ran, sampled every 50 ms)."""
    worker, peak, done = psutil.Process(pid), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak.append(worker.memory_info().rss)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        return call(), max(peak)
    finally:
        done.set()
        sampler.join()


def test_a_4k_clip_analysed_whole_stays_within_the_memory_budget(server, rest):
    """60 4K frames with sampling=all: the worker holds about one frame at a time. Holding them all (the
    decoder before) would add 60 x 25 MB = 1.5 GB; the documented budget is 2 GB per worker."""
    clip = samples.encode_video(samples.moving_face_frames(60, size=(3840, 2160)), "mp4")
    (pid,) = server.worker_pids(VIDEO)
    before = psutil.Process(pid).memory_info().rss
    answer, peak = peak_rss_during(pid, lambda: rest.predict(VIDEO, clip, options={"sampling": "all"}))
    assert answer.status == 200 and answer.body["frames_analyzed"] == 60
    print(f"worker RSS {before / 2**20:.0f} MB before, peak {peak / 2**20:.0f} MB")
    assert peak < 2 * 2**30 and peak - before < 2**30  # 616 MB in the recorded run; all frames: > 1.5 GB


def test_the_decoded_pixel_budget_is_set_per_archive(server, rest, clip, tmp_path):
    """An archive built with a budget of 20 frames of 640x480: a sampling that decodes the whole 48-frame
    clip is refused, one that stops after frame 0 is answered."""
    assert main(["archive", "--variant", IMAGE, "--media", "video", "--version", "1.0", "--model-name", "lean-video",
                 "--max-decoded-pixels", str(640 * 480 * 20), "--export-path", str(server.model_store)]) == 0
    server.register("lean-video-v1.0.mar")
    refused = rest.predict("lean-video", clip, options={"frames": 2})
    assert (refused.status, refused.body["error"]["code"]) == (413, "decode_budget_exceeded")
    assert rest.predict("lean-video", clip, options={"sampling": "every_nth", "every": 100}).status == 200


def test_tiled_faces_stay_within_the_memory_budget_and_the_next_answer_is_good(server, rest, astronaut_jpeg):
    """A 1024x1024 PNG of 625 tiled faces took an image worker from 0.9 to 3.9 GB, and an 8-frame 1080p
    clip of such frames a video worker to 4.0 GB; MTCNN's stage caps and chunks keep both under 2 GB."""
    for model, data in ((IMAGE, media.tiled_faces_png()), (VIDEO, media.tiled_faces_clip())):
        (pid,) = server.worker_pids(model)
        before = psutil.Process(pid).memory_info().rss
        answer, peak = peak_rss_during(pid, lambda: rest.predict(model, data))
        print(f"{model}: worker RSS {before / 2**20:.0f} MB before, peak {peak / 2**20:.0f} MB")
        assert answer.status == 200, answer.body
        faces = answer.body["faces"] if model == IMAGE else answer.body["frames"][0]["faces"]
        assert len(faces) > 20
        assert peak < 2 * 2**30
        assert server.worker_pids(model) == [pid]
    assert rest.predict(IMAGE, astronaut_jpeg).status == 200


def test_an_explanation_batched_with_predictions_is_answered_alone(server, astronaut_jpeg, clip):
    """TorchServe's base handler reads request 0's explain flag for the whole batch: one /explanations
    request turned every prediction batched with it into an explanation (or, without an explainer, a 503).
    Each request is answered as it asked; a video model explains the faces that decided its verdict."""
    url = server.inference_url
    headers = {"Content-Type": "application/octet-stream", **server.keys.headers("inference")}
    for _ in range(3):
        start = threading.Barrier(8)

        def send(path):
            start.wait()
            return requests.post(f"{url}/{path}/{IMAGE}", data=astronaut_jpeg, headers=headers, timeout=300)

        with ThreadPoolExecutor(8) as pool:
            explained = pool.submit(send, "explanations")
            predicted = [pool.submit(send, "predictions") for _ in range(7)]
            answers = [p.result() for p in predicted]
        assert [a.status_code for a in answers] == [200] * 7
        assert not [a for a in answers if "explanation" in a.json()]
        assert explained.result().status_code == 200 and explained.result().json()["explanation"]["faces_explained"] == 1
    video = requests.post(f"{url}/explanations/{VIDEO}", data=clip, headers=headers, timeout=300)
    assert video.status_code == 200, video.text
    shown = [face for frame in video.json()["frames"] for face in frame["faces"] if "explanation" in face]
    assert video.json()["explanation"]["faces_explained"] == len(shown) >= 1
