"""The Triton model repository: config.pbtxt/model.py files (committed) and classifier versions (built).

Per variant ``v`` (``b4-mobile`` → ``b4_mobile``):

- ``v``             ensemble: IMAGE → preprocess → classifier → postprocess → RESPONSE (JSON)
- ``v_preprocess``  python: decode, MTCNN, crops, normalisation
- ``v_classifier``  python + ONNX Runtime, dynamic batching over faces, two versions side by side
- ``v_postprocess`` python: per-face P(fake) → verdict
- ``v_video``       python + BLS: a clip → the classifier → confident strategy
- ``v_explain``     python + BLS: an image or a clip → the prediction plus Grad-CAM heatmaps (torch, loaded on
                    the first explanation, from the weights of the classifier version that answered)

Everything here is generated from the variant registry, so input sizes and
parameters live in one place; the configs are ``model_config_pb2.ModelConfig`` messages written by
protobuf's ``text_format``; ``write_configs`` rewrites the committed files and a test checks they are
current. Nothing machine-specific goes into a config: instance kind is KIND_AUTO, threads come from the
launcher's environment.
"""

from __future__ import annotations

import compileall
import json
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

from google.protobuf import text_format
from tritonclient.grpc.model_config_pb2 import DataType, ModelConfig, ModelInstanceGroup

from deepfake_serving.bundle import GRAPH_NAME, MANIFEST_NAME
from deepfake_serving.core.limits import MAX_IMAGE_FACES, MAX_VIDEO_FACES
from deepfake_serving.core.naming import ANSWERED_BY, TRITON_REPOSITORY, TRITON_ROLES, model_names
from deepfake_serving.engines import AUTO_ENGINE
from deepfake_serving.variants import Variant, get_variant, list_variants

# Relative to where the command runs, like the model store (the checkout commits its copy: the generated
# configs and model.py files, checked by the tests against what write_configs renders).
REPOSITORY = Path(TRITON_REPOSITORY)
CLASSIFIER_MAX_BATCH = MAX_IMAGE_FACES  # one image's faces always fit one classifier batch
CLASSIFIER_VERSIONS_SERVED = 2  # version_policy: the two newest versions load side by side
# Two preprocess instances: one instance hands the classifier one image at a time and MTCNN
# (one thread) becomes the bottleneck; two feed it concurrently (benchmarks/bench_image.py:
# 2p1c1t 20.4 req/s against 14.6 for 1p1c1t on 2 cores, b4-mobile).
DEFAULT_INSTANCES = {"preprocess": 2}


def tensor_spec(name: str, dtype: str, dims: Sequence[int], optional: bool = False) -> dict:
    return {"name": name, "data_type": dtype, "dims": list(dims), **({"optional": True} if optional else {})}


def python_model(name: str, inputs: list[dict], outputs: list[dict], *, max_batch: int = 0, instances: int = 1,
                  **params) -> ModelConfig:
    config = ModelConfig(name=name, backend="python", max_batch_size=max_batch,
                         instance_group=[ModelInstanceGroup(count=instances, kind=ModelInstanceGroup.KIND_AUTO)])
    _add_io(config, inputs, outputs)
    for key, value in params.items():
        config.parameters[key].string_value = str(value)
    return config


def _add_io(config: ModelConfig, inputs: list[dict], outputs: list[dict]) -> None:
    for tensor in inputs:
        config.input.add(**{**tensor, "data_type": DataType.Value(tensor["data_type"])})
    for tensor in outputs:
        config.output.add(**{**tensor, "data_type": DataType.Value(tensor["data_type"])})


def ensemble_config(name: str, steps: Sequence[tuple[str, dict, dict]]) -> ModelConfig:
    config = ModelConfig(name=name, platform="ensemble", max_batch_size=0)
    _add_io(config, [tensor_spec("IMAGE", "TYPE_STRING", [1])], [tensor_spec("RESPONSE", "TYPE_STRING", [1])])
    for model, inputs, outputs in steps:
        config.ensemble_scheduling.step.add(model_name=model, model_version=-1, input_map=inputs, output_map=outputs)
    return config


