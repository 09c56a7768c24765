"""The one response schema every backend returns (documented in docs/schema.md): the image and the video
answer are built here and nowhere else, by TorchServe's handler and Triton's models alike.

Timings are per request: work done once for a batch (detection over the batch's images, one
classifier call over the faces of every request that reached it) is shared equally among the requests
in it. ``batch_size`` counts the requests whose faces went through that classifier call."""

from __future__ import annotations

import base64
from typing import Sequence

from deepfake_serving.core.aggregation import image_score, label_for

SCHEMA_VERSION = "1"


def face_entry(box: Sequence[int], detector_confidence: float | None, fake_probability: float, source: str) -> dict:
    return {
        "box": [int(v) for v in box],
        "detector_confidence": None if detector_confidence is None else round(float(detector_confidence), 6),
        "fake_probability": float(fake_probability),
        "source": source,  # "mtcnn" or "center_crop"
    }


def face_heatmap(heatmap_png: bytes, size: int, region: Sequence[int], window: Sequence[int], fake_probability: float,
                 road_drop: float, road_logit_drop: float, removed: float) -> dict:
    """One face's explanation: the heatmap (8-bit grey PNG, the model input's size), where it lies on the
    original image (``window`` of the PNG, x, y, w, h, shows the image rectangle ``region``), and ROAD."""
    return {
        "heatmap_png": base64.b64encode(heatmap_png).decode("ascii"),
        "heatmap_size": [size, size],
        "region": [int(v) for v in region],
        "window": [int(v) for v in window],
        "explained_fake_probability": float(fake_probability),  # the torch weights' own P(fake)
        "faithfulness": {"metric": "road_most_relevant_first", "removed_fraction": removed,
                         "fake_probability_drop": float(road_drop), "fake_logit_drop": float(road_logit_drop)},
    }


def explanation_summary(method: str, layer: str, checkpoints: int, explained: int, faces: int) -> dict:
    return {"method": method, "layer": layer, "checkpoints": checkpoints, "faces_explained": explained,
            "faces_unexplained": faces - explained}


def image_response(
    *,
    model: str,
    version: str,
    threshold: float,
    faces: list[dict],
    weights_trained: bool,
    width: int,
    height: int,
    timings_ms: dict[str, float],
    batch_size: int,
) -> dict:
    score = image_score([f["fake_probability"] for f in faces]) if faces else None
    return {
        "schema_version": SCHEMA_VERSION,
        "model": model,
        "version": version,
        "media_type": "image",
        "label": label_for(score, threshold),
        "fake_probability": score,
        "threshold": threshold,
        "decision_rule": "max_face",
        "faces": faces,
        "face_count": len(faces),
        "image": {"width": width, "height": height},
        "weights_trained": weights_trained,
        "batch_size": batch_size,
        "timings_ms": timings(timings_ms),
    }


def timings(timings_ms: dict[str, float]) -> dict[str, float]:
    """Rounded, with ``total`` the sum of the steps (decode, detect, crop, classify)."""
    steps = {k: v for k, v in timings_ms.items() if k != "total"}
    return {**{k: round(v, 3) for k, v in steps.items()}, "total": round(sum(steps.values()), 3)}


def video_response(
    *,
    model: str,
    version: str,
    threshold: float,
    score: float | None,
    checkpoints: int,
    frame_count: int,
    fps: float,
    duration_s: float,
    video: dict,
    sampling: dict,
    frames: list[dict],
    metrics: dict,
    weights_trained: bool,
    timings_ms: dict[str, float],
    notes: list[str],
) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "model": model,
        "version": version,
        "media_type": "video",
        "label": label_for(score, threshold),
        "fake_probability": score,
        "threshold": threshold,
        "decision_rule": "confident_strategy, mean across checkpoints",
        "checkpoints_averaged": checkpoints,
        "frame_count": frame_count,
        "frames_analyzed": len(frames),
        "fps": round(fps, 3),
        "duration_s": round(duration_s, 3),
        "video": video,
        "sampling": sampling,
        "frames": frames,
        "metrics": metrics,
        "weights_trained": weights_trained,
        "timings_ms": timings(timings_ms),
        "notes": notes,
    }
