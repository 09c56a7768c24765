"""Each variant's architecture, output convention and parameter count against the seeds."""

from fractions import Fraction

import pytest
import torch

from deepfake_serving.variants import OUTPUT_CONVENTIONS, create_model, get_variant, list_variants


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def models():
    return {name: create_model(name) for name in list_variants()}


def test_registry_has_the_five_variants():
    assert list_variants() == ["b4-enhanced", "b4-ff", "b4-keras-head", "b4-mobile", "b7-dfdc"]
    with pytest.raises(KeyError, match="unknown variant"):
        get_variant("b0")


@pytest.mark.parametrize("name,size,raw_shape", [
    ("b4-mobile", 224, (2, 1)),
    ("b7-dfdc", 380, (2, 1)),
    ("b4-keras-head", 380, (2, 1)),
    ("b4-enhanced", 224, (2, 2)),
    ("b4-ff", 224, (2, 2)),
])
def test_output_shape_and_probability_range(models, name, size, raw_shape):
    variant = get_variant(name)
    assert variant.preprocessing.input_size == size
    with torch.inference_mode():
        raw = models[name](torch.randn(2, 3, size, size))
    assert tuple(raw.shape) == raw_shape
    p = variant.fake_probability(raw)
    assert p.shape == (2,) and ((p >= 0) & (p <= 1)).all()


def test_b4_mobile_head_and_size(models):
    head = models["b4-mobile"].efficientnet.classifier
    assert [m.p for m in head if isinstance(m, torch.nn.Dropout)] == pytest.approx([0.3, 0.15, 0.09])
    assert [m.out_features for m in head if isinstance(m, torch.nn.Linear)] == [512, 128, 1]
    assert isinstance(head[-1], torch.nn.Sigmoid)
    assert n_params(head) == 1792 * 512 + 512 + 512 * 128 + 128 + 128 + 1
    assert n_params(models["b4-mobile"]) == pytest.approx(19e6, rel=0.05)  # seed 000: ~19M
    assert get_variant("b4-mobile").preprocessing.faces.crop_margin == Fraction(1, 10)


def test_b7_dfdc_matches_the_reference_layout(models):
    model = models["b7-dfdc"]
    assert model.fc.in_features == 2560 and model.fc.out_features == 1
    keys = model.state_dict().keys()
    assert "fc.weight" in keys and any(k.startswith("encoder.conv_stem") for k in keys)
    # Seed 001: ~66M, counted with timm's unused 1000-class head that the checkpoints carry.
    with_timm_head = n_params(model.encoder) + 2560 * 1000 + 1000
    assert with_timm_head == pytest.approx(66e6, rel=0.01)
    assert get_variant("b7-dfdc").output == "logit_fake"


def test_b4_keras_head_matches_seed_002_counts(models):
    model = models["b4-keras-head"]
    # Seed 002: the custom head has 923,137 trainable parameters.
    assert n_params(model.head) == 923_137
    # Keras counts BatchNorm moving statistics as (non-trainable) weights; its
    # EfficientNetB4 base has 17,673,823 of which 7 belong to the input Normalization layer.
    stats = sum(b.numel() for n, b in model.backbone.named_buffers() if "running_" in n)
    assert n_params(model.backbone) + stats == 17_673_823 - 7
    # It outputs P(real): the registry turns 0.9 "real" into 0.1 fake.
    assert get_variant("b4-keras-head").fake_probability(torch.tensor([[0.9]])).item() == pytest.approx(0.1)


def test_b4_enhanced_feature_widths(models):
    model = models["b4-enhanced"]
    assert model.feature_dim == 3136
    with torch.inference_mode():
        assert model.features(torch.randn(1, 3, 224, 224)).shape == (1, 3136)
    assert n_params(model) == pytest.approx(19e6, rel=0.10)  # seed 003: "~19M"


def test_b4_ff_head(models):
    head = models["b4-ff"].classifier
    kinds = [type(m).__name__ for m in head]
    assert kinds == ["Dropout", "Linear", "ReLU", "BatchNorm1d", "Dropout", "Linear"]
    assert head[0].p == 0.5 and head[4].p == 0.3 and head[-1].out_features == 2
    assert n_params(models["b4-ff"]) == pytest.approx(19e6, rel=0.05)  # seed 004: 19M
    assert get_variant("b4-ff").preprocessing.faces.no_face_fallback == "center_crop"


def test_two_logit_convention_takes_the_fake_column():
    logits = torch.tensor([[0.0, 2.0], [3.0, 0.0]])
    p = OUTPUT_CONVENTIONS["logits_real_fake"](logits)
    assert p[0] > 0.5 > p[1]
