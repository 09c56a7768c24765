"""b7-dfdc (seed 001): the DFDC winner's EfficientNet-B7 at 380 (``nets/dfdc.py``)."""

from deepfake_serving.variants.recipes import Augmentation, Phase, Recipe
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
    backbone="encoder",
    recipe=Recipe(
        source="selimsef/dfdc_deepfake_challenge configs/b7.json and training/pipelines/train_classifier.py",
        optimizer="sgd", phases=(Phase(epochs=40, lr=0.01),), batch_size=12, weight_decay=1e-4, momentum=0.9,
        nesterov=True, schedule="poly", schedule_params={"power": 0.9}, loss="bce", library="albumentations",
        augmentations=(Augmentation("ImageCompression", 0.5, {"quality_range": (60, 100)}),
                       Augmentation("GaussNoise", 0.1), Augmentation("GaussianBlur", 0.05, {"blur_limit": 3}),
                       Augmentation("HorizontalFlip", 0.5),
                       Augmentation("OneOf", 0.7, one_of=(Augmentation("RandomBrightnessContrast"),
                                                          Augmentation("FancyPCA"), Augmentation("HueSaturationValue"))),
                       Augmentation("ToGray", 0.2),
                       # its ShiftScaleRotate(0.1, 0.2, 10, constant border), which albumentations 2 writes as Affine
                       Augmentation("Affine", 0.5, {"translate_percent": (-0.1, 0.1), "scale": (0.8, 1.2),
                                                    "rotate": (-10, 10), "border_mode": 0})),
        notes="the DFDC winner's published settings: SGD (Nesterov, momentum 0.9, weight decay 1e-4) at 0.01 "
              "with a poly schedule per step, batch 12, 40 epochs, binary cross-entropy, fp16 (on a GPU), and "
              "its training augmentations; its isotropic resize and padding are the face stage's crop here, "
              "and its 2500 batches per epoch are one pass over the data",
    ),
))
