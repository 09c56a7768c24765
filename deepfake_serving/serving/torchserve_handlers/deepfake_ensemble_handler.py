"""TorchServe handler for ensemble archives: one face detection per image, every member's classifier over
the batch's faces in turn, fused per face; a bad request, or a fault of ours while answering it, fails
alone. Explanations are refused alone (each member's archive explains itself)."""

from deepfake_serving.core.batching import in_place
from deepfake_serving.core.errors import internal_error
from deepfake_serving.pipeline.ensemble import load_ensemble_pipeline
from deepfake_serving.serving.torchserve_handlers.base import DeepfakeHandler, request_bytes


class EnsembleHandler(DeepfakeHandler):
    def load(self, directory, config, **options):
        return load_ensemble_pipeline(directory, **options)

    def preprocess(self, data):
        payloads: list = []  # each request's input, or its RequestError
        for idx, row in enumerate(data):
            try:
                self.check_not_explain(idx, row)
                payloads.append(request_bytes(row))
            except Exception as err:  # noqa: BLE001 - this request fails alone
                payloads.append(internal_error(err))
        return payloads

    def inference(self, payloads, *args, **kwargs):
        return [internal_error(a) if isinstance(a, Exception) else a for a in in_place(payloads, self.pipeline.predict_batch)]
