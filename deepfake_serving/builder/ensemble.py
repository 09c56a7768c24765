"""Writing an ensemble bundle: each member's bundle under ``members/`` (write_bundle, its own weights,
graph, engine decision and proof) and the ensemble manifest with its fusion rule."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from deepfake_serving import __version__
from deepfake_serving.builder.write import write_bundle
from deepfake_serving.bundle.ensemble import ENSEMBLE_MANIFEST, MEMBERS, EnsembleManifest
from deepfake_serving.bundle.manifest import created_now
from deepfake_serving.core.fusion import Fusion
from deepfake_serving.core.naming import check_name
from deepfake_serving.engines import AUTO_ENGINE
from deepfake_serving.variants import get_variant


def write_ensemble(directory: str | Path, name: str, version: str, members: Sequence[tuple[str, Sequence[str | Path]]],
                   fusion: Fusion = Fusion(), seed: int = 0, engine: str = AUTO_ENGINE) -> EnsembleManifest:
    """``members``: (variant, checkpoints) each, in order; the first member's face settings detect faces.
    Without checkpoints a member's weights are random (seed + its position)."""
    check_name(name, "ensemble name")
    if len(members) < 2:
        raise ValueError("an ensemble needs at least two members")
    for variant, _ in members:
        get_variant(variant)
    fusion.check(len(members))
    directory = Path(directory)
    entries = []
    for i, (variant, checkpoints) in enumerate(members):
        relative = f"{MEMBERS}/{i}-{variant}"
        write_bundle(directory / relative, variant, version, checkpoints=checkpoints, seed=seed + i, engine=engine)
        entries.append({"variant": variant, "directory": relative})
    manifest = EnsembleManifest(name=name, version=version, members=entries, fusion=fusion.to_dict(),
                                created_at=created_now(),
                                package_version=__version__)
    (directory / ENSEMBLE_MANIFEST).write_text(manifest.to_json())
    return manifest
