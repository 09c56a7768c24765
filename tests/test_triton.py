"""A real Triton (the tritonserver that nvidia-pytriton bundles) serving the committed repository:
parity with a real TorchServe on the same checkpoints, classifier versions side by side, explicit
model control, dynamic batching, bad input, health/metrics and a clean shutdown."""

import io
import json
import re
import shlex
import stat
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import pytest
import requests
import torch
import tritonclient.http as triton_http
from google.protobuf import text_format
from tritonclient.grpc.model_config_pb2 import ModelConfig, ModelInstanceGroup

from deepfake_serving.bundle.manifest import GRAPH_NAME
from deepfake_serving.cli import build_parser, cmd_triton_serve
from deepfake_serving.core.naming import model_names
from deepfake_serving.engines.torch_engine import TorchScorer
from deepfake_serving.media import samples
from deepfake_serving.pipeline.image import ImagePreprocessor
from deepfake_serving.serving.client.clients import RestClient, TritonClient
from deepfake_serving.serving.launch.archive import build_archive, build_ensemble_archive, repackage_ensemble
from deepfake_serving.serving.launch.torchserve import Ports, TorchServe
from deepfake_serving.serving.launch.triton import RESTRICTED_APIS, Triton, TritonPorts, live_stubs
from deepfake_serving.serving.launch.triton_ensemble import ensemble_names, install_ensemble
from deepfake_serving.serving.launch.triton_repository import build_classifier_version, render_configs, write_configs
from deepfake_serving.variants import create_model, get_variant, list_variants, to_array
from helpers import media
from helpers.metrics import grown, metric_samples

pytestmark = pytest.mark.server
VARIANT = "b4-mobile"
ENSEMBLE, CLASSIFIER, VIDEO, EXPLAIN = "b4_mobile", "b4_mobile_classifier", "b4_mobile_video", "b4_mobile_explain"
MIXED = "mobile-ff"  # a cross-architecture ensemble: TorchServe's archive and Triton's models from one bundle
REPOSITORY = Path(__file__).parents[1] / "model_repository"  # the checkout's committed copy
IMAGES = {"astronaut": samples.astronaut_jpeg, "two faces": lambda: samples.encode(samples.two_faces(), quality=95),
          "no face": lambda: samples.encode(samples.no_face(), quality=95)}


# -- the committed repository -------------------------------------------------------------------
@pytest.mark.parametrize("variant", list_variants())
def test_committed_repository_is_what_the_registry_generates(variant):
    for relative, text in render_configs(get_variant(variant)).items():
        path = REPOSITORY / relative
        assert path.exists() and path.read_text() == text, f"{relative} is stale: run `make triton-configs`"


def test_configs_carry_nothing_machine_specific():
    for config in REPOSITORY.glob("*/config.pbtxt"):
        text = config.read_text()
        assert "KIND_GPU" not in text and "KIND_CPU" not in text, config
        assert not re.search(r'"/|/work|/home|/tmp', text), config
        parsed = text_format.Parse(text, ModelConfig())  # KIND_AUTO is protobuf's default: text_format omits it
        if parsed.backend == "python":
            assert parsed.instance_group and all(g.kind == ModelInstanceGroup.KIND_AUTO for g in parsed.instance_group), config


