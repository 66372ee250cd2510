"""Precompute and the store at the real data's scale: file count, duration shape, memory.

The real BirdCLEF+ 2025 material is 36,030 focal recordings (``train_audio``: 28,564 files
of 206 species; the authors' extra labelled recordings: 7,466) plus 9,726 one-minute
``train_soundscapes``. This script writes a raw dataset with exactly that many files, in
the competition layout precompute reads (``train.csv``, ``taxonomy.csv``,
``train_audio/<label>/<file>``, ``extra/train.csv`` + ``extra/audio/<label>/<file>``,
``train_soundscapes/``), runs the real ``python -m birdclef precompute`` on it in a
subprocess, and measures it; then it does the same on a quarter of the files (every 4th
file of each collection, hard links, so the same distribution) and prints both side by
side. Memory that stays bounded shows as a peak-RSS ratio near 1 while the file count grows 4x.

Focal durations are log-normal, median 22 s and sigma 0.9 (ln-seconds), clipped to
[0.5 s, 30 min]: mean ~33 s, 87 % under one minute, P(> 10 min) ~ 1.2e-4 (a handful of
files of 36,000; the longest of seed 0 is 26 min), the heavy tail of the real recordings
(median some 20-30 s, most under a minute, a few over ten). Soundscapes are 60 s. ``--duration-scale`` shrinks every
duration by one factor so the run fits this disk and time (the default, 0.05: ~25 h of
audio, ~14 GB of disk in all, 4-6 min on 2 shared cores); the file count, the shard plan
and the index do not shrink. Audio is cheap noise, 16-bit WAV at 32 kHz (what we measure is
precompute, not the writing).

What is measured, per run:

- peak RSS of the largest process of the precompute tree (exact: ``os.wait4``'s
  ``ru_maxrss``, which covers the decoding workers) and the peak PSS of the whole tree
  (sampled with psutil every 0.1 s; PSS counts pages shared by the forked workers once);
- wall time, shards, store bytes, ``index.csv`` bytes;
- a "tail" run: a few copies of the longest recording at its FULL length (duration scale 1,
  more copies than the decoder's look-ahead of 2 x workers). Decoded recordings are held
  whole, so this, plus the per-file bookkeeping (the file list and the index rows, ~2 kB a
  file), is precompute's peak memory on the real data, whatever the file count;
- reading the big store, one fresh process per mode: ``AudioStore`` open time and memory,
  then random 5-s reads: ``AudioStore.read_samples`` of random keys (as the training
  dataset reads; at a small duration scale most recordings are shorter than 5 s) and
  full-length 5-s windows at random shard offsets, with HDF5's default chunk cache and with it
  off (what AudioStore does); items/s, RSS growth, peak RSS.

Disk for the real data. The store holds mono 32 kHz samples: 64,000 B per audio second at
float16 (``precompute.dtype``, the default), 128,000 B at float32, i.e.
230.4 MB (float16) or 460.8 MB (float32) per hour; ``birdclef precompute`` prints the hours
it stored. The modelled durations give ~332 h of focal audio + 162 h of soundscapes =
~494 h: ~114 GB at float16, ~228 GB at float32 (plus ``index.csv``, ~4.5 MB). DVC caches
the store as an output; with the default link type (``reflink,copy``) on a file system
without reflinks (ext4) the cache holds a second copy, so plan on twice that, or set
``dvc config cache.type hardlink,symlink`` (README, "Remote storage").

    python benchmarks/scale.py                          # 4-6 min here, ~14 GB in a temp folder
    python benchmarks/scale.py --duration-scale 0.005 --work /big/disk/scale --keep
    python benchmarks/scale.py --duration-scale 1 --work /big/disk/scale   # the full size
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import typer

REPO = Path(__file__).resolve().parents[1]
RATE = 32000
SPECIES = 206
# The real file counts: train_audio (competition), extra (authors' labelled recordings),
# train_soundscapes (unlabelled one-minute field recordings).
REAL_COUNTS = {"train_audio": 28_564, "extra": 7_466, "train_soundscapes": 9_726}
FOCAL_MEDIAN_S = 22.0
FOCAL_SIGMA = 0.9
FOCAL_MIN_S = 0.5
FOCAL_MAX_S = 1800.0
SOUNDSCAPE_S = 60.0
FLOAT16_BYTES_PER_HOUR = RATE * 2 * 3600
FOLDERS = {"train_audio": "train_audio", "extra": "extra/audio", "train_soundscapes": "train_soundscapes"}
TABLES = {"train_audio": "train.csv", "extra": "extra/train.csv"}


@dataclass(frozen=True)
class Item:
    collection: str  # a key of REAL_COUNTS
    label: str  # "" for soundscapes
    name: str  # path under the collection's folder
    seconds: float  # the full-size duration

    @property
    def path(self) -> str:
        return f"{FOLDERS[self.collection]}/{self.name}"


def focal_durations(count: int, rng: np.random.Generator) -> np.ndarray:
    """Log-normal durations of focal recordings, in seconds (see the module docstring)."""
    return np.clip(rng.lognormal(math.log(FOCAL_MEDIAN_S), FOCAL_SIGMA, count), FOCAL_MIN_S, FOCAL_MAX_S)


def plan_dataset(counts: dict[str, int], seed: int = 0) -> list[Item]:
    """Every file of the dataset: collection, label, name and full-size duration."""
    rng = np.random.default_rng(seed)
    species = [f"sp{number:03d}" for number in range(SPECIES)]
    items = []
    for collection, count in counts.items():
        if collection == "train_soundscapes":
            items += [Item(collection, "", f"H{number % 20:02d}_2024{number:05d}.wav", SOUNDSCAPE_S)
                      for number in range(count)]
            continue
        prefix = "XC" if collection == "train_audio" else "EX"
        labels = rng.integers(0, SPECIES, count)
        for number, (label, seconds) in enumerate(zip(labels, focal_durations(count, rng))):
            label = species[label]
            items.append(Item(collection, label, f"{label}/{prefix}{number:06d}.wav", float(seconds)))
    return items


def every_nth(items: list[Item], n: int) -> list[Item]:
    """Every n-th file of each collection (durations were drawn at random: same shape)."""
    chosen = []
    for collection in REAL_COUNTS:
        chosen += [item for item in items if item.collection == collection][::n]
    return chosen


def samples_of(item: Item, duration_scale: float) -> int:
    return max(320, round(item.seconds * duration_scale * RATE))  # at least 10 ms


def write_dataset(root: Path, items: list[Item], duration_scale: float, link_from: Path | None = None) -> None:
    """The raw layout: tables, then audio (16-bit noise WAV, or hard links to ``link_from``)."""
    import pandas as pd
    import soundfile as sf

    root.mkdir(parents=True, exist_ok=True)
    species = sorted({item.label for item in items if item.label} | {f"sp{n:03d}" for n in range(SPECIES)})
    pd.DataFrame({"primary_label": species, "inat_taxon_id": range(1, len(species) + 1),
                  "scientific_name": species, "common_name": species,
                  "class_name": "Aves"}).to_csv(root / "taxonomy.csv", index=False)
    for collection, table in TABLES.items():
        rows = [{"primary_label": item.label, "secondary_labels": "[]", "type": "['song']",
                 "filename": item.name, "collection": "XC", "rating": "4.0", "url": "",
                 "latitude": "0", "longitude": "0", "scientific_name": item.label,
                 "common_name": item.label, "author": f"author{number % 997}", "license": "cc-by"}
                for number, item in enumerate(items) if item.collection == collection]
        if rows:
            (root / table).parent.mkdir(parents=True, exist_ok=True)
            pd.DataFrame(rows).to_csv(root / table, index=False)
    noise = np.random.default_rng(1).integers(-3000, 3000, 64 * RATE, dtype=np.int16)
    folders: set[Path] = set()
    for number, item in enumerate(items):
        path = root / item.path
        if path.parent not in folders:
            path.parent.mkdir(parents=True, exist_ok=True)
            folders.add(path.parent)
        if link_from is not None:
            os.link(link_from / item.path, path)
            continue
        count = samples_of(item, duration_scale)
        start = (number * 7919) % (len(noise) - RATE)
        wave = noise[start:start + count] if start + count <= len(noise) else np.resize(noise, count)
        sf.write(path, wave, RATE, subtype="PCM_16")


def write_params(path: Path, files_per_shard: int, workers: int, dtype: str) -> Path:
    """The project's params.yaml with the precompute settings of the run."""
    import yaml

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["precompute"].update(files_per_shard=files_per_shard, workers=workers, dtype=dtype)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@dataclass
class Measured:
    wall_s: float
    max_rss_mb: float  # the largest process of the tree (exact)
    tree_pss_mb: float  # the whole tree, sampled (0 without psutil)
    output: str


