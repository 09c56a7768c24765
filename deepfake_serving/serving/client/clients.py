"""Clients that answer with one ``Prediction`` whatever the server: TorchServe over REST or gRPC,
Triton over HTTP or gRPC (KServe v2 / Open Inference Protocol, through tritonclient)."""

from __future__ import annotations

import itertools
import json
import random
import re
import time
from dataclasses import dataclass
from typing import BinaryIO, Iterator
from urllib.parse import quote

import grpc
import requests

from deepfake_serving.core.errors import CATALOGUE, RequestError, error_body
from deepfake_serving.core.naming import check_name, explain_model, triton_model_name
from deepfake_serving.serving.client.auth import ServerKeys
from deepfake_serving.serving.client.grpc_stubs import inference_pb2, inference_pb2_grpc


@dataclass(frozen=True)
class Prediction:
    status: int
    body: dict

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


# What can succeed when sent again: a worker that died (TorchServe answers its in-flight batch 500, Triton
# a lost stub 500: both ``worker_failed``), a server restarting or unreachable (502/503/504, connection
# errors, gRPC UNAVAILABLE: ``server_unavailable``). Never a 4xx, never 507 (out of memory: the same
# request would exhaust the fresh worker too), never our handler's own ``internal_error``.
RETRY_CODES = frozenset({"worker_failed", "server_unavailable"})


def retryable(prediction: "Prediction") -> bool:
    error = prediction.body.get("error") if isinstance(prediction.body, dict) else None
    return isinstance(error, dict) and error.get("code") in RETRY_CODES


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff with jitter for predictions (idempotent: the same bytes give the same
    answer), never on a 4xx. ``attempts`` counts the first; no retry starts after ``deadline_s``. The
    default spans a TorchServe worker's restart (5-7 s here) while a request that kills workers (no
    file should) is sent at most 4 times. A server that cannot be reached at all (``server_unavailable``:
    restarting, its connection refused) never saw the request: that is retried for ``outage_s`` whatever
    ``attempts`` says, which spans a supervisor's restart of the server (serving.launch.supervisor)."""

    attempts: int = 4
    base_s: float = 0.5
    cap_s: float = 8.0
    deadline_s: float = 60.0
    outage_s: float = 30.0

    def delay(self, retry: int) -> float:
        """Equal jitter: half the exponential step, plus up to the other half at random (clients that
        failed together do not come back together)."""
        step = min(self.cap_s, self.base_s * 2 ** min(retry, 16))
        return step / 2 + random.uniform(0, step / 2)


NO_RETRY = RetryPolicy(attempts=1, outage_s=0.0)


@dataclass
class ClientStats:
    predictions: int = 0
    retries: int = 0  # attempts after the first, over all predictions
    retried: int = 0  # predictions that needed at least one retry
    gave_up: int = 0  # predictions still failing (retryably) when attempts or the deadline ran out


EXPLAIN = "explain"  # the option (a gRPC input) that asks for an explanation


def unsafe_names(model: str, version: str | None) -> None:
    """RequestError bad_option when a model or version would not be one URL path segment (``../api-description``):
    a name reaches a server's URL only after this check, whoever supplied it."""
    try:
        check_name(model, "model")
        if version:
            check_name(version, "version")
    except ValueError as err:
        raise RequestError("bad_option", str(err)) from None


class Retrying:
    """``predict`` = ``_predict_once`` retried under ``retry``; what happened is counted in ``stats``.
    Whatever a transport raises becomes a ``Prediction`` (503 ``server_unavailable``); a 401 says
    where the key came from."""

    keys: ServerKeys | None = None

    def __init__(self, retry: RetryPolicy = RetryPolicy()):
        self.retry, self.stats = retry, ClientStats()

    def _attempt(self, model: str, data: bytes, version: str | None, options: dict | None) -> Prediction:
        try:
            unsafe_names(model, version)
            prediction = self._predict_once(model, data, version, options)
        except RequestError as err:
            return Prediction(err.status, err.to_dict())
        except Exception as err:  # noqa: BLE001 - any transport's own exception (HTTPConnectionClosed, ...)
            return Prediction(503, error_body("server_unavailable", f"{type(err).__name__}: {err}"))
        error = prediction.body.get("error") if isinstance(prediction.body, dict) else None
        if self.keys is not None and isinstance(error, dict) and error.get("code") == "unauthorized":
            error["message"] = f"{error.get('message', '')} [{self.keys.describe()}]"
        return prediction

    def predict(self, model: str, data: bytes, version: str | None = None, options: dict | None = None) -> Prediction:
        start = time.monotonic()
        self.stats.predictions += 1
        failed = 0  # attempts the server failed (an unreachable server's are not counted while outage_s lasts)
        for retry in itertools.count():
            prediction = self._attempt(model, data, version, options)
            if not retryable(prediction):
                return prediction
            unreachable = prediction.body["error"]["code"] == "server_unavailable"
            in_outage = unreachable and time.monotonic() - start < self.retry.outage_s
            failed += 0 if in_outage else 1
            delay = self.retry.delay(retry)
            limit = max(self.retry.deadline_s, self.retry.outage_s) if in_outage else self.retry.deadline_s
            if failed >= self.retry.attempts or time.monotonic() + delay - start > limit:
                break
            time.sleep(delay)  # gevent's under Locust
            self.stats.retries += 1
            self.stats.retried += retry == 0
        self.stats.gave_up += 1
        return prediction

    def explain(self, model: str, data: bytes, version: str | None = None) -> Prediction:
        """The prediction with a heatmap per face (docs/explanations.md): TorchServe's explanations API
        over REST, an ``explain`` input over gRPC (whose service has no explanation call)."""
        return self.predict(model, data, version, {EXPLAIN: "true"})

    def _predict_once(self, model: str, data: bytes, version: str | None, options: dict | None) -> Prediction:
        raise NotImplementedError


