"""Experiment tracking with MLflow: a local SQLite store by default (no server), or the user's tracking URI.
A store that cannot be reached is refused before any work starts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import requests

DEFAULT_STORE = Path("mlruns")  # ./mlruns/mlflow.db and ./mlruns/artifacts/
EXPERIMENT = "deepfake-serving"


class TrackingError(RuntimeError):
    """The tracking store cannot be used (one line for the command line)."""


def default_uri(root: Path = DEFAULT_STORE) -> str:
    return f"sqlite:///{(root / 'mlflow.db').resolve()}"


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """A server URI answers its health check; a SQLite or file store's folder can be written."""
    if uri.startswith(("http://", "https://")):
        try:
            requests.get(f"{uri.rstrip('/')}/health", timeout=timeout).raise_for_status()
        except requests.RequestException as err:
            raise TrackingError(f"the MLflow tracking server {uri} cannot be reached ({type(err).__name__})") from None
        return
    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
    elif uri.startswith("file:"):
        folder = Path(uri.removeprefix("file:").removeprefix("//"))
    else:
        raise TrackingError(f"unsupported tracking URI {uri!r}: use sqlite:///PATH, file:PATH or http(s)://HOST")
    try:  # runs, checkpoints and scores naming every training file: the owner's alone, as the face cache
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        if folder.stat().st_uid == os.getuid():
            folder.chmod(0o700)
    except OSError as err:
        raise TrackingError(f"the MLflow store {uri} cannot be written: {err}") from None
    if not os.access(folder, os.W_OK):
        raise TrackingError(f"the MLflow store {uri} cannot be written: {folder} is not writable")


def _mlflow(uri: str):
    # No retries for minutes against a server that went away: one clear failure instead.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    import mlflow

    mlflow.set_tracking_uri(uri)
    return mlflow


def experiment_id(uri: str, name: str = EXPERIMENT) -> str:
    """The experiment, created with its artifacts beside a local store's database."""
    mlflow = _mlflow(uri)
    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").resolve().as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


class Tracker:
    """One MLflow run: ``start`` (or resume by id), parameters, per-epoch metrics, artifacts."""

    def __init__(self, uri: str, run_id: str | None = None, experiment: str = EXPERIMENT):
        self.uri = uri
        self.mlflow = _mlflow(uri)
        self.client = self.mlflow.MlflowClient()
        if run_id is None:
            run_id = self.client.create_run(experiment_id(uri, experiment)).info.run_id
        else:  # resumed
            self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id

    def params(self, values: dict[str, Any]) -> None:
        logged = self.client.get_run(self.run_id).data.params
        for key, value in values.items():
            text = str(value)[:6000]
            if key not in logged:  # a resumed run logs only what is new
                self.client.log_param(self.run_id, key, text)

    def metrics(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            if value is not None:
                self.client.log_metric(self.run_id, key, float(value), step=step)

    def artifacts(self, folder: Path, path: str | None = None) -> None:
        self.client.log_artifacts(self.run_id, str(folder), path)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status)


def _run(uri: str, run_id: str):
    check_reachable(uri)
    mlflow = _mlflow(uri)
    try:
        return mlflow.get_run(run_id)
    except Exception as err:  # noqa: BLE001 - MLflow's own exception types vary by store
        raise TrackingError(f"no MLflow run {run_id} in {uri} ({type(err).__name__})") from None


def run_variant(uri: str, run_id: str) -> str:
    """The variant a training run trained."""
    variant = _run(uri, run_id).data.params.get("variant")
    if not variant:
        raise TrackingError(f"MLflow run {run_id} is not a deepfake-serving training run (no variant parameter)")
    return variant


def download_checkpoint(uri: str, run_id: str, destination: Path) -> Path:
    """The checkpoint a training run logged (``checkpoint/checkpoint.pt``), copied into ``destination``."""
    mlflow = _mlflow(uri)
    _run(uri, run_id)
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="checkpoint/checkpoint.pt",
                                               dst_path=str(destination), tracking_uri=uri)
    return Path(path)