# -- servers on the same checkpoints ------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Two checkpoints of the variant (plain state dicts): version 1 and version 2."""
    directory = tmp_path_factory.mktemp("checkpoints")
    paths = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        path = directory / f"seed{seed}.pt"
        torch.save(get_variant(VARIANT).build().state_dict(), path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def clip():
    return samples.encode_video(samples.moving_face_frames(40, faces=2, no_face_between=(10, 16)), "mp4")


@pytest.fixture(scope="module")
def mixed_archives(tmp_path_factory, checkpoints):
    """The cross-architecture ensemble: b4-mobile (version 2's checkpoint) and b4-ff, as image and video archives."""
    store = tmp_path_factory.mktemp("store")
    image = build_ensemble_archive(MIXED, "1", [(VARIANT, [str(checkpoints[1])]), ("b4-ff", [])], export_path=store,
                                   engine="onnxruntime")
    return image, repackage_ensemble(image, f"{MIXED}-video", "1", "video", store)


@pytest.fixture(scope="module")
def torchserve_answers(tmp_path_factory, checkpoints, clip, mixed_archives):
    """What TorchServe answers with version 2's checkpoint, and its ensemble archives (started, asked,
    stopped: one server at a time)."""
    store = mixed_archives[0].parent
    image = build_archive(VARIANT, "2.0", checkpoints=[checkpoints[1]], export_path=store)
    video = build_archive(VARIANT, "2.0", checkpoints=[checkpoints[1]], export_path=store, media="video")
    ts = TorchServe(store, tmp_path_factory.mktemp("ts"), ports=Ports.free(),
                    models=[f"{VARIANT}={image.name}", f"{VARIANT}-video={video.name}",
                            *(f"{mar.name.split('-v1')[0]}={mar.name}" for mar in mixed_archives)])
    with ts:
        client = RestClient(ts.inference_url)
        answers = {name: client.predict(VARIANT, make()) for name, make in IMAGES.items()}
        answers["clip"] = client.predict(f"{VARIANT}-video", clip)
        answers["explain astronaut"] = client.explain(VARIANT, samples.astronaut_jpeg())
        answers["explain clip"] = client.explain(f"{VARIANT}-video", clip)
        answers.update({f"{MIXED} {name}": client.predict(MIXED, IMAGES[name]()) for name in ("two faces", "no face")})
        answers[f"{MIXED} clip"] = client.predict(f"{MIXED}-video", clip)
    return answers


@pytest.fixture(scope="module")
def repository(tmp_path_factory, checkpoints, mixed_archives):
    root = tmp_path_factory.mktemp("model_repository")
    write_configs(root, [VARIANT])
    build_classifier_version(VARIANT, 1, [checkpoints[0]], label="1.0", repository=root)
    build_classifier_version(VARIANT, 2, [checkpoints[1]], label="2.0", repository=root)
    install_ensemble(mixed_archives[0], 1, root)
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory, repository, torchserve_answers):
    mixed = ensemble_names(MIXED, 2)
    triton = Triton(tmp_path_factory.mktemp("triton"), [ENSEMBLE, VIDEO, EXPLAIN, mixed["ensemble"], mixed["video"]],
                    repository=repository, ports=TritonPorts.free())
    with triton:
        yield triton


@pytest.fixture(scope="module", params=["http", "grpc"])
def client(request, server):
    target = server.http_url if request.param == "http" else server.grpc_target
    triton = TritonClient(target, request.param)
    yield triton
    triton.close()


