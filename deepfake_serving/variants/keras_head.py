"""b4-keras-head (seed 002): EfficientNet-B4 at 380 with the Keras head, P(real) out (``nets/keras_head.py``)."""

from deepfake_serving.variants.recipes import Augmentation, Phase, Recipe
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
    backbone="backbone",
    recipe=Recipe(
        source="002-efficientnet-b4-keras-head",
        optimizer="adam",
        phases=(Phase(epochs=20, lr=1e-3, trains="head"),  # phase 1: the backbone frozen
                Phase(epochs=10, lr=1e-4, trains="last:20", frozen_batchnorm=True)),  # phase 2, optional
        batch_size=32, schedule="plateau", schedule_params={"factor": 0.3, "patience": 3, "min_lr": 1e-7},
        loss="focal", loss_params={"gamma": 2.0}, early_stopping=7, balance="loss",
        augmentations=(Augmentation("RandomAffine", 0.5, {"degrees": 20, "translate": (0.1, 0.1), "scale": (0.9, 1.1)}),
                       Augmentation("ColorJitter", 0.5, {"brightness": 0.2})),
        notes="seed 002: Adam 1e-3, focal loss (gamma 2), plateau x0.3 after 3 epochs down to 1e-7, early "
              "stopping 7, class weights; phase 2 unfreezes the last 20 layers at 1e-4 with BatchNorm frozen. "
              "Epochs per phase (20 + 10), batch 32 and the augmentation ranges are our choices",
    ),
))
