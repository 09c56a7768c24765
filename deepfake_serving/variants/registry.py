"""The variant registry (timm's ``_registry``): each variant's architecture, preprocessing and output
convention, registered by its own module beside its network (``variants/<name>.py``). Torch-free: a
variant names its architecture as ``"module:callable"``, imported only when a model is built."""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from deepfake_serving.variants.recipes import Recipe

if TYPE_CHECKING:  # the registry imports no torch: torch-free workers read it too
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
class FaceSettings:
    """How a variant's faces are detected and cut (configuration; ``pipeline`` runs it)."""

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


def to_array(faces: Sequence[np.ndarray], mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Stack HxWx3 uint8 RGB faces into a normalised float32 NCHW batch: (x / 255 - mean) / std in
    float32, the arithmetic torchvision-style ``to_tensor`` + ``normalize`` does."""
    batch = np.stack(faces).astype(np.float32) / np.float32(255.0)
    batch = (batch - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))


@dataclass(frozen=True)
class Preprocessing:
    input_size: int
    resize: str = "isotropic"  # "isotropic" (longest side, centred on black) or "stretch"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    faces: FaceSettings = field(default_factory=FaceSettings)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["faces"]["crop_margin"] = str(self.faces.crop_margin)
        return data

    def tensor(self, faces: Sequence[np.ndarray]) -> np.ndarray:
        """The model input for model-ready crops (``to_array`` with this variant's mean and std)."""
        return to_array(faces, self.mean, self.std)


@dataclass(frozen=True)
class Variant:
    name: str
    source_document: str  # the seed document under shared/seeds/ that describes it
    description: str
    architecture: str  # "module:callable" that builds the torch module (imported by ``build``)
    output: str
    preprocessing: Preprocessing
    # The last convolutional stage (a submodule's dotted name in the built network): where Grad-CAM looks.
    cam_layer: str
    threshold: float = 0.5
    # Checkpoint keys that the reference format carries but the model does not use.
    ignored_checkpoint_prefixes: tuple[str, ...] = ()
    # The pretrained feature extractor (a submodule's dotted name): what ImageNet weights initialise and a
    # recipe freezes or trains at its own rate; everything else is the head.
    backbone: str = ""
    recipe: Recipe | None = field(default=None, hash=False, compare=False)  # how its source document trains it

    def build(self) -> "nn.Module":
        """A new torch module with random weights (imports torch and the architecture's module)."""
        module, builder = self.architecture.split(":")
        return getattr(importlib.import_module(module), builder)()

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