# Runs the measured command and reports its ru_maxrss. Why a launcher: Linux carries the
# high-water RSS of the memory a process had before exec into its ru_maxrss, and subprocess
# spawns with vfork, i.e. the memory of the spawning process: measured directly from a big
# process (a test runner, this script after planning 46k files), every child would report at
# least the parent's RSS. The launcher is a bare interpreter (~10 MB), so that is the floor.
LAUNCHER = """
import json, os, sys, time
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as out:
    json.dump({"code": os.waitstatus_to_exitcode(status), "max_rss_kb": usage.ru_maxrss,
               "wall_s": time.perf_counter() - start}, out)
"""


def run_measured(args: list[str], cwd: Path, interval: float = 0.1) -> Measured:
    """Run ``args``; its wall time, the peak RSS of its largest process, the tree's peak PSS."""
    try:
        import psutil
    except ImportError:  # a dvc dependency, so normally there
        psutil = None
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    stem = cwd / f"run-{time.monotonic_ns()}"
    log, result = stem.with_suffix(".log"), stem.with_suffix(".json")
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(result), *args], cwd=cwd, env=env,
                                   stdout=out, stderr=subprocess.STDOUT)
    peak_pss = 0
    launcher = psutil.Process(process.pid) if psutil else None
    while process.poll() is None:
        if launcher is not None:
            total = 0
            try:
                members = launcher.children(recursive=True)  # the command's tree, not the launcher
            except psutil.Error:
                members = []
            for member in members:
                try:
                    total += member.memory_full_info().pss
                except psutil.Error:
                    pass
            peak_pss = max(peak_pss, total)
        time.sleep(interval)
    output = log.read_text()
    log.unlink()
    if process.returncode != 0 or not result.is_file():
        raise RuntimeError(f"the launcher of {' '.join(map(str, args))} failed:\n{output[-3000:]}")
    measured = json.loads(result.read_text())
    result.unlink()
    if measured["code"] != 0:
        raise RuntimeError(f"{' '.join(map(str, args))} exited {measured['code']}:\n{output[-3000:]}")
    return Measured(measured["wall_s"], measured["max_rss_kb"] / 1024, peak_pss / 2**20, output)


