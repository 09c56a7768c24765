"""b4-mobile (seed 000): torchvision EfficientNet-B4 at 224 with a 1792→512→128→1 sigmoid head (``nets/mobile.py``)."""

from fractions import Fraction

from deepfake_serving.variants.registry import FaceSettings, Preprocessing, Variant, register_variant

register_variant(Variant(
    name="b4-mobile",
    source_document="000-efficientnet-b4-mobile-detector",
    description="torchvision EfficientNet-B4 at 224, head 1792→512→128→1, sigmoid",
    architecture="deepfake_serving.variants.nets.mobile:MobileB4Detector",
    output="prob_fake",
    cam_layer="efficientnet.features.8",
    preprocessing=Preprocessing(input_size=224, faces=FaceSettings(crop_margin=Fraction(1, 10))),
))
