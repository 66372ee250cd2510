"""Training-step time: the convolution layout and the optimizer update, side by side.

One step is the train stage's: random EQ filtering, mel front end, SpecAugment, backbone,
attention head, focal+BCE, backward, the family's optimizer. The settings compared:

- baseline: NCHW parameters, the optimizer's per-tensor update (torch's CPU default);
- channels_last: ``train.channels_last`` (NHWC convolutions);
- + foreach: and the multi-tensor update, which the train stage now always asks for.

The variants run interleaved, step by step, on the same batch, and each prints its median
step time and its speed-up over the baseline (this machine's timings are noisy: compare
ratios, not times).

    python benchmarks/training_step.py                                  # the sample's backbones
    python benchmarks/training_step.py --experiment --batch 4  # the seed's backbones
    python benchmarks/training_step.py --device cuda --batch 64 --experiment
"""

from __future__ import annotations

import statistics
import time
from dataclasses import replace
from pathlib import Path

import typer

REPO = Path(__file__).resolve().parents[1]


def composed_params(overrides: list[str]) -> Path:
    """params.yaml as ``dvc exp run -S`` would compose it from conf/ with ``overrides``."""
    import tempfile

    from dvc.utils.hydra import compose_and_dump

    path = Path(tempfile.mkdtemp()) / "params.yaml"
    compose_and_dump(str(path), str(REPO / "conf"), None, "config", str(REPO), overrides)
    return path


def main(
    families: str = typer.Option("eca,ebs", help="Comma-separated family names (params `family`)."),
    experiment: bool = typer.Option(False, help="Use the seed's backbones (experiment=birdclef2025)."),
    batch: int = typer.Option(8, help="Items per step (the sample trains at 8)."),
    classes: int = typer.Option(206),
    steps: int = typer.Option(20, help="Timed steps per variant, after 3 warm-up steps."),
    device: str = typer.Option("cpu"),
) -> None:
    import torch

    from birdclef.augment import RandomFiltering
    from birdclef.losses import build_loss
    from birdclef.params import load_params
    from birdclef.train import build_model, build_optimizer

    params = load_params(composed_params(["experiment=birdclef2025"] if experiment else []))
    samples = round(params.audio.window_seconds * params.audio.sample_rate)
    wave = torch.randn(batch, samples, device=device)
    target = torch.rand(batch, classes, device=device)
    loss_fn = build_loss(params.loss)
    filtering = RandomFiltering().to(device).train()
    print(f"{device}, {torch.get_num_threads()} threads, batch {batch}, median of {steps} steps")
    for name in families.split(","):
        family = params.family[name]
        variants = {}
        for label, channels_last, foreach in (("baseline", False, False), ("channels_last", True, False),
                                              ("+ foreach", True, True)):
            torch.manual_seed(0)
            model = build_model(family, classes, replace(params.train, channels_last=channels_last))
            model = model.to(device).train()
            optimizer = build_optimizer(family, model.parameters(), foreach=foreach)
            variants[label] = (model, optimizer, [])
        for step in range(steps + 3):
            for model, optimizer, times in variants.values():
                start = time.perf_counter()
                loss = loss_fn(model(filtering(wave)).clip_logits, target)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if device != "cpu":
                    torch.cuda.synchronize()
                if step >= 3:
                    times.append(time.perf_counter() - start)
        baseline = statistics.median(variants["baseline"][2])
        print(f"{name} ({family.backbone}):")
        for label, (_, _, times) in variants.items():
            median = statistics.median(times)
            print(f"  {label:<14} {median * 1000:8.1f} ms/step   {baseline / median:5.2f}x")


if __name__ == "__main__":
    typer.run(main)
