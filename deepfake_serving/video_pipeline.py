"""The video pipeline (DFDC reference procedure): sample frames → batched MTCNN on half-size
frames → pool of at most 127 faces → classify in batches → confident strategy per model →
mean across models. Backend-agnostic; progress goes to an optional callback."""

from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np
from torch import nn

from .aggregation import confident_strategy, label_for
from .classifier import FaceScorer, as_scorer
from .crops import fit_to_input, padded_crop
from .faces import FaceDetector
from .schema import SCHEMA_VERSION, face_entry
from .variants import Variant
from .video import DecodedVideo, Sampling, VideoLimits, decode_video

Progress = Callable[[dict], None]


class VideoPipeline:
    def __init__(
        self,
        variant: Variant,
        models: nn.Module | Sequence[nn.Module] | FaceScorer,
        *,
        version: str = "0",
        weights_trained: bool = False,
        model_name: str | None = None,
        limits: VideoLimits = VideoLimits(),
        max_faces: int = 127,
        detect_batch: int = 8,
        classify_batch: int = 16,
    ):
        self.variant = variant
        self.classifier = as_scorer(variant, models, batch_size=classify_batch)
        self.face_detector = FaceDetector(variant.preprocessing.faces)
        self.version = version
        self.weights_trained = weights_trained
        self.model_name = model_name or f"{variant.name}-video"
        self.limits = limits
        self.max_faces = max_faces
        self.detect_batch = detect_batch

    def analyze(self, data: bytes, sampling: Sampling = Sampling(), progress: Progress | None = None,
                progress_every: int = 8) -> dict:
        """Analyse a video; raises InputError for what cannot be analysed."""
        start = time.perf_counter()
        video = decode_video(data, sampling, self.limits)
        decode_ms = (time.perf_counter() - start) * 1000
        return self.analyze_decoded(video, sampling, progress, progress_every, decode_ms)

    def analyze_decoded(self, video: DecodedVideo, sampling: Sampling = Sampling(), progress: Progress | None = None,
                        progress_every: int = 8, decode_ms: float = 0.0) -> dict:
        """Analyse frames already decoded (the part of the procedure after decoding)."""
        emit = progress or (lambda event: None)
        start = time.perf_counter()
        timings: dict[str, float] = {"decode": decode_ms}
        total = len(video.frames)
        emit({"event": "decoded", "frames_total": total, "frame_count": video.frame_count})

        pre = self.variant.preprocessing
        scale = pre.faces.frame_detect_scale
        frame_faces: list[list] = []
        crops, owners = [], []  # the face pool, in frame order, and the frame each face came from
        detect_ms = crop_ms = 0.0
        for first in range(0, total, self.detect_batch):
            chunk = video.frames[first:first + self.detect_batch]
            t = time.perf_counter()
            detections = self.face_detector.detect(chunk, [scale] * len(chunk))
            detect_ms += (time.perf_counter() - t) * 1000
            t = time.perf_counter()
            for offset, (frame, faces) in enumerate(zip(chunk, detections)):
                kept = []
                for face in faces:
                    crop = padded_crop(frame, face.box, pre.faces.crop_margin)
                    if crop.size == 0:
                        continue
                    kept.append(face)
                    if len(crops) < self.max_faces:
                        crops.append(fit_to_input(crop, pre.input_size, pre.resize))
                        owners.append((first + offset, len(kept) - 1))
                frame_faces.append(kept)
            crop_ms += (time.perf_counter() - t) * 1000
            done = min(first + self.detect_batch, total)
            if done % progress_every < len(chunk) or done == total:
                emit({"event": "progress", "phase": "detect", "frames_done": done, "frames_total": total,
                      "faces_so_far": sum(len(f) for f in frame_faces)})
        timings["detect"], timings["crop"] = detect_ms, crop_ms

        t = time.perf_counter()
        per_model = self.classifier.scores(crops)  # (models, faces)
        timings["classify"] = (time.perf_counter() - t) * 1000
        emit({"event": "progress", "phase": "classify", "faces_classified": len(crops)})
        timings["total"] = decode_ms + (time.perf_counter() - start) * 1000
        return self._response(video, sampling, frame_faces, owners, per_model, timings)

    def _response(self, video, sampling, frame_faces, owners, per_model, timings) -> dict:
        face_scores = per_model.mean(axis=0) if per_model.size else np.zeros(0)
        by_frame: dict[tuple[int, int], float] = {owner: float(s) for owner, s in zip(owners, face_scores)}
        frames = []
        for i, (index, ts, faces) in enumerate(zip(video.indices, video.timestamps, frame_faces)):
            entries = [face_entry(f.box, f.confidence, by_frame[(i, j)], "mtcnn")
                       for j, f in enumerate(faces) if (i, j) in by_frame]
            scores = [e["fake_probability"] for e in entries]
            frames.append({"index": index, "timestamp": round(ts, 4), "score": max(scores) if scores else None,
                           "faces": entries, "faces_detected": len(faces)})
        if per_model.shape[1]:
            score = float(np.mean([confident_strategy(model_scores) for model_scores in per_model]))
        else:
            score = None
        threshold = self.variant.threshold
        frame_scores = [f["score"] for f in frames if f["score"] is not None]
        total_faces = sum(len(f) for f in frame_faces)
        notes = list(video.notes)
        if score is None:
            notes.append(f"no face was found in the {len(frames)} analysed frames: no verdict")
        if total_faces > len(owners):
            notes.append(f"{total_faces} faces detected; the first {len(owners)} (in frame order) were classified")
        return {
            "schema_version": SCHEMA_VERSION,
            "model": self.model_name,
            "version": self.version,
            "media_type": "video",
            "label": label_for(score, threshold),
            "fake_probability": score,
            "threshold": threshold,
            "decision_rule": "confident_strategy, mean across checkpoints",
            "checkpoints_averaged": len(per_model),
            "frame_count": video.frame_count,
            "frames_analyzed": len(frames),
            "fps": round(video.fps, 3),
            "duration_s": round(video.duration_s, 3),
            "video": {"width": video.width, "height": video.height, "rotation": video.rotation},
            "sampling": {"strategy": sampling.strategy, "frames": sampling.frames, "every": sampling.every},
            "frames": frames,
            "metrics": {
                "total_faces_detected": total_faces,
                "faces_classified": len(owners),
                "average_face_score": float(np.mean(face_scores)) if len(face_scores) else None,
                "suspicious_frames_count": sum(1 for s in frame_scores if s > 0.5),
            },
            "weights_trained": self.weights_trained,
            "timings_ms": {k: round(v, 3) for k, v in timings.items()},
            "notes": notes,
        }