def shape(value):
    """Keys and value types, all the way down (a list: the set of its elements' shapes)."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return sorted({json.dumps(shape(item), sort_keys=True) for item in value})
    return type(value).__name__


def assert_same_image_answer(ours: dict, reference: dict):
    assert ours["label"] == reference["label"] and ours["face_count"] == reference["face_count"]
    assert ours["version"] == reference["version"] == "2.0"
    if reference["fake_probability"] is None:
        assert ours["fake_probability"] is None
    else:
        assert ours["fake_probability"] == pytest.approx(reference["fake_probability"], abs=1e-4)
    for face, expected in zip(ours["faces"], reference["faces"]):
        assert face["fake_probability"] == pytest.approx(expected["fake_probability"], abs=1e-4)
        assert np.abs(np.subtract(face["box"], expected["box"])).max() <= 1


@pytest.mark.parametrize("name", IMAGES)
def test_images_get_torchserves_answer(client, torchserve_answers, name):
    reference = torchserve_answers[name]
    assert reference.status == 200
    answer = client.predict(VARIANT, IMAGES[name]())
    assert answer.status == 200, answer.body
    assert shape(answer.body) == shape(reference.body)  # one schema: the same keys and types
    timings = answer.body["timings_ms"]
    assert set(timings) == {"decode", "detect", "crop", "classify", "total"}
    assert timings["total"] == pytest.approx(sum(v for k, v in timings.items() if k != "total"), abs=0.01)
    assert answer.body["batch_size"] >= 1
    assert_same_image_answer(answer.body, reference.body)


def test_videos_get_torchserves_answer(client, torchserve_answers, clip):
    reference = torchserve_answers["clip"].body
    answer = client.predict(f"{VARIANT}-video", clip)
    assert answer.status == 200, answer.body
    body = answer.body
    assert shape(body) == shape(reference)
    assert (body["label"], body["version"], body["model"]) == (reference["label"], "2.0", reference["model"])
    assert body["fake_probability"] == pytest.approx(reference["fake_probability"], abs=1e-4)
    assert [f["index"] for f in body["frames"]] == [f["index"] for f in reference["frames"]]
    for frame, expected in zip(body["frames"], reference["frames"]):
        assert len(frame["faces"]) == len(expected["faces"])
        if expected["score"] is None:
            assert frame["score"] is None
        else:
            assert frame["score"] == pytest.approx(expected["score"], abs=1e-4)
    assert body["metrics"]["faces_classified"] == reference["metrics"]["faces_classified"] > 40


def decoded_heatmap(face: dict) -> np.ndarray:
    import base64

    import cv2

    png = np.frombuffer(base64.b64decode(face["explanation"]["heatmap_png"]), np.uint8)
    return cv2.imdecode(png, cv2.IMREAD_GRAYSCALE).astype(int)


def assert_same_explanations(faces: list, reference: list):
    """The same faces explained, with the same heatmaps (±2 of 255), regions and torch P(fake); ROAD's
    figures differ by its random imputation noise, so only their presence is compared."""
    assert [("explanation" in f) for f in faces] == [("explanation" in f) for f in reference]
    for face, expected in zip(faces, reference):
        if "explanation" not in expected:
            continue
        ours, theirs = face["explanation"], expected["explanation"]
        assert (ours["region"], ours["window"]) == (theirs["region"], theirs["window"])
        assert ours["explained_fake_probability"] == pytest.approx(theirs["explained_fake_probability"], abs=1e-4)
        assert np.abs(decoded_heatmap(face) - decoded_heatmap(expected)).max() <= 2
        assert set(ours["faithfulness"]) == set(theirs["faithfulness"])


def test_explanations_get_torchserves_answer(client, torchserve_answers):
    """The explain model beside the ensemble: the prediction of the classifier version that serves (2) and
    heatmaps from that version's torch weights, as TorchServe's /explanations answers them."""
    reference = torchserve_answers["explain astronaut"]
    assert reference.status == 200, reference.body
    answer = client.explain(VARIANT, samples.astronaut_jpeg())
    assert answer.status == 200, answer.body
    assert shape(answer.body) == shape(reference.body)
    assert_same_image_answer(answer.body, reference.body)
    assert answer.body["explanation"] == reference.body["explanation"]
    assert_same_explanations(answer.body["faces"], reference.body["faces"])


def test_video_explanations_get_torchserves_answer(client, torchserve_answers, clip):
    reference = torchserve_answers["explain clip"].body
    answer = client.explain(f"{VARIANT}-video", clip)
    assert answer.status == 200, answer.body
    body = answer.body
    assert (body["version"], body["model"], body["label"]) == ("2.0", reference["model"], reference["label"])
    assert body["explanation"] == reference["explanation"] and body["explanation"]["faces_explained"] > 0
    for frame, expected in zip(body["frames"], reference["frames"]):
        assert_same_explanations(frame["faces"], expected["faces"])


def test_explanations_refuse_bad_input_and_versions(client, server):
    stubs = server.stub_pids()
    answer = client.explain(VARIANT, media.truncated_jpeg())
    assert (answer.status, answer.body["error"]["code"]) == (400, "corrupt_image")
    answer = client.explain(VARIANT, samples.astronaut_jpeg(), version="1")
    assert (answer.status, answer.body["error"]["code"]) == (400, "explain_not_supported")
    assert server.stub_pids() == stubs


def assert_same_fusion(ours: dict, reference: dict):
    assert (ours["label"], ours["version"], ours["model"]) == (reference["label"], "1", reference["model"])
    assert ours["ensemble"]["members"] == reference["ensemble"]["members"] == [VARIANT, "b4-ff"]
    for key in ("member_fake_probabilities", "disagreement"):
        assert ours["ensemble"][key] == pytest.approx(reference["ensemble"][key], abs=1e-4)
    if reference["fake_probability"] is not None:
        assert ours["fake_probability"] == pytest.approx(reference["fake_probability"], abs=1e-4)


@pytest.mark.parametrize("name", ["two faces", "no face"])
def test_the_cross_architecture_ensemble_gets_torchserves_answer(client, torchserve_answers, name):
    """One detection in the ensemble's preprocess, each member its own classifier model, the fusion step:
    the answer of TorchServe's ensemble worker, within 1e-4, face by face and member by member."""
    reference = torchserve_answers[f"{MIXED} {name}"].body
    answer = client.predict(MIXED, IMAGES[name]())
    assert answer.status == 200, answer.body
    assert shape(answer.body) == shape(reference)
    assert_same_fusion(answer.body, reference)
    for face, expected in zip(answer.body["faces"], reference["faces"]):
        assert face["members"] == pytest.approx(expected["members"], abs=1e-4)
        assert face["fake_probability"] == pytest.approx(expected["fake_probability"], abs=1e-4)
        assert face["box"] == expected["box"]


