"""Fusing several detectors' P(fake) for the same faces: the rule, the members' disagreement, and the
opt-in abstention that answers UNCERTAIN ("send to a person") instead of a coin flip."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

UNCERTAIN = "UNCERTAIN"
# mean: the DFDC winner's mean of probabilities; weighted_mean: weights normalised to sum 1.
FUSION_RULES = ("mean", "weighted_mean")


@dataclass(frozen=True)
class Abstention:
    """UNCERTAIN when the members disagree by more than ``max_disagreement`` (the standard deviation of
    their P(fake)) or the fused P(fake) lies inside ``band`` (lo, hi), either test when set."""

    max_disagreement: float | None = None
    band: tuple[float, float] | None = None

    def __post_init__(self):
        if self.max_disagreement is None and self.band is None:
            raise ValueError("an abstention rule needs max_disagreement, band or both")
        if self.band is not None and not 0.0 <= self.band[0] < self.band[1] <= 1.0:
            raise ValueError(f"the abstention band {self.band} is not 0 <= lo < hi <= 1")
        if self.max_disagreement is not None and not 0.0 <= self.max_disagreement <= 0.5:
            raise ValueError(f"max_disagreement {self.max_disagreement} is outside [0, 0.5] (a std of probabilities)")

    def uncertain(self, fused: float, disagreement: float) -> bool:
        too_split = self.max_disagreement is not None and disagreement > self.max_disagreement
        too_close = self.band is not None and self.band[0] < fused < self.band[1]
        return bool(too_split or too_close)


@dataclass(frozen=True)
class Fusion:
    rule: str = "mean"
    weights: tuple[float, ...] | None = None  # weighted_mean only, one per member
    abstention: Abstention | None = None  # off by default: clients see no new label

    def check(self, members: int) -> "Fusion":
        if self.rule not in FUSION_RULES:
            raise ValueError(f"unknown fusion rule {self.rule!r}; known: {', '.join(FUSION_RULES)}")
        if self.rule == "weighted_mean":
            if self.weights is None or len(self.weights) != members or min(self.weights) < 0 or sum(self.weights) <= 0:
                raise ValueError(f"weighted_mean needs {members} non-negative weights with a positive sum")
        elif self.weights is not None:
            raise ValueError("weights are for the weighted_mean rule")
        return self

    def fuse(self, member_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(fused P(fake), disagreement) per face from (members, faces) probabilities; disagreement is the
        members' standard deviation (population, ddof 0)."""
        scores = np.asarray(member_scores, dtype=np.float64)
        weights = np.ones(len(scores)) if self.weights is None else np.asarray(self.weights, dtype=np.float64)
        return (weights / weights.sum()) @ scores, scores.std(axis=0)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, members: int) -> "Fusion":
        abstention = data.get("abstention")
        band = abstention.get("band") if abstention else None
        return cls(data.get("rule", "mean"), tuple(data["weights"]) if data.get("weights") is not None else None,
                   Abstention(abstention.get("max_disagreement"), tuple(band) if band else None)
                   if abstention else None).check(members)


def ensemble_label(label: str, fused: float | None, disagreement: float | None, fusion: Fusion) -> str:
    """The answer's label: the threshold's, or UNCERTAIN when the abstention rule says so."""
    if fused is None or disagreement is None or fusion.abstention is None:
        return label
    return UNCERTAIN if fusion.abstention.uncertain(fused, disagreement) else label


def member_table(names: Sequence[str], scores: Sequence[float] | np.ndarray) -> dict[str, float]:
    return {name: float(score) for name, score in zip(names, scores)}
