"""Face crops → P(fake), for one or several checkpoints of one variant."""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np
import torch
from torch import nn

from .crops import to_tensor
from .variants import Variant


class FaceScorer(Protocol):
    """What the pipelines need from a classifier: P(fake) with shape (models, faces)."""

    def scores(self, crops: Sequence[np.ndarray]) -> np.ndarray: ...


class FaceClassifier:
    """Runs every model over the faces in batches of ``batch_size``.

    The DFDC winner averaged seven B7 checkpoints: an archive may hold several
    checkpoints of one variant, and callers decide how to combine their scores.
    """

    def __init__(self, variant: Variant, models: nn.Module | Sequence[nn.Module], batch_size: int = 32):
        models = [models] if isinstance(models, nn.Module) else list(models)
        if not models:
            raise ValueError("a classifier needs at least one model")
        self.variant = variant
        self.models = [m.eval() for m in models]
        self.batch_size = batch_size

    @torch.inference_mode()
    def scores(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """P(fake) with shape (models, faces)."""
        out = np.zeros((len(self.models), len(crops)), dtype=np.float64)
        pre = self.variant.preprocessing
        for start in range(0, len(crops), self.batch_size):
            batch = to_tensor(crops[start:start + self.batch_size], pre.mean, pre.std)
            for m, model in enumerate(self.models):
                out[m, start:start + len(batch)] = self.variant.fake_probability(model(batch)).double().cpu().numpy()
        return out


def as_scorer(variant: Variant, models: nn.Module | Sequence[nn.Module] | FaceScorer, batch_size: int = 32) -> FaceScorer:
    """Models run in this process, or a scorer that runs them elsewhere (a Triton classifier)."""
    if hasattr(models, "scores"):
        return models
    return FaceClassifier(variant, models, batch_size=batch_size)
