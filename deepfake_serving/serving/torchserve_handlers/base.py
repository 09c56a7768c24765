"""What the image and video handlers share: loading the archive's bundle on its engine, device and
threads, reading request bodies and fields, and writing each answer (or its own JSON error)."""

from __future__ import annotations

import json
import logging
import sys

from deepfake_serving.core.errors import ERROR_HEADER, RequestError, internal_error, not_installed
from deepfake_serving.core.threads import intra_op_threads
from deepfake_serving.engines import Device
from deepfake_serving.monitoring.drift import WINDOW
from deepfake_serving.monitoring.recorder import PredictionRecorder

# TorchServe's base_handler imports openvino.torch (its torch.compile backend) whenever OpenVINO is installed:
# ~210 MB in every worker. The openvino engine calls OpenVINO's runtime itself, never torch.compile, so that
# import is refused here (base_handler catches the ImportError); a worker loads OpenVINO's runtime only when
# its model loads.
sys.modules.setdefault("openvino.torch", None)  # type: ignore[arg-type]  # None: the documented "refuse this import"

from ts.torch_handler.base_handler import BaseHandler  # noqa: E402

from deepfake_serving.serving.torchserve_handlers.metrics import TorchServeSink  # noqa: E402

logger = logging.getLogger(__name__)

JSON = "application/json"
BODY_FIELDS = ("data", "body", "file", "image")
EXPLAIN = "explain"  # TorchServe's header on /explanations requests; a field of a gRPC or multipart request


def request_bytes(row: dict) -> bytes:
    """The raw upload of one request: the body, or the first file field of a multipart form."""
    for key in BODY_FIELDS:
        if key in row:
            value = row[key]
            break
    else:
        value = next((v for k, v in row.items() if k != EXPLAIN), b"")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str) and not value:
        return b""
    raise RequestError("unsupported_media",
                       "send the media as the raw request body or a multipart file, not as text or JSON")


class DeepfakeHandler(BaseHandler):
    """``load(directory, config, **options)`` builds the pipeline; subclasses answer requests."""

    line_end = ""  # after each JSON answer

    def initialize(self, context):
        properties = context.system_properties
        config = (getattr(context, "model_yaml_config", None) or {}).get("handler", {})
        # The archive's engine (default: the manifest's), TorchServe's GPU if it assigned one, and the
        # threads rule (cores ÷ workers) unless the archive sets handler.threads.
        engine = config.get("engine")
        device = Device.from_gpu_id(properties.get("gpu_id"))
        threads = intra_op_threads(int(config.get("threads") or 0) or None)
        self.model_dir, self.config, self.threads = properties.get("model_dir"), config, threads
        self.pipeline = self.load(self.model_dir, config, engine=engine, device=device,
                                  threads=threads, model_name=context.model_name)
        self.context = context
        self.recorder = None
        # handler.metrics: false turns them off; handler.drift_window: the drift index's window (monitoring.drift)
        if str(config.get("metrics", True)).lower() not in ("false", "0", "no"):
            self.recorder = PredictionRecorder(TorchServeSink(context.metrics), context.model_name, self.pipeline.version,
                                               int(config.get("drift_window", WINDOW)))
            self.pipeline.observers.subscribe(self.recorder.stage)
        self.initialized = True
        logger.info("deepfake handler ready: %s v%s, engine %s on %s, %d threads, trained weights: %s",
                    context.model_name, self.pipeline.version, engine or "(manifest's)", device.torch, threads,
                    self.pipeline.weights_trained)

    def load(self, directory: str, config: dict, **options):
        raise NotImplementedError

    def _is_explain(self) -> bool:
        """Never the whole batch's: BaseHandler reads request 0's ``explain`` flag for every request in
        the batch; ``wants_explanation`` reads each request's own."""
        return False

    def wants_explanation(self, idx: int, row: dict) -> bool:
        """REST ``/explanations/{model}`` (TorchServe sets the request's ``explain`` header), or an
        ``explain`` input of ``true`` (gRPC Predictions, which has no explanation call; a multipart field)."""
        def true(flag) -> bool:
            if isinstance(flag, (bytes, bytearray)):
                flag = flag.decode("utf-8", "replace")
            return str(flag or "").strip().lower() == "true"

        return true(self.context.get_request_header(idx, EXPLAIN)) or true(row.get(EXPLAIN))  # the header may say False

    explainer = None  # loaded on the first explanation asked for (its torch models), or why it cannot be

    def explainer_loader(self):
        """The explain package's loader for this handler's pipeline (imported here: a lean worker has none)."""
        raise ImportError("this archive answers no explanations", name="an explainer")

    def load_explainer(self):
        """The explainer, loaded once; or the RequestError every explanation then answers."""
        if self.explainer is None:
            try:
                loader = self.explainer_loader()
            except ImportError as err:  # a lean worker: no timm / torchvision / pytorch-grad-cam
                self.explainer = not_installed(self.context.model_name, err)
            else:
                try:
                    self.explainer = loader(self.model_dir, self.pipeline, self.config.get("explain_method", "gradcam"),
                                            self.threads)
                except Exception as err:  # noqa: BLE001 - every explanation says why; predictions go on
                    self.explainer = internal_error(err)
        return self.explainer

    def check_not_explain(self, idx: int, row: dict) -> None:
        """For archives that answer no explanations: the request is refused alone, its neighbours in the
        batch answered as usual."""
        if self.wants_explanation(idx, row):
            raise RequestError("explain_not_supported", f"{self.context.model_name} answers no explanations; "
                               f"send the request to /predictions/{self.context.model_name}")

    def postprocess(self, results):
        out = []
        for idx, result in enumerate(results):
            if self.recorder is not None:
                self.recorder.answer(result)
            self.context.set_response_content_type(idx, JSON)
            if isinstance(result, RequestError):
                self.context.set_response_status(result.status, result.code, idx=idx)
                self.context.set_response_header(idx, ERROR_HEADER, result.to_header())
                out.append(json.dumps(result.to_dict()))
            else:
                out.append(json.dumps(result) + self.line_end)
        return out