# TorchServe's own error bodies ({"code": N, "type": "...Exception", "message": ...}) → our codes.
SERVER_EXCEPTIONS = {"InvalidKeyException": "unauthorized", "ModelNotFoundException": "model_not_found",
                     "ModelVersionNotFoundException": "model_not_found", "ServiceUnavailableException": "worker_failed",
                     "InternalServerException": "worker_failed"}  # "Worker died."
# Over gRPC TorchServe names its exception in the details (a dead worker: RESOURCE_EXHAUSTED, "Worker died.
# org.pytorch.serve.http.InternalServerException"), so the status code alone would read it as a size limit.
SERVER_EXCEPTION_NAME = re.compile(r"org\.pytorch\.serve\.[\w.]*?(\w+Exception)")
SERVER_STATUSES = {401: "unauthorized", 404: "model_not_found", 413: "request_too_large", 431: "headers_too_large",
                   500: "worker_failed", 502: "server_unavailable", 503: "worker_failed", 504: "server_unavailable",
                   507: "out_of_memory"}


def server_error(status: int, message: str, kind: str = "") -> dict:
    """An error the server itself wrote (not our handler), in the project's format. A 4xx of its own
    (TorchServe's 400 for oversized headers, Triton's 400 for a malformed request) stays a 4xx:
    ``bad_request`` with the server's status, never retried."""
    # TorchServe answers a killed worker's batch "Worker died." (500 or 507): retryable. Any other 507
    # is out of memory whatever the exception type says: the same request would exhaust a fresh worker.
    if "Worker died" in message:
        code = "worker_failed"
    elif status == 507:
        code = "out_of_memory"
    else:
        code = SERVER_EXCEPTIONS.get(kind) or SERVER_STATUSES.get(status) or ("bad_request" if 400 <= status < 500 else "server_error")
    body = error_body(code, message or f"HTTP {status}")
    if code == "bad_request":
        body["error"]["status"] = status
    return body


def normalized(status: int, raw: bytes, reason: str = "") -> dict:
    """The body in the project's format: our handler's JSON as it is, anything the server or a proxy
    wrote itself (TorchServe's error JSON, an empty 413, an HTML page) mapped to a catalogue code."""
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict) and body["error"].get("code") in CATALOGUE:
        return body
    if status < 400 and isinstance(body, dict):
        return body
    if isinstance(body, dict) and "type" in body:  # TorchServe's own error
        return server_error(status, str(body.get("message", "")), str(body["type"]))
    text = raw.decode("utf-8", "replace")[:300] if raw else reason
    return server_error(status if status >= 400 else 502, text or "the server sent no readable body")


