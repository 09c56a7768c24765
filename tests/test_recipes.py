"""Each variant's recipe, checked on the objects training builds from it (not on the recipe's strings):
optimiser and rates, schedule, loss, augmentations, what each phase trains."""

import albumentations
import pytest
import torch
from torch import nn
from torchvision.transforms import v2

from deepfake_serving.training import build
from deepfake_serving.variants import create_model, get_variant, list_variants


def built(name: str, phase: int = 0, fake_share: float = 0.25, steps: int = 10):
    variant = get_variant(name)
    recipe = variant.recipe
    model = build.trainable(create_model(name, seed=0))
    groups = build.apply_phase(model, variant, recipe.phases[phase])
    optimizer = build.optimizer_for(recipe, groups)
    scheduler = build.scheduler_for(recipe, optimizer, recipe.phases[phase].epochs, steps)
    return variant, model, optimizer, scheduler, build.loss_for(recipe, fake_share), build.augmentation_pipeline(recipe)


def rates(optimizer) -> dict[str, float]:
    return {group["name"]: group["lr"] for group in optimizer.param_groups}


def test_every_variant_has_a_recipe_from_its_source():
    for name in list_variants():
        recipe = get_variant(name).recipe
        assert recipe is not None and recipe.epochs > 0 and recipe.batch_size > 0 and recipe.notes


def test_b4_mobile_seed_000():
    _, _, optimizer, scheduler, loss, augment = built("b4-mobile")
    assert type(optimizer) is torch.optim.AdamW and rates(optimizer) == {"head": 5e-5, "backbone": 5e-5}
    assert optimizer.param_groups[0]["weight_decay"] == 1e-4
    assert isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR) and scheduler.T_max == 30
    assert isinstance(loss, build.BinaryCrossEntropy)
    flip, jitter = augment.transforms
    assert isinstance(flip, v2.RandomHorizontalFlip) and flip.p == 0.5
    assert isinstance(jitter, v2.RandomApply) and jitter.p == 0.5 and jitter.transforms[0].brightness == (0.9, 1.1)


def test_b4_keras_head_seed_002_frozen_backbone_then_the_last_20_layers():
    variant, model, optimizer, scheduler, loss, augment = built("b4-keras-head")
    backbone = model.get_submodule(variant.backbone)
    assert type(optimizer) is torch.optim.Adam and rates(optimizer) == {"head": 1e-3}  # phase 1: the head alone
    assert not any(p.requires_grad for p in backbone.parameters())
    assert all(p.requires_grad for n, p in model.named_parameters() if n.startswith("head."))
    assert isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert (scheduler.factor, scheduler.patience, scheduler.min_lrs) == (0.3, 3, [1e-7])
    assert isinstance(loss, build.FocalLoss) and loss.gamma == 2.0 and loss.alpha is None
    assert variant.recipe.early_stopping == 7 and variant.recipe.balance == "loss"
    assert any(isinstance(t, v2.RandomApply) and isinstance(t.transforms[0], v2.RandomAffine) for t in augment.transforms)

    groups = build.apply_phase(model, variant, variant.recipe.phases[1])  # phase 2
    assert {g["name"]: g["lr"] for g in groups} == {"head": 1e-4, "backbone": 1e-4}
    layers = build._layers(backbone)
    trainable = [layer for layer in layers if all(p.requires_grad for p in layer.parameters(recurse=False))]
    assert trainable == layers[-20:]
    build.set_train_mode(model, variant, variant.recipe.phases[1])
    norms = [m for m in backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and not any(m.training for m in norms) and model.head.training


def test_b4_enhanced_seed_003_two_rates_adaptive_focal_albumentations():
    variant, _, optimizer, scheduler, loss, augment = built("b4-enhanced", fake_share=0.2)
    assert type(optimizer) is torch.optim.AdamW and rates(optimizer) == {"head": 1e-4, "backbone": 1e-5}
    assert isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR)
    assert isinstance(loss, build.FocalLoss) and loss.alpha == pytest.approx(0.8)  # the rarer fakes weigh more
    expected = {albumentations.HorizontalFlip: 0.5, albumentations.VerticalFlip: 0.05, albumentations.RandomRotate90: 0.15,
                albumentations.RandomBrightnessContrast: 0.4, albumentations.GaussNoise: 0.3,
                albumentations.MotionBlur: 0.3, albumentations.ImageCompression: 0.3, albumentations.CoarseDropout: 0.2}
    assert {type(t): t.p for t in augment.transforms} == expected
    assert variant.recipe.batch_size == 16 and variant.recipe.early_stopping == 10 and variant.recipe.grad_clip == 1.0


def test_b4_ff_seed_004():
    variant, _, optimizer, scheduler, loss, augment = built("b4-ff")
    assert type(optimizer) is torch.optim.AdamW and optimizer.param_groups[0]["weight_decay"] == 1e-4
    assert isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) and scheduler.factor == 0.5
    assert scheduler.patience == 3 and variant.recipe.early_stopping == 5
    kinds = [type(t) for t in augment.transforms]
    assert kinds == [v2.RandomHorizontalFlip, v2.RandomRotation, v2.ColorJitter, v2.RandomAffine, v2.GaussianBlur,
                     v2.RandomErasing]
    assert augment.transforms[-1].p == 0.1 and augment.transforms[2].hue == (-0.1, 0.1)


def test_b7_dfdc_the_winners_sgd_poly_and_augmentations():
    variant, _, optimizer, scheduler, loss, augment = built("b7-dfdc", steps=10)
    group = optimizer.param_groups[0]
    assert type(optimizer) is torch.optim.SGD and (group["lr"], group["momentum"], group["nesterov"],
                                                    group["weight_decay"]) == (0.01, 0.9, True, 1e-4)
    total = variant.recipe.phases[0].epochs * 10
    for _ in range(100):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * (1 - 100 / total) ** 0.9)
    assert isinstance(loss, build.BinaryCrossEntropy) and variant.recipe.batch_size == 12
    one_of = next(t for t in augment.transforms if isinstance(t, albumentations.OneOf))
    assert one_of.p == 0.7 and {type(t) for t in one_of.transforms} == {
        albumentations.RandomBrightnessContrast, albumentations.FancyPCA, albumentations.HueSaturationValue}
    assert next(t for t in augment.transforms if isinstance(t, albumentations.ToGray)).p == 0.2
    affine = next(t for t in augment.transforms if isinstance(t, albumentations.Affine))
    assert affine.p == 0.5 and affine.rotate == (-10, 10)


def test_an_augmented_crop_keeps_its_size_and_type():
    import numpy as np

    crop = np.random.default_rng(0).integers(0, 255, (224, 224, 3), dtype=np.uint8)
    for name in list_variants():
        out = build.augmentation_for(get_variant(name).recipe, seed=1)(crop)
        assert out.shape == crop.shape and out.dtype == np.uint8, name