def test_the_video_ensemble_gets_torchserves_answer(client, torchserve_answers, clip):
    reference = torchserve_answers[f"{MIXED} clip"].body
    answer = client.predict(f"{MIXED}-video", clip)
    assert answer.status == 200, answer.body
    assert shape(answer.body) == shape(reference)
    assert_same_fusion(answer.body, reference)
    for frame, expected in zip(answer.body["frames"], reference["frames"]):
        assert frame.get("members", {}) == pytest.approx(expected.get("members", {}), abs=1e-4)


def test_ensemble_members_are_classifier_models_with_their_own_batching(server, repository):
    """Each member serves from its own model (its own instances and dynamic batching), fed by the
    ensemble's one detection: concurrent requests reach both members."""
    names = ensemble_names(MIXED, 2)
    for member in names["members"]:
        config = text_format.Parse((repository / member / "config.pbtxt").read_text(), ModelConfig())
        assert config.HasField("dynamic_batching") and config.instance_group[0].count >= 1
    before = [server.statistics(m)["model_stats"][0]["inference_count"] for m in names["members"]]
    detections = server.statistics(names["preprocess"])["model_stats"][0]["inference_count"]
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(lambda _: TritonClient(server.http_url).predict(MIXED, samples.astronaut_jpeg()),
                                range(4)))
    assert all(a.status == 200 for a in answers)
    after = [server.statistics(m)["model_stats"][0]["inference_count"] for m in names["members"]]
    assert all(b - a == 4 for a, b in zip(before, after))
    assert server.statistics(names["preprocess"])["model_stats"][0]["inference_count"] - detections == 4


def test_a_job_worker_analyses_through_triton(server, torchserve_answers, clip, tmp_path):
    """The job system's triton backend (a real Redis; the worker's attempt run here): an image job and a
    clip job answer what TorchServe answers on the same weights, version 2.0."""
    from deepfake_serving.jobs.launch import RedisServer
    from deepfake_serving.jobs.settings import JobSettings
    from deepfake_serving.jobs.store import JobRecords, UploadStore, redis_client
    from deepfake_serving.jobs.worker import JobRunner

    redis = RedisServer(tmp_path / "redis").start()
    try:
        settings = JobSettings(redis_url=redis.url, store=tmp_path / "store", audit_log=tmp_path / "audit.jsonl",
                               backend="triton", server_url=server.http_url, models=VARIANT)
        records, store = JobRecords(redis_client(redis.url), settings.lease_s, settings.retention_s), UploadStore(settings.store)
        runner = JobRunner(settings, worker="triton@test")
        for data, kind, reference in ((samples.astronaut_jpeg(), "image", torchserve_answers["astronaut"].body),
                                      (clip, "video", torchserve_answers["clip"].body)):
            digest, _, size = store.save(io.BytesIO(data), settings.max_upload_bytes)
            job_id = records.create(model=VARIANT, version="", media=kind, digest=digest, size=size, options={},
                                    callback_url="", owner="tester")
            assert runner.run(job_id, 0) is None
            record = records.get(job_id)
            assert record["state"] == "done" and record["worker"] == "triton@test", record
            result = json.loads(record["result"])
            assert (result["label"], result["version"]) == (reference["label"], "2.0")
            assert result["fake_probability"] == pytest.approx(reference["fake_probability"], abs=1e-4)
    finally:
        redis.stop()


def test_video_sampling_options(client, clip):
    assert client.predict(f"{VARIANT}-video", clip, options={"frames": 4}).body["frames_analyzed"] == 4
    answer = client.predict(f"{VARIANT}-video", clip, options={"sampling": "every_nth", "every": 5})
    assert answer.body["frames_analyzed"] == 8
    assert client.predict(f"{VARIANT}-video", clip, options={"sampling": "sometimes"}).status == 400
    answer = client.predict(f"{VARIANT}-video", clip, options={"frames": "many"})
    assert (answer.status, answer.body["error"]["code"]) == (400, "bad_sampling")


