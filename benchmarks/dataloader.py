"""Training-item throughput of the full augmentation pipeline, per DataLoader worker.

Both sides run the same ``TrainingWindows`` chain (crop, label smoothing, mixup 0.5,
background mixing 0.5, peak normalisation) in one process, which is what one DataLoader
worker does. They differ only in where the audio comes from:

- birdclef: the sharded HDF5 store, each shard opened once per process;
- seed: one float32 HDF5 file per recording, opened for every read (the seed's layout).

Then the two float16 casts of a worker, numpy's against torch's (which the project uses):
the store's float16 widened on every read, the item's wave narrowed on the way out.

    python benchmarks/dataloader.py                 # on data/store (run `dvc repro prepare` first)
    python benchmarks/dataloader.py --items 600 --repeats 5
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import typer
from training_step import interleaved_medians


class PerFileStore:
    """The seed's storage: ``<folder>/<key>.hdf5`` with dataset ``au``, opened per read."""

    def __init__(self, folder: Path, lengths: dict[str, int], sample_rate: int):
        self.folder, self.lengths, self.sample_rate = folder, lengths, sample_rate

    def length(self, key: str) -> int:
        return self.lengths[key]

    def duration(self, key: str) -> float:
        return self.lengths[key] / self.sample_rate

    def read_samples(self, key: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        import h5py

        with h5py.File(self.folder / f"{key}.hdf5", "r") as handle:
            return handle["au"][start:stop].astype(np.float32)

    def read(self, key: str, start_s: float = 0.0, end_s: float | None = None) -> np.ndarray:
        stop = None if end_s is None else round(end_s * self.sample_rate)
        return self.read_samples(key, round(start_s * self.sample_rate), stop)


def main(
    store: Path = typer.Option(Path("data/store"), help="The HDF5 store."),
    tables: Path = typer.Option(Path("data/tables"), help="The prepare stage's tables."),
    raw: Path = typer.Option(Path("data/raw"), help="The raw dataset (background clips)."),
    items: int = typer.Option(400, help="Training items per measurement."),
    repeats: int = typer.Option(3, help="Measurements per side; the median is reported."),
) -> None:
    import h5py
    import torch

    from birdclef.data import TrainingWindows
    from birdclef.params import load_params
    from birdclef.store import AudioStore
    from birdclef.train import background_mixer, read_tables

    params = load_params()
    table, classes, _ = read_tables(tables)
    audio = AudioStore(store)
    window = params.audio.window_samples
    folder = Path(tempfile.mkdtemp(prefix="bench-loader-"))
    try:
        lengths = {}
        for key in audio.keys():  # the seed's layout, written from the same decoded audio
            target = folder / f"{key}.hdf5"
            target.parent.mkdir(parents=True, exist_ok=True)
            with h5py.File(target, "w") as handle:
                handle.create_dataset("au", data=audio.read(key))
            lengths[key] = audio.length(key)
        rows = list(range(len(table)))
        results: dict[str, list[float]] = {"birdclef": [], "seed": []}
        for repeat in range(repeats):
            for side in (["birdclef", "seed"] if repeat % 2 == 0 else ["seed", "birdclef"]):
                torch.manual_seed(repeat)
                background = background_mixer(raw, store, params.train)
                windows = TrainingWindows(store, table, rows, classes, window, params.train.label_smoothing,
                                          params.train.augment.mixup_p, None, background)
                if side == "seed":
                    windows._store = PerFileStore(folder, lengths, audio.sample_rate)
                    if background is not None:  # the no-call background reads the same way
                        for source in background.sources:
                            if hasattr(source, "reader"):
                                source.reader = windows._store
                else:
                    windows.store  # a worker opens the store once, before its first item: not timed
                order = np.random.default_rng(repeat).integers(0, len(rows), items)
                start = time.perf_counter()
                for position in order:
                    windows[int(position)]
                results[side].append(items / (time.perf_counter() - start))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    speed = {side: statistics.median(values) for side, values in results.items()}
    print(f"{len(rows)} recordings, {items} items x {repeats} runs, one process (= one worker)")
    print(f"{'birdclef: sharded store, open once':<40}{speed['birdclef']:>10.0f} items/s")
    print(f"{'seed: HDF5 per recording, open per read':<40}{speed['seed']:>10.0f} items/s")
    print(f"ratio: {speed['birdclef'] / speed['seed']:.2f}x")
    report_casts(window)


def report_casts(window: int) -> None:
    """A worker's two float16 casts, numpy's against torch's: the store's float16 widened on every
    read (``as_float32``) and the item's wave narrowed on the way out (``TrainingWindows``)."""
    import torch

    from birdclef.store import as_float32

    narrow = np.random.default_rng(0).uniform(-1, 1, window).astype(np.float16)
    wide = narrow.astype(np.float32)
    directions = {
        "float16 -> float32": (lambda: narrow.astype(np.float32), lambda: as_float32(narrow)),
        "float32 -> float16": (lambda: wide.astype(np.float16),
                               lambda: torch.from_numpy(wide).to(torch.float16).numpy()),
    }
    print(f"casts of a {window}-sample window, median of 200 (numpy, torch, torch's speed-up, same values):")
    for direction, (with_numpy, with_torch) in directions.items():
        seconds = interleaved_medians({"numpy": with_numpy, "torch": with_torch}, 200, lambda: None)
        same = np.array_equal(with_numpy(), with_torch())
        print(f"  {direction}: {seconds['numpy'] * 1e6:7.0f} us {seconds['torch'] * 1e6:7.0f} us "
              f"{seconds['numpy'] / seconds['torch']:6.1f}x  {same}")


if __name__ == "__main__":
    typer.run(main)
