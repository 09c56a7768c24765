"""A recipe (variants.recipes) made into torch objects: the parameters a phase trains and their rates, the
optimiser, the schedule, the loss on P(fake), and the augmentation of a face crop."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from deepfake_serving.variants import Variant
from deepfake_serving.variants.recipes import Augmentation, Phase, Recipe

EPSILON = 1e-6


# -- what trains ------------------------------------------------------------------------------------
def backbone_of(model: nn.Module, variant: Variant) -> nn.Module:
    return model.get_submodule(variant.backbone)


def _layers(module: nn.Module) -> list[nn.Module]:
    """The module's parameterised leaf layers in definition order (Keras counts layers, not blocks)."""
    return [m for m in module.modules() if not list(m.children()) and any(True for _ in m.parameters(recurse=False))]


def apply_phase(model: nn.Module, variant: Variant, phase: Phase) -> list[dict]:
    """Set ``requires_grad`` for the phase and return the optimiser's parameter groups (backbone and head,
    each at its rate)."""
    backbone = backbone_of(model, variant)
    in_backbone = {id(p) for p in backbone.parameters()}
    for parameter in model.parameters():
        parameter.requires_grad = True
    if phase.trains == "head":
        for parameter in backbone.parameters():
            parameter.requires_grad = False
    elif phase.trains.startswith("last:"):
        keep = int(phase.trains.split(":")[1])
        layers = _layers(backbone)
        for layer in layers[: max(0, len(layers) - keep)]:
            for parameter in layer.parameters(recurse=False):
                parameter.requires_grad = False
    elif phase.trains != "all":
        raise ValueError(f"unknown phase.trains {phase.trains!r}")
    head = [p for p in model.parameters() if id(p) not in in_backbone and p.requires_grad]
    body = [p for p in backbone.parameters() if p.requires_grad]
    groups = [{"params": head, "lr": phase.lr, "name": "head"}]
    if body:
        groups.append({"params": body, "lr": phase.backbone_lr if phase.backbone_lr is not None else phase.lr,
                       "name": "backbone"})
    return groups


def trainable(model: nn.Module) -> nn.Module:
    """The model with out-of-place dropout: seed 000's head drops in place right after an in-place ReLU, whose
    backward needs its output (inference is unchanged)."""
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.inplace = False
    return model


def set_train_mode(model: nn.Module, variant: Variant, phase: Phase) -> None:
    """Training mode, but a frozen backbone runs as at inference, and ``frozen_batchnorm`` keeps the
    backbone's BatchNorm statistics (seed 002's phase 2): nothing there learns, so nothing there drifts."""
    model.train()
    backbone = backbone_of(model, variant)
    if phase.trains == "head":  # a frozen feature extractor: no batch statistics, dropout nor stochastic depth
        backbone.eval()
    elif phase.frozen_batchnorm:
        for module in backbone.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


# -- optimiser and schedule -------------------------------------------------------------------------
def optimizer_for(recipe: Recipe, groups: list[dict]) -> torch.optim.Optimizer:
    if recipe.optimizer == "adam":
        return torch.optim.Adam(groups, weight_decay=recipe.weight_decay)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, weight_decay=recipe.weight_decay)
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=groups[0]["lr"], momentum=recipe.momentum, nesterov=recipe.nesterov,
                               weight_decay=recipe.weight_decay)
    raise ValueError(f"unknown optimizer {recipe.optimizer!r}")


def scheduler_for(recipe: Recipe, optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int):
    """The phase's schedule. ``plateau`` steps on the validation loss once per epoch; ``poly`` (the DFDC
    winner's) once per batch; ``cosine`` once per epoch; ``constant`` never."""
    params = recipe.schedule_params
    if recipe.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs))
    if recipe.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=params.get("factor", 0.1),
                                                          patience=params.get("patience", 10),
                                                          min_lr=params.get("min_lr", 0.0))
    if recipe.schedule == "poly":
        total = max(1, epochs * steps_per_epoch)
        power = params.get("power", 0.9)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: (1 - min(step, total) / total) ** power)
    if recipe.schedule == "constant":
        return None
    raise ValueError(f"unknown schedule {recipe.schedule!r}")


def steps_per_batch(recipe: Recipe) -> bool:
    return recipe.schedule == "poly"