@dataclass
class PrecomputeRun:
    files: int
    audio_h: float
    measured: Measured
    shards: int
    store_bytes: int
    index_bytes: int


def measure_precompute(raw: Path, out: Path, params: Path, items: list[Item], duration_scale: float) -> PrecomputeRun:
    """``python -m birdclef precompute`` on ``raw`` into ``out``, measured."""
    no_recordings = raw.parent / "external-empty"
    no_recordings.mkdir(exist_ok=True)
    measured = run_measured([sys.executable, "-m", "birdclef", "precompute", "--raw", str(raw),
                             "--external", str(no_recordings), "--out", str(out),
                             "--params", str(params)], cwd=out.parent)
    shards = sorted(out.glob("*.h5"))
    return PrecomputeRun(
        files=len(items), audio_h=sum(samples_of(item, duration_scale) for item in items) / RATE / 3600,
        measured=measured, shards=len(shards), store_bytes=sum(path.stat().st_size for path in out.iterdir()),
        index_bytes=(out / "index.csv").stat().st_size)


def expected_shards(items: list[Item], files_per_shard: int) -> int:
    """Shards precompute plans: each collection cut into files_per_shard pieces."""
    return sum(math.ceil(sum(item.collection == c for item in items) / files_per_shard) for c in REAL_COUNTS)


