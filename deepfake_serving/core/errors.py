"""Every error a client can receive: one catalogue of codes, statuses and meanings.

The handler, the Triton models, the clients and the nginx front all answer
``{"error": {"code", "message", "status"}}`` with a code from ``CATALOGUE``;
the error tables of docs/schema.md are generated from it (``markdown_table``), and a
test sends every documented case.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class ErrorKind:
    status: int
    scope: str  # "image", "video", "request" (either media), "job" (the job API) or "server" (outside our handler)
    meaning: str


CATALOGUE: dict[str, ErrorKind] = {
    # -- any request
    "empty_body": ErrorKind(400, "request", "empty body"),
    "unsupported_media": ErrorKind(
        415, "request", "not one of the accepted formats (images: JPEG, PNG, WebP, GIF, BMP, TIFF; videos: MP4, MOV, "
        "AVI, WebM, MKV, MPEG-TS), or text/JSON instead of bytes; refused before any decoder runs"),
    "body_too_large": ErrorKind(413, "request", "body over the model's limit (images 20 MB, videos 100 MB)"),
    "internal_error": ErrorKind(500, "request", "a fault of ours while answering this request (it fails alone)"),
    "missing_input": ErrorKind(400, "request", "(Triton) the request lacks the model's IMAGE or VIDEO input"),
    "bad_input_shape": ErrorKind(400, "request", "(Triton) an input that is not one element"),
    "explain_not_supported": ErrorKind(400, "request", "an `/explanations` request where none is served (videos, the "
                                       "nginx front; the request fails alone, its batch is answered as usual)"),
    "not_explainable": ErrorKind(409, "request", "an explanation of an archive this worker cannot explain: no torch "
                                 "weights in it, or no `explain` extra installed (the message says which and how to "
                                 "fix it); its predictions are served as usual"),
    # -- images
    "corrupt_image": ErrorKind(400, "image", "an accepted format's signature, but truncated or corrupt data "
                               "(bad chunk checksum, broken header)"),
    "image_too_large": ErrorKind(413, "image", "header declares over 40 Mpixel (decompression bomb); nothing decoded"),
    "image_too_small": ErrorKind(422, "image", "a side under 20 px where faces are detected (MTCNN's smallest face), "
                                 "after the downscale of images over 1024 px"),
    "video_sent_to_image_endpoint": ErrorKind(415, "image", "a video sent to the image model"),
    # -- videos
    "image_sent_to_video_endpoint": ErrorKind(415, "video", "a still image sent to the video model"),
    "corrupt_video": ErrorKind(400, "video", "a video container that cannot be read, or no frame decodes "
                               "(truncated before the first frame, corrupt index)"),
    "no_video_stream": ErrorKind(422, "video", "a readable container without a video stream (audio only)"),
    "empty_video": ErrorKind(422, "video", "a video stream that holds no frame"),
    "video_too_long": ErrorKind(413, "video", "over 600 s, from the header or from any frame's timestamp"),
    "too_many_frames": ErrorKind(413, "video", "the sampling selects over 300 frames of the header's count "
                                 "(computed, never listed; no frame past that count is analysed)"),
    "frame_too_large": ErrorKind(413, "video", "a decoded frame over 4096×2304 pixels (every frame is checked, "
                                 "not only the header)"),
    "frame_too_small": ErrorKind(422, "video", "frames whose half-size detection copy has a side under 20 px"),
    "decode_budget_exceeded": ErrorKind(413, "video", "decoding would exceed the request's decoded-pixel budget "
                                        "(default 3·10⁹ pixels, `max_decoded_pixels` per archive)"),
    "detection_budget_exceeded": ErrorKind(413, "video", "face detection over the request's work budget (default "
                                           "150,000 candidate boxes into MTCNN's R-net and O-net; each frame takes "
                                           "at most 2,500)"),
    "bad_sampling": ErrorKind(400, "video", "bad sampling options (`sampling`, `frames`, `every`)"),
    # -- the job API (deepfake_serving.jobs)
    "missing_file": ErrorKind(400, "job", "a job submitted without a file part (multipart field `file`)"),
    "bad_option": ErrorKind(400, "job", "a job option that is not allowed: an unknown model, a version or a "
                            "callback URL of the wrong form"),
    "job_not_found": ErrorKind(404, "job", "no job with that id (never submitted, or removed after the retention)"),
    "job_finished": ErrorKind(409, "job", "cancelling a job that has already ended (done, failed or cancelled)"),
    "job_too_long": ErrorKind(504, "job", "a job whose analysis ran past the job system's `max_job_s` (1800 s by "
                              "default); it is not retried"),
    "rate_limited": ErrorKind(429, "job", "the API key is over its requests per minute or its faces per day "
                              "(`Retry-After` says when to come back); checked before the body is read"),
    "too_many_streams": ErrorKind(429, "job", "the API key (or the job) already has as many event streams open "
                                  "as the API allows; close one (a client reconnects with `Last-Event-ID`)"),
    # -- outside our handler: normalised by the clients and the nginx front
    "request_too_large": ErrorKind(413, "server", "body over the server's `max_request_size` (100 MB), answered "
                                   "by TorchServe's transport, gRPC or nginx before any handler"),
    "headers_too_large": ErrorKind(431, "server", "request headers over the front's limit"),
    "unauthorized": ErrorKind(401, "server", "no or a wrong API key (TorchServe answers 400 InvalidKeyException, "
                              "Triton 400/UNAVAILABLE for a restricted API; the job API 401 before the body is read)"),
    "model_not_found": ErrorKind(404, "server", "no such model or version"),
    "worker_failed": ErrorKind(503, "server", "the worker died or could not answer (TorchServe 503, Triton "
                               "stub lost); the request can be retried"),
    "out_of_memory": ErrorKind(507, "server", "the worker ran out of memory (TorchServe 507)"),
    "server_unavailable": ErrorKind(503, "server", "no connection to the server"),
    "stream_interrupted": ErrorKind(502, "server", "a streamed answer ended without its final result"),
    "bad_request": ErrorKind(400, "server", "a request the server itself refused with a 4xx of its own (TorchServe's "
                             "400 for oversized headers, Triton's for a malformed request); the status is the server's"),
    "server_error": ErrorKind(500, "server", "any other error the server itself wrote"),
}


# Our error answers repeat their JSON in this response header, so a proxy that intercepts a status (the
# front turns TorchServe's own 400 for a stale key into a retryable 503) can tell ours apart and pass it on.
ERROR_HEADER = "X-Deepfake-Error"


class RequestError(Exception):
    """One request's failure, with the status and code of ``CATALOGUE`` and a sentence a person can act on."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.status = CATALOGUE[code].status
        self.message = message

    def to_dict(self) -> dict:
        return {"error": {"code": self.code, "message": self.message, "status": self.status}}

    def to_header(self) -> str:
        """The body for ``ERROR_HEADER``: one ASCII line, the message cut to 300 characters when the whole
        would pass 2 KB (a proxy reads all response headers into one buffer, 4 KB by default in nginx)."""
        body = json.dumps(self.to_dict())
        return body if len(body) <= 2048 else json.dumps(error_body(self.code, self.message[:300] + " ..."))


