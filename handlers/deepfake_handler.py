"""TorchServe handler: a thin adapter from BaseHandler's life cycle to deepfake_serving's pipeline.

Batch-aware: the faces of every request in a server-side batch share one
forward pass. A bad request fails alone with its own 4xx and JSON error.
"""

from __future__ import annotations

import json
import logging
import os

import torch
from ts.torch_handler.base_handler import BaseHandler

from deepfake_serving.bundle import load_bundle
from deepfake_serving.errors import InputError

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
    raise InputError(415, "unsupported_media",
                     "send the image as the raw request body or a multipart file, not as text or JSON")


class DeepfakeHandler(BaseHandler):
    def initialize(self, context):
        properties = context.system_properties
        config = (getattr(context, "model_yaml_config", None) or {}).get("handler", {})
        threads = int(os.environ.get("DEEPFAKE_TORCH_THREADS", config.get("torch_threads", 1)))
        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # already set in this process
            pass
        model_dir = properties.get("model_dir")
        serialized = context.manifest["model"].get("serializedFile")
        self.pipeline = load_bundle(model_dir, os.path.join(model_dir, serialized) if serialized else None)
        self.pipeline.model_name = context.model_name
        self.context = context
        self.initialized = True
        logger.info("deepfake handler ready: %s v%s, %d torch threads, trained weights: %s",
                    context.model_name, self.pipeline.version, threads, self.pipeline.weights_trained)

    def preprocess(self, data):
        payloads: list[bytes | InputError] = []
        for row in data:
            try:
                payloads.append(request_bytes(row))
            except InputError as err:
                payloads.append(err)
        return payloads

    def inference(self, payloads, *args, **kwargs):
        valid = [i for i, p in enumerate(payloads) if not isinstance(p, InputError)]
        answers = self.pipeline.predict_batch([payloads[i] for i in valid])
        results = list(payloads)
        for i, answer in zip(valid, answers):
            results[i] = answer
        return results

    def postprocess(self, results):
        out = []
        for idx, result in enumerate(results):
            self.context.set_response_content_type(idx, JSON)
            if isinstance(result, InputError):
                self.context.set_response_status(result.status, result.code, idx=idx)
                out.append(json.dumps(result.to_dict()))
            else:
                out.append(json.dumps(result))
        return out
