"""``deepfake-serving evaluate``: a bundle (an archive's, unpacked) on labelled data, with the serving face
stage (the crops the server cuts) and the bundle's own engine, into the report of evaluation.report; several
datasets give DeepfakeBench's cross-dataset table. An item is an image or a video's sampled frame, scored
as the server scores an image (its most suspicious face: ``aggregation.image_score``), so the gate's figures
over served answers are these; a video's score is the mean of its frames' (DeepfakeBench's video level)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from deepfake_serving.bundle import Bundle
from deepfake_serving.evaluation.report import Scored, cross_dataset_table, per_picture, write_report
from deepfake_serving.training.data import FaceExtractor, discover, extract, source_name

BATCH = 32


def dataset_name(data: Path) -> str:
    return data.stem if data.is_file() else data.name


def evaluate_bundle(bundle: Bundle, scorer, data: str | Path, out: str | Path, cache: str | Path,
                    threads: int | None = None) -> dict:
    """The report of one dataset, written into ``out`` (report.json, scores.jsonl, plots); ``scorer``: the
    bundle's (opened once for every dataset)."""
    data = Path(data)
    sources, skipped = discover(data)
    extracted = extract(sources, FaceExtractor(bundle.variant, cache, threads=threads), data)
    faces = extracted.faces
    scores: list[float] = []
    for i in range(0, len(faces), BATCH):
        scores += np.asarray(scorer.scores([f.pixels() for f in faces[i:i + BATCH]])).mean(axis=0).tolist()
    label_of = {source_name(s, data): s.label for s in sources}
    items = per_picture((f.source, f.label, f.frame, s) for f, s in zip(faces, scores))
    items += [Scored(name, label_of[name], None) for name in extracted.no_face]
    unreadable = [f"{name}: {why}" for name, why in [*skipped, *extracted.unreadable]]
    report = write_report(items, out, bundle.manifest.threshold, dataset_name(data), unreadable)
    report.update({"variant": bundle.variant.name, "version": bundle.version, "trained": bundle.trained,
                   "no_face": extracted.no_face, "training_run": bundle.manifest.training_run})
    (Path(out) / "report.json").write_text(json.dumps(report, indent=2))
    return report


def evaluate_datasets(bundle_dir: str | Path, datasets: Sequence[str | Path], out: str | Path, cache: str | Path,
                      threads: int | None = None) -> tuple[list[dict], str]:
    """One report per dataset (``out/<dataset>/``) and the cross-dataset table (``out/cross-dataset.md``)."""
    out = Path(out)
    names = [dataset_name(Path(d)) for d in datasets]
    if len(set(names)) != len(names):
        raise ValueError(f"two datasets share a name ({', '.join(names)}): their reports would overwrite each other")
    bundle = Bundle.open(bundle_dir)
    scorer = bundle.scorer(threads=threads)
    reports = [evaluate_bundle(bundle, scorer, data, out / name, cache, threads) for data, name in zip(datasets, names)]
    table = cross_dataset_table(reports, f"{bundle.variant.name} {bundle.version}")
    (out / "cross-dataset.md").write_text(table + "\n")
    return reports, table
