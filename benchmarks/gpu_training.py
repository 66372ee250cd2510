"""Training throughput on a GPU: the full recipe with the HDF5 loader vs the model alone.

For each family of the real recipe (experiment=birdclef2025: eca_nfnet_l0 with RAdam,
tf_efficientnetv2_s with AdamW): samples/s of the train stage's step (``build_model``,
``build_optimizer``; RandomFiltering, mel front end, SpecAugment, the recipe's loss; fp32 with
TF32 matmuls) fed (a) by random tensors already on
the GPU and (b) by the real DataLoader over a sharded HDF5 store (random 5-s crops, label
smoothing, mixup 0.5, peak normalisation), for each worker count in ``--workers`` and each
wave dtype the workers hand over in ``--wave-dtypes``. The ratio b/a says whether the loader
keeps the GPU busy (goal >= 90 %). "loader alone" is the DataLoader iterated with no GPU
work: what it could deliver. The store is synthetic (random audio at the real rate and
dtype), written first into a temp folder (or ``--work``, kept). ``--device cpu`` runs the
same code on the CPU (a smoke test of this script, not a measurement of the goal).

    python benchmarks/gpu_training.py --workers 8,14 --wave-dtypes float32,float16 --steps 80
    python benchmarks/gpu_training.py --workers 15 --main-threads 0,1,4 --pin-memory true,false
    python benchmarks/gpu_training.py --channels-last true,false   # train.channels_last
    python benchmarks/gpu_training.py --compile none,reduce-overhead
    python benchmarks/gpu_training.py --params recipe.yaml  # composed elsewhere: no dvc needed here

``--compile`` compiles the network with ``torch.compile`` in the given mode (compilation runs in
the warm-up, outside the timings). ``reduce-overhead`` replays the forward and backward as
CUDA graphs: the earlier runs found the fed step bound by the main process's kernel launches,
not by the loader, and a replayed graph launches once per step. On the CPU, inductor's
training kernels were 2x slower than eager for the sample's backbones, so ``train.compile``
(the network, in place, as here) is off by default; README "Resources" has the H100's numbers.
``--compile-scope step`` also compiles the random EQ and the loss into the graph, leaving only
the optimizer eager. Its one H100 try stopped on RandomFiltering's envelope cache, which the
module no longer has (it now compiles as one graph); it has not been measured on a GPU since.
The optimizer is the train stage's: fused AdamW (ebs), foreach RAdam (eca). The workers cast
float16 with torch, 3x the items/s per worker of the numpy casts that the H100 runs had.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import typer
from training_step import composed_params


def synthetic_store(root: Path, recordings: int, seconds: float, classes: list[str]):
    import pandas as pd

    from birdclef.store import ShardWriter, write_index

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    writer = ShardWriter(root / "train_audio-000.h5", 32000, "float16", "synthetic")
    for number in range(recordings):
        label = classes[number % len(classes)]
        key = f"train_audio/{label}/XC{number}.ogg"
        length = int(32000 * seconds * rng.uniform(0.3, 1.7))
        writer.append(key, (0.1 * rng.standard_normal(length)).astype(np.float32), 32000, 1, "OGG")
        rows.append({"key": key, "primary_label": label, "secondary_labels": []})
    write_index(root, writer.close())
    return pd.DataFrame(rows)


def steps_per_second(step, batches, steps: int, warmup: int, synchronize) -> float:
    for _ in range(warmup):  # cudnn autotuning, compilation, allocator, loader workers starting
        step(*next(batches))
    synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step(*next(batches))
    synchronize()
    return steps / (time.perf_counter() - start)


def main(
    work: Path = typer.Option(None, help="Write the synthetic store here and keep it (default: a temp folder, "
                              "removed at the end; ~1.2 GB at 600 recordings)."),
    families: str = typer.Option("eca,ebs", help="Comma-separated family names of the real recipe."),
    batch: int = typer.Option(64),
    workers: str = typer.Option("12", help="Comma-separated DataLoader worker counts."),
    wave_dtypes: str = typer.Option("float16", help="Comma-separated dtypes the workers emit."),
    main_threads: str = typer.Option("0", help="Comma-separated torch thread counts of the main process "
                                     "(0: torch's default, one per core)."),
    pin_memory: str = typer.Option("true", help="Comma-separated DataLoader pin_memory settings."),
    channels_last: str = typer.Option("true", help="Comma-separated: NHWC parameters (train.channels_last)."),
    compile_modes: str = typer.Option("none", "--compile", help="Comma-separated torch.compile modes: none, default, "
                                "reduce-overhead (CUDA graphs), max-autotune."),
    compile_scopes: str = typer.Option("network", "--compile-scope", help="Comma-separated: what --compile "
                                       "compiles: network (as train.compile does) or step (EQ, network and loss)."),
    steps: int = typer.Option(40),
    warmup: int = typer.Option(20, help="Untimed steps before each measurement."),
    recordings: int = typer.Option(600),
    device: str = typer.Option("cuda", help="cuda; or cpu to smoke-test the script."),
    params_file: Path = typer.Option(None, "--params", help="A params.yaml composed with experiment=birdclef2025 "
                                     "(default: compose it from conf/, which needs dvc)."),
) -> None:
    import torch
    from torch.utils.data import DataLoader

    from birdclef.augment import RandomFiltering
    from birdclef.data import TrainingWindows
    from birdclef.losses import build_loss
    from birdclef.params import load_params
    from birdclef.train import build_model, build_optimizer

    params = load_params(params_file) if params_file else composed_params(["experiment=birdclef2025"])
    default_threads = torch.get_num_threads()
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    on_gpu = device == "cuda"
    synchronize = torch.cuda.synchronize if on_gpu else (lambda: None)
    classes = [f"sp{i:03d}" for i in range(206)]
    window = params.audio.window_samples
    root = work or Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    try:
        table = synthetic_store(root, recordings, 30.0, classes)
        print(f"device: {torch.cuda.get_device_name() if on_gpu else 'cpu'}, batch {batch}, {steps} steps")
        layouts = [value == "true" for value in channels_last.split(",")]
        variants = [(mode, scope) for mode in compile_modes.split(",")
                    for scope in (["-"] if mode == "none" else compile_scopes.split(","))]
        for name, nhwc, (mode, scope) in itertools.product(families.split(","), layouts, variants):
            family = params.family[name]
            model = build_model(family, len(classes), replace(params.train, channels_last=nhwc),
                                params.audio.sample_rate).to(device).train()
            filtering = RandomFiltering().to(device).train()
            loss_fn = build_loss(params.loss)
            optimizer = build_optimizer(family, model.parameters())

            def forward_loss(wave, target):
                return loss_fn(model(filtering(wave)).clip_logits, target)

            if scope == "network":
                model.compile(mode=mode)  # in place: the state_dict keys stay the train stage's
            elif scope == "step":
                forward_loss = torch.compile(forward_loss, mode=mode)

            def step(wave, target):
                wave, target = wave.to(device, non_blocking=True).float(), target.to(device, non_blocking=True)
                loss = forward_loss(wave, target)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

            def random_batches():
                wave = torch.randn(batch, window, device=device)
                target = torch.rand(batch, len(classes), device=device)
                while True:
                    yield wave, target

            def loader_batches(count: int, dtype: str, pin: bool):
                windows = TrainingWindows(root, table, list(range(len(table))), classes, window,
                                          params.train.label_smoothing, params.train.augment.mixup_p, wave_dtype=dtype)
                loader = DataLoader(windows, batch_size=batch, shuffle=True, drop_last=True, num_workers=count,
                                    pin_memory=pin, persistent_workers=count > 0,
                                    prefetch_factor=4 if count else None)
                while True:
                    yield from loader

            print(f"{name} ({family.backbone}, {family.optimizer}), channels_last {nhwc}, compile {mode} ({scope})")
            for threads in map(int, main_threads.split(",")):
                torch.set_num_threads(threads or default_threads)
                alone = steps_per_second(step, random_batches(), steps, warmup, synchronize) * batch
                print(f"  main threads {torch.get_num_threads():2d}: model alone {alone:7.0f} samples/s")
                pins = [on_gpu and value == "true" for value in pin_memory.split(",")]
                for count, dtype, pin in itertools.product(map(int, workers.split(",")), wave_dtypes.split(","), pins):
                    delivered = steps_per_second(lambda *_: None, loader_batches(count, dtype, pin), steps,
                                                 warmup, synchronize) * batch
                    fed = steps_per_second(step, loader_batches(count, dtype, pin), steps, warmup, synchronize) * batch
                    print(f"    {count:2d} workers, {dtype}, pin {pin!s:<5}: loader alone {delivered:7.0f} samples/s"
                          f"   with loader {fed:7.0f} samples/s   ratio {fed / alone:.0%}")
            del model, optimizer
            if on_gpu:
                torch.cuda.empty_cache()

    finally:
        if work is None:
            shutil.rmtree(root)

if __name__ == "__main__":
    typer.run(main)