def internal_error(exc: BaseException) -> RequestError:
    """A fault of ours, reported to the one request it happened in."""
    if isinstance(exc, RequestError):
        return exc
    return RequestError("internal_error", f"{type(exc).__name__}: {exc}")


def not_installed(model: str, err: ImportError) -> RequestError:
    """Why a server without the ``explain`` extra (a lean TorchServe worker, a Triton with the ``triton``
    extra alone) answers no explanation of ``model``."""
    return RequestError("not_explainable", f"this server cannot explain {model}: {err.name} is not installed "
                        "(pip install 'deepfake-serving[explain]')")


def error_body(code: str, message: str) -> dict:
    return RequestError(code, message).to_dict()


def markdown_table(scopes: tuple[str, ...]) -> str:
    """The table of the codes in ``scopes`` (docs/schema.md; kept in step with the code by a test)."""
    rows = ["| code | status | when |", "|---|---|---|"]
    rows += [f"| `{code}` | {kind.status} | {kind.meaning} |" for code, kind in CATALOGUE.items() if kind.scope in scopes]
    return "\n".join(rows)


def with_tables(readme: str) -> str:
    """A page with every ``<!-- errors:SCOPES -->`` block regenerated (``make docs``)."""
    def table(match: re.Match) -> str:
        return f"{match.group(1)}\n{markdown_table(tuple(match.group(2).split(',')))}\n{match.group(3)}"
    return re.sub(r"(<!-- errors:([a-z,]+) -->)\n.*?(<!-- /errors:\2 -->)", table, readme, flags=re.S)


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into the variant it was meant for."""


if __name__ == "__main__":
    import sys
    from pathlib import Path

    path = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/schema.md")
    path.write_text(with_tables(path.read_text()))
