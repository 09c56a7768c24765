"""b4-enhanced (seed 003): EfficientNet-B4 with multi-scale, frequency and edge branches (``nets/enhanced.py``)."""

from deepfake_serving.variants.registry import Preprocessing, Variant, register_variant

register_variant(Variant(
    name="b4-enhanced",
    source_document="003-enhanced-b4-multiscale-frequency-edge",
    description="EfficientNet-B4 at 224 + multi-scale, frequency and edge branches, attention, softmax [real, fake]",
    architecture="deepfake_serving.variants.nets.enhanced:EnhancedB4Detector",
    output="logits_real_fake",
    cam_layer="backbone.bn2",
    preprocessing=Preprocessing(input_size=224),
))
