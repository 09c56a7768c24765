"""REST and gRPC clients for the predictions API (TorchServe's inference endpoints)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import grpc
import requests

from .grpc_stubs import inference_pb2, inference_pb2_grpc


@dataclass(frozen=True)
class Prediction:
    status: int
    body: dict

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def _json_or_text(raw: bytes, reason: str = "") -> dict:
    """The JSON body, or an error in our schema for bodies the server itself wrote as text or left empty
    (TorchServe's transport answers 413 above max_request_size with an empty body)."""
    try:
        body = json.loads(raw)
    except ValueError:
        text = raw.decode("utf-8", "replace")[:500]
        return {"error": {"code": "non_json_response", "message": text or reason or "empty response body"}}
    return body if isinstance(body, dict) else {"result": body}


class RestClient:
    def __init__(self, url: str = "http://127.0.0.1:8080", timeout: float = 300.0):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()

    def predict(self, model: str, data: bytes, version: str | None = None) -> Prediction:
        path = f"{self.url}/predictions/{model}" + (f"/{version}" if version else "")
        response = self.session.post(path, data=data, timeout=self.timeout,
                                     headers={"Content-Type": "application/octet-stream"})
        return Prediction(response.status_code, _json_or_text(response.content, response.reason))


class GrpcClient:
    """TorchServe's gRPC Predictions call. Its per-request status does not cross gRPC (the call
    is OK and the error is in the body), so the status comes from the body's ``error.status``."""

    def __init__(self, target: str = "127.0.0.1:7070", timeout: float = 300.0, max_message_mb: int = 100):
        size = max_message_mb * 1024 * 1024
        self.channel = grpc.insecure_channel(
            target, options=[("grpc.max_send_message_length", size), ("grpc.max_receive_message_length", size)]
        )
        self.stub = inference_pb2_grpc.InferenceAPIsServiceStub(self.channel)
        self.timeout = timeout

    def predict(self, model: str, data: bytes, version: str | None = None) -> Prediction:
        request = inference_pb2.PredictionsRequest(model_name=model, model_version=version or "", input={"data": data})
        try:
            response = self.stub.Predictions(request, timeout=self.timeout)
        except grpc.RpcError as err:
            return Prediction(_http_status(err.code()), {"error": {"code": err.code().name, "message": err.details()}})
        body = _json_or_text(response.prediction)
        status = body.get("error", {}).get("status", 200) if isinstance(body.get("error"), dict) else 200
        return Prediction(int(status), body)

    def close(self) -> None:
        self.channel.close()


def _http_status(code: grpc.StatusCode) -> int:
    return {
        grpc.StatusCode.INVALID_ARGUMENT: 400,
        grpc.StatusCode.NOT_FOUND: 404,
        grpc.StatusCode.RESOURCE_EXHAUSTED: 413,
        grpc.StatusCode.UNAVAILABLE: 503,
        grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    }.get(code, 500)


def make_client(protocol: str, url: str | None = None, timeout: float = 300.0):
    if protocol == "rest":
        return RestClient(url or "http://127.0.0.1:8080", timeout)
    if protocol == "grpc":
        return GrpcClient(url or "127.0.0.1:7070", timeout)
    raise ValueError(f"unknown protocol {protocol!r} (rest or grpc)")
