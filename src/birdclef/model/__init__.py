"""The network: mel front end, timm backbone and attention head (seed spec §2.3)."""

from birdclef.model.classifier import BackboneError, BirdClassifier, ClipProbabilities, build_backbone
from birdclef.model.frontend import MelFrontend
from birdclef.model.head import AttentionHead, FrequencyGeM, HeadOutput

__all__ = [
    "AttentionHead",
    "BackboneError",
    "BirdClassifier",
    "ClipProbabilities",
    "FrequencyGeM",
    "HeadOutput",
    "MelFrontend",
    "build_backbone",
]
