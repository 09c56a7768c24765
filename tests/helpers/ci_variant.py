"""A CI-sized variant for the test that training learns: timm's EfficientNet-B0 at 128 with one logit.

The product's B4 variants do not learn the tests' self-blends from random weights in the steps two CPU
cores give in CI (docs/training.md, "What a CI-sized run learns"); this network, about fifteen times
cheaper a face, does, through the same face stage, split, recipe objects and training loop."""

import contextlib
from typing import Iterator

import timm
from torch import nn

from deepfake_serving.variants import get_variant, registry
from deepfake_serving.variants.registry import Preprocessing, Variant, register_variant

NAME = "ci-b0"


class CiB0(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = timm.create_model("efficientnet_b0", pretrained=False, num_classes=0)
        self.head = nn.Linear(self.backbone.num_features, 1)

    def forward(self, x):
        return self.head(self.backbone(x))


@contextlib.contextmanager
def ci_variant() -> Iterator[Variant]:
    """The variant, registered (with seed 000's recipe, b4-mobile's) for the ``with`` block only: tests that
    follow see the product's five variants."""
    variant = register_variant(Variant(
        name=NAME, source_document="tests", description="EfficientNet-B0 at 128, one logit (tests only)",
        architecture="helpers.ci_variant:CiB0", output="logit_fake", cam_layer="backbone.bn2",
        preprocessing=Preprocessing(input_size=128), backbone="backbone", recipe=get_variant("b4-mobile").recipe))
    try:
        yield variant
    finally:
        registry._REGISTRY.pop(NAME)  # the registry has no removal: only a test needs one
