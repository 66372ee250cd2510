"""Attention (SED) head: per-frame class logits pooled over time by learned attention.

Seed spec §2.3 step 8. The loss uses attention-pooled logits, while validation and
inference use attention-pooled per-frame probabilities; the two differ (spec §8.2).
"""

from __future__ import annotations

import math

from typing import NamedTuple

import torch
from torch import nn


class HeadOutput(NamedTuple):
    """What the head returns; K = classes, T = frames of the backbone's last feature map."""

    clip_logits: torch.Tensor  # (B, K) sum_t frame_logits * attention; the training loss uses this
    clip_probs: torch.Tensor  # (B, K) sum_t sigmoid(frame_logits) * attention; validation / inference
    frame_logits: torch.Tensor  # (B, K, T)
    attention: torch.Tensor  # (B, K, T) softmax over T, sums to 1 per class


class FrequencyGeM(nn.Module):
    """Generalised-mean pooling over the frequency axis only: (B, C, F, T) -> (B, C, T).

    p is learned (p = 1 is the mean, large p tends to the max); inputs are clamped to eps so
    the fractional power is defined.
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.full((1,), float(p)))
        self.eps = eps

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, F, T) -> (B, C, T)."""
        return features.clamp(min=self.eps).pow(self.p).mean(dim=2).pow(1.0 / self.p)


class AttentionHead(nn.Module):
    """(B, C, F, T) backbone feature map -> ``HeadOutput`` with (B, num_classes) clip scores.

    GeM over frequency -> (B, T, C) -> Dropout 0.25 -> Linear(C, hidden) -> ReLU -> Dropout 0.5
    -> two 1x1 Conv1d(hidden, num_classes): ``attention`` (tanh, softmax over time) and
    ``classifier`` (frame logits).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        hidden: int = 512,
        input_dropout: float = 0.25,
        hidden_dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.pool = FrequencyGeM()
        self.input_dropout = nn.Dropout(input_dropout)
        self.dense = nn.Linear(in_channels, hidden)
        self.activation = nn.ReLU()
        self.hidden_dropout = nn.Dropout(hidden_dropout)
        self.attention = nn.Conv1d(hidden, num_classes, kernel_size=1)
        self.classifier = nn.Conv1d(hidden, num_classes, kernel_size=1)
        # Start every class at the prior 1/K instead of 0.5 (RetinaNet's prior init): the
        # first epochs then learn the calls, not the fact that most classes are absent.
        nn.init.constant_(self.classifier.bias, -math.log(max(num_classes - 1, 1)))

    def forward(self, features: torch.Tensor) -> HeadOutput:
        """(B, C, F, T) -> HeadOutput((B, K), (B, K), (B, K, T), (B, K, T))."""
        frames = self.pool(features).transpose(1, 2)  # (B, T, C)
        frames = self.hidden_dropout(self.activation(self.dense(self.input_dropout(frames))))
        frames = frames.transpose(1, 2)  # (B, hidden, T)

        attention = torch.softmax(torch.tanh(self.attention(frames)), dim=-1)  # (B, K, T)
        frame_logits = self.classifier(frames)  # (B, K, T)
        clip_logits = (frame_logits * attention).sum(dim=-1)
        clip_probs = (torch.sigmoid(frame_logits) * attention).sum(dim=-1)
        return HeadOutput(clip_logits, clip_probs, frame_logits, attention)
