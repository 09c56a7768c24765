"""Fitting an ensemble's fusion on a labelled folder (``deepfake-serving ensemble fit``).

Each image contributes its deciding face (the most suspicious under the archive's current rule; an
image without a face is skipped) as one example: every member's P(fake) and the folder's label. The
rule is a logistic regression over the members' logits (``stacking``; scikit-learn, L2, C = 1) or the
archive's own rule kept; the calibration maps the rule's output: a temperature (one parameter, the
negative log-likelihood minimised) or isotonic regression (non-decreasing, clipped at its ends, its values kept
1/(n+1) from 0 and 1; it needs more data). The report gives log loss, ECE and accuracy before (the archive's fusion) and after, on the
fitted data and, when each class has at least ``FOLDS`` images, out of fold (stratified ``FOLDS``-fold)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
from sklearn import metrics

from deepfake_serving.core.fusion import CALIBRATIONS, MAX_KNOTS, Calibration, Fusion, logit
from deepfake_serving.evaluation.metrics import expected_calibration_error, labelled_files
from deepfake_serving.pipeline.ensemble import EnsemblePipeline

FOLDS = 5
MIN_PER_CLASS = 4  # fewer examples of a class than this fit nothing
BATCH = 8


def labelled_member_scores(pipeline: EnsemblePipeline, folder: str | Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """((members, images) P(fake) of each image's deciding face, (images,) labels, skipped files and why)."""
    files = labelled_files(folder)
    columns, labels, skipped = [], [], []
    for start in range(0, len(files), BATCH):
        chunk = files[start:start + BATCH]
        for (path, label), answer in zip(chunk, pipeline.predict_batch([p.read_bytes() for p, _ in chunk])):
            members = None if isinstance(answer, Exception) else answer["ensemble"]["member_fake_probabilities"]
            if members is None:
                skipped.append(f"{path.name}: {getattr(answer, 'code', None) or 'no face'}")
                continue
            columns.append([members[name] for name in pipeline.names])
            labels.append(label)
    return np.array(columns, dtype=np.float64).T.reshape(len(pipeline.names), -1), np.array(labels, dtype=int), skipped


def _fitted(scores: np.ndarray, labels: np.ndarray, base: Fusion, rule: str, calibration: str) -> Fusion:
    fusion = replace(base, calibration=None, fit=None)
    if rule == "stacking":
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression(C=1.0).fit(logit(scores).T, labels)
        fusion = replace(fusion, rule="stacking", weights=tuple(float(w) for w in model.coef_[0]),
                         bias=float(model.intercept_[0]))
    fused, _ = fusion.fuse(scores)
    if calibration == "temperature":
        from scipy.optimize import minimize_scalar

        z = logit(fused)
        found = minimize_scalar(lambda log_t: metrics.log_loss(labels, 1 / (1 + np.exp(-z / np.exp(log_t))), labels=[0, 1]),
                                bounds=(np.log(0.05), np.log(20.0)), method="bounded")
        fusion = replace(fusion, calibration=Calibration("temperature", temperature=float(np.exp(found.x))))
    elif calibration == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        bound = 1 / (len(labels) + 1)  # a finite sample never proves P = 0 or 1: one example's worth away
        iso = IsotonicRegression(y_min=bound, y_max=1 - bound, out_of_bounds="clip").fit(fused, labels)
        x, y = iso.X_thresholds_, iso.y_thresholds_
        if len(x) > MAX_KNOTS:  # thinned evenly: the map stays non-decreasing
            keep = np.unique(np.linspace(0, len(x) - 1, MAX_KNOTS).round().astype(int))
            x, y = x[keep], y[keep]
        if len(x) < 2:  # one constant: every score maps to the base rate
            x, y = np.array([0.0, 1.0]), np.repeat(y[:1], 2)
        fusion = replace(fusion, calibration=Calibration("isotonic", x=tuple(map(float, x)), y=tuple(map(float, y))))
    return fusion


def _figures(labels: np.ndarray, p: np.ndarray) -> dict:
    return {"log_loss": float(metrics.log_loss(labels, np.clip(p, 1e-6, 1 - 1e-6), labels=[0, 1])),
            "ece": expected_calibration_error(labels, p),
            "accuracy": float(np.mean((p > 0.5) == labels))}


def fit_fusion(scores: np.ndarray, labels: np.ndarray, base: Fusion, rule: str = "stacking",
               calibration: str = "temperature", skipped: Sequence[str] = ()) -> Fusion:
    """The fitted fusion (``base``'s abstention kept) with its report in ``fit``. ``rule``: "stacking"
    or "keep" (the base rule); ``calibration``: one of CALIBRATIONS or "none"."""
    if rule not in ("stacking", "keep") or calibration not in (*CALIBRATIONS, "none"):
        raise ValueError(f"rule is stacking or keep, calibration one of {', '.join(CALIBRATIONS)} or none")
    counts = np.bincount(labels, minlength=2)
    if counts.min() < MIN_PER_CLASS:
        raise ValueError(f"fitting needs at least {MIN_PER_CLASS} scored images of each class; it has "
                         f"{counts[0]} real and {counts[1]} fake ({len(skipped)} skipped)")
    fusion = _fitted(scores, labels, base, rule, calibration)
    report = {"images": int(len(labels)), "real": int(counts[0]), "fake": int(counts[1]), "skipped": list(skipped)[:20],
              "skipped_count": len(skipped), "rule": fusion.rule, "calibration": calibration,
              "before": _figures(labels, base.calibrated(base.fuse(scores)[0])),
              "after_in_sample": _figures(labels, fusion.calibrated(fusion.fuse(scores)[0]))}
    if counts.min() >= FOLDS:
        from sklearn.model_selection import StratifiedKFold

        held_out = np.zeros(len(labels))
        for train, test in StratifiedKFold(FOLDS, shuffle=True, random_state=0).split(scores.T, labels):
            fold = _fitted(scores[:, train], labels[train], base, rule, calibration)
            held_out[test] = fold.calibrated(fold.fuse(scores[:, test])[0])
        report["after_out_of_fold"] = _figures(labels, held_out)
    return replace(fusion, fit=report)