# -- loss -------------------------------------------------------------------------------------------
class FocalLoss(nn.Module):
    """Binary focal loss on P(fake) (Lin et al.; Keras' BinaryFocalCrossentropy without alpha): the
    cross-entropy of each face scaled by (1 - p_t)^gamma. ``alpha`` (the fake class's weight) when given."""

    def __init__(self, gamma: float = 2.0, alpha: float | None = None):
        super().__init__()
        self.gamma, self.alpha = gamma, alpha

    def forward(self, p_fake: torch.Tensor, fake: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        p = p_fake.clamp(EPSILON, 1 - EPSILON)
        p_t = torch.where(fake > 0.5, p, 1 - p)
        loss = -((1 - p_t) ** self.gamma) * torch.log(p_t)
        if self.alpha is not None:
            loss = loss * torch.where(fake > 0.5, torch.full_like(p, self.alpha), torch.full_like(p, 1 - self.alpha))
        if weights is not None:
            loss = loss * weights
        return loss.mean()


class BinaryCrossEntropy(nn.Module):
    """Cross-entropy on P(fake), per face weights optional."""

    def forward(self, p_fake: torch.Tensor, fake: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        loss = nn.functional.binary_cross_entropy(p_fake.clamp(EPSILON, 1 - EPSILON), fake, reduction="none")
        if weights is not None:
            loss = loss * weights
        return loss.mean()


def loss_for(recipe: Recipe, fake_share: float) -> nn.Module:
    """``fake_share``: the fake faces' share of the training set (seed 003's adaptive alpha: the rarer class
    weighs more)."""
    gamma = recipe.loss_params.get("gamma", 2.0)
    if recipe.loss == "bce":
        return BinaryCrossEntropy()
    if recipe.loss == "focal":
        return FocalLoss(gamma)
    if recipe.loss == "adaptive_focal":
        return FocalLoss(gamma, alpha=1.0 - fake_share)
    raise ValueError(f"unknown loss {recipe.loss!r}")


def class_weights(labels: Sequence[int]) -> dict[int, float]:
    """Keras' "balanced" class weights: n / (classes × n_class)."""
    counts = {label: labels.count(label) for label in (0, 1)}
    return {label: len(labels) / (2 * count) if count else 0.0 for label, count in counts.items()}


# -- augmentation -----------------------------------------------------------------------------------
def _albumentation(spec: Augmentation):
    import albumentations

    if spec.one_of:
        return albumentations.OneOf([_albumentation(s) for s in spec.one_of], p=spec.p)
    return getattr(albumentations, spec.name)(p=spec.p, **spec.params)


def _torchvision(spec: Augmentation):
    from torchvision.transforms import v2

    transform = getattr(v2, spec.name)
    if spec.name in ("RandomHorizontalFlip", "RandomVerticalFlip", "RandomErasing"):
        return transform(p=spec.p, **spec.params)
    built = transform(**spec.params)
    return built if spec.p >= 1.0 else v2.RandomApply([built], p=spec.p)


def augmentation_pipeline(recipe: Recipe):
    """The recipe's augmentations as its library's Compose (None without any)."""
    if not recipe.augmentations:
        return None
    if recipe.library == "albumentations":
        import albumentations

        return albumentations.Compose([_albumentation(s) for s in recipe.augmentations])
    if recipe.library == "torchvision":
        from torchvision.transforms import v2

        return v2.Compose([_torchvision(s) for s in recipe.augmentations])
    raise ValueError(f"unknown augmentation library {recipe.library!r}")


def augmentation_for(recipe: Recipe, seed: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """A function from an HxWx3 uint8 RGB crop to an augmented one of the same size (the variant's
    normalisation comes after, as at serving time). Albumentations draws from its own generator
    (``seed``); torchvision's from torch's, seeded per epoch by the loop."""
    pipeline = augmentation_pipeline(recipe)
    if pipeline is None:
        return lambda crop: crop
    if recipe.library == "albumentations":
        if seed is not None:
            pipeline.set_random_seed(seed)
        return lambda crop: pipeline(image=crop)["image"]

    def apply(crop: np.ndarray) -> np.ndarray:
        return pipeline(torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)).permute(1, 2, 0).numpy()
    return apply
