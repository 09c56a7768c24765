"""Explaining videos: the video pipeline's answer plus heatmaps for the faces that decided it.

The verdict is the confident strategy over the face pool (core.aggregation): when confident fakes carry
it, those faces decided it; when confident reals do, those; otherwise every face did. Of the deciding
faces, at most ``MAX_EXPLAINED_VIDEO_FACES`` are explained: the most decisive first (the highest P(fake)
for a fake or mean verdict, the lowest for a real one), one per frame before a second from any frame.
The rest are counted in ``faces_unexplained``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from deepfake_serving.core.aggregation import confident_contributors
from deepfake_serving.core.observe import ms_since
from deepfake_serving.core.schema import explanation_summary, timings
from deepfake_serving.explain.image import ExplainerSource, explained_face, face_geometry, load_face_explainer
from deepfake_serving.media.video import Sampling, VideoSource
from deepfake_serving.pipeline.video import FacePool, VideoPipeline

MAX_EXPLAINED_VIDEO_FACES = 8  # each costs about three forward passes of the variant (explain.image)


def decisive_faces(scores: np.ndarray, frames: list[int], cap: int = MAX_EXPLAINED_VIDEO_FACES) -> tuple[list[int], str]:
    """(pool indices to explain, the confident strategy's branch) for the pool's P(fake) per face."""
    contributors, branch = confident_contributors(scores)
    order = sorted(contributors, key=lambda i: scores[i] if branch == "confident_reals" else -scores[i])
    chosen: list[int] = []
    seen: set[int] = set()
    for second_pass in (False, True):  # one face per frame first, then the rest in the same order
        for i in order:
            if len(chosen) == cap:
                return chosen, branch
            if i not in chosen and (second_pass or frames[i] not in seen):
                chosen.append(int(i))
                seen.add(frames[i])
    return chosen, branch


class VideoExplainer:
    def __init__(self, pipeline: VideoPipeline, explainers: ExplainerSource):
        self.pipeline, self.explainers = pipeline, explainers

    def analyze(self, source: "bytes | str | Path | VideoSource", sampling: Sampling = Sampling(),
                progress: Callable[[dict], None] | None = None) -> dict:
        def explain(answer: dict, pool: FacePool) -> None:
            self._explain(answer, pool, progress or (lambda event: None))

        return self.pipeline.analyze(source, sampling, progress=progress, explain=explain)

    def _explain(self, answer: dict, pool: FacePool, emit: Callable[[dict], None]) -> None:
        explainer, checkpoints = self.explainers()
        start = time.perf_counter()
        entries = [face for frame in answer["frames"] for face in frame["faces"]]  # the pool's order
        chosen, branch = decisive_faces(np.array([e["fake_probability"] for e in entries]),
                                        [frame for frame, _ in pool.owners]) if entries else ([], "none")
        pre = self.pipeline.variant.preprocessing
        for done, i in enumerate(chosen, 1):
            height, width = pool.frame_sizes[pool.owners[i][0]]
            where = face_geometry(entries[i]["box"], "mtcnn", pre, width, height)
            (explanation,) = explainer.explain([pool.crops[i]], [where[1]])
            entries[i]["explanation"] = explained_face(explanation, where, pre.input_size)
            emit({"event": "progress", "phase": "explain", "faces_done": done, "faces_total": len(chosen)})
        answer["explanation"] = {
            **explanation_summary(explainer.method, self.pipeline.variant.cam_layer, checkpoints,
                                  len(chosen), len(entries)),
            "selection": branch,  # the confident strategy's branch the explained faces come from
            "frames_explained": sorted({answer["frames"][pool.owners[i][0]]["index"] for i in chosen}),
        }
        answer["timings_ms"] = timings({**answer["timings_ms"], "explain": ms_since(start)})


def load_video_explainer(directory: str | Path, pipeline: VideoPipeline, method: str = "gradcam",
                         threads: int | None = None) -> VideoExplainer:
    """An explainer beside a served video pipeline (explain.image.load_face_explainer)."""
    loaded = load_face_explainer(directory, pipeline.model_name, method, threads)
    return VideoExplainer(pipeline, lambda: loaded)