def classifier_config(name: str, variant: Variant, instances: int = 1) -> ModelConfig:
    """A classifier model (triton_models.classifier): a variant's faces → P(fake) per checkpoint and
    ANSWERED_BY, dynamic batching over faces; its versions are bundles."""
    size = variant.preprocessing.input_size
    config = python_model(name, [tensor_spec("FACES", "TYPE_FP32", [3, size, size])],
                           [tensor_spec("FAKE_PROBABILITY", "TYPE_FP32", [-1]), tensor_spec(ANSWERED_BY, "TYPE_STRING", [1])],
                           max_batch=CLASSIFIER_MAX_BATCH, variant=variant.name, instances=instances)
    config.dynamic_batching.max_queue_delay_microseconds = 2000
    return config


VIDEO_INPUTS = [tensor_spec("VIDEO", "TYPE_STRING", [1]), tensor_spec("SAMPLING", "TYPE_STRING", [1], optional=True),
                tensor_spec("FRAMES", "TYPE_INT32", [1], optional=True), tensor_spec("EVERY", "TYPE_INT32", [1], optional=True)]


def render_configs(variant: Variant, instances: dict[str, int] | None = None) -> dict[str, str]:
    """Relative path → text of every committed file for one variant (configs as protobuf text).

    ``instances`` (role → count) is for tuning a copy of the repository to a
    machine, as the benchmark does; the committed files use DEFAULT_INSTANCES.
    """
    counts = {role: {**DEFAULT_INSTANCES, **(instances or {})}.get(role, 1) for role in TRITON_ROLES}
    names = model_names(variant)
    size = variant.preprocessing.input_size
    face = [3, size, size]
    classifier = classifier_config(names["classifier"], variant, counts["classifier"])
    classifier.version_policy.latest.num_versions = CLASSIFIER_VERSIONS_SERVED
    configs = {
        "preprocess": python_model(
            names["preprocess"], [tensor_spec("IMAGE", "TYPE_STRING", [1])],
            [tensor_spec("FACES", "TYPE_FP32", [-1, *face]), tensor_spec("METADATA", "TYPE_STRING", [1])],
            variant=variant.name, max_faces=CLASSIFIER_MAX_BATCH, instances=counts["preprocess"]),
        "classifier": classifier,
        "postprocess": python_model(
            names["postprocess"],
            [tensor_spec("METADATA", "TYPE_STRING", [1]), tensor_spec("FAKE_PROBABILITY", "TYPE_FP32", [-1, -1]),
             tensor_spec(ANSWERED_BY, "TYPE_STRING", [-1, 1])],
            [tensor_spec("RESPONSE", "TYPE_STRING", [1])], variant=variant.name, instances=counts["postprocess"]),
        "video": python_model(
            names["video"],
            VIDEO_INPUTS,
            [tensor_spec("RESPONSE", "TYPE_STRING", [1])],
            variant=variant.name, classifier=names["classifier"], classifier_batch=16, max_faces=MAX_VIDEO_FACES,
            instances=counts["video"]),
        "explain": python_model(
            names["explain"],
            [tensor_spec("IMAGE", "TYPE_STRING", [1], optional=True), {**VIDEO_INPUTS[0], "optional": True}, *VIDEO_INPUTS[1:]],
            [tensor_spec("RESPONSE", "TYPE_STRING", [1])],
            variant=variant.name, classifier=names["classifier"], classifier_batch=16, max_faces=CLASSIFIER_MAX_BATCH,
            max_video_faces=MAX_VIDEO_FACES, method="gradcam", instances=counts["explain"]),
        "ensemble": ensemble_config(names["ensemble"], [
            (names["preprocess"], {"IMAGE": "IMAGE"}, {"FACES": "faces", "METADATA": "metadata"}),
            (names["classifier"], {"FACES": "faces"}, {"FAKE_PROBABILITY": "probabilities", ANSWERED_BY: "answered_by"}),
            (names["postprocess"], {"METADATA": "metadata", "FAKE_PROBABILITY": "probabilities",
                                    ANSWERED_BY: "answered_by"}, {"RESPONSE": "RESPONSE"}),
        ]),
    }
    files = {f"{names[role]}/config.pbtxt": text_format.MessageToString(config) for role, config in configs.items()}
    files[f"{names['ensemble']}/1/.gitkeep"] = ""  # Triton wants a version directory even for an ensemble
    for role in ("preprocess", "postprocess", "video", "explain"):
        files[f"{names[role]}/1/model.py"] = model_py(role)
    files[f"{names['classifier']}/model.py"] = model_py("classifier")  # copied into each built version
    return files


