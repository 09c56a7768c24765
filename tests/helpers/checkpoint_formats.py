"""Checkpoints written the way their reference projects write them."""

import numpy as np
import torch


def save_dfdc_checkpoint(model: torch.nn.Module, path) -> None:
    """The DFDC winner's format: DataParallel ``module.`` keys, timm's unused 1000-class head,
    and ``bce_best`` as a numpy scalar."""
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    state["module.encoder.classifier.weight"] = torch.zeros(1000, 2560)
    state["module.encoder.classifier.bias"] = torch.zeros(1000)
    torch.save({"epoch": 36, "state_dict": state, "bce_best": np.float64(0.2134)}, path)
