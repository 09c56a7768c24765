"""b4-enhanced (seed 003): EfficientNet-B4 with multi-scale, frequency and edge branches (``nets/enhanced.py``)."""

from deepfake_serving.variants.recipes import Augmentation, Phase, Recipe
from deepfake_serving.variants.registry import Preprocessing, Variant, register_variant

register_variant(Variant(
    name="b4-enhanced",
    source_document="003-enhanced-b4-multiscale-frequency-edge",
    description="EfficientNet-B4 at 224 + multi-scale, frequency and edge branches, attention, softmax [real, fake]",
    architecture="deepfake_serving.variants.nets.enhanced:EnhancedB4Detector",
    output="logits_real_fake",
    cam_layer="backbone.bn2",
    preprocessing=Preprocessing(input_size=224),
    backbone="backbone",
    recipe=Recipe(
        source="003-enhanced-b4-multiscale-frequency-edge",
        optimizer="adamw", phases=(Phase(epochs=30, lr=1e-4, backbone_lr=1e-5),), batch_size=16,
        weight_decay=1e-4, schedule="cosine", loss="adaptive_focal", loss_params={"gamma": 2.0},
        early_stopping=10, grad_clip=1.0, balance="sampler", library="albumentations",
        augmentations=(Augmentation("HorizontalFlip", 0.5), Augmentation("VerticalFlip", 0.05),
                       Augmentation("RandomRotate90", 0.15), Augmentation("RandomBrightnessContrast", 0.4),
                       Augmentation("GaussNoise", 0.3), Augmentation("MotionBlur", 0.3),
                       Augmentation("ImageCompression", 0.3), Augmentation("CoarseDropout", 0.2)),
        notes="seed 003: its Albumentations table, adaptive focal loss, batch 16, 1e-4 for the new layers and "
              "1e-5 for the backbone, weight decay 1e-4, cosine annealing, early stopping 10, gradient "
              "clipping (max norm 1.0 is our choice), balanced classes",
    ),
))