# -- versions and explicit model control ---------------------------------------------------------
def classify_directly(server, version: str, faces: np.ndarray) -> np.ndarray:
    http = triton_http.InferenceServerClient(server.http_url.removeprefix("http://"))
    tensor = triton_http.InferInput("FACES", list(faces.shape), "FP32")
    tensor.set_data_from_numpy(faces)
    return http.infer(CLASSIFIER, [tensor], model_version=version).as_numpy("FAKE_PROBABILITY")


def test_both_classifier_versions_serve_their_own_weights(server, checkpoints):
    variant = get_variant(VARIANT)
    item = ImagePreprocessor(variant).prepare([samples.astronaut_jpeg()])[0]
    faces = to_array(item.crops, variant.preprocessing.mean, variant.preprocessing.std)
    for version, checkpoint in (("1", checkpoints[0]), ("2", checkpoints[1])):
        assert server.model_ready(CLASSIFIER, int(version))
        expected = TorchScorer(variant, create_model(VARIANT, checkpoint=str(checkpoint))).scores(item.crops)
        np.testing.assert_allclose(classify_directly(server, version, faces).T, expected, atol=1e-4)
    assert not np.allclose(classify_directly(server, "1", faces), classify_directly(server, "2", faces), atol=1e-3)


def test_models_load_and_unload_through_the_repository_api(server, clip):
    states = {(m["name"], m.get("version")): m.get("state") for m in server.repository_index()}
    assert states[(CLASSIFIER, "1")] == states[(CLASSIFIER, "2")] == "READY"
    server.unload(VIDEO)
    assert not server.model_ready(VIDEO)
    gone = TritonClient(server.http_url).predict(f"{VARIANT}-video", clip, options={"frames": 2})
    assert gone.status >= 400 and "error" in gone.body
    assert server.model_ready(ENSEMBLE)  # the image ensemble shares the classifier and keeps serving
    server.load(VIDEO)
    assert server.model_ready(VIDEO)
    assert TritonClient(server.http_url).predict(f"{VARIANT}-video", clip, options={"frames": 2}).status == 200


def test_dynamic_batching_forms_batches_over_faces(server):
    size = get_variant(VARIANT).preprocessing.input_size
    faces = np.random.default_rng(0).normal(size=(1, 3, size, size)).astype(np.float32)
    before = server.statistics(CLASSIFIER, 2)["model_stats"][0]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda _: classify_directly(server, "2", faces), range(16)))
    after = server.statistics(CLASSIFIER, 2)["model_stats"][0]
    inferences = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    assert inferences == 16 and executions < inferences
    assert any(stat["batch_size"] > 1 for stat in after["batch_stats"])


# -- bad input never takes down a stub ------------------------------------------------------------
@pytest.mark.parametrize("name", media.BAD_IMAGES)
def test_bad_images_get_clear_errors_and_stubs_survive(server, client, name):
    data, status, code = media.BAD_IMAGES[name]
    stubs = server.stub_pids()
    answer = client.predict(VARIANT, data)
    assert (answer.status, answer.body["error"]["code"]) == (status, code), answer.body
    assert answer.body["error"]["message"]
    assert client.predict(VARIANT, samples.astronaut_jpeg()).status == 200
    assert server.stub_pids() == stubs


@pytest.mark.parametrize("name", media.BAD_VIDEOS)
def test_bad_videos_get_clear_errors_and_stubs_survive(server, client, clip, name):
    make, status, code = media.BAD_VIDEOS[name]
    stubs = server.stub_pids()
    answer = client.predict(f"{VARIANT}-video", make(clip), options={"sampling": "all"})
    assert (answer.status, answer.body["error"]["code"]) == (status, code), answer.body
    assert answer.body["error"]["message"]
    assert client.predict(f"{VARIANT}-video", clip, options={"frames": 2}).status == 200
    assert server.stub_pids() == stubs


def test_a_video_sent_to_the_image_ensemble_is_refused(client, clip):
    answer = client.predict(VARIANT, clip)
    assert (answer.status, answer.body["error"]["code"]) == (415, "video_sent_to_image_endpoint")
    assert answer.body["error"]["message"].endswith(f"send videos to {VIDEO}")


