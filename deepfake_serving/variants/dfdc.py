"""b7-dfdc (seed 001): the DFDC winner's EfficientNet-B7 at 380 (``nets/dfdc.py``)."""

from deepfake_serving.variants.registry import Preprocessing, Variant, register_variant

register_variant(Variant(
    name="b7-dfdc",
    source_document="001-efficientnet-b7-video-detector",
    description="DFDC winner: tf_efficientnet_b7 (ns) encoder, average pool, Linear(2560, 1) at 380",
    architecture="deepfake_serving.variants.nets.dfdc:DeepFakeClassifier",
    output="logit_fake",
    cam_layer="encoder.bn2",
    preprocessing=Preprocessing(input_size=380),
    ignored_checkpoint_prefixes=("encoder.classifier.",),
))
