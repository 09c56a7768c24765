"""Fusing several detectors' P(fake) for the same faces: the rule, an optional calibration of its output,
the members' disagreement, and the opt-in abstention that answers UNCERTAIN ("send to a person") instead
of a coin flip. Applying a fitted rule is numpy only; fitting it is ``evaluation.fusion_fit``'s."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

UNCERTAIN = "UNCERTAIN"
# mean: the DFDC winner's mean of probabilities; weighted_mean: weights normalised to sum 1; stacking:
# sigmoid(weights · logit(P) + bias), a logistic regression over the members' logits fitted on a labelled folder.
FUSION_RULES = ("mean", "weighted_mean", "stacking")
# temperature: sigmoid(logit(p) / T); isotonic: a non-decreasing step map, linear between its knots.
CALIBRATIONS = ("temperature", "isotonic")
MAX_MEMBERS = 8  # each member is a network in the worker's memory and a forward pass per face
MAX_KNOTS = 4096  # an isotonic map's points (one per distinct fitted score at most)
EPSILON = 1e-6  # probabilities are clipped to [EPSILON, 1 - EPSILON] before a logit


def logit(p: np.ndarray | float) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), EPSILON, 1 - EPSILON)
    return np.log(p) - np.log1p(-p)


def sigmoid(z: np.ndarray | float) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))  # no overflow for any z


def _finite(values: Sequence[float]) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


@dataclass(frozen=True)
class Calibration:
    """A map from the rule's P(fake) to a calibrated one, fitted on a labelled folder."""

    method: str
    temperature: float | None = None  # temperature only
    x: tuple[float, ...] | None = None  # isotonic only: knots, non-decreasing in [0, 1]
    y: tuple[float, ...] | None = None

    def __post_init__(self):
        if self.method == "temperature":
            if self.temperature is None or not _finite([self.temperature]) or not self.temperature > 0:
                raise ValueError("a temperature calibration needs a finite temperature > 0")
        elif self.method == "isotonic":
            x, y = self.x or (), self.y or ()
            if not 2 <= len(x) == len(y) <= MAX_KNOTS or not _finite([*x, *y]):
                raise ValueError(f"an isotonic calibration needs 2 to {MAX_KNOTS} finite (x, y) knots")
            if np.any(np.diff(x) < 0) or np.any(np.diff(y) < 0) or min(*x, *y) < 0 or max(*x, *y) > 1:
                raise ValueError("an isotonic calibration's knots are non-decreasing and within [0, 1]")
        else:
            raise ValueError(f"unknown calibration {self.method!r}; known: {', '.join(CALIBRATIONS)}")

    def apply(self, p: np.ndarray) -> np.ndarray:
        if self.method == "temperature":
            return sigmoid(logit(p) / float(self.temperature))  # type: ignore[arg-type]  # checked in __post_init__
        return np.interp(np.asarray(p, dtype=np.float64), self.x or (), self.y or ())  # clipped at the end knots


@dataclass(frozen=True)
class Abstention:
    """UNCERTAIN when the members disagree by more than ``max_disagreement`` (the standard deviation of
    their P(fake)) or the answer's P(fake) (calibrated when fitted) lies inside ``band`` (lo, hi)."""

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
    weights: tuple[float, ...] | None = None  # weighted_mean and stacking, one per member
    bias: float | None = None  # stacking only
    abstention: Abstention | None = None  # off by default: clients see no new label
    calibration: Calibration | None = None
    fit: dict | None = None  # what ``ensemble fit`` measured (evaluation.fusion_fit.FitReport)

    def check(self, members: int) -> "Fusion":
        if not 2 <= members <= MAX_MEMBERS:
            raise ValueError(f"an ensemble has 2 to {MAX_MEMBERS} members, not {members}")
        if self.rule not in FUSION_RULES:
            raise ValueError(f"unknown fusion rule {self.rule!r}; known: {', '.join(FUSION_RULES)}")
        weighted = self.rule in ("weighted_mean", "stacking")
        if weighted and (self.weights is None or len(self.weights) != members or not _finite(self.weights)):
            raise ValueError(f"{self.rule} needs {members} finite weights")
        if self.rule == "weighted_mean" and (min(self.weights or [-1]) < 0 or sum(self.weights or []) <= 0):
            raise ValueError(f"weighted_mean needs {members} non-negative weights with a positive sum")
        if not weighted and self.weights is not None:
            raise ValueError("weights are for the weighted_mean and stacking rules")
        if (self.rule == "stacking") != (self.bias is not None) or (self.bias is not None and not _finite([self.bias])):
            raise ValueError("stacking, and only stacking, needs a finite bias")
        return self

    def fuse(self, member_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(fused P(fake), disagreement) per face from (members, faces) probabilities, before calibration;
        disagreement is the members' standard deviation (population, ddof 0)."""
        scores = np.asarray(member_scores, dtype=np.float64)
        spread = scores.std(axis=0)
        if self.rule == "stacking":
            return sigmoid(np.asarray(self.weights) @ logit(scores) + float(self.bias or 0.0)), spread
        weights = np.ones(len(scores)) if self.weights is None else np.asarray(self.weights, dtype=np.float64)
        return (weights / weights.sum()) @ scores, spread

    def calibrated(self, fused: np.ndarray) -> np.ndarray:
        """The answer's P(fake): the calibration's map of the fused one, or the fused one."""
        return fused if self.calibration is None else self.calibration.apply(fused)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, members: int) -> "Fusion":
        abstention, calibration = data.get("abstention"), data.get("calibration")
        band = abstention.get("band") if abstention else None
        tuples = {k: tuple(calibration[k]) for k in ("x", "y") if calibration and calibration.get(k) is not None}
        return cls(data.get("rule", "mean"), tuple(data["weights"]) if data.get("weights") is not None else None,
                   data.get("bias"),
                   Abstention(abstention.get("max_disagreement"), tuple(band) if band else None) if abstention else None,
                   Calibration(**{**calibration, **tuples}) if calibration else None,
                   data.get("fit")).check(members)


def ensemble_label(label: str, fused: float | None, disagreement: float | None, fusion: Fusion) -> str:
    """The answer's label: the threshold's, or UNCERTAIN when the abstention rule says so."""
    if fused is None or disagreement is None or fusion.abstention is None:
        return label
    return UNCERTAIN if fusion.abstention.uncertain(fused, disagreement) else label


def member_table(names: Sequence[str], scores: Sequence[float] | np.ndarray) -> dict[str, float]:
    return {name: float(score) for name, score in zip(names, scores)}