def test_no_model_process_imports_torch(server, client, clip):
    """Every python-backend stub (preprocess ×2, classifier versions, postprocess, video) after serving
    images and a video: none has libtorch mapped, i.e. none imported torch; a graph runtime is there
    (OpenVINO for MTCNN on the CPU and for the auto engine's bf16 classifier, else ONNX Runtime)."""
    assert client.predict(VARIANT, samples.astronaut_jpeg()).ok and client.predict(VIDEO, clip).ok
    # The explain model imports torch for its first explanation (Grad-CAM needs the weights in torch).
    maps = [Path(f"/proc/{pid}/maps").read_text() for pid, path in live_stubs(server.process.pid).items()
            if EXPLAIN not in str(path)]
    assert len(maps) >= 6
    assert not [m for m in maps if "libtorch" in m]
    runtimes = ("onnxruntime_pybind11_state", "libopenvino.so")
    assert sum(any(r in m for r in runtimes) for m in maps) >= 5  # preprocess ×2, classifier ×2, video


def test_health_readiness_and_metrics(server):
    assert server.live() and server.model_ready(ENSEMBLE) and server.model_ready(VIDEO)
    metrics = server.metrics()
    assert re.search(rf'nv_inference_request_success{{model="{ENSEMBLE}",version="1"}} [1-9]', metrics)
    assert f'nv_inference_exec_count{{model="{CLASSIFIER}",version="2"}}' in metrics


def test_prediction_metrics_are_triton_custom_metrics(server, clip):
    """The catalogue's metrics on Triton's endpoint (pb_utils.MetricFamily): answers by label and version,
    P(fake), stage times (before the classifier: version "any"), errors by code, a clip's frames; the
    histograms as cumulative counters that histogram_quantile reads."""
    client = TritonClient(server.http_url, "http")
    before = metric_samples(server.metrics_url)
    answer = client.predict(VARIANT, samples.astronaut_jpeg()).body
    assert client.predict(VARIANT, IMAGES["no face"]()).body["label"] == "NO_FACE"
    assert client.predict(VARIANT, media.truncated_jpeg()).body["error"]["code"] == "corrupt_image"
    assert client.predict(f"{VARIANT}-video", clip, options={"frames": 4}).status == 200
    after = metric_samples(server.metrics_url)
    image = {"model": VARIANT, "version": "2.0"}
    assert grown(before, after, "deepfake_predictions_total", **image, label=answer["label"]) == 1
    assert grown(before, after, "deepfake_predictions_total", **image, label="NO_FACE") == 1
    assert grown(before, after, "deepfake_fake_probability_count", **image) == 1
    assert grown(before, after, "deepfake_fake_probability_bucket", **image, le="+Inf") == 1
    assert grown(before, after, "deepfake_stage_duration_seconds_count", model=VARIANT, version="any", stage="detect") == 2
    assert grown(before, after, "deepfake_stage_duration_seconds_count", **image, stage="classify") == 2
    assert grown(before, after, "deepfake_request_errors_total", model=VARIANT, version="any", code="corrupt_image") == 1
    assert grown(before, after, "deepfake_video_frames_analyzed_total", model=f"{VARIANT}-video", version="2.0") == 4
    buckets = sorted((float(dict(labels)["le"]), value) for (name, labels), value in after.items()
                     if name == "deepfake_fake_probability_bucket" and dict(labels)["version"] == "2.0"
                     and dict(labels)["model"] == VARIANT)
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative


def test_a_clean_shutdown_leaves_no_shared_memory(tmp_path, repository):
    triton = Triton(tmp_path, [CLASSIFIER], repository=repository, ports=TritonPorts.free()).start()
    try:
        assert triton.shm_segments(), "the python backend should hold shared memory while serving"
        stubs = triton.stub_pids()
        assert stubs
    finally:
        leftovers = triton.stop()
    assert leftovers == [] and not triton.shm_segments()
    assert not any(Path(f"/proc/{pid}").exists() for pid in stubs)


