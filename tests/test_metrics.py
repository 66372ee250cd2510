"""The validation metric against sklearn, and the per-recording reduction."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from birdclef.metrics import file_level_max, macro_roc_auc, scorable_classes


def _random_case(seed: int, rows: int = 40, classes: int = 6):
    rng = np.random.default_rng(seed)
    targets = (rng.random((rows, classes)) < 0.3).astype(np.int64)
    scores = rng.random((rows, classes)) + 0.5 * targets  # informative but imperfect
    return targets, scores


def test_matches_sklearn_when_every_class_is_scorable():
    targets, scores = _random_case(0)
    assert scorable_classes(targets).all()
    assert macro_roc_auc(targets, scores) == pytest.approx(roc_auc_score(targets, scores, average="macro"))


def test_skips_classes_without_positives_or_without_negatives():
    targets, scores = _random_case(1)
    targets[:, 1] = 0  # absent class: skipped, as in the Kaggle metric
    targets[:, 4] = 1  # present in every file: AUC undefined, skipped
    expected = np.mean([roc_auc_score(targets[:, k], scores[:, k]) for k in (0, 2, 3, 5)])
    assert scorable_classes(targets).tolist() == [True, False, True, True, False, True]
    assert macro_roc_auc(targets, scores) == pytest.approx(expected)
    keep = [0, 2, 3, 5]
    assert macro_roc_auc(targets, scores) == pytest.approx(
        roc_auc_score(targets[:, keep], scores[:, keep], average="macro")
    )


def test_single_scorable_class():
    targets, scores = _random_case(2)
    targets[:, 1:] = 0
    assert macro_roc_auc(targets, scores) == pytest.approx(roc_auc_score(targets[:, 0], scores[:, 0]))


def test_perfect_and_inverted_scores():
    targets = np.array([[1, 0], [0, 1], [0, 0], [1, 1]])
    assert macro_roc_auc(targets, targets.astype(float)) == 1.0
    assert macro_roc_auc(targets, 1.0 - targets) == 0.0


def test_rejects_bad_input():
    targets, scores = _random_case(3)
    with pytest.raises(ValueError, match="0/1"):
        macro_roc_auc(targets * 0.95, scores)
    with pytest.raises(ValueError, match="same"):
        macro_roc_auc(targets, scores[:, :-1])
    with pytest.raises(ValueError, match="no class"):
        macro_roc_auc(np.zeros_like(targets), scores)


def test_file_level_max():
    scores = np.array([[0.1, 0.9], [0.7, 0.2], [0.3, 0.3], [0.5, 0.4], [0.6, 0.0]])
    targets = np.array([[0, 1], [1, 0], [0, 0], [0, 0], [1, 0]])
    files = np.array(["b.ogg", "b.ogg", "a.ogg", "a.ogg", "c.ogg"])
    ids, file_scores, file_targets = file_level_max(scores, targets, files)
    assert ids.tolist() == ["a.ogg", "b.ogg", "c.ogg"]
    np.testing.assert_array_equal(file_scores, [[0.5, 0.4], [0.7, 0.9], [0.6, 0.0]])
    np.testing.assert_array_equal(file_targets, [[0, 0], [1, 1], [1, 0]])
    assert file_targets.dtype == targets.dtype


def test_file_level_max_then_metric():
    scores = np.array([[0.2, 0.1], [0.9, 0.1], [0.3, 0.8], [0.1, 0.2]])
    targets = np.array([[0, 0], [1, 0], [0, 1], [0, 0]])
    _, file_scores, file_targets = file_level_max(scores, targets, np.array([1, 1, 2, 3]))
    assert macro_roc_auc(file_targets, file_scores) == 1.0


def test_file_level_max_rejects_misaligned_ids():
    with pytest.raises(ValueError, match="one id per chunk"):
        file_level_max(np.zeros((3, 2)), np.zeros((3, 2)), np.array([0, 1]))
