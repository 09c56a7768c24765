"""The one builder from a variant and weights to a torch model (timm's ``_factory``); imports torch."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from deepfake_serving.variants.checkpoints import load_checkpoint_into
from deepfake_serving.variants.registry import get_variant


def create_model(name: str, checkpoint: str | Path | None = None, *, seed: int | None = None) -> nn.Module:
    """The variant's model in eval mode (as ``timm.create_model``): random weights, seeded when ``seed``
    is given (never downloaded), or a weights file loaded strictly (a user checkpoint in any accepted
    layout, or a bundle's safetensors)."""
    variant = get_variant(name)
    if seed is not None:
        torch.manual_seed(seed)
    model = variant.build()
    if checkpoint is not None:
        load_checkpoint_into(model, checkpoint, variant.ignored_checkpoint_prefixes)
    return model.eval()