class RestClient(Retrying):
    keys: ServerKeys

    def __init__(self, url: str = "http://127.0.0.1:8080", timeout: float = 300.0, key_file: str | None = None,
                 retry: RetryPolicy = RetryPolicy()):
        super().__init__(retry)
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        self.keys = ServerKeys.for_url(self.url, key_file)

    def _post(self, model: str, data: bytes | BinaryIO, version: str | None, options: dict | None, stream: bool):
        options = dict(options or {})
        api = "explanations" if options.pop(EXPLAIN, None) else "predictions"
        path = f"{self.url}/{api}/{quote(model, safe='')}" + (f"/{quote(version, safe='')}" if version else "")
        headers = {"Content-Type": "application/octet-stream", **self.keys.headers("inference")}
        # Per-request video options travel as X- headers: TorchServe does not pass query strings on.
        headers.update({f"X-{k.capitalize()}": str(v) for k, v in options.items()})
        if stream:
            headers["X-Stream"] = "true"
        if hasattr(data, "seek"):  # an open file is sent as it is read, from its start on every attempt
            data.seek(0)
        return self.session.post(path, data=data, timeout=self.timeout, headers=headers, stream=stream)

    def _predict_once(self, model: str, data: bytes, version: str | None, options: dict | None) -> Prediction:
        try:
            response = self._post(model, data, version, options, stream=False)
        except requests.RequestException as err:
            return Prediction(503, error_body("server_unavailable", f"{self.url}: {err}"))
        body = normalized(response.status_code, response.content, response.reason)
        return Prediction(body["error"]["status"] if "error" in body else response.status_code, body)

    def stream(self, model: str, data: bytes | BinaryIO, version: str | None = None,
               options: dict | None = None) -> Iterator[Prediction]:
        """Progress events as they arrive (newline-delimited JSON over chunked HTTP); the last is the result,
        or a ``stream_interrupted`` error when the stream ends without one (the worker died). ``data`` may be
        an open file: it is sent as it is read."""
        last = None
        try:
            unsafe_names(model, version)
        except RequestError as err:
            yield Prediction(err.status, err.to_dict())
            return
        try:
            response = self._post(model, data, version, options, stream=True)
            for line in response.iter_lines():
                if line.strip():
                    body = normalized(response.status_code, line)
                    last = Prediction(body["error"]["status"] if "error" in body else response.status_code, body)
                    yield last
        except requests.RequestException as err:
            yield Prediction(502, error_body("stream_interrupted", f"the stream broke off: {err}"))
            return
        if last is None or "event" in last.body:
            yield Prediction(502, error_body("stream_interrupted", "the stream ended without a result"))

    def close(self) -> None:
        self.session.close()


class GrpcClient(Retrying):
    """TorchServe's gRPC Predictions call. Its per-request status does not cross gRPC (the call
    is OK and the error is in the body), so the status comes from the body's ``error.status``."""

    keys: ServerKeys

    def __init__(self, target: str = "127.0.0.1:7070", timeout: float = 300.0, max_message_mb: int = 100,
                 key_file: str | None = None, retry: RetryPolicy = RetryPolicy()):
        super().__init__(retry)
        self.keys = ServerKeys.for_url(target, key_file)
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
        body = normalized(200, raw)
        status = body["error"].get("status", 500) if isinstance(body.get("error"), dict) else 200
        return Prediction(int(status), body)

    @staticmethod
    def _failure(err: grpc.RpcError) -> Prediction:
        details = err.details() or err.code().name
        if "Token Authorization failed" in details:
            return Prediction(401, error_body("unauthorized", details))
        kind = SERVER_EXCEPTION_NAME.search(details)
        body = server_error(_http_status(err.code()), f"{err.code().name}: {details}", kind.group(1) if kind else "")
        return Prediction(body["error"]["status"], body)

    def _predict_once(self, model: str, data: bytes, version: str | None, options: dict | None) -> Prediction:
        try:
            response = self.stub.Predictions(self._request(model, data, version, options), timeout=self.timeout,
                                             metadata=self.keys.metadata("inference"))
        except grpc.RpcError as err:
            return self._failure(err)
        return self._prediction(response.prediction)

    def stream(self, model: str, data: bytes, version: str | None = None,
               options: dict | None = None) -> Iterator[Prediction]:
        """StreamPredictions: progress events, then the result."""
        last = None
        try:
            unsafe_names(model, version)
        except RequestError as err:
            yield Prediction(err.status, err.to_dict())
            return
        try:
            for response in self.stub.StreamPredictions(self._request(model, data, version, options, True),
                                                        timeout=self.timeout, metadata=self.keys.metadata("inference")):
                last = self._prediction(response.prediction)
                yield last
        except grpc.RpcError as err:
            failure = self._failure(err)
            if last is not None:  # progress came, then the call failed: the worker died mid-stream
                failure = Prediction(502, error_body("stream_interrupted", failure.body["error"]["message"]))
            yield failure
            return
        if last is None or "event" in last.body:
            yield Prediction(502, error_body("stream_interrupted", "the stream ended without a result"))

    def close(self) -> None:
        self.channel.close()


