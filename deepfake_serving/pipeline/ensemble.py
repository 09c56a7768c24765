"""The ensemble pipeline: decode and detect faces once, cut each member's own crops of those faces, run
every member's classifier over the batch's faces, fuse per face, and answer the image schema with every
member's probability, their disagreement and, when the archive opts in, UNCERTAIN."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from deepfake_serving.bundle.ensemble import Ensemble
from deepfake_serving.core.errors import RequestError
from deepfake_serving.core.fusion import Fusion, ensemble_label, member_table
from deepfake_serving.core.limits import MAX_IMAGE_FACES
from deepfake_serving.core.observe import StageObservers
from deepfake_serving.engines import Device, FaceScorer
from deepfake_serving.pipeline.image import ImagePreprocessor, PreparedImage, answer_batch, image_result
from deepfake_serving.variants import Variant

THRESHOLD = 0.5  # the fused probability's; members' own thresholds are theirs


class EnsemblePipeline:
    def __init__(self, members: Sequence[tuple[Variant, FaceScorer]], fusion: Fusion, *, model_name: str,
                 version: str = "0", weights_trained: bool = False, threads: int | None = None,
                 device: Device = Device(), max_faces: int = MAX_IMAGE_FACES):
        self.members = list(members)
        self.fusion = fusion.check(len(self.members))
        self.names = [variant.name for variant, _ in self.members]
        self.model_name, self.version, self.weights_trained = model_name, version, weights_trained
        first = self.members[0][0]
        self.observers = StageObservers("image", model_name)
        self.preprocessor = ImagePreprocessor(first, max_faces=max_faces, threads=threads, device=device,
                                              observers=self.observers,
                                              also_crop_for=[v.preprocessing for v, _ in self.members[1:]])

    def member_scores(self, items: Sequence[PreparedImage]) -> list[np.ndarray]:
        """(members, faces) P(fake) per item: each member's classifier once over every item's faces."""
        per_member = []
        for m, (_, scorer) in enumerate(self.members):
            crops = [crop for item in items for crop in (item.crops if m == 0 else item.more_crops[m - 1])]
            per_member.append(scorer.scores(crops).mean(axis=0) if crops else np.zeros(0))
        scores = np.stack(per_member)
        bounds = np.cumsum([0] + [len(item.crops) for item in items])
        return [scores[:, a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    def respond(self, item: PreparedImage, scores: np.ndarray, batch_size: int = 1) -> dict:
        fused, disagreement = self.fusion.fuse(scores)
        answer = image_result(item, fused, model=self.model_name, version=self.version, threshold=THRESHOLD,
                              weights_trained=self.weights_trained, batch_size=batch_size)
        for face, members, spread in zip(answer["faces"], scores.T, disagreement):
            face["members"] = member_table(self.names, members)
            face["disagreement"] = float(spread)
        deciding = int(np.argmax(fused)) if len(fused) else None  # the image's score is its most suspicious face's
        image_spread = None if deciding is None else float(disagreement[deciding])
        answer["label"] = ensemble_label(answer["label"], answer["fake_probability"], image_spread, self.fusion)
        answer["decision_rule"] = f"max_face of the {self.fusion.rule} over members"
        answer["ensemble"] = {
            "members": self.names,
            "fusion": self.fusion.to_dict(),
            "member_fake_probabilities": None if deciding is None else member_table(self.names, scores[:, deciding]),
            "disagreement": image_spread,
        }
        return answer

    def predict_batch(self, payloads: Sequence[bytes]) -> list[dict | RequestError]:
        return answer_batch(self.preprocessor.prepare(payloads), self.member_scores, self.respond, self.observers)

    def predict(self, payload: bytes) -> dict:
        (result,) = self.predict_batch([payload])
        if isinstance(result, RequestError):
            raise result
        return result


def load_ensemble_pipeline(directory: str | Path, engine: str | None = None, device: Device = Device(),
                           threads: int | None = None, model_name: str | None = None, **options) -> EnsemblePipeline:
    """Every member's bundle on its own manifest's engine (or ``engine``), fused by the stored rule."""
    ensemble = Ensemble.open(directory)
    members = [(b.variant, b.scorer(engine, device, threads)) for b in ensemble.members]
    return EnsemblePipeline(members, ensemble.fusion, model_name=model_name or ensemble.manifest.name,
                            version=ensemble.version, weights_trained=all(b.trained for b in ensemble.members),
                            threads=threads, device=device, **options)
