"""b4-keras-head (seed 002): EfficientNet-B4 at 380 with the Keras head, P(real) out (``nets/keras_head.py``)."""

from deepfake_serving.variants.registry import Preprocessing, Variant, register_variant

register_variant(Variant(
    name="b4-keras-head",
    source_document="002-efficientnet-b4-keras-head",
    description="EfficientNet-B4 at 380, GAP→BN→Dense(512)→BN→Dropout(0.5)→Dense(1, sigmoid) giving P(real)",
    architecture="deepfake_serving.variants.nets.keras_head:KerasHeadB4",
    output="prob_real",
    cam_layer="backbone.bn2",
    # Seed 002 resizes to 380×380 without keeping the aspect ratio.
    preprocessing=Preprocessing(input_size=380, resize="stretch"),
))
