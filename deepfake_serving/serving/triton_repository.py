"""The Triton model repository: config.pbtxt/model.py files (committed) and classifier versions (built).

Per variant ``v`` (``b4-mobile`` → ``b4_mobile``):

- ``v``             ensemble: IMAGE → preprocess → classifier → postprocess → RESPONSE (JSON)
- ``v_preprocess``  python: decode, MTCNN, crops, normalisation
- ``v_classifier``  python + ONNX Runtime, dynamic batching over faces, two versions side by side
- ``v_postprocess`` python: per-face P(fake) → verdict
- ``v_video``       python + BLS: a clip → the classifier → confident strategy

Everything here is generated from the variant registry, so input sizes and
parameters live in one place; ``write_configs`` rewrites the committed files and
a test checks they are current. Nothing machine-specific goes into a config:
instance kind is KIND_AUTO, threads come from the launcher's environment.
"""

from __future__ import annotations

import compileall
import json
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

from ..bundle import write_bundle
from ..engines import DEFAULT_ENGINE
from ..manifest import GRAPH_NAME, MANIFEST_NAME
from ..naming import TRITON_ROLES, model_names
from ..variants import Variant, get_variant, list_variants

# Relative to where the command runs, like the model store (the checkout commits its copy: the generated
# configs and model.py files, checked by the tests against what write_configs renders).
REPOSITORY = Path("model_repository")
CLASSIFIER_MAX_BATCH = 32  # also the image face cap: one image's faces always fit one classifier batch
CLASSIFIER_VERSIONS_SERVED = 2  # version_policy: the two newest versions load side by side
# Two preprocess instances: one instance hands the classifier one image at a time and MTCNN
# (one thread) becomes the bottleneck; two feed it concurrently (benchmarks/bench_image.py:
# 2p1c1t 20.4 req/s against 14.6 for 1p1c1t on 2 cores, b4-mobile).
DEFAULT_INSTANCES = {"preprocess": 2}


def _params(**values) -> str:
    return "\n".join(f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in values.items())


def _tensor(name: str, dtype: str, dims: Sequence[int], optional: bool = False) -> str:
    extra = " optional: true" if optional else ""
    return f'  {{ name: "{name}" data_type: {dtype} dims: [ {", ".join(map(str, dims))} ]{extra} }}'


def _io(kind: str, tensors: Sequence[str]) -> str:
    return f"{kind} [\n" + ",\n".join(tensors) + "\n]"


def _python_model(name: str, inputs, outputs, *, max_batch: int = 0, extra: str = "", instances: int = 1,
                  **params) -> str:
    return "\n".join(filter(None, [
        f'name: "{name}"', 'backend: "python"', f"max_batch_size: {max_batch}",
        _io("input", inputs), _io("output", outputs), extra,
        f"instance_group [ {{ count: {instances} kind: KIND_AUTO }} ]", _params(**params),
    ])) + "\n"


