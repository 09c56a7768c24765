"""Labelled-folder evaluation through a served endpoint (seed 003's layout: Real/ and Fake/).

Used as the promotion gate: the candidate and the serving version answer the same
files; their metrics are compared. Faces without a verdict (NO_FACE) are counted,
not scored.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np
from sklearn import metrics

from deepfake_serving.core.aggregation import label_for
from deepfake_serving.evaluation import LOWER_IS_BETTER

CLASSES = {"real": 0, "fake": 1}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".webm", ".mkv"}


def labelled_files(folder: str | Path) -> list[tuple[Path, int]]:
    """(file, label) for every image under Real/ and Fake/ (any case), sorted. Videos are refused: the
    gate judges the image model a rollout changes, and the video model is another model."""
    found, videos = [], []
    for child in sorted(Path(folder).iterdir()):
        label = CLASSES.get(child.name.lower())
        if child.is_dir() and label is not None:
            files = sorted(child.rglob("*"))
            found += [(f, label) for f in files if f.suffix.lower() in IMAGE_SUFFIXES]
            videos += [f for f in files if f.suffix.lower() in VIDEO_SUFFIXES]
    if videos:
        raise ValueError(f"{folder} holds {len(videos)} videos (e.g. {videos[0].relative_to(folder)}): the gate "
                         "sends images to the image model this rollout changes; move the videos out")
    if not {label for _, label in found} >= {0, 1}:
        raise ValueError(f"{folder} needs images in both Real/ and Fake/ subfolders")
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
    roc_auc: float | None  # None without both classes, as the three below
    average_precision: float | None
    eer: float | None  # equal error rate: lower is better
    ece: float | None  # expected calibration error: lower is better
    confusion: list[list[int]]  # [[TN, FP], [FN, TP]]

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate(labels: list[int], scores: list[float | None], thresholds: float | Sequence[float] = 0.5,
             failed: int = 0) -> Evaluation:
    """Metrics over the files that got a verdict (score not None), each predicted FAKE as the server
    labels it (``aggregation.label_for`` at its threshold: one threshold, or one per file)."""
    if isinstance(thresholds, (int, float)):
        thresholds = [thresholds] * len(labels)
    triples = [(y, s, t) for y, s, t in zip(labels, scores, thresholds) if s is not None]
    pairs = [(y, s) for y, s, _ in triples]
    y_true = np.array([y for y, _ in pairs], dtype=int)
    y_score = np.array([s for _, s in pairs], dtype=float)
    y_pred = np.array([label_for(s, t) == "FAKE" for _, s, t in triples], dtype=int)
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
        average_precision=float(metrics.average_precision_score(y_true, y_score)) if both else None,
        eer=equal_error_rate(y_true, y_score) if both else None,
        ece=expected_calibration_error(y_true, y_score) if len(pairs) else None,
        confusion=[[int(tn), int(fp)], [int(fn), int(tp)]],
    )


def equal_error_rate(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """EER: where the false positive rate equals the false negative rate on the ROC curve, linearly
    interpolated between the two operating points around the crossing."""
    fpr, tpr, _ = metrics.roc_curve(labels, scores)
    fnr = 1.0 - tpr
    i = int(np.argmax(fnr <= fpr))  # the first point past the crossing (fnr falls, fpr rises)
    if i == 0:
        return float(fpr[0])
    d0, d1 = fnr[i - 1] - fpr[i - 1], fnr[i] - fpr[i]
    t = d0 / (d0 - d1) if d0 != d1 else 0.0
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def worse(metric: str, candidate: float, serving: float | None, tolerance: float) -> bool:
    """Whether the candidate's ``metric`` is worse than the serving version's by more than ``tolerance``
    (lower is better for EER and ECE, higher for the rest); nothing to compare with is not worse."""
    if serving is None:
        return False
    if metric in LOWER_IS_BETTER:
        return candidate > serving + tolerance
    return candidate < serving - tolerance


class Answer(Protocol):
    """A served answer (the clients' ``Prediction``): whether it succeeded, and its JSON body."""

    @property
    def ok(self) -> bool: ...

    @property
    def body(self) -> dict: ...


def evaluate_folder(folder: str | Path, predict: Callable[[bytes], Answer]) -> Evaluation:
    """``predict(data) -> Prediction`` for every file, judged at the threshold the answer carries (the
    served variant's); a failed request counts as ``failed``."""
    labels, scores, thresholds, failed = [], [], [], 0
    for path, label in labelled_files(folder):
        prediction = predict(path.read_bytes())
        if not prediction.ok:
            failed += 1
            continue
        labels.append(label)
        scores.append(prediction.body.get("fake_probability"))
        thresholds.append(prediction.body["threshold"])
    return evaluate(labels, scores, thresholds, failed)


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


def expected_calibration_error(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray,
                               bins: int = 10) -> float:
    """ECE: over ``bins`` equal-width bins of P(fake), the share-weighted gap |fraction fake - mean P|."""
    y, p = np.asarray(labels, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    which = np.minimum((p * bins).astype(int), bins - 1)
    return float(sum(abs(y[which == b].mean() - p[which == b].mean()) * np.mean(which == b)
                     for b in range(bins) if np.any(which == b)))