READ_MODES = ("keys", "windows", "windows-nocache")
RUNS = ("quarter", "all", "tail")
# What a run writes into --work, and all that it removes there without --keep.
WRITTEN = (*(f"raw-{run}" for run in RUNS), *(f"store-{run}" for run in RUNS), "external-empty", "params.yaml")


def measure_reads(store_root: Path, reads: int, mode: str, seed: int = 0) -> dict:
    """In this (fresh) process: open the store, then ``reads`` random 5-s reads.

    ``keys``: ``AudioStore.read_samples`` of random recordings at random offsets, as the
    training dataset reads (clipped to the recording's length). ``windows``: 5-s windows at
    random offsets of the shards (the I/O of a full-length read), each shard opened once like
    AudioStore does; ``windows-nocache``: the same with HDF5's chunk cache off.
    """
    import h5py
    import pandas  # noqa: F401  (imports are not part of opening)
    import psutil
    import torch  # noqa: F401  (float16 reads widen through torch)

    from birdclef.store import AudioStore, as_float32

    process = psutil.Process()
    before = process.memory_info().rss
    start = time.perf_counter()
    store = AudioStore(store_root)
    stats = {"recordings": len(store), "open_s": time.perf_counter() - start,
             "open_mb": (process.memory_info().rss - before) / 2**20}
    rng = np.random.default_rng(seed)
    window = 5 * store.sample_rate
    shards = sorted(set(store.index["shard"]))
    samples = 0
    if mode == "keys":
        chosen = rng.choice(store.keys(), reads)
        before = process.memory_info().rss
        start = time.perf_counter()
        for key in chosen:
            offset = int(rng.integers(0, max(1, store.length(key) - window + 1)))
            samples += len(store.read_samples(key, offset, offset + window))
    else:
        options = {"rdcc_nbytes": 0} if mode == "windows-nocache" else {}
        handles = [h5py.File(store_root / shard, "r", **options)["audio"] for shard in shards]
        sizes = np.array([audio.shape[0] for audio in handles], dtype=float)
        chosen = rng.choice(len(shards), reads, p=sizes / sizes.sum())
        before = process.memory_info().rss
        start = time.perf_counter()
        for shard in chosen:
            audio = handles[shard]
            offset = int(rng.integers(0, max(1, audio.shape[0] - window)))
            samples += len(as_float32(audio[offset:offset + window]))
    stats.update(shards=len(shards), per_s=reads / (time.perf_counter() - start),
                 mean_read_s=samples / reads / store.sample_rate,
                 reads_mb=(process.memory_info().rss - before) / 2**20)
    return stats


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 7200 else f"{seconds / 60:.0f} min"


def _mb(value: float) -> str:
    return f"{value / 1e6:,.1f}"


