"""The one response schema every backend returns (documented in the README)."""

from __future__ import annotations

from typing import Sequence

from .aggregation import image_score, label_for

SCHEMA_VERSION = "1"


def face_entry(box: Sequence[int], detector_confidence: float | None, fake_probability: float, source: str) -> dict:
    return {
        "box": [int(v) for v in box],
        "detector_confidence": None if detector_confidence is None else round(float(detector_confidence), 6),
        "fake_probability": float(fake_probability),
        "source": source,  # "mtcnn" or "center_crop"
    }


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
        "timings_ms": {k: round(v, 3) for k, v in timings_ms.items()},
    }
