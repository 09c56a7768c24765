"""A cross-architecture ensemble (an ensemble bundle or archive, ``deepfake-serving ensemble``) as Triton models.

For an ensemble named ``mobile-ff`` with members b4-mobile and b4-ff:

- ``mobile_ff``             ensemble: IMAGE → preprocess → every member's classifier (in parallel) → fusion
- ``mobile_ff_preprocess``  python: one decode and one detection, each member's crops (FACES_0, FACES_1)
- ``mobile_ff_member0/1``   python classifiers (triton_models.classifier), own instances and dynamic batching;
                            version N holds that member's bundle (its weights, graph and engine decision)
- ``mobile_ff_fusion``      python: the fused answer, by the rule of version N's ensemble manifest
- ``mobile_ff_video``       python + BLS: the video ensemble over the members' classifier models

A version is installed whole: every versioned model gets directory N (the ensemble's own version label,
e.g. "2", travels in its manifests and answers); the steps route to the newest loaded version, and the
fusion refuses to fuse members of another version than its own. The configs are generated here, not
committed: an ensemble is the user's.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from google.protobuf import text_format

from deepfake_serving.bundle.ensemble import ENSEMBLE_MANIFEST, Ensemble
from deepfake_serving.bundle.manifest import MANIFEST_NAME, BundleManifest
from deepfake_serving.core.limits import MAX_IMAGE_FACES, MAX_VIDEO_FACES
from deepfake_serving.core.naming import ANSWERED_BY, model_names, triton_model_name
from deepfake_serving.serving.launch.archive import extract_ensemble
from deepfake_serving.serving.launch.triton_repository import (
    DEFAULT_INSTANCES,
    REPOSITORY,
    VIDEO_INPUTS,
    classifier_config,
    compile_model_files,
    ensemble_config,
    model_py,
    python_model,
    tensor_spec,
)
from deepfake_serving.variants import list_variants

VIDEO_CLASSIFIER_BATCH = 16  # faces per BLS call from the video model to a member's classifier


def ensemble_names(name: str, members: int) -> dict:
    """Triton model names of an ensemble by role; ``members`` is the list of member classifier names."""
    base = triton_model_name(name)
    return {"ensemble": base, "preprocess": f"{base}_preprocess", "fusion": f"{base}_fusion", "video": f"{base}_video",
            "members": [f"{base}_member{i}" for i in range(members)]}


def render_ensemble(ensemble: Ensemble) -> dict[str, str]:
    """Relative path → text of the ensemble's configs and unversioned model files."""
    variants = [member.variant for member in ensemble.members]
    names = ensemble_names(ensemble.manifest.name, len(variants))
    members, classifiers = ",".join(v.name for v in variants), ",".join(names["members"])
    configs = {
        names["preprocess"]: python_model(
            names["preprocess"], [tensor_spec("IMAGE", "TYPE_STRING", [1])],
            [*(tensor_spec(f"FACES_{i}", "TYPE_FP32", [-1, 3, v.preprocessing.input_size, v.preprocessing.input_size])
               for i, v in enumerate(variants)), tensor_spec("METADATA", "TYPE_STRING", [1])],
            members=members, max_faces=MAX_IMAGE_FACES, video=names["video"],
            instances=DEFAULT_INSTANCES.get("preprocess", 1)),
        **{name: classifier_config(name, variant) for name, variant in zip(names["members"], variants)},
        names["fusion"]: python_model(
            names["fusion"],
            [tensor_spec("METADATA", "TYPE_STRING", [1]),
             *(t for i in range(len(variants)) for t in (tensor_spec(f"FAKE_PROBABILITY_{i}", "TYPE_FP32", [-1, -1]),
                                                         tensor_spec(f"{ANSWERED_BY}_{i}", "TYPE_STRING", [-1, 1])))],
            [tensor_spec("RESPONSE", "TYPE_STRING", [1])], members=members, classifiers=classifiers),
        names["video"]: python_model(names["video"], VIDEO_INPUTS, [tensor_spec("RESPONSE", "TYPE_STRING", [1])],
                                      members=members, classifiers=classifiers, classifier_batch=VIDEO_CLASSIFIER_BATCH,
                                      max_faces=MAX_VIDEO_FACES),
        names["ensemble"]: ensemble_config(names["ensemble"], [
            (names["preprocess"], {"IMAGE": "IMAGE"},
             {"METADATA": "metadata", **{f"FACES_{i}": f"faces_{i}" for i in range(len(variants))}}),
            *((member, {"FACES": f"faces_{i}"}, {"FAKE_PROBABILITY": f"probabilities_{i}", ANSWERED_BY: f"answered_by_{i}"})
              for i, member in enumerate(names["members"])),
            (names["fusion"], {"METADATA": "metadata",
                               **{f"FAKE_PROBABILITY_{i}": f"probabilities_{i}" for i in range(len(variants))},
                               **{f"{ANSWERED_BY}_{i}": f"answered_by_{i}" for i in range(len(variants))}},
             {"RESPONSE": "RESPONSE"}),
        ]),
    }
    files = {f"{name}/config.pbtxt": text_format.MessageToString(config) for name, config in configs.items()}
    files[f"{names['ensemble']}/1/.gitkeep"] = ""
    files[f"{names['preprocess']}/1/model.py"] = model_py("ensemble", "EnsemblePreprocess")
    return files


