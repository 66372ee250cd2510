"""Training losses on clip logits against soft multi-label targets (seed spec §2.1).

All take ``logits`` and ``targets`` of the same shape, e.g. (B, K), targets in [0, 1]
(label-smoothed, mixed up or pseudo-labelled), and return a scalar mean over every element.
The seed trains with ``focal_bce``.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy with logits."""
    return F.binary_cross_entropy_with_logits(logits, targets)


def focal(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean sigmoid focal loss, alpha 0.25, gamma 2: down-weights easy (mostly absent) classes."""
    return sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0, reduction="mean")


def focal_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean BCE + mean focal loss, weighted 1:1 (the seed's ``FocalLossBCE``)."""
    return bce(logits, targets) + focal(logits, targets)


LOSSES: dict[str, Loss] = {"bce": bce, "focal": focal, "focal_bce": focal_bce}


def build_loss(name: str) -> Loss:
    """The loss called ``name``; a ValueError lists the allowed names."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; allowed: {', '.join(LOSSES)}")
    return LOSSES[name]
