"""A real TorchServe serving real archives: REST, gRPC, versions, batching, bad inputs."""

import http.server
import json
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import requests
import torch

from deepfake_serving.cli import main
from deepfake_serving.media import samples
from deepfake_serving.pipeline.image import ImagePipeline
from deepfake_serving.serving.client.clients import NO_RETRY, GrpcClient, RestClient, TritonClient
from deepfake_serving.serving.client.grpc_stubs import management_pb2, management_pb2_grpc
from deepfake_serving.serving.launch.archive import build_archive
from deepfake_serving.serving.launch.processes import free_ports
from deepfake_serving.serving.launch.torchserve import Ports, TorchServe
from deepfake_serving.variants import create_model, get_variant
from helpers import box_inside, media
from helpers.metrics import grown, metric_samples

pytestmark = pytest.mark.server
MODEL = "b4-mobile"
ENSEMBLE = "mobile-ff"


@pytest.fixture(scope="module")
def ff_checkpoint(tmp_path_factory):
    """A user checkpoint in seed 003/004's {'model_state_dict': ...} layout."""
    torch.manual_seed(11)
    path = tmp_path_factory.mktemp("ckpt") / "best_deepfake_detector.pth"
    torch.save({"epoch": 9, "model_state_dict": create_model("b4-ff").state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory, ff_checkpoint):
    store = tmp_path_factory.mktemp("model_store")
    v1 = build_archive(MODEL, "1.0", export_path=store, seed=0)
    v2 = build_archive(MODEL, "2.0", export_path=store, seed=1)
    ff = build_archive("b4-ff", "1.0", checkpoints=[str(ff_checkpoint)], export_path=store,
                       engine="onnxruntime")  # fp32: the checkpoint test compares with torch to 1e-5
    ts = TorchServe(store, tmp_path_factory.mktemp("ts"), models=[f"{MODEL}={v1.name}"], ports=Ports.free())
    ts.start()
    ts.register(v2.name)  # over the management API, next to the serving version
    ts.register(ff.name)
    assert main(["ensemble", "--name", ENSEMBLE, "--version", "1.0", "--member", "b4-mobile", "--member",
                 f"b4-ff={ff_checkpoint}", "--engine", "onnxruntime", "--export-path", str(store)]) == 0
    ts.register(f"{ENSEMBLE}-v1.0.mar")
    # the same members as a video archive, packaged again rather than rebuilt
    assert main(["ensemble", "--name", f"{ENSEMBLE}-video", "--version", "1.0", "--media", "video", "--archive",
                 str(store / f"{ENSEMBLE}-v1.0.mar"), "--export-path", str(store)]) == 0
    ts.register(f"{ENSEMBLE}-video-v1.0.mar")
    yield ts
    ts.stop()


def test_rest_astronaut(rest, astronaut_jpeg):
    answer = rest.predict(MODEL, astronaut_jpeg)
    assert answer.status == 200
    body = answer.body
    assert body["model"] == MODEL and body["version"] == "1.0" and body["weights_trained"] is False
    assert body["face_count"] == 1 and box_inside(body["faces"][0]["box"], samples.ASTRONAUT_FACE_REGION)
    assert body["label"] in ("FAKE", "REAL") and 0 <= body["fake_probability"] <= 1


def test_content_type_is_json(server, astronaut_jpeg):
    response = requests.put(f"{server.inference_url}/predictions/{MODEL}", data=astronaut_jpeg, timeout=60,
                            headers=server.keys.headers("inference"))
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("application/json")


def test_grpc_gives_the_rest_answer(rest, grpc_client, astronaut_jpeg, two_faces_jpeg, no_face_jpeg):
    for image, faces in ((astronaut_jpeg, 1), (two_faces_jpeg, 2), (no_face_jpeg, 0)):
        over_rest, over_grpc = rest.predict(MODEL, image), grpc_client.predict(MODEL, image)
        assert over_rest.status == over_grpc.status == 200
        assert over_grpc.body["face_count"] == faces
        assert [f["box"] for f in over_grpc.body["faces"]] == [f["box"] for f in over_rest.body["faces"]]
        assert over_grpc.body["fake_probability"] == pytest.approx(over_rest.body["fake_probability"], abs=1e-6)


def test_two_faces_and_no_face(rest, two_faces_jpeg, no_face_jpeg):
    two = rest.predict(MODEL, two_faces_jpeg).body
    assert two["face_count"] == 2
    assert sorted((f["box"][0] + f["box"][2]) / 2 < 512 for f in two["faces"]) == [False, True]
    none = rest.predict(MODEL, no_face_jpeg)
    assert none.status == 200 and none.body["label"] == "NO_FACE" and none.body["fake_probability"] is None


def test_two_versions_and_set_default(server, rest, astronaut_jpeg):
    v1 = rest.predict(MODEL, astronaut_jpeg, version="1.0").body
    v2 = rest.predict(MODEL, astronaut_jpeg, version="2.0").body
    assert (v1["version"], v2["version"]) == ("1.0", "2.0")
    assert v1["fake_probability"] != v2["fake_probability"]  # different weights
    assert rest.predict(MODEL, astronaut_jpeg).body["version"] == "1.0"  # the first registered is default
    try:
        server.set_default(MODEL, "2.0")
        assert rest.predict(MODEL, astronaut_jpeg).body["version"] == "2.0"
    finally:
        server.set_default(MODEL, "1.0")
    assert rest.predict(MODEL, astronaut_jpeg).body["version"] == "1.0"


@pytest.mark.parametrize("name", media.BAD_IMAGES)
def test_bad_input_gets_json_error_and_worker_survives(server, rest, grpc_client, astronaut_jpeg, name):
    data, status, code = media.BAD_IMAGES[name]
    pids = server.worker_pids(MODEL, "1.0")
    for client in (rest, grpc_client):
        answer = client.predict(MODEL, data, version="1.0")
        assert (answer.status, answer.body["error"]["code"]) == (status, code), answer.body
        assert answer.body["error"]["message"]
    assert rest.predict(MODEL, astronaut_jpeg, version="1.0").status == 200
    assert server.worker_pids(MODEL, "1.0") == pids


@pytest.mark.parametrize("make", [media.grayscale_png, media.rgba_png, media.gray16_png, media.exif_rotated_jpeg])
def test_awkward_images_get_correct_answers(rest, make):
    answer = rest.predict(MODEL, make(), version="1.0")
    assert answer.status == 200 and answer.body["face_count"] == 1
    assert box_inside(answer.body["faces"][0]["box"], samples.ASTRONAUT_FACE_REGION)


def test_bodies_over_the_size_limits_are_refused_and_server_survives(server, rest, grpc_client, astronaut_jpeg):
    pids = server.worker_pids(MODEL, "1.0")
    # Over the handler's image limit (20 MB): our JSON 413.
    answer = rest.predict(MODEL, astronaut_jpeg + b"\0" * (21 * 1024 * 1024), version="1.0")
    assert (answer.status, answer.body["error"]["code"]) == (413, "body_too_large")
    # Over TorchServe's max_request_size (100 MB): its transport answers 413 before any handler runs.
    oversize = b"\0" * (100 * 1024 * 1024 + 1)
    assert rest.predict(MODEL, oversize, version="1.0").status == 413
    assert grpc_client.predict(MODEL, oversize, version="1.0").status == 413
    assert rest.predict(MODEL, astronaut_jpeg, version="1.0").status == 200
    assert server.worker_pids(MODEL, "1.0") == pids


def test_a_bad_request_in_a_server_side_batch_fails_alone(server, astronaut_jpeg):
    url = f"{server.inference_url}/predictions/{MODEL}/1.0"
    # Among them the 16-px image that MTCNN crashes on, which used to fail the requests batched with it.
    payloads = [astronaut_jpeg, b"", astronaut_jpeg, media.truncated_jpeg(), astronaut_jpeg, media.tiny_png(16),
                astronaut_jpeg, astronaut_jpeg] * 2

    def send(data):
        return requests.post(url, data=data, timeout=120, headers=server.keys.headers("inference"))

    with ThreadPoolExecutor(max_workers=len(payloads)) as pool:
        responses = list(pool.map(send, payloads))
    for data, response in zip(payloads, responses):
        if data is astronaut_jpeg:
            assert response.status_code == 200 and response.json()["face_count"] == 1
        else:
            assert response.status_code in (400, 422) and response.json()["error"]["code"] in (
                "empty_body", "corrupt_image", "image_too_small")
    # The good requests shared forward passes with others.
    assert max(r.json().get("batch_size", 1) for r in responses if r.status_code == 200) > 1


def test_prometheus_metrics(server, rest, astronaut_jpeg, no_face_jpeg):
    """TorchServe's own metrics, and ours through its custom metrics API (the catalogue's names, per model
    and version): answers by label, P(fake), faces, stage times, errors by code."""
    before = metric_samples(f"{server.metrics_url}/metrics")
    faces = rest.predict(MODEL, astronaut_jpeg).body
    rest.predict(MODEL, no_face_jpeg)
    rest.predict(MODEL, media.truncated_jpeg())
    expected = [1, 1, 1, faces["face_count"], 2, 1]
    deadline = time.monotonic() + 30
    while True:  # the frontend reads the worker's metric lines as they are logged, after the answers
        after = metric_samples(f"{server.metrics_url}/metrics")
        grew = [grown(before, after, name, model=MODEL, version="1.0", **labels) for name, labels in [
            ("deepfake_predictions_total", {"label": faces["label"]}), ("deepfake_predictions_total", {"label": "NO_FACE"}),
            ("deepfake_fake_probability_count", {}), ("deepfake_faces_per_request_sum", {}),
            ("deepfake_stage_duration_seconds_count", {"stage": "detect"}),
            ("deepfake_request_errors_total", {"code": "corrupt_image"})]]
        if grew == expected or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert grew == expected
    assert any(name == "ts_inference_requests_total" and dict(labels).get("model_name") == MODEL for name, labels in after)
    from deepfake_serving.rollout.targets import TorchServeTarget  # what the canary's score guard rail reads

    target = TorchServeTarget(MODEL, server.inference_url, server.management_url, f"{server.metrics_url}/metrics",
                              str(server.key_file))
    buckets = target.score_histogram("1.0")
    assert buckets[float("inf")] == after[("deepfake_fake_probability_count", (("model", MODEL), ("version", "1.0")))]


def test_served_checkpoint_answers_like_the_in_process_pipeline(rest, ff_checkpoint, two_faces_jpeg):
    served = rest.predict("b4-ff", two_faces_jpeg)
    assert served.status == 200 and served.body["weights_trained"] is True
    local = ImagePipeline(get_variant("b4-ff"), create_model("b4-ff", checkpoint=str(ff_checkpoint)))
    expected = local.predict(two_faces_jpeg)
    assert [f["box"] for f in served.body["faces"]] == [f["box"] for f in expected["faces"]]
    for got, want in zip(served.body["faces"], expected["faces"]):
        assert got["fake_probability"] == pytest.approx(want["fake_probability"], abs=1e-5)
    assert served.body["label"] == expected["label"]


def test_explanations_over_rest_and_grpc_answer_the_prediction_with_a_heatmap_per_face(rest, grpc_client, two_faces_jpeg):
    predicted = rest.predict(MODEL, two_faces_jpeg).body
    over_rest, over_grpc = rest.explain(MODEL, two_faces_jpeg), grpc_client.explain(MODEL, two_faces_jpeg)
    assert over_rest.status == over_grpc.status == 200, (over_rest.body, over_grpc.body)
    for answer in (over_rest.body, over_grpc.body):
        assert "explanation" in answer, sorted(answer)
        assert answer["explanation"]["faces_explained"] == 2 and answer["version"] == "1.0"
        assert [f["box"] for f in answer["faces"]] == [f["box"] for f in predicted["faces"]]
        assert answer["fake_probability"] == pytest.approx(predicted["fake_probability"], abs=1e-6)
    assert [f["explanation"] for f in over_rest.body["faces"]] == [f["explanation"] for f in over_grpc.body["faces"]]
    assert rest.explain(MODEL, two_faces_jpeg, "2.0").body["version"] == "2.0"  # /explanations/{model}/{version}
    assert "explanation" not in rest.predict(MODEL, two_faces_jpeg).body  # predictions are unchanged


def test_explain_cli_writes_an_overlay_of_each_face(server, two_faces_jpeg, no_face_jpeg, tmp_path):
    import contextlib
    import io

    import cv2

    (tmp_path / "two.jpg").write_bytes(two_faces_jpeg)
    (tmp_path / "not_an_image.jpg").write_bytes(media.truncated_jpeg())
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["explain", str(tmp_path / "two.jpg"), str(tmp_path / "not_an_image.jpg"), "--model", MODEL,
                     "--url", server.inference_url, "--out-dir", str(tmp_path)])
    explained, refused = [json.loads(line) for line in out.getvalue().splitlines()]
    assert code == 1 and refused["status"] == 400 and refused["error"]["code"] == "corrupt_image"
    overlay = cv2.imread(explained["overlay"])
    original = cv2.imdecode(np.frombuffer(two_faces_jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert overlay.shape == original.shape and len(explained["faces"]) == 2
    assert np.abs(overlay.astype(int) - original).max() > 50  # heatmaps, boxes and scores drawn


def test_a_served_ensemble_answers_as_in_process_and_refuses_explanations_alone(server, rest, two_faces_jpeg, tmp_path):
    """The ensemble archive built by the CLI (b4-mobile and a b4-ff checkpoint, one detection) answers over
    TorchServe as its unpacked bundle does in this process."""
    import zipfile

    from deepfake_serving.pipeline.ensemble import load_ensemble_pipeline

    served = rest.predict(ENSEMBLE, two_faces_jpeg)
    assert served.status == 200 and served.body["ensemble"]["members"] == ["b4-mobile", "b4-ff"]
    zipfile.ZipFile(server.model_store / f"{ENSEMBLE}-v1.0.mar").extractall(tmp_path)
    expected = load_ensemble_pipeline(tmp_path, threads=2).predict(two_faces_jpeg)
    assert served.body["face_count"] == expected["face_count"] == 2
    for got, want in zip(served.body["faces"], expected["faces"]):
        assert got["box"] == want["box"] and got["members"] == pytest.approx(want["members"], abs=1e-6)
        assert got["fake_probability"] == pytest.approx(want["fake_probability"], abs=1e-6)
    refused = rest.explain(ENSEMBLE, two_faces_jpeg)
    assert (refused.status, refused.body["error"]["code"]) == (400, "explain_not_supported")


def outside_model(directory, marker):
    """A model directory outside the model store whose handler, if it is ever loaded, writes ``marker``."""
    (directory / "MAR-INF").mkdir(parents=True)
    (directory / "MAR-INF" / "MANIFEST.json").write_text(json.dumps({
        "createdOn": "01/12/2026 00:00:00", "runtime": "python", "archiverVersion": "0.12.0",
        "model": {"modelName": "outside", "handler": "outside_handler.py", "modelVersion": "1.0"}}))
    (directory / "outside_handler.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "def handle(data, context):\n    return ['x'] * len(data)\n")
    return directory


def test_registration_from_outside_the_store_needs_the_management_key(server, tmp_path):
    assert stat.S_IMODE(server.keys.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(server.workdir.stat().st_mode) == 0o700
    marker = tmp_path / "handler-ran"
    directory = outside_model(tmp_path / "outside", marker)
    params = {"url": str(directory), "initial_workers": 1, "synchronous": "true"}
    for headers in ({}, server.keys.headers("inference")):  # no key, the wrong kind of key
        refused = requests.post(f"{server.management_url}/models", params=params, headers=headers, timeout=60)
        assert refused.status_code == 400 and "InvalidKeyException" in refused.text
    channel = grpc.insecure_channel(server.grpc_management_target)
    request = management_pb2.RegisterModelRequest(url=str(directory), initial_workers=1, synchronous=True)
    with pytest.raises(grpc.RpcError) as err:
        management_pb2_grpc.ManagementAPIsServiceStub(channel).RegisterModel(request, timeout=60)
    channel.close()
    assert err.value.code() != grpc.StatusCode.OK and "Token Authorization failed" in err.value.details()
    time.sleep(2)
    assert not marker.exists()
    names = [m["modelName"] for m in server._management("GET", "/models", 10).json()["models"]]
    assert "outside" not in names
    # The key is what stands between a client and code execution: with it, the directory's code runs.
    requests.post(f"{server.management_url}/models", params={**params, "initial_workers": 0}, timeout=60,
                  headers=server.keys.headers("management")).raise_for_status()
    try:
        requests.put(f"{server.management_url}/models/outside", params={"min_worker": 1, "synchronous": "true"},
                     headers=server.keys.headers("management"), timeout=60)
        assert marker.read_text() == "ran"
    finally:
        requests.delete(f"{server.management_url}/models/outside/1.0", headers=server.keys.headers("management"),
                        timeout=60)


def test_inference_without_the_key_is_unauthorized_in_our_format(server, astronaut_jpeg, tmp_path):
    for client in (RestClient(server.inference_url, key_file=str(tmp_path / "none.json")),
                   GrpcClient(server.grpc_target, key_file=str(tmp_path / "none.json"))):
        answer = client.predict(MODEL, astronaut_jpeg)
        assert (answer.status, answer.body["error"]["code"]) == (401, "unauthorized"), answer.body


def test_clients_survive_a_killed_worker_under_load(server, astronaut_jpeg):
    """The image worker SIGKILLed twice under 6 concurrent REST and gRPC clients: TorchServe answers the
    in-flight requests 500 and restarts the worker; the clients retry those, and none fails."""
    from helpers.live_load import predictions_while_killing

    clients = [RestClient(server.inference_url) for _ in range(4)] + [GrpcClient(server.grpc_target) for _ in range(2)]
    answers, recoveries = predictions_while_killing(
        clients, lambda client: client.predict(MODEL, astronaut_jpeg), lambda: server.worker_pids(MODEL, "1.0"),
        kills=2, every_s=6)
    assert len(recoveries) == 2 and answers and all(a.ok for a in answers), [a for a in answers if not a.ok][:3]
    assert sum(c.stats.retries for c in clients) > 0  # the kills did fail requests, and retries answered them
    assert sum(c.stats.gave_up for c in clients) == 0


@pytest.mark.parametrize("shape", ["[]", '{"inference": "no"}', '{"management": {"key": 1}}', "not json at all {"])
def test_a_key_file_of_the_wrong_shape_gives_401_with_a_message(server, astronaut_jpeg, tmp_path, shape):
    path = tmp_path / "keys.json"
    path.write_text(shape)
    for client in (RestClient(server.inference_url, key_file=str(path)),
                   GrpcClient(server.grpc_target, key_file=str(path))):
        answer = client.predict(MODEL, astronaut_jpeg)
        assert (answer.status, answer.body["error"]["code"]) == (401, "unauthorized"), answer.body
        assert str(path) in answer.body["error"]["message"]
        assert shape.startswith("not json") or "holds no keys" in answer.body["error"]["message"]


def test_server_written_4xx_and_507_are_not_retried(server, astronaut_jpeg):
    """TorchServe's own 400 for a 64 KB header became server_error (500) and was sent 4 times; 507 (out of
    memory) was retried too, so a request that exhausts a worker was sent again to the fresh one."""
    rest = RestClient(server.inference_url)
    answer = rest.predict(MODEL, astronaut_jpeg, options={"pad": "x" * 65536})
    assert 400 <= answer.status < 500 and answer.body["error"]["code"] in ("bad_request", "headers_too_large"), answer.body
    assert rest.stats.retries == 0
    assert rest.predict(MODEL, astronaut_jpeg).status == 200

    hits = []

    class OutOfMemory(http.server.BaseHTTPRequestHandler):  # a worker that ran out of memory cannot be made here
        def do_POST(self):  # noqa: N802
            hits.append(self.path)
            self.rfile.read(int(self.headers["Content-Length"]))
            body = json.dumps({"code": 507, "type": "InternalServerException", "message": "Out of memory"}).encode()
            self.send_response(507)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    stub = http.server.ThreadingHTTPServer(("127.0.0.1", 0), OutOfMemory)
    threading.Thread(target=stub.serve_forever, daemon=True).start()
    try:
        oom = RestClient(f"http://127.0.0.1:{stub.server_address[1]}", key_file=None)
        answer = oom.predict(MODEL, astronaut_jpeg)
    finally:
        stub.shutdown()
    assert (answer.status, answer.body["error"]["code"]) == (507, "out_of_memory")
    assert len(hits) == 1 and oom.stats.retries == 0


def test_a_client_whose_server_is_gone_answers_503_in_our_format(astronaut_jpeg):
    (port,) = free_ports(1)
    for client in (RestClient(f"http://127.0.0.1:{port}", retry=NO_RETRY), GrpcClient(f"127.0.0.1:{port}", retry=NO_RETRY),
                   TritonClient(f"127.0.0.1:{port}", "http", retry=NO_RETRY),
                   TritonClient(f"127.0.0.1:{port}", "grpc", retry=NO_RETRY)):
        answer = client.predict(MODEL, astronaut_jpeg)
        assert answer.status in (502, 503) and answer.body["error"]["code"] == "server_unavailable", answer.body


def test_a_served_video_ensemble_answers_as_in_process(server, rest, tmp_path):
    """The same members as a video archive: the video handler over the ensemble bundle, each member's
    confident verdict fused, per-frame member scores; equal to the unpacked bundle in this process."""
    import zipfile

    from deepfake_serving.media.video import Sampling
    from deepfake_serving.pipeline import load_video_pipeline

    clip = samples.encode_video(samples.moving_face_frames(16, (480, 360), faces=2), "mp4")
    served = rest.predict(f"{ENSEMBLE}-video", clip, options={"frames": "8"})
    assert served.status == 200, served.body
    zipfile.ZipFile(server.model_store / f"{ENSEMBLE}-video-v1.0.mar").extractall(tmp_path)
    expected = load_video_pipeline(tmp_path, threads=2).analyze(clip, Sampling(frames=8))
    assert served.body["model"] == f"{ENSEMBLE}-video" and served.body["ensemble"]["members"] == ["b4-mobile", "b4-ff"]
    assert served.body["fake_probability"] == pytest.approx(expected["fake_probability"], abs=1e-6)
    assert served.body["ensemble"]["member_fake_probabilities"] == pytest.approx(
        expected["ensemble"]["member_fake_probabilities"], abs=1e-6)
    assert len(served.body["frames"]) == len(expected["frames"]) == 8
    for got, want in zip(served.body["frames"], expected["frames"]):
        assert got.get("members", {}) == pytest.approx(want.get("members", {}), abs=1e-6)