def model_py(module: str, name: str = "TritonPythonModel") -> str:
    alias = "" if name == "TritonPythonModel" else " as TritonPythonModel"
    return (f'"""Generated by deepfake_serving.serving.launch.triton_repository: the code is in the installed package."""\n\n'
            f"from deepfake_serving.serving.triton_models.{module} import {name}{alias}  # noqa: F401\n")


def write_configs(repository: str | Path = REPOSITORY, variants: Sequence[str] | None = None,
                  instances: dict[str, int] | None = None) -> list[Path]:
    """(Re)write the committed files of every variant's models."""
    written = []
    for name in variants or list_variants():
        for relative, text in render_configs(get_variant(name), instances).items():
            path = Path(repository) / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            written.append(path)
    return written


def build_classifier_version(
    variant_name: str,
    version: int,
    checkpoints: Sequence[str | Path] = (),
    *,
    label: str | None = None,
    seed: int = 0,
    repository: str | Path = REPOSITORY,
    engine: str = AUTO_ENGINE,
) -> Path:
    """Write one classifier version into ``<classifier>/<version>/``: a bundle (the same files as an
    archive's: all checkpoints in one ONNX graph, which the classifier model serves).

    ``label`` is the version the responses report (an archive's ``--version``,
    e.g. "2.0"); the same checkpoints and seed give the same weights as
    ``deepfake-serving archive``.
    """
    from deepfake_serving.builder.write import write_bundle  # torch: only where versions are built

    if version < 1:
        raise ValueError("Triton model versions are positive integers")
    variant = get_variant(variant_name)
    model_dir = Path(repository) / model_names(variant)["classifier"]
    if not (model_dir / "config.pbtxt").exists():
        raise FileNotFoundError(f"{model_dir}/config.pbtxt is missing: run write_configs first")
    target = model_dir / str(version)
    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp) / "version"
        write_bundle(staging, variant.name, label or f"{version}.0", checkpoints, seed, engine=engine)
        shutil.copy(model_dir / "model.py", staging / "model.py")
        if target.exists():
            shutil.rmtree(target)
        shutil.move(str(staging), target)
    compile_model_files(target)
    return target


def compile_model_files(path: str | Path) -> None:
    """Write the bytecode of every model.py under ``path`` now. The python backend's stub (an embedded
    interpreter that ignores PYTHONDONTWRITEBYTECODE) would otherwise write it into the model's
    directory while loading it, and Triton takes a directory changed after its load for a modified
    model: the next ensemble load reloads it from its on-disk config, dropping the version policy
    a rollout set through the repository API (and with it, possibly, the serving version)."""
    compileall.compile_dir(str(path), quiet=1)


def built_versions(variant_name: str, repository: str | Path = REPOSITORY) -> list[int]:
    model_dir = Path(repository) / model_names(variant_name)["classifier"]
    return sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit() and (p / GRAPH_NAME).exists())


def version_label(variant_name: str, version: int, repository: str | Path = REPOSITORY) -> str:
    directory = Path(repository) / model_names(variant_name)["classifier"] / str(version)
    return json.loads((directory / MANIFEST_NAME).read_text())["version"]
