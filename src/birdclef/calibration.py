"""Random-weight classifiers whose outputs look like a trained model's, for speed and parity checks.

With timm's random BatchNorm statistics (mean 0, var 1) activations blow up and the
probabilities saturate at 0 or 1, so an export parity check would compare constants and a
benchmark would time a degenerate graph. ``calibrate`` re-estimates the statistics on
bird-like synthetic windows (``export.parity_windows``) and scales the classifier to frame
logits of standard deviation ~2.
"""

from __future__ import annotations

import torch
from torch import nn

from birdclef.export import parity_windows
from birdclef.model import BirdClassifier


def calibrate(model: BirdClassifier, windows: int, samples: int, seed: int, batch: int) -> BirdClassifier:
    """Re-estimate ``model``'s BatchNorm statistics on ``windows`` synthetic windows; scale its logits."""
    norms = [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the calibration batches
    inputs = torch.from_numpy(parity_windows(windows, samples, seed=seed))
    with torch.no_grad():
        if norms:
            model.train()
            for part in inputs.split(batch):
                model(part)
        model.eval()
        logits = model(inputs).frame_logits
        model.head.classifier.weight.mul_(2.0 / logits.std())
    return model