def test_a_load_request_carrying_model_files_needs_the_repository_key(server, tmp_path):
    """Triton's load request can carry a model.py (code): without the launcher's key it is refused over
    HTTP and gRPC and nothing runs; with the key the same request loads it (the key is what gates it)."""
    import base64
    import json

    import tritonclient.grpc as triton_grpc

    marker = tmp_path / "model-ran"
    code = f"open({str(marker)!r}, 'w').write('ran')\nclass TritonPythonModel:\n    def execute(self, r):\n        return []\n"
    config = json.dumps({"name": "outside", "backend": "python", "max_batch_size": 0,
                         "input": [{"name": "X", "data_type": "TYPE_FP32", "dims": [1]}],
                         "output": [{"name": "Y", "data_type": "TYPE_FP32", "dims": [1]}]})
    files = {"file:1/model.py": base64.b64encode(code.encode()).decode()}
    url = f"{server.http_url}/v2/repository/models/outside/load"
    refused = requests.post(url, json={"parameters": {"config": config, **files}}, timeout=60)
    assert refused.status_code in (401, 403) or "restricted" in refused.text.lower(), refused.text
    assert refused.status_code != 200
    grpc_client = triton_grpc.InferenceServerClient(server.grpc_target)
    with pytest.raises(triton_grpc.InferenceServerException):
        grpc_client.load_model("outside", config=config, files={"file:1/model.py": code.encode()})
    grpc_client.close()
    time.sleep(2)
    assert not marker.exists() and not server.model_ready("outside")
    allowed = requests.post(url, json={"parameters": {"config": config, **files}}, timeout=120,
                            headers=server.keys.headers("management"))
    try:
        assert allowed.status_code == 200, allowed.text
        assert marker.read_text() == "ran"
    finally:
        server.unload("outside")


def test_shared_memory_is_the_servers_alone(server, client, clip):
    """The python backend's regions carry every request's bytes: 0600, so another local user
    (``nobody``) cannot read what a client sent, even after its request finished."""
    assert client.predict(VIDEO, clip).status == 200
    segments = server.shm_segments()
    assert segments
    for path in segments:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    read = subprocess.run(["cat", str(segments[0])], user="nobody", capture_output=True)
    assert read.returncode != 0 and b"Permission denied" in read.stderr


def test_apis_that_change_or_reveal_server_state_need_the_key(server, clip, tmp_path):
    """Registering a stub's own region through the shared-memory API, then aiming an output at it, aborted
    tritonserver; logging, statistics and configs were open too. Without the key all are refused, over
    HTTP and gRPC, and the server keeps answering."""
    import tritonclient.grpc as triton_grpc

    region = server.shm_segments()[0].name
    url = server.http_url
    attempts = [
        ("POST", "/v2/systemsharedmemory/region/x/register", {"key": region, "offset": 0, "byte_size": 4096}),
        ("POST", "/v2/logging", {"log_verbose_level": 5}),
        ("GET", f"/v2/models/{CLASSIFIER}/stats", None),
        ("GET", f"/v2/models/{CLASSIFIER}/config", None),
        ("POST", "/v2/trace/setting", {"trace_level": ["TIMESTAMPS"]}),
    ]
    for method, path, body in attempts:
        refused = requests.request(method, f"{url}{path}", json=body, timeout=30)
        assert refused.status_code != 200 and "restricted" in refused.text.lower(), (path, refused.text)
    grpc_client = triton_grpc.InferenceServerClient(server.grpc_target)
    try:
        for call in (lambda: grpc_client.register_system_shared_memory("x", region, 4096),
                     lambda: grpc_client.update_log_settings({"log_verbose_level": 5}),
                     lambda: grpc_client.get_inference_statistics(CLASSIFIER),
                     lambda: grpc_client.get_model_config(CLASSIFIER)):
            with pytest.raises(triton_grpc.InferenceServerException, match="(?i)restricted|authoriz"):
                call()
        keyed = (("triton-grpc-protocol-authorization", server.keys.headers("management")["Authorization"]),)
        assert grpc_client.get_model_config(CLASSIFIER, headers=dict(keyed)).config.name == CLASSIFIER
    finally:
        grpc_client.close()
    assert server.statistics(CLASSIFIER)["model_stats"]  # the launcher's key opens them
    assert server.live() and TritonClient(server.http_url).predict(VIDEO, clip).status == 200


def test_a_server_written_400_is_not_retried(server, astronaut_jpeg):
    """Triton's own 400 (an input the model does not have) keeps its status and is sent once."""
    triton = TritonClient(server.http_url)
    answer = triton.predict(CLASSIFIER, astronaut_jpeg)
    assert (answer.status, answer.body["error"]["code"]) == (400, "bad_request"), answer.body
    assert triton.stats.retries == 0


