"""Clients that answer with one ``Prediction`` whatever the server: TorchServe over REST or gRPC,
Triton over HTTP or gRPC (KServe v2 / Open Inference Protocol, through tritonclient)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterator

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

    def _post(self, model: str, data: bytes, version: str | None, options: dict | None, stream: bool):
        path = f"{self.url}/predictions/{model}" + (f"/{version}" if version else "")
        headers = {"Content-Type": "application/octet-stream"}
        # Per-request video options travel as X- headers: TorchServe does not pass query strings on.
        headers.update({f"X-{k.capitalize()}": str(v) for k, v in (options or {}).items()})
        if stream:
            headers["X-Stream"] = "true"
        return self.session.post(path, data=data, timeout=self.timeout, headers=headers, stream=stream)

    def predict(self, model: str, data: bytes, version: str | None = None, options: dict | None = None) -> Prediction:
        response = self._post(model, data, version, options, stream=False)
        return Prediction(response.status_code, _json_or_text(response.content, response.reason))

    def stream(self, model: str, data: bytes, version: str | None = None,
               options: dict | None = None) -> Iterator[Prediction]:
        """Progress events as they arrive (newline-delimited JSON over chunked HTTP); the last is the result."""
        response = self._post(model, data, version, options, stream=True)
        for line in response.iter_lines():
            if line.strip():
                yield Prediction(response.status_code, _json_or_text(line))

    def close(self) -> None:
        self.session.close()


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

    @staticmethod
    def _request(model: str, data: bytes, version: str | None, options: dict | None, stream: bool = False):
        fields = {"data": data, **{k: str(v).encode() for k, v in (options or {}).items()}}
        if stream:
            fields["stream"] = b"true"
        return inference_pb2.PredictionsRequest(model_name=model, model_version=version or "", input=fields)

    @staticmethod
    def _prediction(raw: bytes) -> Prediction:
        body = _json_or_text(raw)
        status = body["error"].get("status", 500) if isinstance(body.get("error"), dict) else 200
        return Prediction(int(status), body)

    @staticmethod
    def _failure(err: grpc.RpcError) -> Prediction:
        return Prediction(_http_status(err.code()), {"error": {"code": err.code().name, "message": err.details()}})

    def predict(self, model: str, data: bytes, version: str | None = None, options: dict | None = None) -> Prediction:
        try:
            response = self.stub.Predictions(self._request(model, data, version, options), timeout=self.timeout)
        except grpc.RpcError as err:
            return self._failure(err)
        return self._prediction(response.prediction)

    def stream(self, model: str, data: bytes, version: str | None = None,
               options: dict | None = None) -> Iterator[Prediction]:
        """StreamPredictions: progress events, then the result."""
        try:
            for response in self.stub.StreamPredictions(self._request(model, data, version, options, True),
                                                        timeout=self.timeout):
                yield self._prediction(response.prediction)
        except grpc.RpcError as err:
            yield self._failure(err)

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


def triton_model_name(model: str) -> str:
    """TorchServe's names map onto the repository's: b4-mobile → b4_mobile, b4-mobile-video → b4_mobile_video."""
    return model.replace("-", "_")


def pinned_ensemble(model: str, version: str | int) -> str:
    """During a rollout, the image ensemble pinned to classifier version N (b4_mobile_v2)."""
    return f"{triton_model_name(model)}_v{version}"


class TritonClient:
    """Triton over HTTP (``protocol="http"``) or gRPC. Images go to the variant's ensemble, videos
    (``*-video``) to its BLS model with SAMPLING/FRAMES/EVERY inputs. Triton answers a client error
    with 400 (HTTP) or INVALID_ARGUMENT; our models put the error's own code and status in the
    message, so ``Prediction.status`` is the same as TorchServe's (415, 413, 422, ...)."""

    INTEGER_OPTIONS = {"frames": "FRAMES", "every": "EVERY"}

    def __init__(self, url: str | None = None, protocol: str = "http", timeout: float = 300.0):
        if protocol == "http":
            import tritonclient.http as module
        elif protocol == "grpc":
            import tritonclient.grpc as module
        else:
            raise ValueError(f"unknown Triton protocol {protocol!r} (http or grpc)")
        self.module, self.protocol, self.timeout = module, protocol, timeout
        default = "127.0.0.1:8000" if protocol == "http" else "127.0.0.1:8001"
        target = (url or default).removeprefix("http://")
        options = {"network_timeout": timeout, "connection_timeout": timeout} if protocol == "http" else {}
        self.client = module.InferenceServerClient(target, **options)

    def _inputs(self, model: str, data: bytes, options: dict | None) -> list:
        """IMAGE, or VIDEO plus SAMPLING/FRAMES/EVERY; ValueError for options that are not integers."""
        import numpy as np

        def tensor(name: str, value, dtype: str):
            array = np.array([value], dtype=np.object_ if dtype == "BYTES" else np.int32)
            item = self.module.InferInput(name, [1], dtype)
            item.set_data_from_numpy(array)
            return item

        if not model.endswith("_video"):
            return [tensor("IMAGE", data, "BYTES")]
        inputs = [tensor("VIDEO", data, "BYTES")]
        for key, value in (options or {}).items():
            if key in self.INTEGER_OPTIONS:
                inputs.append(tensor(self.INTEGER_OPTIONS[key], int(value), "INT32"))
            elif key == "sampling":
                inputs.append(tensor("SAMPLING", str(value).encode(), "BYTES"))
        return inputs

    def predict(self, model: str, data: bytes, version: str | None = None, options: dict | None = None) -> Prediction:
        name = triton_model_name(model)
        try:
            inputs = self._inputs(name, data, options)
        except ValueError:
            return Prediction(400, {"error": {"code": "bad_sampling", "message": "frames and every must be integers",
                                              "status": 400}})
        extra = {"client_timeout": self.timeout} if self.protocol == "grpc" else {}
        try:
            result = self.client.infer(name, inputs, model_version=version or "", **extra)
        except self.module.InferenceServerException as err:
            return self._failure(err)
        return Prediction(200, json.loads(result.as_numpy("RESPONSE").reshape(-1)[0]))

    @staticmethod
    def _failure(err) -> Prediction:
        message = err.message() or str(err)
        try:
            error = json.loads(message[message.index("{"):])  # our models' JSON, after Triton's own prefix
            return Prediction(int(error.get("status", 500)), {"error": error})
        except ValueError:
            status = err.status() or ""
            wire = int(status) if status.isdigit() else {"StatusCode.INVALID_ARGUMENT": 400,
                                                         "StatusCode.NOT_FOUND": 404,
                                                         "StatusCode.UNAVAILABLE": 503}.get(status, 500)
            return Prediction(wire, {"error": {"code": "triton_error", "message": message}})

    def close(self) -> None:
        """Close once: tritonclient's gRPC client closes its channel again in ``__del__``, and under
        gevent (Locust) that second close, run by the garbage collector at exit, can block forever."""
        close, self.client.close = self.client.close, lambda: None
        close()


def make_client(protocol: str, url: str | None = None, timeout: float = 300.0, backend: str = "torchserve"):
    if backend == "triton":
        return TritonClient(url, "http" if protocol == "rest" else protocol, timeout)
    if protocol == "rest":
        return RestClient(url or "http://127.0.0.1:8080", timeout)
    if protocol == "grpc":
        return GrpcClient(url or "127.0.0.1:7070", timeout)
    raise ValueError(f"unknown protocol {protocol!r} (rest or grpc)")
