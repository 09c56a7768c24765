"""The steps of a cross-architecture ensemble on Triton (serving.launch.triton_ensemble builds them):

- ``EnsemblePreprocess``: decode and detect faces once (the first member's face settings), cut every member's own
  crops of those faces: FACES_0 … FACES_{n-1}, each at its member's input size, and METADATA;
- the members run as their own classifier models (triton_models.classifier: own instances, own dynamic
  batching);
- ``EnsembleFusion``: the members' P(fake) per face → the fused answer (pipeline.ensemble.EnsembleAnswers, the
  same code TorchServe's ensemble worker answers with), by the rule in its version's ensemble manifest;
- ``EnsembleVideo``: over BLS, the video ensemble pipeline with each member's faces scored by its classifier model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from deepfake_serving.bundle import BundleManifest
from deepfake_serving.bundle.ensemble import EnsembleManifest
from deepfake_serving.core.fusion import Fusion
from deepfake_serving.core.limits import MAX_IMAGE_FACES, MAX_VIDEO_FACES
from deepfake_serving.core.naming import ANSWERED_BY, video_model
from deepfake_serving.pipeline.ensemble import EnsembleAnswers, EnsembleVideoPipeline
from deepfake_serving.pipeline.image import ImagePreprocessor, PreparedImage
from deepfake_serving.serving.triton_models import (
    answer_each,
    input_bytes,
    instance_device,
    parameters,
)
from deepfake_serving.serving.triton_models.preprocess import TritonPythonModel as PreprocessModel
from deepfake_serving.serving.triton_models.preprocess import face_tensor
from deepfake_serving.serving.triton_models.video import TritonClassifier, analyze_request
from deepfake_serving.variants import get_variant


def member_variants(params: dict[str, str]):
    return [get_variant(name) for name in params["members"].split(",")]


def opened_manifest(args) -> tuple[EnsembleManifest, Fusion, bool]:
    """This model version's copy of the ensemble manifest, its fusion, and whether every member's weights
    are trained (from the members' own manifests, in their classifier models' directories)."""
    manifest = EnsembleManifest.read(Path(args["model_repository"]) / args["model_version"])
    params = parameters(args)
    repository = Path(args["model_repository"]).parent
    trained = all(BundleManifest.read(repository / name / args["model_version"]).trained
                  for name in params["classifiers"].split(","))
    return manifest, Fusion.from_dict(manifest.fusion, len(manifest.members)), trained


class EnsemblePreprocess(PreprocessModel):
    """The variant's preprocess model, detecting with the first member's settings and cutting every member's crops."""

    def initialize(self, args):
        params = parameters(args)
        self.variants = member_variants(params)
        self.preprocessor = ImagePreprocessor(self.variants[0], max_faces=int(params.get("max_faces", MAX_IMAGE_FACES)),
                                              device=instance_device(args), video_endpoint=params.get("video"),
                                              also_crop_for=[v.preprocessing for v in self.variants[1:]])

    def face_outputs(self, item) -> list:
        return [pb_utils.Tensor(f"FACES_{i}", face_tensor(crops, variant))
                for i, (variant, crops) in enumerate(zip(self.variants, [item.crops, *item.more_crops]))]


class EnsembleFusion:
    def initialize(self, args):
        manifest, fusion, trained = opened_manifest(args)
        self.members = len(manifest.members)
        self.answers = EnsembleAnswers(fusion, [m["variant"] for m in manifest.members], model_name=manifest.name,
                                       version=manifest.version, weights_trained=trained)

    def execute(self, requests):
        return answer_each(requests, self._answer)

    def _answer(self, request) -> dict:
        item = PreparedImage.from_metadata(json.loads(input_bytes(request, "METADATA")))
        scores, answered = [], []
        for i in range(self.members):
            per_checkpoint = pb_utils.get_input_tensor_by_name(request, f"FAKE_PROBABILITY_{i}").as_numpy()
            scores.append(per_checkpoint[:len(item.boxes)].mean(axis=1))  # drops the no-face placeholder
            answered.append(json.loads(pb_utils.get_input_tensor_by_name(request, f"{ANSWERED_BY}_{i}").as_numpy().flat[0]))
        versions = {a["version"] for a in answered}
        if versions != {self.answers.version}:  # never fuse members of another version than this fusion's
            raise RuntimeError(f"members answered as version(s) {sorted(versions)}, the fusion is version "
                               f"{self.answers.version}: load the ensemble's models at one version")
        item.timings_ms["classify"] = sum(a["classify_ms"] for a in answered)
        return self.answers.respond(item, np.stack(scores), batch_size=max(a["batch_size"] for a in answered))


class EnsembleVideo:
    def initialize(self, args):
        params = parameters(args)
        manifest, fusion, trained = opened_manifest(args)
        batch = int(params.get("classifier_batch", 16))
        members = [(variant, TritonClassifier(variant, name, batch))
                   for variant, name in zip(member_variants(params), params["classifiers"].split(","))]
        self.pipeline = EnsembleVideoPipeline(members, fusion, model_name=video_model(manifest.name),
                                              version=manifest.version, weights_trained=trained,
                                              max_faces=int(params.get("max_faces", MAX_VIDEO_FACES)),
                                              device=instance_device(args))

    def execute(self, requests):
        return answer_each(requests, lambda request: analyze_request(self.pipeline, request))
