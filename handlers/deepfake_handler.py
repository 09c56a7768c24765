"""TorchServe handler: a thin adapter from BaseHandler's life cycle to deepfake_serving's pipelines.

The archive's model-config.yaml says ``handler.media``: ``image`` archives are
batch-aware (the faces of every request in a server-side batch share one
forward pass), ``video`` archives analyse one clip per request and can stream
progress. A bad request fails alone with its own 4xx and JSON error, and
anything that goes wrong while answering one request (a detector or
classifier fault) fails that request alone with 500 ``internal_error``.
"""

from __future__ import annotations

import json
import logging

from ts.handler_utils.utils import send_intermediate_predict_response
from ts.torch_handler.base_handler import BaseHandler

from deepfake_serving.bundle import load_bundle, load_video_bundle
from deepfake_serving.engines import Device
from deepfake_serving.errors import RequestError, internal_error
from deepfake_serving.threads import intra_op_threads
from deepfake_serving.video import Sampling, VideoLimits

logger = logging.getLogger(__name__)

JSON = "application/json"
BODY_FIELDS = ("data", "body", "file", "image")


def request_bytes(row: dict) -> bytes:
    """The raw upload of one request: the body, or the first file field of a multipart form."""
    for key in BODY_FIELDS:
        if key in row:
            value = row[key]
            break
    else:
        value = next(iter(row.values()), b"")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str) and not value:
        return b""
    raise RequestError("unsupported_media",
                     "send the image as the raw request body or a multipart file, not as text or JSON")


def request_field(row: dict, headers: dict[str, str], name: str, default: str) -> str:
    """A multipart or gRPC input field, else the ``X-{name}`` header (TorchServe does not pass query strings)."""
    value = row.get(name, headers.get(f"x-{name}", default))
    return value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else str(value)


def video_request(row: dict, headers: dict[str, str]) -> tuple[bytes, Sampling, bool]:
    """Body, per-request sampling (sampling=linspace|every_nth|all, frames=, every=) and stream=true|false."""
    try:
        sampling = Sampling(
            strategy=request_field(row, headers, "sampling", "linspace"),
            frames=int(request_field(row, headers, "frames", "32")),
            every=int(request_field(row, headers, "every", "10")),
        )
    except ValueError:
        raise RequestError("bad_sampling", "frames and every must be integers") from None
    stream = request_field(row, headers, "stream", "false").lower() in ("1", "true", "yes")
    return request_bytes(row), sampling, stream


class DeepfakeHandler(BaseHandler):
    def initialize(self, context):
        properties = context.system_properties
        config = (getattr(context, "model_yaml_config", None) or {}).get("handler", {})
        self.media = config.get("media", "image")
        # The archive's engine (default: the manifest's), TorchServe's GPU if it assigned one, and the
        # threads rule (cores ÷ workers) unless the archive sets handler.threads.
        engine = config.get("engine")
        device = Device.from_gpu_id(properties.get("gpu_id"))
        threads = intra_op_threads(int(config.get("threads") or 0) or None)
        options = {"engine": engine, "device": device, "threads": threads, "model_name": context.model_name}
        if self.media == "video":
            # The face pool cap (DFDC: 127) and the decoded-pixel budget can be set per archive.
            limits = VideoLimits(max_decoded_pixels=int(config.get("max_decoded_pixels",
                                                                   VideoLimits.max_decoded_pixels)))
            self.pipeline = load_video_bundle(properties.get("model_dir"), limits=limits,
                                              max_faces=int(config.get("max_faces", 127)), **options)
        else:
            self.pipeline = load_bundle(properties.get("model_dir"), **options)
        self.context = context
        self.initialized = True
        logger.info("deepfake handler ready: %s v%s, engine %s on %s, %d threads, trained weights: %s",
                    context.model_name, self.pipeline.version, engine or "(manifest's)", device.torch, threads,
                    self.pipeline.weights_trained)

    def preprocess(self, data):
        payloads = []
        for idx, row in enumerate(data):
            try:
                if self.media == "video":
                    headers = {k.lower(): v for k, v in self.context.get_all_request_header(idx).items()
                               if isinstance(v, str)}
                    payloads.append(video_request(row, headers))
                else:
                    payloads.append(request_bytes(row))
            except Exception as err:  # noqa: BLE001 - this request fails alone
                payloads.append(internal_error(err))
        return payloads

    def inference(self, payloads, *args, **kwargs):
        if self.media == "video":
            return [p if isinstance(p, RequestError) else self._analyze_video(i, *p) for i, p in enumerate(payloads)]
        valid = [i for i, p in enumerate(payloads) if not isinstance(p, RequestError)]
        try:
            answers = self.pipeline.predict_batch([payloads[i] for i in valid])
        except Exception as err:  # noqa: BLE001 - predict_batch isolates requests; this is the last resort
            answers = [internal_error(err)] * len(valid)
        results = list(payloads)
        for i, answer in zip(valid, answers):
            results[i] = answer
        return results

    def _analyze_video(self, idx: int, data: bytes, sampling: Sampling, stream: bool):
        """One video; with stream=true each progress event goes out as an intermediate response
        (HTTP chunked transfer, gRPC StreamPredictions) before the final result."""

        def send(event: dict) -> None:
            self.context.set_response_content_type(idx, JSON)
            send_intermediate_predict_response([json.dumps(event) + "\n"], self.context.request_ids,
                                               "Intermediate Prediction success", 200, self.context)

        try:
            return self.pipeline.analyze(data, sampling, progress=send if stream else None)
        except Exception as err:  # noqa: BLE001 - RequestError as it is, a fault of ours as internal_error
            return internal_error(err)

    def postprocess(self, results):
        out = []
        for idx, result in enumerate(results):
            self.context.set_response_content_type(idx, JSON)
            if isinstance(result, RequestError):
                self.context.set_response_status(result.status, result.code, idx=idx)
                out.append(json.dumps(result.to_dict()))
            else:
                out.append(json.dumps(result) + ("\n" if self.media == "video" else ""))
        return out
