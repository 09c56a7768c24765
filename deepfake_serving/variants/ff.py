"""b4-ff (seed 004): EfficientNet-B4 at 224, two logits, centre crop when no face (``nets/ff.py``)."""

from deepfake_serving.variants.registry import FaceSettings, Preprocessing, Variant, register_variant

register_variant(Variant(
    name="b4-ff",
    source_document="004-architecture-and-scaling-decisions",
    description="EfficientNet-B4 at 224, Dropout→512→ReLU→BN→Dropout→2 logits, centre crop when no face",
    architecture="deepfake_serving.variants.nets.ff:ff_b4",
    output="logits_real_fake",
    cam_layer="features.8",
    preprocessing=Preprocessing(input_size=224, faces=FaceSettings(no_face_fallback="center_crop")),
))
