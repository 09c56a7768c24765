"""An ensemble bundle: several variants' bundles under ``members/``, fused by the rule its manifest
stores; faces are detected once, with the first member's face settings."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from deepfake_serving.bundle.load import Bundle
from deepfake_serving.core.errors import CheckpointError
from deepfake_serving.core.fusion import Fusion

ENSEMBLE_MANIFEST = "deepfake_ensemble.json"
MEMBERS = "members"


@dataclass(frozen=True)
class EnsembleManifest:
    name: str
    version: str
    members: list[dict]  # {"variant", "directory"}: directory relative to the bundle, under members/
    fusion: dict
    created_at: str
    package_version: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def read(cls, directory: str | Path) -> "EnsembleManifest":
        path = Path(directory) / ENSEMBLE_MANIFEST
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{path}: not an ensemble manifest ({exc})") from None


@dataclass(frozen=True)
class Ensemble:
    directory: Path
    manifest: EnsembleManifest
    members: list[Bundle]
    fusion: Fusion

    @classmethod
    def open(cls, directory: str | Path) -> "Ensemble":
        directory = Path(directory)
        manifest = EnsembleManifest.read(directory)
        if len(manifest.members) < 2:
            raise CheckpointError(f"{directory}: an ensemble needs at least two members")
        root = (directory / MEMBERS).resolve()
        members = []
        for entry in manifest.members:
            member = (directory / entry["directory"]).resolve()
            if root not in member.parents:  # a manifest never points outside its own members/
                raise CheckpointError(f"{directory}: member {entry['directory']!r} is not under {MEMBERS}/")
            members.append(Bundle.open(member))
        try:
            fusion = Fusion.from_dict(manifest.fusion, len(members))
        except (ValueError, TypeError, KeyError) as exc:
            raise CheckpointError(f"{directory}: {exc}") from None
        return cls(directory, manifest, members, fusion)

    @property
    def version(self) -> str:
        return self.manifest.version
