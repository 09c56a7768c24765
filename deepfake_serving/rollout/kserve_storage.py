"""The storage a KServe predictor mounts at /mnt/models (``deepfake-serving kserve export``).

- **TorchServe** (KServe's ``kserve-torchserve`` runtime): ``config/config.properties`` and
  ``model-store/*.mar``. KServe's TorchServe wrapper reads the configuration for TorchServe's addresses
  and the models to serve (``model_snapshot``), starts nothing else, and forwards the cluster's requests
  to TorchServe inside the same container. So TorchServe's inference and management addresses are
  loopback (only the wrapper reaches them), its token authorization is off (the wrapper sends none: the
  cluster's ingress authorizes), registration over the management API is off (a new version is a new
  revision), and only the metrics port listens on every interface, for Prometheus.
- **Triton** (``kserve-tritonserver``, or a runtime on docker/triton.Dockerfile, which the python-backend
  models need): the variant's models of the repository, every built classifier version, without
  bytecode or a rollout's pinned ensembles. KServe starts Triton without explicit model control, so every
  model in the folder loads.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

from deepfake_serving.core.naming import model_names
from deepfake_serving.serving.launch.torchserve import CONFIG, read_properties
from deepfake_serving.serving.launch.triton_repository import built_versions

MOUNT = "/mnt/models"  # where KServe's storage initializer puts the storage URI's files
TORCHSERVE_PORT = 8085  # the wrapper's default inference and management address
MAX_MANIFEST_BYTES = 1 << 16


def archive_identity(mar: Path) -> tuple[str, str]:
    """(model name, version) from an archive's MAR-INF/MANIFEST.json (read as JSON, bounded: nothing of the
    archive is run or unpacked)."""
    with zipfile.ZipFile(mar) as archive:
        info = archive.getinfo("MAR-INF/MANIFEST.json")
        if info.file_size > MAX_MANIFEST_BYTES:
            raise ValueError(f"{mar}: its manifest is {info.file_size} bytes")
        model = json.loads(archive.read(info))["model"]
    return model["modelName"], model["modelVersion"]


def torchserve_properties(archives: list[Path], port: int = TORCHSERVE_PORT, metrics_port: int = 8082,
                          model_store: str = f"{MOUNT}/model-store") -> dict[str, str]:
    """The repository's config.properties (limits, vmargs, timeouts) with KServe's addresses and snapshot."""
    models: dict[str, dict] = {}
    for mar in archives:
        name, version = archive_identity(mar)
        versions = models.setdefault(name, {})
        if version in versions:
            raise ValueError(f"two archives are {name} {version}")
        versions[version] = {"defaultVersion": False, "marName": mar.name, "minWorkers": 1, "maxWorkers": 1,
                             "batchSize": 1, "maxBatchDelay": 100, "responseTimeout": 300}
    for versions in models.values():  # the newest version answers unversioned requests
        versions[max(versions, key=lambda v: tuple(int(p) if p.isdigit() else 0 for p in v.split(".")))][
            "defaultVersion"] = True
    props = read_properties(CONFIG)
    props.update({
        "inference_address": f"http://127.0.0.1:{port}",
        "management_address": f"http://127.0.0.1:{port}",
        "metrics_address": f"http://0.0.0.0:{metrics_port}",
        "grpc_inference_address": "127.0.0.1", "grpc_management_address": "127.0.0.1",
        "disable_token_authorization": "true",
        "enable_model_api": "false",
        "enable_envvars_config": "false",
        "model_store": model_store,
        "load_models": "",
        "model_snapshot": json.dumps({"name": "startup.cfg", "modelCount": len(archives), "models": models},
                                     separators=(",", ":")),
    })
    return props


def export_torchserve(out: Path, archives: list[Path], **options) -> list[Path]:
    """Write ``out/config/config.properties`` and ``out/model-store/`` (copies of ``archives``)."""
    store, config = out / "model-store", out / "config"
    store.mkdir(parents=True, exist_ok=True)
    config.mkdir(parents=True, exist_ok=True)
    props = torchserve_properties(archives, **options)
    written = [Path(shutil.copy2(mar, store / mar.name)) for mar in archives]
    (config / "config.properties").write_text("".join(f"{k}={v}\n" for k, v in props.items()))
    return [config / "config.properties", *written]


def export_triton(out: Path, variant: str, repository: Path) -> list[Path]:
    """Copy the variant's models from ``repository`` into ``out`` (a Triton model repository)."""
    if not built_versions(variant, repository):
        raise FileNotFoundError(f"no classifier version of {variant} is built in {repository}: "
                                "run `deepfake-serving triton build` first")
    copied = []
    for name in model_names(variant).values():
        source = repository / name
        shutil.copytree(source, out / name, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        copied.append(out / name)
    return copied
