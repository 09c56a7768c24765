"""Labelled-folder evaluation through a served endpoint (seed 003's layout: Real/ and Fake/).

Used as the promotion gate: the candidate and the serving version answer the same
files; their metrics are compared. Faces without a verdict (NO_FACE) are counted,
not scored.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from sklearn import metrics

CLASSES = {"real": 0, "fake": 1}
MEDIA_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".mp4", ".avi", ".mov", ".webm", ".mkv"}


def labelled_files(folder: str | Path) -> list[tuple[Path, int]]:
    """(file, label) for every media file under Real/ and Fake/ (any case), sorted."""
    found = []
    for child in sorted(Path(folder).iterdir()):
        label = CLASSES.get(child.name.lower())
        if child.is_dir() and label is not None:
            found += [(f, label) for f in sorted(child.rglob("*")) if f.suffix.lower() in MEDIA_SUFFIXES]
    if not {label for _, label in found} >= {0, 1}:
        raise ValueError(f"{folder} needs media files in both Real/ and Fake/ subfolders")
    return found


@dataclass(frozen=True)
class Evaluation:
    files: int
    scored: int
    no_verdict: int
    failed: int
    accuracy: float
    precision: float
    recall: float
    f1: float
    specificity: float
    roc_auc: float | None
    confusion: list[list[int]]  # [[TN, FP], [FN, TP]]

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate(labels: list[int], scores: list[float | None], threshold: float = 0.5, failed: int = 0) -> Evaluation:
    """Metrics over the files that got a verdict (score not None)."""
    pairs = [(y, s) for y, s in zip(labels, scores) if s is not None]
    y_true = np.array([y for y, _ in pairs], dtype=int)
    y_score = np.array([s for _, s in pairs], dtype=float)
    y_pred = (y_score >= threshold).astype(int)
    tn, fp, fn, tp = metrics.confusion_matrix(y_true, y_pred, labels=[0, 1]).ravel()
    both = len(set(y_true.tolist())) == 2
    return Evaluation(
        files=len(labels) + failed, scored=len(pairs), no_verdict=len(labels) - len(pairs), failed=failed,
        accuracy=float(metrics.accuracy_score(y_true, y_pred)) if len(pairs) else 0.0,
        precision=float(metrics.precision_score(y_true, y_pred, zero_division=0)),
        recall=float(metrics.recall_score(y_true, y_pred, zero_division=0)),
        f1=float(metrics.f1_score(y_true, y_pred, zero_division=0)),
        specificity=float(tn / (tn + fp)) if tn + fp else 0.0,
        roc_auc=float(metrics.roc_auc_score(y_true, y_score)) if both else None,
        confusion=[[int(tn), int(fp)], [int(fn), int(tp)]],
    )


def evaluate_folder(folder: str | Path, predict: Callable[[bytes], object], threshold: float = 0.5) -> Evaluation:
    """``predict(data) -> Prediction`` for every file; a failed request counts as ``failed``."""
    labels, scores, failed = [], [], 0
    for path, label in labelled_files(folder):
        prediction = predict(path.read_bytes())
        if not prediction.ok:
            failed += 1
            continue
        labels.append(label)
        scores.append(prediction.body.get("fake_probability"))
    return evaluate(labels, scores, threshold, failed)


def confusion_png(evaluation: Evaluation, path: str | Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(3.6, 3.2), dpi=120)
    metrics.ConfusionMatrixDisplay(np.array(evaluation.confusion), display_labels=["Real", "Fake"]).plot(
        ax=axes, colorbar=False, cmap="Blues")
    axes.set_title(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return Path(path)
