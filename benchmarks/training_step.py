"""Training-step time: the convolution layout and the optimizer update, side by side.

One step is the train stage's: random EQ filtering, mel front end, SpecAugment, backbone,
attention head, focal+BCE, backward, the family's optimizer. The settings compared:

- baseline: NCHW parameters, the optimizer's per-tensor update (torch's CPU default);
- channels_last: ``train.channels_last`` (NHWC convolutions);
- + multi-tensor: and the optimizer's multi-tensor update (fused AdamW, foreach RAdam), which
  the train stage always asks for.

The variants run interleaved, step by step, on the same batch, and each prints its median
step time and its speed-up over the baseline (this machine's timings are noisy: compare
ratios, not times). First, the same for RandomFiltering's inverse STFT: ``torch.istft`` (the
seed's) against ``RandomFiltering.inverse_stft`` (the envelope built once), on one spectrum.

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


def composed_params(overrides: list[str]):
    """The params ``dvc exp run -S`` would compose from conf/ with ``overrides``."""
    import tempfile

    from dvc.utils.hydra import compose_and_dump

    from birdclef.params import load_params

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "params.yaml"
        compose_and_dump(str(path), str(REPO / "conf"), None, "config", str(REPO), overrides)
        return load_params(path)


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
    from birdclef.train import build_model, build_optimizer

    params = composed_params(["experiment=birdclef2025"] if experiment else [])
    samples = params.audio.window_samples
    wave = torch.randn(batch, samples, device=device)
    target = torch.rand(batch, classes, device=device)
    loss_fn = build_loss(params.loss)
    filtering = RandomFiltering().to(device).train()
    print(f"{device}, {torch.get_num_threads()} threads, batch {batch}, median of {steps} steps")
    synchronize = torch.cuda.synchronize if device != "cpu" else (lambda: None)
    spec = torch.stft(wave, filtering.n_fft, filtering.hop_length, window=filtering.window, return_complex=True)
    print("RandomFiltering, inverse STFT:")
    report(interleaved_medians({
        "torch.istft": lambda: torch.istft(spec, filtering.n_fft, filtering.hop_length, window=filtering.window,
                                           length=samples),
        "inverse_stft": lambda: filtering.inverse_stft(spec, samples),
    }, steps, synchronize), "ms")
    for name in families.split(","):
        family = params.family[name]
        steps_of = {}
        for label, channels_last, multi_tensor in (("baseline", False, False), ("channels_last", True, False),
                                                   ("+ multi-tensor", True, True)):
            torch.manual_seed(0)
            model = build_model(family, classes, replace(params.train, channels_last=channels_last),
                                params.audio.sample_rate)
            model = model.to(device).train()
            optimizer = build_optimizer(family, model.parameters(), multi_tensor=multi_tensor)
            steps_of[label] = training_step(model, optimizer, filtering, loss_fn, wave, target)
        print(f"{name} ({family.backbone}):")
        report(interleaved_medians(steps_of, steps, synchronize), "ms/step")


def training_step(model, optimizer, filtering, loss_fn, wave, target):
    """One train-stage step on a fixed batch, as a call to time."""
    def step():
        loss = loss_fn(model(filtering(wave)).clip_logits, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def interleaved_medians(variants: dict, steps: int, synchronize) -> dict[str, float]:
    """Median seconds per call of each variant, called in turn (so drifts hit all alike)."""
    times = {label: [] for label in variants}
    for step in range(steps + 3):  # 3 warm-up calls
        for label, call in variants.items():
            start = time.perf_counter()
            call()
            synchronize()
            if step >= 3:
                times[label].append(time.perf_counter() - start)
    return {label: statistics.median(values) for label, values in times.items()}


def report(medians: dict[str, float], unit: str) -> None:
    """Each variant's median and its speed-up over the first one."""
    baseline = next(iter(medians.values()))
    for label, median in medians.items():
        print(f"  {label:<14} {median * 1000:8.1f} {unit:<7} {baseline / median:5.2f}x")


if __name__ == "__main__":
    typer.run(main)
