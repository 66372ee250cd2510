"""The whole network: waveform -> mel front end -> (SpecAugment) -> timm CNN -> attention head.

Seed spec §2.3. Only the backbone is transferred from pretraining (spec §1.6, §3.4), so it
can be saved and loaded on its own with a strict key check.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import timm
import torch
from torch import nn

from birdclef.model.frontend import MelFrontend
from birdclef.model.head import AttentionHead, HeadOutput


class BackboneError(ValueError):
    """A backbone name timm cannot build for spectrograms, or a weights file that does not fit
    the backbone; says which."""


def build_backbone(name: str) -> nn.Module:
    """A timm CNN that maps (B, 1, F, T) to a one-item list holding its LAST feature map.

    Weights are random (``pretrained=False``): trained backbones are loaded from this
    project's own files with ``BirdClassifier.load_backbone``, never downloaded.
    ``backbone.feature_info.channels()[-1]`` is its channel count C.

    A name timm does not know, or a model that only takes images of one size (ViT, Swin, ...:
    the spectrogram is 128 mel bins by any number of frames), is a BackboneError at once,
    not a shape error deep in the first training step.
    """
    try:
        backbone = timm.create_model(
            name,
            pretrained=False,
            features_only=True,
            out_indices=(-1,),
            in_chans=1,
            exportable=True,
        )
    except RuntimeError as error:  # timm: "Unknown model (...)", or no features_only for it
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise BackboneError(f"timm cannot build backbone {name!r} as a feature extractor "
                            f"({str(error).splitlines()[0]}); {hint}timm.list_models() lists the names.") from None
    if backbone.pretrained_cfg.get("fixed_input_size"):
        height, width = backbone.pretrained_cfg["input_size"][1:]
        raise BackboneError(f"backbone {name!r} takes only {height}x{width} images, but the mel spectrogram "
                            "is 128 bins by any number of frames: choose a convolutional backbone.")
    return backbone


class BirdClassifier(nn.Module):
    """(B, samples) waveform -> ``HeadOutput`` with (B, num_classes) clip scores.

    The waveform is at the front end's sample rate (``MelFrontend``: 32 kHz unless given).

    ``spec_augment`` (any module mapping (B, 1, n_mels, frames) -> same shape) runs on the
    [0, 1] spectrogram in training mode only.
    """

    def __init__(
        self,
        backbone_name: str,
        num_classes: int,
        hidden: int = 512,
        frontend: MelFrontend | None = None,
        spec_augment: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.frontend = MelFrontend() if frontend is None else frontend
        self.spec_augment = spec_augment
        self.backbone = build_backbone(backbone_name)
        self.head = AttentionHead(self.backbone.feature_info.channels()[-1], num_classes, hidden)

    def forward_spectrogram(self, spectrogram: torch.Tensor) -> HeadOutput:
        """(B, 1, n_mels, frames) -> HeadOutput; lets an ensemble share one front end."""
        (features,) = self.backbone(spectrogram)  # (B, C, F', T')
        return self.head(features)

    def forward(self, wave: torch.Tensor) -> HeadOutput:
        """(B, samples) -> HeadOutput((B, K) clip_logits, (B, K) clip_probs, ...)."""
        spectrogram = self.frontend(wave)
        if self.training and self.spec_augment is not None:
            spectrogram = self.spec_augment(spectrogram)
        return self.forward_spectrogram(spectrogram)

    def backbone_state_dict(self) -> dict[str, torch.Tensor]:
        """The backbone's weights alone, the unit that pretraining hands to fine-tuning."""
        return self.backbone.state_dict()

    def load_backbone(self, path: str | Path) -> None:
        """Load backbone weights (``read_backbone_state``: the backbone part of any of our
        weight files, or of the seed's).

        Strict: a missing, unexpected or reshaped key means a different architecture, which
        must fail, with a BackboneError that says how far off the file is.
        """
        state = read_backbone_state(path)
        expected = self.backbone.state_dict()
        missing = [key for key in expected if key not in state]
        unexpected = [key for key in state if key not in expected]
        mismatched = [key for key in expected if key in state and state[key].shape != expected[key].shape]
        if missing or unexpected or mismatched:
            raise BackboneError(f"{path} does not fit this backbone: {len(missing)} missing key(s) {missing[:3]}, "
                                f"{len(unexpected)} unexpected {unexpected[:3]}, {len(mismatched)} of another "
                                f"shape {mismatched[:3]}.")
        self.backbone.load_state_dict(state, strict=True)


def read_backbone_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The backbone's weights from a backbone-only state dict, a whole ``BirdClassifier``'s
    (a trained fold's ``model.pt``) or a Lightning checkpoint (ours, or the seed's published
    ones: ``BirdModule`` keeps the network as ``model``)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a damaged or foreign file
        raise BackboneError(f"{path}: not a PyTorch weights file of tensors only ({_load_failure(error)}).") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = {str(key).removeprefix("model."): value for key, value in state["state_dict"].items()}
    if isinstance(state, dict) and any(str(key).startswith("backbone.") for key in state):
        state = {str(key).removeprefix("backbone."): value for key, value in state.items()
                 if str(key).startswith("backbone.")}
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise BackboneError(f"{path}: expected a state dict of tensors (backbone weights).")
    return state


class ClipProbabilities(nn.Module):
    """(B, samples) -> (B, K) clip_probs only: the single-output graph to export and serve."""

    def __init__(self, model: BirdClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, samples) -> (B, K) probabilities in [0, 1]."""
        return self.model(wave).clip_probs


def _load_failure(error: Exception) -> str:
    """torch.load's reason in one clause: its messages run to paragraphs of advice, some of
    which (load with ``weights_only=False``) would run code from an untrusted file."""
    text = str(error).split("WeightsUnpickler error:")[-1].strip()
    reason = text.splitlines()[0].split(". ")[0] if text else ""
    return f"{type(error).__name__}: {reason}" if reason else type(error).__name__