def _http_status(code: grpc.StatusCode) -> int:
    """The HTTP status of a gRPC failure (CANCELLED: TorchServe cancels a message over its limit)."""
    return {
        grpc.StatusCode.UNAUTHENTICATED: 401,
        grpc.StatusCode.NOT_FOUND: 404,
        grpc.StatusCode.RESOURCE_EXHAUSTED: 413,
        grpc.StatusCode.CANCELLED: 413,
        grpc.StatusCode.UNAVAILABLE: 502,
        grpc.StatusCode.DEADLINE_EXCEEDED: 504,
        grpc.StatusCode.INTERNAL: 500,
    }.get(code, 500)


class TritonClient(Retrying):
    """Triton over HTTP (``protocol="http"``) or gRPC. Images go to the variant's ensemble, videos
    (``*-video``) to its BLS model with SAMPLING/FRAMES/EVERY inputs, explanations of either to the
    variant's explain model. Triton answers a client error
    with 400 (HTTP) or INVALID_ARGUMENT; our models put the error's own code and status in the
    message, so ``Prediction.status`` is the same as TorchServe's (415, 413, 422, ...)."""


    def __init__(self, url: str | None = None, protocol: str = "http", timeout: float = 300.0,
                 retry: RetryPolicy = RetryPolicy()):
        super().__init__(retry)
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
        """IMAGE, or VIDEO plus SAMPLING/FRAMES/EVERY (RequestError bad_sampling for options that do not parse)."""
        import numpy as np

        from deepfake_serving.media.video import Sampling

        def tensor(name: str, value, dtype: str):
            array = np.array([value], dtype=np.object_ if dtype == "BYTES" else np.int32)
            item = self.module.InferInput(name, [1], dtype)
            item.set_data_from_numpy(array)
            return item

        if not model.endswith("_video"):
            return [tensor("IMAGE", data, "BYTES")]
        sampling = Sampling.from_options(options or {})
        return [tensor("VIDEO", data, "BYTES"), tensor("SAMPLING", sampling.strategy.encode(), "BYTES"),
                tensor("FRAMES", sampling.frames, "INT32"), tensor("EVERY", sampling.every, "INT32")]

    def _predict_once(self, model: str, data: bytes, version: str | None, options: dict | None) -> Prediction:
        name = target = triton_model_name(model)
        try:
            if (options or {}).get(EXPLAIN):  # the variant's explain model, with the image or the clip
                if version:
                    raise RequestError("explain_not_supported", "Triton's explain model explains the classifier "
                                       "version that serves; it takes no version")
                target = explain_model(name)
            inputs = self._inputs(name, data, options)
        except RequestError as err:
            return Prediction(err.status, err.to_dict())
        extra = {"client_timeout": self.timeout} if self.protocol == "grpc" else {}
        try:
            result = self.client.infer(target, inputs, model_version=version or "", **extra)
        except self.module.InferenceServerException as err:
            return self._failure(err)
        return Prediction(200, json.loads(result.as_numpy("RESPONSE").reshape(-1)[0]))

    @staticmethod
    def _failure(err) -> Prediction:
        message = err.message() or str(err)
        if isinstance(message, dict):  # tritonclient's HTTP client hands over a JSON body's "error" as it is
            if message.get("code") in CATALOGUE:  # a front's own answer in our format (the transport limit)
                return Prediction(int(message.get("status", 500)), {"error": message})
            message = json.dumps(message)
        try:
            error = json.loads(message[message.index("{"):])  # our models' JSON, after Triton's own prefix
            return Prediction(int(error.get("status", 500)), {"error": error})
        except ValueError:  # Triton's own error: a lost stub, an unknown model, a refused connection
            status = err.status() or ""
            wire = int(status) if status.isdigit() else {"StatusCode.NOT_FOUND": 404, "StatusCode.UNAVAILABLE": 502,
                                                         "StatusCode.INVALID_ARGUMENT": 400,
                                                         "StatusCode.RESOURCE_EXHAUSTED": 413}.get(status, 500)
            if "not found" in message or "unknown model" in message:
                wire = 404
            body = server_error(wire, message)
            return Prediction(body["error"]["status"], body)

    def close(self) -> None:
        """Close once: tritonclient's gRPC client closes its channel again in ``__del__``, and under
        gevent (Locust) that second close, run by the garbage collector at exit, can block forever."""
        close, self.client.close = self.client.close, lambda: None
        close()


def make_client(protocol: str, url: str | None = None, timeout: float = 300.0, backend: str = "torchserve",
                key_file: str | None = None):
    if backend == "triton":
        return TritonClient(url, "http" if protocol == "rest" else protocol, timeout)
    if protocol == "rest":
        return RestClient(url or "http://127.0.0.1:8080", timeout, key_file)
    if protocol == "grpc":
        return GrpcClient(url or "127.0.0.1:7070", timeout, key_file=key_file)
    raise ValueError(f"unknown protocol {protocol!r} (rest or grpc)")
