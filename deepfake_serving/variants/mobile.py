"""b4-mobile (seed 000): torchvision EfficientNet-B4 at 224 with a 1792→512→128→1 sigmoid head (``nets/mobile.py``)."""

from fractions import Fraction

from deepfake_serving.variants.recipes import Augmentation, Phase, Recipe
from deepfake_serving.variants.registry import FaceSettings, Preprocessing, Variant, register_variant

register_variant(Variant(
    name="b4-mobile",
    source_document="000-efficientnet-b4-mobile-detector",
    description="torchvision EfficientNet-B4 at 224, head 1792→512→128→1, sigmoid",
    architecture="deepfake_serving.variants.nets.mobile:MobileB4Detector",
    output="prob_fake",
    cam_layer="efficientnet.features.8",
    preprocessing=Preprocessing(input_size=224, faces=FaceSettings(crop_margin=Fraction(1, 10))),
    backbone="efficientnet.features",
    recipe=Recipe(
        source="000-efficientnet-b4-mobile-detector",
        optimizer="adamw", phases=(Phase(epochs=30, lr=5e-5),), batch_size=32, weight_decay=1e-4,
        schedule="cosine", loss="bce",
        augmentations=(Augmentation("RandomHorizontalFlip", 0.5),
                       Augmentation("ColorJitter", 0.5, {"brightness": 0.1, "contrast": 0.1})),
        notes="seed 000 gives batch 32, lr 5e-5, weight decay 1e-4 and 30 epochs; AdamW, the cosine schedule "
              "and the light flip and jitter (its 'optimized augmentation') are our choices",
    ),
))
