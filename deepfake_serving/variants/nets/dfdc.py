"""Seed 001 / DFDC winner: timm tf_efficientnet_b7 encoder + average pool + Linear(2560, 1)."""

from __future__ import annotations

import timm
import torch
from torch import nn


class DeepFakeClassifier(nn.Module):
    """Same module names as the DFDC reference (``encoder``, ``fc``), so its checkpoints load.

    The encoder is built without timm's 1000-class head: the reference keeps it
    but never calls it, and its ``encoder.classifier.*`` keys are dropped on import.
    Returns one logit per face.
    """

    def __init__(self, encoder: str = "tf_efficientnet_b7", dropout_rate: float = 0.0):
        super().__init__()
        self.encoder = timm.create_model(encoder, pretrained=False, num_classes=0)
        self.avg_pool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(dropout_rate)
        self.fc = nn.Linear(self.encoder.num_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.encoder.forward_features(x)
        x = self.avg_pool(x).flatten(1)
        return self.fc(self.dropout(x))