def main(
    work: Path = typer.Option(None, help="Folder for the datasets and stores (default: a temp folder)."),
    duration_scale: float = typer.Option(0.05, help="Every duration times this (1 = the real size)."),
    files_scale: float = typer.Option(1.0, help="The real file counts times this."),
    files_per_shard: int = typer.Option(None, help="precompute.files_per_shard (default: params.yaml's)."),
    workers: int = typer.Option(0, help="precompute.workers (0: one per core)."),
    dtype: str = typer.Option("float16", help="precompute.dtype."),
    reads: int = typer.Option(3000, help="Random 5-s reads per read measurement."),
    seed: int = typer.Option(0, help="Seed of the durations and labels."),
    keep: bool = typer.Option(False, help="Keep the datasets and stores."),
    measure_reads_of: Path = typer.Option(None, hidden=True, help="Internal: time reads of this store."),
    read_mode: str = typer.Option("keys", hidden=True, help=f"Internal: one of {', '.join(READ_MODES)}."),
) -> None:
    if measure_reads_of is not None:  # one read measurement, in its own process
        print(json.dumps(measure_reads(measure_reads_of, reads, read_mode, seed)))
        return
    if files_per_shard is None:
        import yaml

        files_per_shard = yaml.safe_load((REPO / "params.yaml").read_text())["precompute"]["files_per_shard"]
    counts = {name: max(1, round(count * files_scale)) for name, count in REAL_COUNTS.items()}
    items = plan_dataset(counts, seed)
    quarter = every_nth(items, 4)
    longest = max(items, key=lambda item: item.seconds)
    workers_used = workers or os.cpu_count() or 1
    tail = [Item("train_audio", longest.label, f"{longest.label}/TAIL{n:02d}.wav", longest.seconds)
            for n in range(2 * workers_used + 2)]  # more than the decoder's look-ahead
    root = Path(tempfile.mkdtemp(prefix="bench-scale-")) if work is None else Path(work)
    root.mkdir(parents=True, exist_ok=True)
    try:
        for run in RUNS:
            shutil.rmtree(root / f"raw-{run}", ignore_errors=True)
        start = time.perf_counter()
        write_dataset(root / "raw-all", items, duration_scale)
        write_dataset(root / "raw-quarter", quarter, duration_scale, link_from=root / "raw-all")
        write_dataset(root / "raw-tail", tail, 1.0)
        generated_s = time.perf_counter() - start
        params = write_params(root / "params.yaml", files_per_shard, workers, dtype)
        runs = {}
        for name, chosen, scale in (("quarter", quarter, duration_scale), ("all", items, duration_scale),
                                    ("tail", tail, 1.0)):
            out = root / f"store-{name}"
            shutil.rmtree(out, ignore_errors=True)
            runs[name] = measure_precompute(root / f"raw-{name}", out, params, chosen, scale)
        read_stats = {}
        for mode in READ_MODES:
            read = run_measured([sys.executable, __file__, "--measure-reads-of", str(root / "store-all"),
                                 "--read-mode", mode, "--reads", str(reads), "--seed", str(seed)], cwd=root)
            read_stats[mode] = {**json.loads(read.output.strip().splitlines()[-1]), "peak_rss_mb": read.max_rss_mb}
    finally:
        if not keep and work is None:
            shutil.rmtree(root)
        elif not keep:  # only what this run wrote: --work may hold the user's own files
            for path in (root / name for name in WRITTEN):
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
    _report(counts, items, runs, read_stats, duration_scale, files_per_shard, workers_used, dtype,
            generated_s, longest)


