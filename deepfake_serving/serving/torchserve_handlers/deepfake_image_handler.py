"""TorchServe handler for image archives: batch-aware (the faces of every request in a server-side
batch share one forward pass); a bad request, or a fault of ours while answering it, fails alone."""

from deepfake_serving.core.batching import in_place
from deepfake_serving.core.errors import internal_error
from deepfake_serving.pipeline import load_image_pipeline
from deepfake_serving.serving.torchserve_handlers.base import DeepfakeHandler, request_bytes


class ImageHandler(DeepfakeHandler):
    def load(self, directory, config, **options):
        return load_image_pipeline(directory, **options)

    def preprocess(self, data):
        payloads: list = []  # each request's input, or its RequestError
        for idx, row in enumerate(data):
            try:
                self.check_not_explain(idx)
                payloads.append(request_bytes(row))
            except Exception as err:  # noqa: BLE001 - this request fails alone
                payloads.append(internal_error(err))
        return payloads

    def inference(self, payloads, *args, **kwargs):
        # predict_batch isolates requests; in_place is the last resort if it raises
        return [internal_error(a) if isinstance(a, Exception) else a for a in in_place(payloads, self.pipeline.predict_batch)]
