"""Training recipes as data (torch-free): each variant registers the recipe of its source document beside
its architecture; ``training.build`` turns one into the optimiser, schedule, loss and augmentation objects.
Where a seed is vague the choice is ours and says so in ``notes``."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Augmentation:
    """One transform: its class in ``library`` ("torchvision" or "albumentations"), its probability and
    keyword arguments. ``one_of`` holds alternatives (albumentations' OneOf), of which one is applied."""

    name: str
    p: float = 1.0
    params: dict = field(default_factory=dict)
    one_of: tuple["Augmentation", ...] = ()


@dataclass(frozen=True)
class Phase:
    """A stretch of epochs with its own trainable parameters and rates.

    ``trains``: "all", "head" (the backbone frozen) or "last:N" (the head and the backbone's last N
    parameterised layers). ``backbone_lr``: the backbone's rate when it differs from ``lr``.
    ``frozen_batchnorm``: the backbone's BatchNorm layers keep their statistics (eval mode)."""

    epochs: int
    lr: float
    trains: str = "all"
    backbone_lr: float | None = None
    frozen_batchnorm: bool = False


@dataclass(frozen=True)
class Recipe:
    source: str  # the seed document (or repository) it comes from
    optimizer: str  # "adam", "adamw" or "sgd"
    phases: tuple[Phase, ...]
    batch_size: int
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd
    nesterov: bool = False  # sgd
    schedule: str = "constant"  # "constant", "cosine", "plateau" (on the validation loss) or "poly"
    schedule_params: dict = field(default_factory=dict)
    loss: str = "bce"  # "bce", "focal" (gamma) or "adaptive_focal" (alpha from the class shares)
    loss_params: dict = field(default_factory=dict)
    library: str = "torchvision"  # whose augmentation classes ``augmentations`` name
    augmentations: tuple[Augmentation, ...] = ()
    early_stopping: int | None = None  # epochs without a better validation loss before stopping
    grad_clip: float | None = None  # max gradient norm
    balance: str = "sampler"  # class imbalance: "sampler" (weighted sampling) or "loss" (class weights)
    notes: str = ""

    @property
    def epochs(self) -> int:
        return sum(phase.epochs for phase in self.phases)

    def with_epochs(self, epochs: int) -> "Recipe":
        """The same recipe cut or stretched to ``epochs`` in all, each phase in proportion (at least one
        epoch each while there are epochs to give)."""
        from dataclasses import replace

        total, given, phases = self.epochs, 0, []
        for i, phase in enumerate(self.phases):
            share = epochs - given if i == len(self.phases) - 1 else max(1, round(epochs * phase.epochs / total))
            share = max(0, min(share, epochs - given))
            if share:
                phases.append(replace(phase, epochs=share))
            given += share
        return replace(self, phases=tuple(phases))