def test_bodies_over_the_transport_limit_are_refused_before_triton_reads_them(server, clip):
    """Triton 2.45 read any body whole (150 MB over HTTP, 600 MB over gRPC reached the video model and cost
    4.6 GB); its front refuses them with 413 in our format, sent once, and the video model never sees them."""
    def requests_seen() -> int:
        stats = server.statistics(VIDEO)["model_stats"][0]["inference_stats"]
        return int(stats["success"]["count"]) + int(stats["fail"]["count"])

    seen = requests_seen()
    for protocol, target, size in (("http", server.http_url, 150), ("grpc", server.grpc_target, 600)):
        triton = TritonClient(target, protocol)
        answer = triton.predict(VIDEO, b"\0" * (size * 2**20))
        assert (answer.status, answer.body["error"]["code"]) == (413, "request_too_large"), answer.body
        assert triton.stats.retries == 0
        triton.close()
    assert requests_seen() == seen
    assert TritonClient(server.grpc_target, "grpc").predict(VIDEO, clip).status == 200


def test_kserve_export_copies_the_variants_models_and_every_built_version(repository, tmp_path):
    """`kserve export --backend triton`: the variant's models as committed (KServe's Triton loads every model
    in the folder), each built classifier version with its graph, no bytecode, no other variant."""
    out = tmp_path / "export"
    subprocess.run([sys.executable, "-m", "deepfake_serving.cli", "kserve", "export", "--backend", "triton",
                    "--out", str(out), "--storage-uri", "gs://models/repository", "--variant", VARIANT,
                    "--repository", str(repository)], capture_output=True, text=True, check=True)
    names = model_names(VARIANT)
    assert sorted(p.name for p in out.iterdir()) == sorted(names.values())
    for relative, text in render_configs(get_variant(VARIANT)).items():
        assert (out / relative).read_text() == text
    versions = sorted(p.name for p in (out / names["classifier"]).iterdir() if p.name.isdigit())
    assert versions == sorted(p.name for p in (repository / names["classifier"]).iterdir() if p.name.isdigit())
    assert all((out / names["classifier"] / v / GRAPH_NAME).stat().st_size > 1_000_000 for v in versions)
    assert not list(out.rglob("__pycache__"))


def test_the_container_runs_the_launcher_and_its_supervisor_on_its_own_tritonserver(tmp_path):
    """The container's entry point is `deepfake-serving triton serve` (restricted APIs, nginx, supervisor) on
    the container's tritonserver, not a tritonserver command line of its own."""
    dockerfile = (Path(__file__).resolve().parents[1] / "docker" / "triton.Dockerfile").read_text()
    command = dockerfile[dockerfile.index("exec deepfake-serving "):].replace("\\\n", " ")
    args = build_parser().parse_args(shlex.split(command.replace('"$VARIANT"', "b4-mobile").replace("$CKPTS", ""))[2:])
    assert args.func is cmd_triton_serve and not args.no_supervisor
    assert (args.tritonserver, args.host) == ("/opt/tritonserver", "0.0.0.0")
    line = Triton(tmp_path, ["b4_mobile"], server_root=args.tritonserver).command("k")
    assert line[0] == "/opt/tritonserver/bin/tritonserver" and "--backend-directory=/opt/tritonserver/backends" in line
    assert f"--http-restricted-api={','.join(RESTRICTED_APIS)}:authorization=Bearer k" in line
    assert f"--grpc-restricted-protocol={','.join(RESTRICTED_APIS)}:authorization=Bearer k" in line


def test_tiled_faces_keep_every_stub_within_the_memory_budget(server, astronaut_jpeg):
    """The tiled-faces PNG took Triton's preprocess stub to 3.9 GB; with MTCNN's caps every stub that
    detects (preprocess and video) stays under 2 GB, and the next good answer is a 200."""
    triton = TritonClient(server.http_url)
    for model, data in ((VARIANT, media.tiled_faces_png()), (VIDEO, media.tiled_faces_clip())):
        stubs = [psutil.Process(pid) for pid in server.stub_pids()]
        peak, done = {s.pid: 0 for s in stubs}, threading.Event()

        def sample():
            while not done.is_set():
                for stub in stubs:
                    peak[stub.pid] = max(peak[stub.pid], stub.memory_info().rss)
                time.sleep(0.05)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            answer = triton.predict(model, data)
        finally:
            done.set()
            sampler.join()
        print(f"{model}: stub peaks {sorted(p // 2**20 for p in peak.values())} MB")
        assert answer.status == 200, answer.body
        assert max(peak.values()) < 2 * 2**30
    assert triton.predict(VARIANT, astronaut_jpeg).status == 200
