"""The variant registry: one place for each variant's architecture, preprocessing and output convention.

timm-style: ``list_variants()``, ``get_variant(name)``, ``create_model(name)``.
Every adapter (TorchServe handler, Triton model, in-process pipeline) reads its
parameters from here and nowhere else.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # the registry imports no torch: torch-free workers read it too
    from pathlib import Path

    from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# How a model's raw output becomes P(fake), one value per face.
OUTPUT_CONVENTIONS: dict[str, Callable[["Tensor"], "Tensor"]] = {
    "prob_fake": lambda out: out.reshape(-1),  # head ends in a sigmoid over "fake"
    "logit_fake": lambda out: out.reshape(-1).sigmoid(),
    "prob_real": lambda out: 1.0 - out.reshape(-1),  # head ends in a sigmoid over "real"
    "logits_real_fake": lambda out: out.softmax(dim=1)[:, 1],
}


@dataclass(frozen=True)
class FaceStage:
    """Face detection and cropping parameters."""

    thresholds: tuple[float, float, float] = (0.7, 0.8, 0.8)
    min_face_size: int = 20
    # Padding added on every side, as a fraction of the box's height/width, floored
    # (1/3 reproduces the DFDC reference's ``h // 3``).
    crop_margin: Fraction = Fraction(1, 3)
    # Video frames are shrunk by this factor for detection (DFDC: half size).
    frame_detect_scale: float = 0.5
    # Still images are shrunk for detection only when their longest side exceeds this.
    image_detect_max_side: int = 1024
    # What to classify when no face is found: None (answer NO_FACE) or "center_crop".
    no_face_fallback: str | None = None


@dataclass(frozen=True)
class Preprocessing:
    input_size: int
    resize: str = "isotropic"  # "isotropic" (longest side, centred on black) or "stretch"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    faces: FaceStage = field(default_factory=FaceStage)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["faces"]["crop_margin"] = str(self.faces.crop_margin)
        return data


@dataclass(frozen=True)
class Variant:
    name: str
    seed: str
    description: str
    build: Callable[[], "nn.Module"]
    output: str
    preprocessing: Preprocessing
    threshold: float = 0.5
    # Checkpoint keys that the reference format carries but the model does not use.
    ignored_checkpoint_prefixes: tuple[str, ...] = ()

    def fake_probability(self, output: "Tensor") -> "Tensor":
        return OUTPUT_CONVENTIONS[self.output](output)


_REGISTRY: dict[str, Variant] = {}


def register_variant(variant: Variant) -> Variant:
    if variant.name in _REGISTRY:
        raise ValueError(f"variant {variant.name!r} is already registered")
    if variant.output not in OUTPUT_CONVENTIONS:
        raise ValueError(f"unknown output convention {variant.output!r}")
    _REGISTRY[variant.name] = variant
    return variant


def list_variants() -> list[str]:
    return sorted(_REGISTRY)


def get_variant(name: str) -> Variant:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown variant {name!r}; known: {', '.join(list_variants())}") from None


def create_model(name: str, checkpoint: "str | Path | None" = None, *, seed: int | None = None) -> "nn.Module":
    """The one builder from a variant and weights to a model in eval mode (as ``timm.create_model``):
    random weights, seeded when ``seed`` is given (never downloaded), or a weights file loaded strictly
    (a user checkpoint in any accepted layout, or a bundle's safetensors)."""
    variant = get_variant(name)
    if seed is not None:
        import torch

        torch.manual_seed(seed)
    model = variant.build()
    if checkpoint is not None:
        from .checkpoints import load_checkpoint_into

        load_checkpoint_into(model, checkpoint, variant.ignored_checkpoint_prefixes)
    return model.eval()


def _mobile():
    from .models.mobile import MobileB4Detector

    return MobileB4Detector()


def _dfdc():
    from .models.dfdc import DeepFakeClassifier

    return DeepFakeClassifier()


def _keras_head():
    from .models.keras_head import KerasHeadB4

    return KerasHeadB4()


def _enhanced():
    from .models.enhanced import EnhancedB4Detector

    return EnhancedB4Detector()


def _ff():
    from .models.ff import ff_b4

    return ff_b4()


register_variant(Variant(
    name="b4-mobile",
    seed="000-efficientnet-b4-mobile-detector",
    description="torchvision EfficientNet-B4 at 224, head 1792→512→128→1, sigmoid",
    build=_mobile,
    output="prob_fake",
    preprocessing=Preprocessing(input_size=224, faces=FaceStage(crop_margin=Fraction(1, 10))),
))
register_variant(Variant(
    name="b7-dfdc",
    seed="001-efficientnet-b7-video-detector",
    description="DFDC winner: tf_efficientnet_b7 (ns) encoder, average pool, Linear(2560, 1) at 380",
    build=_dfdc,
    output="logit_fake",
    preprocessing=Preprocessing(input_size=380),
    ignored_checkpoint_prefixes=("encoder.classifier.",),
))
register_variant(Variant(
    name="b4-keras-head",
    seed="002-efficientnet-b4-keras-head",
    description="EfficientNet-B4 at 380, GAP→BN→Dense(512)→BN→Dropout(0.5)→Dense(1, sigmoid) giving P(real)",
    build=_keras_head,
    output="prob_real",
    # Seed 002 resizes to 380×380 without keeping the aspect ratio.
    preprocessing=Preprocessing(input_size=380, resize="stretch"),
))
register_variant(Variant(
    name="b4-enhanced",
    seed="003-enhanced-b4-multiscale-frequency-edge",
    description="EfficientNet-B4 at 224 + multi-scale, frequency and edge branches, attention, softmax [real, fake]",
    build=_enhanced,
    output="logits_real_fake",
    preprocessing=Preprocessing(input_size=224),
))
register_variant(Variant(
    name="b4-ff",
    seed="004-architecture-and-scaling-decisions",
    description="EfficientNet-B4 at 224, Dropout→512→ReLU→BN→Dropout→2 logits, centre crop when no face",
    build=_ff,
    output="logits_real_fake",
    preprocessing=Preprocessing(input_size=224, faces=FaceStage(no_face_fallback="center_crop")),
))
