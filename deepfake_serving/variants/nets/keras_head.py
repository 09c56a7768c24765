"""Seed 002 ported to PyTorch: EfficientNet-B4 (380) + GAP → BN → Dense(512) → BN → Dropout → Dense(1, sigmoid).

Keras' EfficientNetB4 pads 'same' like TensorFlow, so the backbone is timm's
``tf_efficientnet_b4``; its parameters plus BatchNorm running statistics equal
Keras' 17,673,823 less the 7 weights of Keras' input Normalization layer.
BatchNorm uses Keras' defaults (eps 1e-3, momentum 0.99). The model outputs
P(real), as seed 002 does; the variant registry converts it to P(fake).
"""

from __future__ import annotations

import timm
import torch
from torch import nn

KERAS_BN: dict = {"eps": 1e-3, "momentum": 0.01}  # Keras momentum 0.99 == PyTorch momentum 0.01


class KerasHeadB4(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = timm.create_model("tf_efficientnet_b4", pretrained=False, num_classes=0)
        features = self.backbone.num_features  # 1792
        self.head = nn.Sequential(
            nn.BatchNorm1d(features, **KERAS_BN),
            nn.Linear(features, 512),
            nn.ReLU(inplace=True),
            nn.BatchNorm1d(512, **KERAS_BN),
            nn.Dropout(0.5),
            nn.Linear(512, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))
