"""Small random-weight classifiers saved in the train stage's format, for export and infer tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from birdclef.augment import SpecAugment
from birdclef.calibration import calibrate
from birdclef.model import BirdClassifier

BACKBONE = "mobilenetv3_small_050"
CLASSES = ["amerob", "bkcchi", "41778", "grekis", "houspa", "sobtyr"]
HIDDEN = 32
SAMPLES = 160_000


def realistic_random_model(seed: int) -> BirdClassifier:
    """A random-weight classifier whose outputs spread over (0, 1) on bird-like input."""
    torch.manual_seed(seed)
    # like the train stage's models: a SpecAugment without weights, absent from the state dict
    model = BirdClassifier(BACKBONE, len(CLASSES), hidden=HIDDEN, spec_augment=SpecAugment())
    return calibrate(model, 12, SAMPLES, seed=1000 + seed, batch=6)


def save_trained(model: BirdClassifier, folder: Path, fold: int, family: str = "eca",
                 sample_rate: int = 32_000) -> None:
    """The train stage's format: model.pt (state dict) + meta.json."""
    folder.mkdir(parents=True)
    torch.save(model.state_dict(), folder / "model.pt")
    meta = {"family": family, "fold": fold, "backbone": BACKBONE, "classes": CLASSES, "hidden": HIDDEN,
            "sample_rate": sample_rate, "val_auc": 0.5, "best_epoch": 0}
    (folder / "meta.json").write_text(json.dumps(meta))
