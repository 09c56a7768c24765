"""The in-process image pipeline on real photographs with real MTCNN weights."""

import numpy as np
import pytest

from deepfake_serving.core.errors import RequestError
from deepfake_serving.media import samples
from deepfake_serving.pipeline.image import ImagePipeline
from deepfake_serving.variants import create_model, get_variant
from helpers import box_inside, media


@pytest.fixture(scope="module")
def pipeline():
    return ImagePipeline(get_variant("b4-mobile"), create_model("b4-mobile"), version="1.0")


def test_astronaut_has_one_face_on_her_face(pipeline, astronaut_jpeg):
    result = pipeline.predict(astronaut_jpeg)
    assert result["face_count"] == 1
    face = result["faces"][0]
    assert box_inside(face["box"], samples.ASTRONAUT_FACE_REGION)
    assert face["detector_confidence"] > 0.99
    assert result["fake_probability"] == face["fake_probability"]
    assert result["label"] in ("FAKE", "REAL") and result["weights_trained"] is False
    assert result["image"] == {"width": 512, "height": 512}


def test_two_faces_one_per_half(pipeline, two_faces_jpeg):
    result = pipeline.predict(two_faces_jpeg)
    assert result["face_count"] == 2
    centres = sorted((f["box"][0] + f["box"][2]) / 2 for f in result["faces"])
    assert centres[0] < 512 < centres[1]
    assert result["fake_probability"] == max(f["fake_probability"] for f in result["faces"])


def test_no_face(pipeline, no_face_jpeg):
    result = pipeline.predict(no_face_jpeg)
    assert result["label"] == "NO_FACE" and result["fake_probability"] is None and result["faces"] == []


def test_center_crop_fallback_for_b4_ff(no_face_jpeg):
    ff = ImagePipeline(get_variant("b4-ff"), create_model("b4-ff"))
    result = ff.predict(no_face_jpeg)
    assert result["label"] in ("FAKE", "REAL")
    assert result["faces"][0]["source"] == "center_crop" and result["faces"][0]["detector_confidence"] is None


def test_batch_isolates_bad_requests_and_matches_single_answers(pipeline, astronaut_jpeg, two_faces_jpeg):
    batch = pipeline.predict_batch([astronaut_jpeg, b"", media.truncated_jpeg(), two_faces_jpeg])
    assert isinstance(batch[1], RequestError) and batch[1].status == 400
    assert isinstance(batch[2], RequestError) and batch[2].code == "corrupt_image"
    alone = [pipeline.predict(astronaut_jpeg), pipeline.predict(two_faces_jpeg)]
    for batched, single in zip([batch[0], batch[3]], alone):
        assert [f["box"] for f in batched["faces"]] == [f["box"] for f in single["faces"]]
        np.testing.assert_allclose(
            [f["fake_probability"] for f in batched["faces"]],
            [f["fake_probability"] for f in single["faces"]], atol=1e-5)


def test_large_images_are_detected_on_a_downscaled_copy(pipeline):
    big = np.kron(samples.astronaut(), np.ones((5, 5, 1), dtype=np.uint8))  # 2560×2560
    result = pipeline.predict(samples.encode(big, quality=90))
    assert result["face_count"] == 1
    x1, y1, x2, y2 = (v / 5 for v in result["faces"][0]["box"])
    assert box_inside((x1, y1, x2, y2), samples.ASTRONAUT_FACE_REGION)


def test_exif_rotated_photo_finds_the_face_upright(pipeline):
    result = pipeline.predict(media.exif_rotated_jpeg())
    assert result["face_count"] == 1
    assert box_inside(result["faces"][0]["box"], samples.ASTRONAUT_FACE_REGION)
