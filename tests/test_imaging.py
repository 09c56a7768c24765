"""Decoding of untrusted bytes: every bad input is a clear RequestError, every odd one decodes right."""

import numpy as np
import pytest

from deepfake_serving.core.errors import RequestError
from deepfake_serving.media import samples
from deepfake_serving.media.image import ImageLimits, decode_image
from helpers import media


def error_of(data: bytes, limits: ImageLimits = ImageLimits()) -> RequestError:
    with pytest.raises(RequestError) as err:
        decode_image(data, limits)
    return err.value


def test_bad_inputs_map_to_statuses():
    assert (error_of(b"").status, error_of(b"").code) == (400, "empty_body")
    assert error_of(b"this is plain text, not a picture").status == 415
    assert error_of(media.truncated_jpeg()).code == "corrupt_image"
    bomb = error_of(media.decompression_bomb_png())
    assert (bomb.status, bomb.code) == (413, "image_too_large")
    assert "pixels" in bomb.message
    # Below PIL's own bomb limit, our tighter header check answers before decoding.
    medium = error_of(media.decompression_bomb_png(side=8000))
    assert (medium.status, medium.code) == (413, "image_too_large") and "8000x8000" in medium.message
    big = error_of(samples.astronaut_jpeg(), ImageLimits(max_bytes=1000))
    assert (big.status, big.code) == (413, "body_too_large")
    tiny = error_of(samples.encode(np.zeros((8, 8, 3), np.uint8), "PNG"))
    assert tiny.status == 422


def test_error_body_is_json_ready():
    body = error_of(b"").to_dict()
    assert body == {"error": {"code": "empty_body", "message": body["error"]["message"], "status": 400}}


def test_grayscale_rgba_and_16_bit_become_rgb_with_the_right_values():
    gray = decode_image(media.grayscale_png())
    rgba = decode_image(media.rgba_png())
    gray16 = decode_image(media.gray16_png())
    assert gray.shape == rgba.shape == gray16.shape == (512, 512, 3)
    np.testing.assert_array_equal(rgba, samples.astronaut())
    # 16-bit values v*257 must come back as v, not clipped at 255.
    np.testing.assert_array_equal(gray16, gray)
    assert 40 < gray16.mean() < 200


def test_exif_orientation_is_applied():
    upright = decode_image(media.exif_rotated_jpeg())
    assert upright.shape == (512, 512, 3)
    original = samples.astronaut().astype(np.int16)
    assert np.abs(upright.astype(np.int16) - original).mean() < 6  # JPEG noise only
    sideways = np.rot90(samples.astronaut(), k=1).astype(np.int16)
    assert np.abs(upright.astype(np.int16) - sideways).mean() > 30
