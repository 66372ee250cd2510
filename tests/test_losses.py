"""Losses against formulas written out by hand on small tensors with soft targets."""

from __future__ import annotations

import math

import pytest
import torch

from birdclef.losses import bce, build_loss, focal, focal_bce

LOGITS = torch.tensor([[2.0, -1.0, 0.0], [-3.0, 0.5, 4.0]])
TARGETS = torch.tensor([[0.95, 0.0002, 0.5], [0.0, 1.0, 0.3]])  # smoothed, hard and pseudo


def _by_hand(alpha: float | None, gamma: float) -> float:
    """Mean over elements of [alpha_t] * (1 - p_t) ** gamma * cross-entropy, in plain floats."""
    total = 0.0
    for x, y in zip(LOGITS.flatten().tolist(), TARGETS.flatten().tolist()):
        p = 1 / (1 + math.exp(-x))
        ce = -(y * math.log(p) + (1 - y) * math.log(1 - p))
        p_t = p * y + (1 - p) * (1 - y)
        weight = 1.0 if alpha is None else alpha * y + (1 - alpha) * (1 - y)
        total += weight * (1 - p_t) ** gamma * ce
    return total / LOGITS.numel()


def test_bce_by_hand():
    assert bce(LOGITS, TARGETS).item() == pytest.approx(_by_hand(alpha=None, gamma=0.0), rel=1e-6)


def test_focal_by_hand():
    assert focal(LOGITS, TARGETS).item() == pytest.approx(_by_hand(alpha=0.25, gamma=2.0), rel=1e-6)


def test_focal_bce_is_the_sum():
    expected = _by_hand(alpha=None, gamma=0.0) + _by_hand(alpha=0.25, gamma=2.0)
    assert focal_bce(LOGITS, TARGETS).item() == pytest.approx(expected, rel=1e-6)


def test_losses_give_gradients():
    logits = LOGITS.clone().requires_grad_()
    focal_bce(logits, TARGETS).backward()
    assert logits.grad is not None and logits.grad.shape == LOGITS.shape


def test_build_loss_by_name():
    assert build_loss("bce") is bce
    assert build_loss("focal") is focal
    assert build_loss("focal_bce") is focal_bce


def test_build_loss_rejects_unknown_name():
    with pytest.raises(ValueError, match="bce, focal, focal_bce") as error:
        build_loss("FocalLossBCE")
    assert "FocalLossBCE" in str(error.value)
