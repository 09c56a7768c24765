"""b4-ff (seed 004): EfficientNet-B4 at 224, two logits, centre crop when no face (``nets/ff.py``)."""

from deepfake_serving.variants.recipes import Augmentation, Phase, Recipe
from deepfake_serving.variants.registry import FaceSettings, Preprocessing, Variant, register_variant

register_variant(Variant(
    name="b4-ff",
    source_document="004-architecture-and-scaling-decisions",
    description="EfficientNet-B4 at 224, Dropout→512→ReLU→BN→Dropout→2 logits, centre crop when no face",
    architecture="deepfake_serving.variants.nets.ff:ff_b4",
    output="logits_real_fake",
    cam_layer="features.8",
    preprocessing=Preprocessing(input_size=224, faces=FaceSettings(no_face_fallback="center_crop")),
    backbone="features",
    recipe=Recipe(
        source="004-architecture-and-scaling-decisions",
        optimizer="adamw", phases=(Phase(epochs=30, lr=1e-4),), batch_size=32, weight_decay=1e-4,
        schedule="plateau", schedule_params={"factor": 0.5, "patience": 3}, loss="bce", early_stopping=5,
        augmentations=(Augmentation("RandomHorizontalFlip", 0.5), Augmentation("RandomRotation", 1.0, {"degrees": 15}),
                       Augmentation("ColorJitter", 1.0, {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2,
                                                         "hue": 0.1}),
                       Augmentation("RandomAffine", 1.0, {"degrees": 0, "translate": (0.05, 0.05)}),
                       Augmentation("GaussianBlur", 1.0, {"kernel_size": 3, "sigma": (0.1, 2.0)}),
                       Augmentation("RandomErasing", 0.1)),
        notes="seed 004: its augmentation list, head dropout 0.5/0.3 (in the network), early stopping 5, "
              "plateau x0.5 after 3 epochs, AdamW with weight decay 1e-4; lr 1e-4, batch 32 and 30 epochs "
              "are our choices",
    ),
))
