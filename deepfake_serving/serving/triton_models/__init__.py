"""Triton python-backend models: thin adapters from ``TritonPythonModel`` to deepfake_serving's core.

The repository's ``model.py`` files import these classes, so the code lives in
the installed package (one copy for all variants) and a model's config.pbtxt
says which variant it serves. They import ``triton_python_backend_utils``,
which exists only inside Triton's python-backend stub, and never torch.
"""

from __future__ import annotations

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from deepfake_serving.core.errors import RequestError, internal_error
from deepfake_serving.engines import Device


def parameters(args: dict) -> dict[str, str]:
    """config.pbtxt ``parameters`` as a plain dict."""
    config = json.loads(args["model_config"])
    return {key: value["string_value"] for key, value in config.get("parameters", {}).items()}


def instance_device(args: dict) -> Device:
    """This instance's device: KIND_GPU instances get their GPU (untested here: no GPU), all others the CPU.
    Threads come from the launcher's environment (deepfake_serving.core.threads), never from config.pbtxt."""
    if args.get("model_instance_kind") == "GPU":
        return Device("cuda", int(args.get("model_instance_device_id", 0)))
    return Device()


def input_bytes(request, name: str) -> bytes:
    """The single bytes element of a TYPE_STRING input of shape [1]."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        raise RequestError("missing_input", f"the request has no {name} input")
    values = tensor.as_numpy().reshape(-1)
    if values.size != 1:
        raise RequestError("bad_input_shape", f"{name} must hold exactly one element, got {values.size}")
    value = values[0]
    return value if isinstance(value, bytes) else str(value).encode()


def optional_scalar(request, name: str, default):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return default
    value = tensor.as_numpy().reshape(-1)[0]
    return value.decode() if isinstance(value, bytes) else value.item()


def error_response(err: Exception) -> "pb_utils.InferenceResponse":
    """Our code/message/status as JSON in Triton's message, for this request only: a client error as
    INVALID_ARG (Triton answers 400), a fault of ours as INTERNAL (500). The clients read the status."""
    error = internal_error(err)
    kind = pb_utils.TritonError.INVALID_ARG if error.status < 500 else pb_utils.TritonError.INTERNAL
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(json.dumps(error.to_dict()["error"]), kind))


def json_tensor(name: str, value) -> "pb_utils.Tensor":
    return pb_utils.Tensor(name, np.array([json.dumps(value).encode()], dtype=np.object_))


def answer_each(requests, answer, recorder=None) -> list:
    """One RESPONSE (JSON) per request from ``answer(request)``; a request that fails is answered its error
    alone. ``recorder`` (monitoring.recorder.PredictionRecorder) takes each answer or error."""
    responses = []
    for request in requests:
        try:
            result = answer(request)
            responses.append(pb_utils.InferenceResponse(output_tensors=[json_tensor("RESPONSE", result)]))
        except Exception as err:  # noqa: BLE001 - answered per request
            result = internal_error(err)
            responses.append(error_response(err))
        if recorder is not None:
            recorder.answer(result)
    return responses
