"""TorchServe handler for image archives: batch-aware (the faces of every prediction in a server-side
batch share one forward pass); explanations (REST ``/explanations``, or an ``explain`` input over gRPC)
are answered one request at a time beside them; a bad request, or a fault of ours while answering it,
fails alone."""

from deepfake_serving.core.batching import in_place
from deepfake_serving.core.errors import RequestError, internal_error
from deepfake_serving.pipeline import load_image_pipeline
from deepfake_serving.serving.torchserve_handlers.base import DeepfakeHandler, request_bytes


class ImageHandler(DeepfakeHandler):
    def load(self, directory, config, **options):
        return load_image_pipeline(directory, **options)

    def preprocess(self, data):
        requests: list = []  # (input or its RequestError, explain?) per request
        for idx, row in enumerate(data):
            try:
                requests.append((request_bytes(row), self.wants_explanation(idx, row)))
            except Exception as err:  # noqa: BLE001 - this request fails alone
                requests.append((internal_error(err), False))
        return requests

    def inference(self, requests, *args, **kwargs):
        answers: list = [None] * len(requests)
        plain = [i for i, (_, explain) in enumerate(requests) if not explain]
        # predict_batch isolates requests; in_place is the last resort if it raises
        for i, answer in zip(plain, in_place([requests[i][0] for i in plain], self.pipeline.predict_batch)):
            answers[i] = answer
        for i, (payload, explain) in enumerate(requests):
            if explain:
                answers[i] = self._explain(payload)
        return [internal_error(a) if isinstance(a, Exception) else a for a in answers]

    def explainer_loader(self):
        from deepfake_serving.explain.image import load_image_explainer

        return load_image_explainer

    def _explain(self, payload):
        if isinstance(payload, Exception):
            return payload
        explainer = self.load_explainer()
        if isinstance(explainer, RequestError):
            return explainer
        (answer,) = explainer.explain_batch([payload])
        return answer
