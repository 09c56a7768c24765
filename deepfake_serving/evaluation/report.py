"""The evaluation report of a detector on labelled data: the gate's metrics plus DeepfakeBench's protocol
(frame AUC, video AUC as the mean of a video's frame probabilities, EER, AP), calibration (ECE and a
reliability diagram) and plots. DeepfakeBench is non-commercial: its protocol and figures are compared
with, its code is not used. ``mlflow.evaluate`` has neither EER nor calibration error; these are ours.

A scored item is one image, or one frame of a video (``source`` names the file, ``frame`` the frame),
scored by its most suspicious face as the server scores an image: frame-level metrics count every item,
video-level ones average each video's frames first.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from sklearn import metrics

from deepfake_serving.core.aggregation import image_score
from deepfake_serving.evaluation.metrics import evaluate, expected_calibration_error

BINS = 10


@dataclass(frozen=True)
class Scored:
    source: str  # the file the item came from
    label: int  # 1 fake, 0 real
    score: float | None  # P(fake); None: no face
    frame: int | None = None  # a video's frame index; None for an image


def per_picture(faces: Iterable[tuple[str, int, int | None, float]]) -> list[Scored]:
    """One item per image or video frame from its faces' (source, label, frame, P(fake)): the most
    suspicious face's score, as the server scores an image (``aggregation.image_score``), so a gate's
    figures over served answers are a report's."""
    grouped: dict[tuple[str, int, int | None], list[float]] = {}
    for source, label, frame, score in faces:
        grouped.setdefault((source, label, frame), []).append(score)
    return [Scored(source, label, image_score(scores), frame) for (source, label, frame), scores in grouped.items()]


def video_scores(items: Sequence[Scored]) -> tuple[list[int], list[float]]:
    """(label, mean of its frames' P(fake)) per video with at least one scored frame (DeepfakeBench's
    video-level score)."""
    frames: dict[str, list[float]] = {}
    labels: dict[str, int] = {}
    for item in items:
        if item.frame is not None and item.score is not None:
            frames.setdefault(item.source, []).append(item.score)
            labels[item.source] = item.label
    return [labels[s] for s in frames], [float(np.mean(v)) for v in frames.values()]


def reliability(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray, bins: int = BINS) -> list[dict]:
    """Per equal-width bin of P(fake): its range, items, mean P(fake) and the fraction that is fake."""
    y, p = np.asarray(labels, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    which = np.minimum((p * bins).astype(int), bins - 1)
    return [{"low": b / bins, "high": (b + 1) / bins, "count": int(np.sum(which == b)),
             "mean_score": float(p[which == b].mean()) if np.any(which == b) else None,
             "fraction_fake": float(y[which == b].mean()) if np.any(which == b) else None}
            for b in range(bins)]


def _both_classes(labels: Sequence[int]) -> bool:
    return len(set(labels)) == 2


def report(items: Sequence[Scored], threshold: float = 0.5, name: str = "data", failed: Sequence[str] = ()) -> dict:
    """Every metric of the items, as JSON-ready data. ``failed``: files that could not be read (listed)."""
    labels = [i.label for i in items]
    scores = [i.score for i in items]
    scored = [(i.label, float(i.score)) for i in items if i.score is not None]
    y, p = [s[0] for s in scored], [s[1] for s in scored]
    gate = evaluate(labels, scores, threshold)
    video_y, video_p = video_scores(items)
    return {
        "dataset": name,
        "threshold": threshold,
        "items": len(items),
        "sources": len({i.source for i in items}),
        "unreadable": list(failed),
        **{k: v for k, v in gate.to_dict().items() if k not in ("files", "failed", "roc_auc")},
        "frame_auc": gate.roc_auc,
        "videos": len(video_y),
        "video_auc": float(metrics.roc_auc_score(video_y, video_p)) if _both_classes(video_y) else None,
        "reliability": reliability(y, p) if scored else [],
    }


def write_report(items: Sequence[Scored], out: str | Path, threshold: float = 0.5, name: str = "data",
                 failed: Sequence[str] = ()) -> dict:
    """report.json, scores.jsonl (every item) and the plots (roc, pr, reliability, histogram) into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = report(items, threshold, name, failed)
    (out / "report.json").write_text(json.dumps(data, indent=2))
    (out / "scores.jsonl").write_text("".join(json.dumps(asdict(i)) + "\n" for i in items))
    data["plots"] = [str(p) for p in plots(items, out, name)]
    return data


def plots(items: Sequence[Scored], out: Path, title: str) -> list[Path]:
    """ROC, precision-recall, reliability diagram and score histograms per class (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    y = np.array([i.label for i in items if i.score is not None])
    p = np.array([i.score for i in items if i.score is not None], dtype=np.float64)
    written = []

    def save(figure, name: str) -> None:
        figure.tight_layout()
        figure.savefig(out / name)
        plt.close(figure)
        written.append(out / name)

    if _both_classes(y.tolist()):
        figure, axes = plt.subplots(figsize=(4, 4), dpi=110)
        metrics.RocCurveDisplay.from_predictions(y, p, ax=axes, name=title)
        axes.plot([0, 1], [0, 1], ":", color="grey")
        save(figure, "roc.png")
        figure, axes = plt.subplots(figsize=(4, 4), dpi=110)
        metrics.PrecisionRecallDisplay.from_predictions(y, p, ax=axes, name=title)
        save(figure, "pr.png")
    if len(p):
        bins = reliability(y, p)
        figure, axes = plt.subplots(figsize=(4, 4), dpi=110)
        shown = [b for b in bins if b["count"]]
        axes.bar([(b["low"] + b["high"]) / 2 for b in shown], [b["fraction_fake"] for b in shown], width=1 / BINS,
                 edgecolor="black", alpha=0.7, label="fraction fake")
        axes.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
        axes.set(xlabel="P(fake)", ylabel="fraction fake", title=f"{title}: ECE {expected_calibration_error(y, p):.3f}")
        axes.legend(loc="upper left", fontsize=8)
        save(figure, "reliability.png")
        figure, axes = plt.subplots(figsize=(5, 3.2), dpi=110)
        for label, name in ((0, "Real"), (1, "Fake")):
            axes.hist(p[y == label], bins=20, range=(0, 1), alpha=0.6, label=name)
        axes.set(xlabel="P(fake)", ylabel="items", title=title)
        axes.legend(fontsize=8)
        save(figure, "histogram.png")
    return written


def cross_dataset_table(reports: Sequence[dict], model: str) -> str:
    """DeepfakeBench's layout: the model in a row, one column per test dataset and their average, for the
    frame AUC and the video AUC (markdown)."""
    def cell(value):
        return "n/a" if value is None else f"{value:.4f}"

    lines = []
    for metric in ("frame_auc", "video_auc"):
        values = [r[metric] for r in reports]
        known = [v for v in values if v is not None]
        average = float(np.mean(known)) if known else None
        lines += [f"| {metric} | " + " | ".join(r["dataset"] for r in reports) + " | avg |",
                  "|---|" + "---|" * (len(reports) + 1),
                  f"| {model} | " + " | ".join(cell(v) for v in values) + f" | {cell(average)} |", ""]
    return "\n".join(lines)