def install_ensemble(source: str | Path, version: int, repository: str | Path = REPOSITORY) -> dict:
    """Install an ensemble bundle (a directory) or archive (``.mar``) as Triton version ``version``; the
    model names by role. An ensemble already in the repository keeps its members' variants: another
    set of members is another ensemble (another name)."""
    if version < 1:
        raise ValueError("Triton model versions are positive integers")
    repository = Path(repository)
    with tempfile.TemporaryDirectory(prefix="triton-ensemble-") as tmp:
        bundle = Path(source)
        if bundle.is_file():
            bundle = Path(tmp) / "bundle"
            extract_ensemble(Path(source), bundle)
        ensemble = Ensemble.open(bundle)
        names = ensemble_names(ensemble.manifest.name, len(ensemble.members))
        if names["ensemble"] in {model_names(v)["ensemble"] for v in list_variants()}:
            raise ValueError(f"{ensemble.manifest.name}: a variant's models have that name; name the ensemble otherwise")
        files = render_ensemble(ensemble)
        fusion_config = repository / names["fusion"] / "config.pbtxt"
        if fusion_config.exists() and fusion_config.read_text() != files[f"{names['fusion']}/config.pbtxt"]:
            raise ValueError(f"{names['ensemble']} is in {repository} with other members: install these members "
                             "under another ensemble name")
        for relative, text in files.items():
            path = repository / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        for name, member in zip(names["members"], ensemble.members):
            _install_version(repository / name / str(version), member.directory, model_py("classifier"))
        for role, module in (("fusion", "EnsembleFusion"), ("video", "EnsembleVideo")):
            _install_version(repository / names[role] / str(version), None, model_py("ensemble", module),
                             bundle / ENSEMBLE_MANIFEST)
    for role in ("ensemble", "preprocess", "fusion", "video"):
        compile_model_files(repository / names[role])
    for name in names["members"]:
        compile_model_files(repository / name)
    return names


def listed_files(bundle: Path) -> list[Path]:
    """A member bundle's manifest and the files it lists, nothing else; each a regular file inside the bundle,
    never a link (an installer that follows links would copy whatever they point at into the repository)."""
    manifest = BundleManifest.read(bundle)
    paths = [bundle / MANIFEST_NAME, *(bundle / entry["file"] for entry in manifest.files)]
    for path in paths:
        if path.is_symlink() or not path.is_file() or bundle.resolve() not in path.resolve().parents:
            raise ValueError(f"{path}: a member's files are regular files inside its bundle (no links)")
    return paths


def _install_version(target: Path, bundle: Path | None, code: str, *files: Path) -> None:
    """Version directory ``target``: the files ``bundle`` lists (or none), ``files`` and model.py, swapped in
    whole, each a new file of the repository's owner (the source's mode is not copied)."""
    staging = target.parent / f".{target.name}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True, exist_ok=True)
    if bundle is not None:
        for path in listed_files(bundle):
            (staging / path.relative_to(bundle)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, staging / path.relative_to(bundle))
    for path in files:
        if path.is_symlink():
            raise ValueError(f"{path}: an ensemble's files are regular files (no links)")
        shutil.copyfile(path, staging / path.name)
    (staging / "model.py").write_text(code)
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
