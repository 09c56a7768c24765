"""TorchServe handler for image archives: batch-aware (the faces of every request in a server-side
batch share one forward pass); a bad request, or a fault of ours while answering it, fails alone."""

from deepfake_serving.bundle import load_bundle
from deepfake_serving.errors import RequestError, internal_error
from deepfake_serving.serving.torchserve_handlers.base import DeepfakeHandler, request_bytes


class ImageHandler(DeepfakeHandler):
    def load(self, directory, config, **options):
        return load_bundle(directory, **options)

    def preprocess(self, data):
        payloads = []
        for idx, row in enumerate(data):
            try:
                self.check_not_explain(idx)
                payloads.append(request_bytes(row))
            except Exception as err:  # noqa: BLE001 - this request fails alone
                payloads.append(internal_error(err))
        return payloads

    def inference(self, payloads, *args, **kwargs):
        valid = [i for i, p in enumerate(payloads) if not isinstance(p, RequestError)]
        try:
            answers = self.pipeline.predict_batch([payloads[i] for i in valid])
        except Exception as err:  # noqa: BLE001 - predict_batch isolates requests; this is the last resort
            answers = [internal_error(err)] * len(valid)
        results = list(payloads)
        for i, answer in zip(valid, answers):
            results[i] = answer
        return results
