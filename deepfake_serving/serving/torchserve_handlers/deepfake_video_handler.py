"""TorchServe handler for video archives (one variant's, or an ensemble's): one clip per request
(archives are built with batch size 1), per-request sampling options, progress streamed with
``stream=true``, and explanations of the deciding faces (``/explanations``, or an ``explain`` input)."""

import json

from ts.handler_utils.utils import send_intermediate_predict_response

from deepfake_serving.core.errors import RequestError, internal_error
from deepfake_serving.core.limits import MAX_VIDEO_FACES
from deepfake_serving.media.video import Sampling, VideoLimits
from deepfake_serving.pipeline import EnsembleVideoPipeline, load_video_pipeline
from deepfake_serving.serving.torchserve_handlers.base import JSON, DeepfakeHandler, request_bytes


class VideoHandler(DeepfakeHandler):
    line_end = "\n"  # the last line of a stream

    def load(self, directory, config, **options):
        # The face pool cap (DFDC: 127), the decoded-pixel and detection budgets can be set per archive.
        limits = VideoLimits(**{name: int(config[name]) for name in ("max_decoded_pixels", "max_detector_candidates")
                                if name in config})
        return load_video_pipeline(directory, limits=limits, max_faces=int(config.get("max_faces", MAX_VIDEO_FACES)), **options)

    def preprocess(self, data):
        """(body, sampling, stream) per request: options from a multipart or gRPC field, else an X- header
        (TorchServe does not pass query strings on)."""
        payloads: list = []  # each request's input, or its RequestError
        for idx, row in enumerate(data):
            try:
                explain = self.wants_explanation(idx, row)
                if explain and isinstance(self.pipeline, EnsembleVideoPipeline):
                    self.check_not_explain(idx, row)  # each member's own archive explains itself
                headers = {k.lower(): v for k, v in self.context.get_all_request_header(idx).items()
                           if isinstance(v, str)}

                def option(name):
                    value = row.get(name, headers.get(f"x-{name}"))
                    return value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else value

                sampling = Sampling.from_options({name: option(name) for name in Sampling.OPTIONS})
                stream = str(option("stream") or "false").lower() in ("1", "true", "yes")
                payloads.append((request_bytes(row), sampling, stream, explain))
            except Exception as err:  # noqa: BLE001 - this request fails alone
                payloads.append(internal_error(err))
        return payloads

    def inference(self, payloads, *args, **kwargs):
        return [p if isinstance(p, RequestError) else self._analyze(i, *p) for i, p in enumerate(payloads)]

    def explainer_loader(self):
        from deepfake_serving.explain.video import load_video_explainer

        return load_video_explainer

    def _analyze(self, idx: int, data: bytes, sampling: Sampling, stream: bool, explain: bool):
        """One video; with stream=true each progress event goes out as an intermediate response
        (HTTP chunked transfer, gRPC StreamPredictions) before the final result."""

        def send(event: dict) -> None:
            self.context.set_response_content_type(idx, JSON)
            send_intermediate_predict_response([json.dumps(event) + "\n"], self.context.request_ids,
                                               "Intermediate Prediction success", 200, self.context)

        analyzer = self.load_explainer() if explain else self.pipeline
        if isinstance(analyzer, RequestError):
            return analyzer
        try:
            return analyzer.analyze(data, sampling, progress=send if stream else None)
        except Exception as err:  # noqa: BLE001 - RequestError as it is, a fault of ours as internal_error
            return internal_error(err)
