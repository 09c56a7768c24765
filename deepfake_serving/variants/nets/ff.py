"""Seed 004: torchvision EfficientNet-B4 (224) with a two-logit [real, fake] head."""

from __future__ import annotations

from torch import nn
from torchvision.models import EfficientNet, efficientnet_b4


def ff_b4() -> EfficientNet:
    """Dropout(0.5) → Linear(1792, 512) → ReLU → BN → Dropout(0.3) → Linear(512, 2).

    The head replaces torchvision's ``classifier`` in place, so keys are the
    plain torchvision ones (``features.*``, ``classifier.*``).
    """
    model = efficientnet_b4(weights=None)
    model.classifier = nn.Sequential(
        nn.Dropout(p=0.5),
        nn.Linear(model.classifier[1].in_features, 512),
        nn.ReLU(inplace=True),
        nn.BatchNorm1d(512),
        nn.Dropout(p=0.3),
        nn.Linear(512, 2),
    )
    return model
