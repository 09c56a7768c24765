"""Turning per-face scores into a verdict."""

from __future__ import annotations

from typing import Sequence

import numpy as np

CONFIDENT_FAKE = 0.8
CONFIDENT_REAL = 0.2
MIN_CONFIDENT_FAKES = 11


def confident_strategy(predictions: Sequence[float], threshold: float = CONFIDENT_FAKE) -> float:
    """The DFDC reference's aggregation over one model's face scores (all comparisons strict).

    More than ``n // 2.5`` and more than 11 confident fakes (p > 0.8): mean of
    those. Otherwise, more than 90 % confident reals (p < 0.2): mean of those.
    Otherwise the plain mean.
    """
    pred = np.asarray(predictions, dtype=np.float64)
    return float(np.mean(pred[confident_contributors(pred, threshold)[0]]))


def confident_contributors(predictions: Sequence[float] | np.ndarray, threshold: float = CONFIDENT_FAKE) -> tuple[np.ndarray, str]:
    """(indices of the scores ``confident_strategy`` averages, which branch: "confident_fakes",
    "confident_reals" or "mean")."""
    pred = np.asarray(predictions, dtype=np.float64)
    n = len(pred)
    if n == 0:
        raise ValueError("confident_strategy needs at least one score")
    fakes = np.count_nonzero(pred > threshold)
    if fakes > n // 2.5 and fakes > MIN_CONFIDENT_FAKES:
        return np.flatnonzero(pred > threshold), "confident_fakes"
    if np.count_nonzero(pred < CONFIDENT_REAL) > 0.9 * n:
        return np.flatnonzero(pred < CONFIDENT_REAL), "confident_reals"
    return np.arange(n), "mean"


def image_score(face_scores: Sequence[float]) -> float:
    """An image's score is its most suspicious face's: one manipulated face makes the image fake."""
    if len(face_scores) == 0:
        raise ValueError("image_score needs at least one face")
    return float(max(face_scores))


def label_for(score: float | None, threshold: float) -> str:
    if score is None:
        return "NO_FACE"
    return "FAKE" if score > threshold else "REAL"
