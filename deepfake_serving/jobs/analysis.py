"""How a worker analyses a job's upload (``DEEPFAKE_JOBS_BACKEND``):

- ``torchserve`` (the default): through the project's REST client; a clip is streamed from the job store
  as it is read and its progress events come back as they happen. The worker host holds no model.
- ``triton``: through the project's Triton client (KServe v2 / Open Inference Protocol). The protocol has
  no streamed input, so a clip is read whole (at most ``max_upload_bytes``) and no progress comes back
  before the answer. The worker host holds no model.
- ``in-process``: the archive in ``DEEPFAKE_JOBS_ARCHIVE`` (a variant's or an ensemble's ``.mar``) unpacked
  once into a private folder and run by the core pipelines in the worker itself; a clip is decoded from
  its file as it is read, and a cancelled job stops between frames.

Every backend answers a ``Prediction`` (the usual answer, or the usual error JSON with its status); the
worker's ``on_event`` sees each progress event and may raise to stop the analysis.
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Protocol

from deepfake_serving.core.errors import RequestError, error_body, internal_error
from deepfake_serving.core.naming import video_model
from deepfake_serving.jobs.settings import JobSettings
from deepfake_serving.media.video import Sampling
from deepfake_serving.serving.client.clients import EXPLAIN, Prediction, RestClient, RetryPolicy, TritonClient

# The client's own retries span a worker restart; the task retries an unreachable server with the job's
# backoff (a new message each time, the job queued meanwhile), not by holding the attempt.
JOB_RETRY = RetryPolicy(outage_s=0.0)

OnEvent = Callable[[dict], None]


class Analyser(Protocol):
    def analyse(self, model: str, path: Path, video: bool, version: str | None, options: dict, explain: bool,
                on_event: OnEvent) -> Prediction:
        """``video``: the job's media, as the API found it when the upload was stored."""


class TorchServeAnalyser:
    def __init__(self, settings: JobSettings):
        self.client = RestClient(settings.server_url, timeout=settings.max_job_s, key_file=settings.key_file or None,
                                 retry=JOB_RETRY)

    def analyse(self, model, path, video, version, options, explain, on_event) -> Prediction:
        extra = {EXPLAIN: "true"} if explain else {}
        if not video:
            return self.client.predict(model, path.read_bytes(), version, extra)  # images: ≤ 20 MB
        last = Prediction(502, error_body("stream_interrupted", "no answer"))
        with open(path, "rb") as upload:  # streamed from disk, never read whole into memory
            for last in self.client.stream(video_model(model), upload, version, {**options, **extra}):
                if "event" in last.body:
                    on_event(last.body)  # may raise: leaving the stream closes the connection
        return last


class TritonAnalyser:
    def __init__(self, settings: JobSettings):
        self.client = TritonClient(settings.server_url, "http", timeout=settings.max_job_s, retry=JOB_RETRY)

    def analyse(self, model, path, video, version, options, explain, on_event) -> Prediction:
        name = video_model(model) if video else model
        extra = {EXPLAIN: "true"} if explain else {}
        return self.client.predict(name, path.read_bytes(), version, {**options, **extra})


class Stop(Exception):
    """Raised by a worker's ``on_event`` to stop an analysis (the job was cancelled, or ran too long)."""


class InProcessAnalyser:
    """The archive's pipelines (image, video) and explainers, each loaded on first use and kept."""

    def __init__(self, settings: JobSettings):
        from deepfake_serving.serving.launch.archive import extract_bundle

        self.folder = tempfile.TemporaryDirectory(prefix="deepfake-job-bundle-")  # 0700, removed at exit
        self.bundle = Path(self.folder.name)
        extract_bundle(Path(settings.archive), self.bundle)
        self.loaded: dict[tuple[str, str, bool], Any] = {}
        self.lock = threading.RLock()

    def _load(self, model: str, media: str, explain: bool) -> Any:
        from deepfake_serving.bundle.ensemble import ENSEMBLE_MANIFEST
        from deepfake_serving.pipeline import load_pipeline

        with self.lock:
            key = (model, media, explain)
            if key in self.loaded:
                return self.loaded[key]
            if not explain:
                self.loaded[key] = load_pipeline(self.bundle, media, model_name=video_model(model) if media == "video" else model)
            elif (self.bundle / ENSEMBLE_MANIFEST).is_file():
                raise RequestError("explain_not_supported", f"{model} is an ensemble: explain each member's own archive")
            elif media == "video":
                from deepfake_serving.explain.video import load_video_explainer

                self.loaded[key] = load_video_explainer(self.bundle, self._load(model, media, False))
            else:
                from deepfake_serving.explain.image import load_image_explainer

                self.loaded[key] = load_image_explainer(self.bundle, self._load(model, media, False))
            return self.loaded[key]

    def analyse(self, model, path, video, version, options, explain, on_event) -> Prediction:
        media = "video" if video else "image"
        try:
            pipeline = self._load(model, media, False)
            if version and version != pipeline.version:
                raise RequestError("model_not_found", f"this worker runs {model} v{pipeline.version} only")
            analyser = self._load(model, media, True) if explain else pipeline
            if media == "video":
                answer = analyser.analyze(path, Sampling.from_options(options), progress=on_event)
            else:
                (answer,) = (analyser.explain_batch if explain else analyser.predict_batch)([path.read_bytes()])
        except Stop:
            raise
        except Exception as err:  # noqa: BLE001 - RequestError as it is, a fault of ours as internal_error
            answer = err
        if isinstance(answer, Exception):
            error = internal_error(answer)
            return Prediction(error.status, error.to_dict())
        return Prediction(200, answer)


def make_analyser(settings: JobSettings) -> Analyser:
    if settings.backend == "triton":
        return TritonAnalyser(settings)
    if settings.backend == "in-process":
        return InProcessAnalyser(settings)
    return TorchServeAnalyser(settings)
