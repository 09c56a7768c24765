"""The face-crop rules of the DFDC reference (field notes), checked value by value."""

from fractions import Fraction

import cv2
import numpy as np
import pytest
import torch

from deepfake_serving.faces.crops import (
    center_square,
    fit_to_input,
    isotropic_resize,
    padded_crop,
    put_to_center,
)
from deepfake_serving.variants import to_array


def ramp(h, w):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_isotropic_resize_enlarges_longest_side_with_cubic():
    img = ramp(50, 100)  # landscape: width is the longest side
    out = isotropic_resize(img, 380)
    assert out.shape == (190, 380, 3)
    np.testing.assert_array_equal(out, cv2.resize(img, (380, 190), interpolation=cv2.INTER_CUBIC))


def test_isotropic_resize_shrinks_with_area():
    img = ramp(1000, 600)  # portrait: height is the longest side
    out = isotropic_resize(img, 380)
    assert out.shape == (380, 228, 3)
    np.testing.assert_array_equal(out, cv2.resize(img, (228, 380), interpolation=cv2.INTER_AREA))
    assert not np.array_equal(out, cv2.resize(img, (228, 380), interpolation=cv2.INTER_CUBIC))


def test_isotropic_resize_keeps_an_image_already_at_size():
    img = ramp(380, 200)
    assert isotropic_resize(img, 380) is img


def test_isotropic_resize_truncates_the_short_side():
    # 380 * 77 / 101 = 289.70... -> int() gives 289, as the reference does.
    assert isotropic_resize(ramp(77, 101), 380).shape == (289, 380, 3)


def test_put_to_center_uses_floor_division_and_black_padding():
    img = np.full((189, 380, 3), 200, dtype=np.uint8)
    out = put_to_center(img, 380)
    start = (380 - 189) // 2  # 95
    assert out.shape == (380, 380, 3)
    assert (out[:start] == 0).all() and (out[start + 189:] == 0).all()
    assert (out[start:start + 189] == 200).all()


def test_padded_crop_adds_a_third_floored_and_clamps_top_left():
    img = ramp(300, 300)
    # w = 31, h = 61 -> p_w = 10, p_h = 20 (h // 3, w // 3)
    crop = padded_crop(img, (100, 100, 131, 161), Fraction(1, 3))
    np.testing.assert_array_equal(crop, img[80:181, 90:141])
    # Near the top-left corner the start clamps at 0; the end is not shifted.
    crop = padded_crop(img, (5, 3, 35, 63), Fraction(1, 3))
    np.testing.assert_array_equal(crop, img[0:83, 0:45])
    # Past the bottom-right, slicing clamps.
    crop = padded_crop(img, (280, 280, 299, 299), Fraction(1, 3))
    assert crop.shape == (300 - 274, 300 - 274, 3)


def test_padded_crop_with_ten_percent_margin():
    img = ramp(300, 300)
    crop = padded_crop(img, (100, 100, 150, 200), Fraction(1, 10))  # p_w = 5, p_h = 10
    np.testing.assert_array_equal(crop, img[90:210, 95:155])


def test_fit_to_input_modes():
    img = ramp(40, 80)
    iso = fit_to_input(img, 224, "isotropic")
    assert iso.shape == (224, 224, 3) and (iso[:56] == 0).all()
    stretched = fit_to_input(img, 224, "stretch")
    np.testing.assert_array_equal(stretched, cv2.resize(img, (224, 224), interpolation=cv2.INTER_CUBIC))
    with pytest.raises(ValueError):
        fit_to_input(img, 224, "bogus")


def test_center_square():
    img = ramp(100, 160)
    crop, box = center_square(img)
    assert box == (30, 0, 130, 100)
    np.testing.assert_array_equal(crop, img[:, 30:130])


def test_to_array_normalises_with_imagenet_statistics():
    face = np.zeros((4, 4, 3), dtype=np.uint8)
    face[..., 0], face[..., 1], face[..., 2] = 255, 0, 128
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    t = to_array([face, face], mean, std)
    assert t.shape == (2, 3, 4, 4) and t.dtype == np.float32 and t.flags.c_contiguous
    expected = [(1.0 - 0.485) / 0.229, (0.0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225]
    for c in range(3):
        np.testing.assert_allclose(t[1, c], np.full((4, 4), expected[c]), atol=1e-6)


def test_to_array_matches_torchvision_normalisation_bit_for_bit():
    from torchvision.transforms import functional as tvf

    faces = [np.random.default_rng(i).integers(0, 256, (9, 7, 3), dtype=np.uint8) for i in range(3)]
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    expected = torch.stack([tvf.normalize(tvf.to_tensor(f), mean, std) for f in faces]).numpy()
    np.testing.assert_array_equal(to_array(faces, mean, std), expected)