def render_configs(variant: Variant, instances: dict[str, int] | None = None) -> dict[str, str]:
    """Relative path → text of every committed file for one variant.

    ``instances`` (role → count) is for tuning a copy of the repository to a
    machine, as the benchmark does; the committed files use DEFAULT_INSTANCES.
    """
    counts = {role: {**DEFAULT_INSTANCES, **(instances or {})}.get(role, 1) for role in TRITON_ROLES}
    names = model_names(variant)
    size = variant.preprocessing.input_size
    face = [3, size, size]
    files = {}
    files[f"{names['preprocess']}/config.pbtxt"] = _python_model(
        names["preprocess"], [_tensor("IMAGE", "TYPE_STRING", [1])],
        [_tensor("FACES", "TYPE_FP32", [-1, *face]), _tensor("METADATA", "TYPE_STRING", [1])],
        variant=variant.name, max_faces=CLASSIFIER_MAX_BATCH, instances=counts["preprocess"])
    files[f"{names['classifier']}/config.pbtxt"] = _python_model(
        names["classifier"], [_tensor("FACES", "TYPE_FP32", face)],
        [_tensor("FAKE_PROBABILITY", "TYPE_FP32", [-1]), _tensor("CHECKPOINT", "TYPE_STRING", [1])],
        max_batch=CLASSIFIER_MAX_BATCH,
        extra=f"version_policy: {{ latest: {{ num_versions: {CLASSIFIER_VERSIONS_SERVED} }} }}\n"
              "dynamic_batching { max_queue_delay_microseconds: 2000 }",
        variant=variant.name, instances=counts["classifier"])
    files[f"{names['postprocess']}/config.pbtxt"] = _python_model(
        names["postprocess"],
        [_tensor("METADATA", "TYPE_STRING", [1]), _tensor("FAKE_PROBABILITY", "TYPE_FP32", [-1, -1]),
         _tensor("CHECKPOINT", "TYPE_STRING", [-1, 1])],
        [_tensor("RESPONSE", "TYPE_STRING", [1])], variant=variant.name, instances=counts["postprocess"])
    files[f"{names['video']}/config.pbtxt"] = _python_model(
        names["video"],
        [_tensor("VIDEO", "TYPE_STRING", [1]), _tensor("SAMPLING", "TYPE_STRING", [1], optional=True),
         _tensor("FRAMES", "TYPE_INT32", [1], optional=True), _tensor("EVERY", "TYPE_INT32", [1], optional=True)],
        [_tensor("RESPONSE", "TYPE_STRING", [1])],
        variant=variant.name, classifier=names["classifier"], classifier_batch=16, max_faces=127,
        instances=counts["video"])
    steps = [
        (names["preprocess"], {"IMAGE": "IMAGE"}, {"FACES": "faces", "METADATA": "metadata"}),
        (names["classifier"], {"FACES": "faces"}, {"FAKE_PROBABILITY": "probabilities", "CHECKPOINT": "checkpoint"}),
        (names["postprocess"], {"METADATA": "metadata", "FAKE_PROBABILITY": "probabilities",
                                "CHECKPOINT": "checkpoint"}, {"RESPONSE": "RESPONSE"}),
    ]
    step_text = ",\n".join(
        f'    {{\n      model_name: "{model}"\n      model_version: -1\n'
        + "".join(f'      input_map {{ key: "{k}" value: "{v}" }}\n' for k, v in inputs.items())
        + "".join(f'      output_map {{ key: "{k}" value: "{v}" }}\n' for k, v in outputs.items())
        + "    }"
        for model, inputs, outputs in steps)
    files[f"{names['ensemble']}/config.pbtxt"] = "\n".join([
        f'name: "{names["ensemble"]}"', 'platform: "ensemble"', "max_batch_size: 0",
        _io("input", [_tensor("IMAGE", "TYPE_STRING", [1])]), _io("output", [_tensor("RESPONSE", "TYPE_STRING", [1])]),
        "ensemble_scheduling {\n  step [\n" + step_text + "\n  ]\n}",
    ]) + "\n"
    files[f"{names['ensemble']}/1/.gitkeep"] = ""  # Triton wants a version directory even for an ensemble
    for role in ("preprocess", "postprocess", "video"):
        files[f"{names[role]}/1/model.py"] = _model_py(role)
    files[f"{names['classifier']}/model.py"] = _model_py("classifier")  # copied into each built version
    return files


def _model_py(role: str) -> str:
    return (f'"""Generated by deepfake_serving.serving.triton_repository: the code is in the installed package."""\n\n'
            f"from deepfake_serving.serving.triton_models.{role} import TritonPythonModel  # noqa: F401\n")


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
    engine: str = DEFAULT_ENGINE,
) -> Path:
    """Write one classifier version into ``<classifier>/<version>/``: a bundle (the same files as an
    archive's: all checkpoints in one ONNX graph, which the classifier model serves).

    ``label`` is the version the responses report (an archive's ``--version``,
    e.g. "2.0"); the same checkpoints and seed give the same weights as
    ``deepfake-serving archive``.
    """
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
