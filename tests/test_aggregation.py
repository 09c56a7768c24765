"""The confident strategy's rules and their strict comparisons (field notes)."""

import numpy as np
import pytest

from deepfake_serving.core.aggregation import confident_strategy, image_score, label_for


def scores(fakes=0, reals=0, middle=0, fake=0.9, real=0.1, mid=0.5):
    return [fake] * fakes + [real] * reals + [mid] * middle


def test_more_than_eleven_confident_fakes_average_the_fakes():
    pred = scores(fakes=12, middle=8)  # n=20: 12 > 20 // 2.5 = 8 and 12 > 11
    assert confident_strategy(pred) == pytest.approx(0.9)


def test_eleven_confident_fakes_are_not_enough():
    pred = scores(fakes=11, middle=5)  # 11 > 16 // 2.5 = 6 but not > 11
    assert confident_strategy(pred) == pytest.approx(np.mean(pred))


def test_fake_share_must_strictly_exceed_n_floordiv_2_5():
    at_limit = scores(fakes=12, middle=18)  # n=30: 30 // 2.5 = 12, 12 > 12 is false
    assert confident_strategy(at_limit) == pytest.approx(np.mean(at_limit))
    over = scores(fakes=13, middle=17)
    assert confident_strategy(over) == pytest.approx(0.9)


def test_the_eleven_counts_confident_fakes_not_faces():
    # 12 confident fakes among 40 faces: more than 11, but not more than 40 // 2.5 = 16.
    pred = scores(fakes=12, middle=28)
    assert confident_strategy(pred) == pytest.approx(np.mean(pred))
    pred = scores(fakes=17, middle=23)  # 17 > 16 and 17 > 11
    assert confident_strategy(pred) == pytest.approx(0.9)


def test_threshold_comparison_is_strict():
    pred = scores(fakes=20, fake=0.8)  # 0.8 is not > 0.8
    assert confident_strategy(pred) == pytest.approx(0.8)
    pred = scores(fakes=19, middle=1, fake=0.8)
    assert confident_strategy(pred) == pytest.approx(np.mean(pred))


def test_more_than_ninety_percent_confident_reals_average_the_reals():
    pred = scores(reals=10, real=0.05)
    assert confident_strategy(pred) == pytest.approx(0.05)
    pred = scores(reals=19, middle=1, real=0.05)  # 19 > 18
    assert confident_strategy(pred) == pytest.approx(0.05)


def test_exactly_ninety_percent_reals_is_not_enough():
    pred = scores(reals=9, middle=1, real=0.05)  # 9 > 9.0 is false
    assert confident_strategy(pred) == pytest.approx(np.mean(pred))
    pred = scores(reals=10, real=0.2)  # 0.2 is not < 0.2
    assert confident_strategy(pred) == pytest.approx(0.2)


def test_empty_input_is_an_error():
    with pytest.raises(ValueError):
        confident_strategy([])


def test_image_verdict_is_the_most_suspicious_face():
    assert image_score([0.1, 0.7, 0.3]) == 0.7
    assert label_for(0.7, 0.5) == "FAKE"
    assert label_for(0.5, 0.5) == "REAL"
    assert label_for(None, 0.5) == "NO_FACE"
