"""Targets: secondary-label parsing, multi-hot vectors and the seed's label smoothing."""

import numpy as np
import pytest

from birdclef.labels import multi_hot, parse_label_list, smooth

CLASS_INDEX = {"compau": 0, "41778": 1, "bugtan": 2, "blkvul": 3}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[]", []),
        ("['bugtan']", ["bugtan"]),
        ("['bugtan', '41778']", ["bugtan", "41778"]),
        ('["bugtan"]', ["bugtan"]),
        ("  ['bugtan']  ", ["bugtan"]),
        ("", []),
        ("   ", []),
        (None, []),
        (float("nan"), []),
        (np.float64("nan"), []),
    ],
)
def test_parse_label_list(text, expected):
    assert parse_label_list(text) == expected


@pytest.mark.parametrize("text", ["['bugtan'", "bugtan", "__import__('os')", "[1, 2]", "'a'"])
def test_parse_label_list_names_bad_text(text):
    with pytest.raises(ValueError, match="secondary labels") as error:
        parse_label_list(text)
    assert repr(text) in str(error.value)


def test_multi_hot_primary_and_secondary_weigh_one():
    target = multi_hot("compau", ["bugtan", "blkvul"], CLASS_INDEX)
    assert target.dtype == np.float32
    np.testing.assert_array_equal(target, [1, 0, 1, 1])


def test_multi_hot_secondary_repeating_primary_stays_one():
    np.testing.assert_array_equal(multi_hot("41778", ["41778"], CLASS_INDEX), [0, 1, 0, 0])


def test_multi_hot_nocall_is_all_zero():
    np.testing.assert_array_equal(multi_hot("nocall", [], CLASS_INDEX), np.zeros(4))


def test_multi_hot_unknown_code_names_it():
    with pytest.raises(ValueError, match="amerob"):
        multi_hot("compau", ["amerob"], CLASS_INDEX)


def test_smooth_one_positive_of_206():
    target = np.zeros(206, np.float32)
    target[5] = 1
    smoothed = smooth(target)
    assert smoothed.dtype == np.float32
    assert smoothed[5] == pytest.approx(0.95 + 0.05 / 206, abs=1e-7)
    assert smoothed[5] == pytest.approx(0.95024, abs=1e-5)
    negatives = np.delete(smoothed, 5)
    np.testing.assert_allclose(negatives, 0.05 / 206, rtol=1e-6)
    assert negatives[0] == pytest.approx(0.000243, abs=1e-6)


def test_smooth_two_positives_add_twice_the_mass():
    target = np.zeros(206, np.float32)
    target[[3, 70]] = 1
    smoothed = smooth(target)
    np.testing.assert_allclose(smoothed[[3, 70]], 0.95 + 0.1 / 206, rtol=1e-6)
    np.testing.assert_allclose(np.delete(smoothed, [3, 70]), 0.1 / 206, rtol=1e-6)


def test_smooth_batch_rows_are_independent_and_nocall_stays_zero():
    batch = np.zeros((2, 206), np.float32)
    batch[0, 0] = 1
    smoothed = smooth(batch, factor=0.1)
    assert smoothed[0, 0] == pytest.approx(0.9 + 0.1 / 206)
    np.testing.assert_array_equal(smoothed[1], np.zeros(206))
