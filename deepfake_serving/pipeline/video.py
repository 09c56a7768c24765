"""The video pipeline (DFDC reference procedure): sample frames → MTCNN on half-size frames, one per
call → pool of at most ``MAX_VIDEO_FACES`` faces → classify in batches → confident strategy per model →
mean across models. Backend-agnostic; progress goes to an optional callback, stage timings to observers."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import numpy as np

from deepfake_serving.core.aggregation import confident_strategy
from deepfake_serving.core.errors import RequestError
from deepfake_serving.core.limits import MAX_VIDEO_FACES
from deepfake_serving.core.naming import default_model_name
from deepfake_serving.core.observe import StageObservers, ms_since, outcome_of
from deepfake_serving.core.schema import face_entry, video_response
from deepfake_serving.engines import Device, FaceScorer, as_scorer
from deepfake_serving.faces.detector import FaceDetector, check_detectable
from deepfake_serving.media.video import DecodedVideo, SampledFrame, Sampling, VideoInfo, VideoLimits, VideoSource, VideoStream
from deepfake_serving.variants import Variant

if TYPE_CHECKING:  # a scorer, or torch models for the torch engine; torch is never imported here
    from torch import nn

Progress = Callable[[dict], None]
EMPTY = np.zeros((0, 0, 3), dtype=np.uint8)


@dataclass
class FacePool:
    """What an explanation of a video's answer needs after classification: the first member's crops in
    the answer's face order, the (frame, face) each came from, and each analysed frame's (height, width)."""

    crops: list[np.ndarray]
    owners: list[tuple[int, int]]
    frame_sizes: list[tuple[int, int]]


Explain = Callable[[dict, FacePool], None]  # adds explanations to the answer (explain.video)


class VideoPipeline:
    def __init__(
        self,
        variant: Variant,
        models: "FaceScorer | nn.Module | Sequence[nn.Module]",
        *,
        version: str = "0",
        weights_trained: bool = False,
        model_name: str | None = None,
        limits: VideoLimits = VideoLimits(),
        max_faces: int = MAX_VIDEO_FACES,
        threads: int | None = None,
        device: Device = Device(),
    ):
        self.variant = variant
        self.classifier = as_scorer(variant, models)
        self.members = [(variant, self.classifier)]  # an ensemble's pipeline has more (pipeline.ensemble)
        self.threshold = variant.threshold
        # One frame per MTCNN call, as the DFDC reference: a frame's boxes never depend on other frames,
        # and only one decoded frame is held at a time.
        self.face_detector = FaceDetector(variant.preprocessing.faces, threads, device)
        self.version = version
        self.weights_trained = weights_trained
        self.model_name = model_name or default_model_name(variant.name, "video")
        self.limits = limits
        self.max_faces = max_faces
        self.observers = StageObservers("video", self.model_name)

    def analyze(self, source: "bytes | str | Path | VideoSource", sampling: Sampling = Sampling(),
                progress: Progress | None = None, progress_every: int = 8, explain: Explain | None = None) -> dict:
        """Analyse a video (its bytes, or a file read as it decodes) as it decodes: each sampled frame is
        detected and cropped, then dropped, so memory holds one frame and the face pool. Raises RequestError."""
        start = time.perf_counter()
        try:
            video = VideoStream(source, sampling, self.limits)
        except Exception as exc:
            self.observers.emit("decode", ms_since(start), outcome=outcome_of(exc))
            raise
        with video:
            return self._analyze(video.info, video.frames(), sampling, progress, progress_every, start, explain)

    def analyze_decoded(self, video: DecodedVideo, sampling: Sampling = Sampling(), progress: Progress | None = None,
                        progress_every: int = 8) -> dict:
        """Analyse frames already decoded (tests compare them with the reference procedure)."""
        return self._analyze(video.info, iter(video.sampled), sampling, progress, progress_every, time.perf_counter())

    def _analyze(self, info: VideoInfo, frames: Iterator[SampledFrame], sampling: Sampling,
                 progress: Progress | None, progress_every: int, start: float, explain: Explain | None = None) -> dict:
        emit = progress or (lambda event: None)
        emit({"event": "decoded", "frames_total": info.planned, "frame_count": info.frame_count})
        pre = self.variant.preprocessing
        scale = pre.faces.frame_detect_scale
        analysed: list[SampledFrame] = []  # their images are dropped once cropped
        frame_faces: list[list] = []
        frame_sizes: list[tuple[int, int]] = []
        pools: list[list[np.ndarray]] = [[] for _ in self.members]  # each member's crops of the face pool, in frame order
        cut_for = [member.preprocessing for member, _ in self.members]
        owners: list[tuple[int, int]] = []  # (frame, face) each pooled face came from
        timings = {"decode": ms_since(start), "detect": 0.0, "crop": 0.0}  # decode: opening the container too
        stage, t = "decode", time.perf_counter()
        counted_from = self.face_detector.mtcnn.candidates
        try:
            for frame in frames:
                timings["decode"] += ms_since(t)
                check_detectable(frame.image.shape, scale, pre.faces, "frame_too_small", f"frame {frame.index}")
                stage, t = "detect", time.perf_counter()
                found = self.face_detector.find(frame.image, scale)
                timings["detect"] += ms_since(t)
                self._check_budget(counted_from, frame.index)
                stage, t = "crop", time.perf_counter()
                kept, pooled = found.member_crops(cut_for, limit=self.max_faces - len(owners))
                owners.extend((len(analysed), j) for j in range(len(pooled[0])))
                for pool, crops in zip(pools, pooled):
                    pool.extend(crops)
                found.release()
                analysed.append(SampledFrame(frame.index, frame.timestamp, EMPTY))
                frame_sizes.append((frame.image.shape[0], frame.image.shape[1]))
                frame_faces.append(kept)
                timings["crop"] += ms_since(t)
                if len(analysed) % progress_every == 0:
                    emit({"event": "progress", "phase": "detect", "frames_done": len(analysed),
                          "frames_total": info.planned, "faces_so_far": sum(len(f) for f in frame_faces)})
                del frame, found
                stage, t = "decode", time.perf_counter()
            if len(analysed) % progress_every:  # the last frames' progress
                emit({"event": "progress", "phase": "detect", "frames_done": len(analysed),
                      "frames_total": info.planned, "faces_so_far": sum(len(f) for f in frame_faces)})
            stage, t = "classify", time.perf_counter()
            per_member = [scorer.scores(pool) for (_, scorer), pool in zip(self.members, pools)]  # (models, faces) each
            timings["classify"] = ms_since(t)
        except Exception as exc:
            self.observers.emit(stage, ms_since(t), frames=len(analysed), outcome=outcome_of(exc))
            raise
        if self.observers:
            faces = sum(len(f) for f in frame_faces)
            for name in ("decode", "detect", "crop"):
                self.observers.emit(name, timings[name], frames=len(analysed), faces=faces)
            self.observers.emit("classify", timings["classify"], frames=len(analysed), faces=len(owners))
        emit({"event": "progress", "phase": "classify", "faces_classified": len(owners)})
        answer = self._response(info, analysed, sampling, frame_faces, owners, per_member, timings)
        if explain is not None:
            explain(answer, FacePool(pools[0], owners, frame_sizes))
        return answer

    def _check_budget(self, counted_from: int, frame_index: int) -> None:
        candidates = self.face_detector.mtcnn.candidates - counted_from
        if candidates > self.limits.max_detector_candidates:
            raise RequestError("detection_budget_exceeded", f"face detection sent {candidates} candidate boxes to "
                               f"MTCNN's refinement nets by frame {frame_index}; the request's budget is "
                               f"{self.limits.max_detector_candidates}")

    def _response(self, info, analysed, sampling, frame_faces, owners, per_member, timings) -> dict:
        """Each face's P(fake) is the mean over the checkpoints; the video's, the confident strategy per
        checkpoint, then their mean (the DFDC reference)."""
        (per_model,) = per_member
        return self._answer(info, analysed, sampling, frame_faces, owners, face_means(per_model), video_verdict(per_model),
                            len(per_model), timings)

    def _answer(self, info, analysed, sampling, frame_faces, owners, face_scores, score, checkpoints, timings) -> dict:
        by_frame: dict[tuple[int, int], float] = {owner: float(s) for owner, s in zip(owners, face_scores)}
        frames = []
        for i, (frame, faces) in enumerate(zip(analysed, frame_faces)):
            entries = [face_entry(f.box, f.confidence, by_frame[(i, j)], "mtcnn")
                       for j, f in enumerate(faces) if (i, j) in by_frame]
            scores = [e["fake_probability"] for e in entries]
            frames.append({"index": frame.index, "timestamp": round(frame.timestamp, 4), "score": max(scores) if scores else None,
                           "faces": entries, "faces_detected": len(faces)})
        threshold = self.threshold
        frame_scores = [f["score"] for f in frames if f["score"] is not None]
        total_faces = sum(len(f) for f in frame_faces)
        notes = list(info.notes)
        if score is None:
            notes.append(f"no face was found in the {len(frames)} analysed frames: no verdict")
        if total_faces > len(owners):
            notes.append(f"{total_faces} faces detected; the first {len(owners)} (in frame order) were classified")
        # A remote classifier (Triton's) says which version answered; a local one is this pipeline's.
        answered_by = getattr(self.classifier, "answered_by", None) or {}
        return video_response(
            model=self.model_name, version=answered_by.get("version", self.version),
            weights_trained=answered_by.get("trained", self.weights_trained), threshold=threshold, score=score,
            checkpoints=checkpoints, frame_count=info.frame_count, fps=info.fps, duration_s=info.duration_s,
            video={"width": info.width, "height": info.height, "rotation": info.rotation},
            sampling={"strategy": sampling.strategy, "frames": sampling.frames, "every": sampling.every},
            frames=frames, timings_ms=timings, notes=notes,
            metrics={
                "total_faces_detected": total_faces,
                "faces_classified": len(owners),
                "average_face_score": float(np.mean(face_scores)) if len(face_scores) else None,
                "suspicious_frames_count": sum(1 for s in frame_scores if s > threshold),
            })


def face_means(per_model: np.ndarray) -> np.ndarray:
    """P(fake) per face: the mean over a (checkpoints, faces) array's checkpoints."""
    return per_model.mean(axis=0) if per_model.size else np.zeros(per_model.shape[-1] if per_model.ndim else 0)


def video_verdict(per_model: np.ndarray) -> float | None:
    """A video's P(fake) from (checkpoints, faces): the confident strategy per checkpoint, then their mean."""
    return float(np.mean([confident_strategy(s) for s in per_model])) if per_model.shape[1] else None
