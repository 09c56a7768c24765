"""The ensemble pipelines: decode and detect faces once, cut each member's own crops of those faces, run
every member's classifier over them, fuse per face (and, for a video, per member's verdict), and answer
the usual schema with every member's probability, their disagreement and, when the archive opts in,
UNCERTAIN. A fitted calibration makes the answer's ``fake_probability`` the calibrated one; the rule's
own output is then ``uncalibrated_fake_probability``."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from deepfake_serving.bundle.ensemble import Ensemble
from deepfake_serving.core.errors import RequestError
from deepfake_serving.core.fusion import Fusion, ensemble_label, member_table
from deepfake_serving.core.limits import MAX_IMAGE_FACES
from deepfake_serving.core.naming import video_model
from deepfake_serving.core.observe import StageObservers
from deepfake_serving.engines import Device, FaceScorer
from deepfake_serving.pipeline.image import ImagePreprocessor, PreparedImage, answer_batch, image_result
from deepfake_serving.pipeline.video import VideoPipeline, face_means, video_verdict
from deepfake_serving.variants import Variant

THRESHOLD = 0.5  # the fused probability's; members' own thresholds are theirs
Members = Sequence[tuple[Variant, FaceScorer]]


class FusedFaces:
    """The fusion of (members, faces) P(fake): the answer's probability per face and what each face's
    entry adds (every member's probability, their disagreement, the uncalibrated probability)."""

    def __init__(self, fusion: Fusion, names: Sequence[str], scores: np.ndarray):
        self.fusion, self.names, self.scores = fusion, list(names), np.asarray(scores, dtype=np.float64)
        self.fused, self.disagreement = fusion.fuse(self.scores)
        self.answer = fusion.calibrated(self.fused)

    def annotate(self, entries: Sequence[dict]) -> None:
        for i, entry in enumerate(entries):
            entry["members"] = member_table(self.names, self.scores[:, i])
            entry["disagreement"] = float(self.disagreement[i])
            if self.fusion.calibration is not None:
                entry["uncalibrated_fake_probability"] = float(self.fused[i])

    def decide(self, answer: dict, deciding: int | None, rule: str) -> None:
        """The answer's label (UNCERTAIN when the rule abstains on the deciding entry), its rule, and the
        ``ensemble`` object: members, fusion, the deciding entry's member probabilities and spread."""
        spread = None if deciding is None else float(self.disagreement[deciding])
        answer["label"] = ensemble_label(answer["label"], answer["fake_probability"], spread, self.fusion)
        answer["decision_rule"] = rule
        answer["ensemble"] = {
            "members": self.names,
            "fusion": self.fusion.to_dict(),
            "member_fake_probabilities": None if deciding is None else member_table(self.names, self.scores[:, deciding]),
            "disagreement": spread,
        }
        if self.fusion.calibration is not None:
            answer["uncalibrated_fake_probability"] = None if deciding is None else float(self.fused[deciding])


class EnsembleAnswers:
    """An image's answer from its prepared faces and their (members, faces) P(fake): the fused answer per
    face, the most suspicious face deciding (the in-process pipeline's, and Triton's fusion step's)."""

    def __init__(self, fusion: Fusion, names: Sequence[str], *, model_name: str, version: str = "0",
                 weights_trained: bool = False):
        self.fusion = fusion.check(len(names))
        self.names, self.model_name, self.version, self.weights_trained = list(names), model_name, version, weights_trained

    def respond(self, item: PreparedImage, scores: np.ndarray, batch_size: int = 1) -> dict:
        fused = FusedFaces(self.fusion, self.names, scores)
        answer = image_result(item, fused.answer, model=self.model_name, version=self.version, threshold=THRESHOLD,
                              weights_trained=self.weights_trained, batch_size=batch_size)
        fused.annotate(answer["faces"])
        deciding = int(np.argmax(fused.answer)) if len(fused.answer) else None  # the most suspicious face decides
        fused.decide(answer, deciding, f"max_face of the {self.fusion.rule} over members")
        return answer


class EnsemblePipeline:
    """Images: one detection per image, each member's classifier once over the batch's faces."""

    def __init__(self, members: Members, fusion: Fusion, *, model_name: str, version: str = "0",
                 weights_trained: bool = False, threads: int | None = None, device: Device = Device(),
                 max_faces: int = MAX_IMAGE_FACES):
        self.members = list(members)
        self.answers = EnsembleAnswers(fusion, [variant.name for variant, _ in self.members], model_name=model_name,
                                       version=version, weights_trained=weights_trained)
        self.fusion, self.names, self.respond = self.answers.fusion, self.answers.names, self.answers.respond
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

    def predict_batch(self, payloads: Sequence[bytes]) -> list[dict | RequestError]:
        return answer_batch(self.preprocessor.prepare(payloads), self.member_scores, self.respond, self.observers)

    def predict(self, payload: bytes) -> dict:
        (result,) = self.predict_batch([payload])
        if isinstance(result, RequestError):
            raise result
        return result


class EnsembleVideoPipeline(VideoPipeline):
    """Videos: the video pipeline's one detection per frame and one face pool, each member's crops of it;
    the confident strategy per member (over its checkpoints, as one variant's video), then the fusion of
    the members' verdicts. Faces and frames carry every member's probability."""

    def __init__(self, members: Members, fusion: Fusion, *, model_name: str, **options):
        first_variant, first_scorer = members[0]
        super().__init__(first_variant, first_scorer, model_name=model_name, **options)
        self.members = list(members)
        self.fusion = fusion.check(len(self.members))
        self.names = [variant.name for variant, _ in self.members]
        self.threshold = THRESHOLD

    def _response(self, info, analysed, sampling, frame_faces, owners, per_member, timings) -> dict:
        faces = FusedFaces(self.fusion, self.names, np.stack([face_means(m) for m in per_member]))
        have_faces = bool(len(owners))
        verdicts = FusedFaces(self.fusion, self.names, np.array([[video_verdict(m)] for m in per_member])
                              if have_faces else np.zeros((len(per_member), 0)))
        score = float(verdicts.answer[0]) if have_faces else None
        answer = self._answer(info, analysed, sampling, frame_faces, owners, faces.answer, score,
                              sum(len(m) for m in per_member), timings)
        entries = [entry for frame in answer["frames"] for entry in frame["faces"]]  # the pool's order
        faces.annotate(entries)
        for frame in answer["frames"]:
            if frame["faces"]:
                frame["members"] = {name: max(e["members"][name] for e in frame["faces"]) for name in self.names}
        verdicts.decide(answer, 0 if have_faces else None,
                        f"confident strategy per member, then the {self.fusion.rule} of their verdicts")
        return answer


def load_ensemble_pipeline(directory: str | Path, media: str = "image", engine: str | None = None,
                           device: Device = Device(), threads: int | None = None, model_name: str | None = None,
                           **options) -> EnsemblePipeline | EnsembleVideoPipeline:
    """Every member's bundle on its own manifest's engine (or ``engine``), fused by the stored rule."""
    ensemble = Ensemble.open(directory)
    members = [(b.variant, b.scorer(engine, device, threads)) for b in ensemble.members]
    common = dict(version=ensemble.version, weights_trained=all(b.trained for b in ensemble.members),
                  threads=threads, device=device, **options)
    if media == "video":
        return EnsembleVideoPipeline(members, ensemble.fusion,
                                     model_name=model_name or video_model(ensemble.manifest.name), **common)
    return EnsemblePipeline(members, ensemble.fusion, model_name=model_name or ensemble.manifest.name, **common)
