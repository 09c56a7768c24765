"""Seed 000: torchvision EfficientNet-B4 with a three-layer sigmoid head (224 input)."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import efficientnet_b4


class MobileB4Detector(nn.Module):
    """Outputs P(fake) directly (the head ends in a sigmoid).

    The attribute name ``efficientnet`` keeps seed 000's state_dict keys.
    """

    def __init__(self, dropout_rate: float = 0.3):
        super().__init__()
        self.efficientnet = efficientnet_b4(weights=None)
        features = self.efficientnet.classifier[1].in_features  # 1792
        self.efficientnet.classifier = nn.Sequential(
            nn.Dropout(p=dropout_rate, inplace=True),
            nn.Linear(features, 512),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout_rate * 0.5, inplace=True),
            nn.Linear(512, 128),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout_rate * 0.3, inplace=True),
            nn.Linear(128, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.efficientnet(x)
