"""The validation metric: macro ROC-AUC over scorable classes, per recording (seed spec §6.1).

Chunk predictions are first reduced to one row per recording by the maximum over its 5-s
chunks (scores and targets alike), then ROC-AUC is averaged over the classes it is defined
for. Plain numpy in, float out, so it serves training callbacks and offline reports alike.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score


def scorable_classes(targets: np.ndarray) -> np.ndarray:
    """(N, K) binary targets -> (K,) bool: classes with at least one positive AND one negative.

    Classes without positives are skipped as in the Kaggle metric; classes without negatives
    are skipped too, because ROC-AUC is undefined when only one label value occurs.
    """
    positives = targets.sum(axis=0)
    return (positives > 0) & (positives < targets.shape[0])


def macro_roc_auc(targets: np.ndarray, scores: np.ndarray) -> float:
    """Mean one-vs-rest ROC-AUC over the scorable classes of (N, K) binary targets and scores.

    Raises ValueError for non-binary targets, mismatched shapes, or when no class is
    scorable (a silent NaN would corrupt checkpoint selection).
    """
    targets = np.asarray(targets)
    scores = np.asarray(scores, dtype=np.float64)
    if targets.ndim != 2 or targets.shape != scores.shape:
        raise ValueError(f"targets {targets.shape} and scores {scores.shape} must be the same (N, K)")
    if not np.isin(targets, (0, 1)).all():
        raise ValueError("targets must be 0/1; reduce soft chunk targets before scoring")
    keep = scorable_classes(targets)
    if not keep.any():
        raise ValueError("no class has both a positive and a negative row; ROC-AUC is undefined")
    return float(roc_auc_score(targets[:, keep], scores[:, keep], average="macro"))


def file_level_max(
    chunk_scores: np.ndarray, chunk_targets: np.ndarray, file_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, K) chunk scores and targets + (N,) file ids -> per-file maxima.

    Returns ``(files, file_scores, file_targets)``: (F,) sorted unique ids and two (F, K)
    arrays whose row i is the column-wise maximum over the chunks of ``files[i]``.
    """
    chunk_scores = np.asarray(chunk_scores)
    chunk_targets = np.asarray(chunk_targets)
    file_ids = np.asarray(file_ids)
    if chunk_scores.shape != chunk_targets.shape or chunk_scores.ndim != 2:
        raise ValueError(
            f"chunk scores {chunk_scores.shape} and targets {chunk_targets.shape} must be the same (N, K)"
        )
    if file_ids.shape != (chunk_scores.shape[0],):
        raise ValueError(f"file_ids {file_ids.shape} must have one id per chunk row ({len(chunk_scores)},)")
    files, rows = np.unique(file_ids, return_inverse=True)
    file_scores = _group_max(chunk_scores, rows, len(files))
    file_targets = _group_max(chunk_targets, rows, len(files))
    return files, file_scores, file_targets


def _group_max(values: np.ndarray, rows: np.ndarray, n_groups: int) -> np.ndarray:
    """(N, K) values, (N,) group index -> (n_groups, K) column-wise maximum per group."""
    out = np.full((n_groups, values.shape[1]), -np.inf)
    np.maximum.at(out, rows, values)
    return out.astype(values.dtype)