def _report(counts, items, runs, read_stats, duration_scale, files_per_shard, workers, dtype,
            generated_s, longest) -> None:
    quarter, full, tail = runs["quarter"], runs["all"], runs["tail"]
    full_hours = sum(item.seconds for item in items) / 3600
    print(f"birdclef precompute at scale: {sum(counts.values()):,} files "
          f"({', '.join(f'{name} {count:,}' for name, count in counts.items())}), durations x{duration_scale:g}, "
          f"files_per_shard {files_per_shard}, {workers} decoding workers, {dtype}; dataset written in "
          f"{generated_s:.0f} s")
    print(f"focal durations: log-normal median {FOCAL_MEDIAN_S:g} s, sigma {FOCAL_SIGMA:g}; drawn: "
          f"median {np.median([i.seconds for i in items if i.collection != 'train_soundscapes']):.1f} s, "
          f"{np.mean([i.seconds < 60 for i in items if i.collection != 'train_soundscapes']):.0%} < 60 s, "
          f"{sum(i.seconds > 600 for i in items)} > 10 min, longest {longest.seconds / 60:.1f} min")
    print()
    print(f"{'precompute':<34}{'1/4 files':>12}{'all files':>12}{'ratio':>8}")
    rows = [
        ("files", quarter.files, full.files, "{:,}"),
        ("audio (h)", quarter.audio_h, full.audio_h, "{:,.2f}"),
        ("shards", quarter.shards, full.shards, "{:,}"),
        ("store (MB)", quarter.store_bytes / 1e6, full.store_bytes / 1e6, "{:,.1f}"),
        ("index.csv (MB)", quarter.index_bytes / 1e6, full.index_bytes / 1e6, "{:,.2f}"),
        ("wall (s)", quarter.measured.wall_s, full.measured.wall_s, "{:,.1f}"),
        ("peak RSS, largest process (MB)", quarter.measured.max_rss_mb, full.measured.max_rss_mb, "{:,.0f}"),
        ("peak PSS, process tree (MB)", quarter.measured.tree_pss_mb, full.measured.tree_pss_mb, "{:,.0f}"),
    ]
    for label, small, big, style in rows:
        ratio = f"{big / small:.2f}" if small else "-"
        print(f"{label:<34}{style.format(small):>12}{style.format(big):>12}{ratio:>8}")
    print(f"shards expected from files_per_shard: {expected_shards(every_nth(items, 4), files_per_shard)} "
          f"and {expected_shards(items, files_per_shard)}")
    print()
    tail_audio_s = tail.audio_h * 3600
    print(f"tail: {tail.files} copies of the longest recording at full length ({longest.seconds / 60:.1f} min, "
          f"mono 32 kHz WAV): peak RSS largest process {tail.measured.max_rss_mb:,.0f} MB, tree PSS "
          f"{tail.measured.tree_pss_mb:,.0f} MB, {tail_audio_s / tail.measured.wall_s:,.0f} audio s per wall s")
    print()
    keys, windows, nocache = (read_stats[mode] for mode in READ_MODES)
    print(f"reading the 'all files' store ({keys['recordings']:,} recordings, {keys['shards']} shards; a fresh "
          "process per line, one thread, warm page cache):")
    print(f"  AudioStore open (index.csv): {keys['open_s']:.2f} s, +{keys['open_mb']:.0f} MB")
    print(f"{'  random 5-s reads':<58}{'items/s':>9}{'+RSS MB':>9}{'peak RSS MB':>13}")
    for label, stats in ((f"AudioStore.read_samples, random keys (mean {keys['mean_read_s']:.2f} s)", keys),
                         ("full-length windows, h5py's default chunk cache", windows),
                         ("full-length windows, chunk cache off (as AudioStore)", nocache)):
        print(f"  {label:<56}{stats['per_s']:>9,.0f}{stats['reads_mb']:>9,.0f}{stats['peak_rss_mb']:>13,.0f}")
    print()
    # Full size: the same files at duration scale 1. Shards and the index depend on the files
    # only; the store on the hours. Time: the all-files run's cost per audio second (which
    # also carries its per-file costs, so an upper bound for this format).
    full_s = full.measured.wall_s * full_hours / full.audio_h
    print(f"full size (duration scale 1, these {full.files:,} files): {full_hours:,.0f} h of audio -> store "
          f"{full_hours * FLOAT16_BYTES_PER_HOUR / 1e9:,.0f} GB float16 / "
          f"{2 * full_hours * FLOAT16_BYTES_PER_HOUR / 1e9:,.0f} GB float32, {full.shards} shards, index.csv "
          f"{_mb(full.index_bytes)} MB")
    print(f"  precompute wall ~ {_duration(full_s)} here at the all-files run's "
          f"{full.audio_h * 3600 / full.measured.wall_s:,.0f} audio s per s (16-bit WAV at 32 kHz; Vorbis/MP3 "
          "decoding and resampling cost more, see benchmarks/precompute.py)")
    per_file_kb = (full.measured.max_rss_mb - quarter.measured.max_rss_mb) * 1024 / (full.files - quarter.files)
    print(f"  peak memory ~ the tail run + the all-files run's per-file bookkeeping ({per_file_kb:.2f} kB per "
          f"file: file list, index rows) = {tail.measured.max_rss_mb + per_file_kb * full.files / 1024:,.0f} MB "
          "largest process")


if __name__ == "__main__":
    typer.run(main)
