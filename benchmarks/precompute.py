"""Precompute throughput against the seed's method, side by side on the same files.

The seed decoded each recording with ``librosa.load(path, sr=32000)`` and wrote one float32
HDF5 file per recording (datasets ``au``, ``sr``, ``do_normalize``). This script times that
and the project's precompute (one process each, so CPU seconds compare like for like), each
method run ``--repeats`` times in alternating order, and prints seconds of audio per CPU
second, their ratio, the largest sample difference and the float16 store's SNR.

    python benchmarks/precompute.py                 # on data/raw (run `dvc repro download` first)
    python benchmarks/precompute.py --raw other/raw --repeats 5
"""

from __future__ import annotations

import resource
import shutil
import statistics
import tempfile
from pathlib import Path

import numpy as np
import typer


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (decoding workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def seed_method(paths: list[Path], out: Path) -> None:
    import h5py
    import librosa

    for number, path in enumerate(paths):
        wave, _ = librosa.load(path, sr=32000)
        target = out / f"{number:06d}.hdf5"
        with h5py.File(target, "w") as handle:
            handle.create_dataset("au", data=wave)
            handle.create_dataset("sr", data=32000)
            handle.create_dataset("do_normalize", data=0)


def main(
    raw: Path = typer.Option(Path("data/raw"), help="A raw dataset in the competition layout."),
    repeats: int = typer.Option(3, help="Runs of each method; the median is reported."),
) -> None:
    import h5py

    from birdclef.params import load_params
    from birdclef.precompute import find_sources, precompute
    from birdclef.store import AudioStore

    if not (raw / "train.csv").is_file():
        raise SystemExit(f"{raw}: no dataset; run `dvc repro download` first.")
    sources = find_sources(raw, raw / "no-external")
    paths = [source.path for source in sources]
    params = load_params()
    params.precompute.workers = 1
    import librosa  # import costs are not part of either measurement

    librosa.load(paths[0], sr=32000)
    work = Path(tempfile.mkdtemp(prefix="bench-precompute-"))
    timings: dict[str, list[float]] = {"seed": [], "float32": [], "float16": []}
    try:
        for repeat in range(repeats):
            order = ["seed", "float32", "float16"] if repeat % 2 == 0 else ["float16", "float32", "seed"]
            for method in order:
                out = work / method
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir()
                start = cpu_seconds()
                if method == "seed":
                    seed_method(paths, out)
                else:
                    params.precompute.dtype = method
                    precompute(raw, raw / "no-external", out, params, progress=False)
                timings[method].append(cpu_seconds() - start)
        float32_store, float16_store = AudioStore(work / "float32"), AudioStore(work / "float16")
        audio_seconds = sum(float32_store.duration(source.key) for source in sources)
        worst, snrs, length_differences = 0.0, [], 0
        for number, source in enumerate(sources):
            with h5py.File(work / "seed" / f"{number:06d}.hdf5") as handle:
                reference = handle["au"][()]
            ours = float32_store.read(source.key)
            common = min(len(ours), len(reference))
            worst = max(worst, float(np.max(np.abs(ours[:common] - reference[:common]))))
            length_differences += len(ours) != len(reference)
            error = float16_store.read(source.key) - ours
            snrs.append(10 * np.log10(np.sum(ours.astype(np.float64) ** 2) / max(np.sum(error.astype(np.float64) ** 2), 1e-30)))
        disk = {name: sum(p.stat().st_size for p in (work / name).iterdir()) for name in timings}
        files = {name: len(list((work / name).iterdir())) for name in timings}
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"{len(sources)} recordings, {audio_seconds / 60:.1f} min of audio, {repeats} runs each, one process")
    print(f"{'method':<34}{'audio s / CPU s':>16}{'files':>8}{'MB':>9}")
    speed = {name: audio_seconds / statistics.median(values) for name, values in timings.items()}
    labels = {"seed": "seed: librosa.load + HDF5 per file", "float32": "birdclef precompute, float32",
              "float16": "birdclef precompute, float16"}
    for name in timings:
        print(f"{labels[name]:<34}{speed[name]:>16.0f}{files[name]:>8}{disk[name] / 1e6:>9.1f}")
    print(f"ratio float32 / seed: {speed['float32'] / speed['seed']:.2f}x   "
          f"float16 / seed: {speed['float16'] / speed['seed']:.2f}x")
    print(f"max |float32 store - seed| = {worst:.2e} (goal < 1e-4); recordings whose length differs: "
          f"{length_differences} (soxr rounds a resampled length down where librosa pads to ceil)")
    print(f"float16 store SNR vs float32: min {min(snrs):.1f} dB, median {statistics.median(snrs):.1f} dB")


if __name__ == "__main__":
    typer.run(main)
