"""The precompute stage: decode every recording once into the HDF5 store.

Files are decoded in parallel (one process per core) and written in a fixed order, so the
same inputs always give the same bytes. Work is planned as shards of ``files_per_shard``
recordings; each finished shard carries a fingerprint of its inputs, its settings and the
decoder (code and library versions), so an interrupted run resumes by skipping the shards
that are already complete and unchanged, and nothing decoded another way is ever reused.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from birdclef import audio, layout, store
from birdclef.audio import AudioError, Recording, decode
from birdclef.outputs import check_replaceable, write_atomically
from birdclef.params import Params
from birdclef.progress import progress_bar
from birdclef.store import (
    INDEX_CSV,
    ShardWriter,
    collection_of,
    read_shard_rows,
    shard_fingerprint,
    write_index,
)

# Bump when a change to this module alters what a shard holds; audio.py and store.py, which
# decode and write the samples, are fingerprinted by their source (see decoder_identity).
FORMAT_VERSION = "2"
SKIPPED_CSV = "skipped.csv"
COLLECTIONS = sorted({collection_of(folder) for folder in layout.RAW_AUDIO_FOLDERS} | {layout.EXTERNAL_PREFIX})
# The names of shards (see plan_shards), finished or left half-written by an interrupted run.
SHARD_NAME = re.compile(rf"(?:{'|'.join(COLLECTIONS)})-\d{{3,}}\.h5(?:\.tmp)?")
SHARD_NAMES = "<collection>-NNN.h5"  # how errors name them
# How many unlisted recordings an error names before it only counts the rest.
MAX_NAMED = 10
# Training left-pads a recording to its window, so a few samples still train (as a click);
# an empty one would train its label on pure silence. No higher floor: the scale benchmark
# (benchmarks/scale.py) stores 10-ms recordings on purpose.
MIN_SAMPLES = 1
FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504: larger samples are stored as infinity


class PrecomputeError(RuntimeError):
    """An input is missing, or a recording cannot be stored and ``precompute.on_error`` is ``fail``."""


@dataclass(frozen=True)
class Source:
    key: str
    path: Path


@dataclass
class ShardPlan:
    name: str
    sources: list[Source]


@dataclass
class Summary:
    recordings: int = 0
    seconds: float = 0.0
    shards_written: int = 0
    shards_reused: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)


def audio_names(root: Path) -> list[str]:
    """The files under ``root`` that precompute decodes (by extension), relative to it."""
    if not root.is_dir():
        return []
    return [path.relative_to(root).as_posix() for path in root.rglob("*")
            if path.is_file() and path.suffix.lower() in layout.AUDIO_SUFFIXES]


def find_sources(raw: Path, external: Path) -> list[Source]:
    """Every audio file under the raw folders and ``external/audio``, in key order."""
    roots = [(raw / folder, folder) for folder in layout.RAW_AUDIO_FOLDERS]
    roots.append((external / layout.EXTERNAL_AUDIO, f"{layout.EXTERNAL_PREFIX}/{layout.EXTERNAL_AUDIO}"))
    sources = [Source(f"{prefix}/{name}", root / name)
               for root, prefix in roots for name in audio_names(root)]
    return sorted(sources, key=lambda source: source.key)


def check_tables(raw: Path, external: Path) -> None:
    """Fail before decoding if a label table is unusable (see ``tables``)."""
    from birdclef.tables import read_taxonomy, read_train_table

    vocabulary = read_taxonomy(raw / layout.TAXONOMY_CSV)
    if not (raw / layout.TRAIN_CSV).is_file():  # unlike the optional tables below
        raise PrecomputeError(f"{raw / layout.TRAIN_CSV}: not found; run the download stage first "
                              "(`dvc repro download`).")
    read_train_table(raw / layout.TRAIN_CSV, raw / layout.TRAIN_AUDIO, vocabulary)
    optional = [
        (raw / layout.EXTRA_CSV, raw / layout.EXTRA_AUDIO, vocabulary),
        (raw / layout.PRETRAIN_CSV, raw / layout.PRETRAIN_AUDIO, None),
    ]
    for table, audio_root, labels in optional:
        if table.is_file():
            read_train_table(table, audio_root, labels)
    table, audio_root = external / layout.TRAIN_CSV, external / layout.EXTERNAL_AUDIO
    listed = set(read_train_table(table, audio_root, vocabulary)["filename"]) if table.is_file() else set()
    check_listed(table, audio_root, listed)


def check_listed(table: Path, audio_root: Path, listed: set[str]) -> None:
    """Refuse recordings under ``audio_root`` that ``table`` does not list.

    prepare labels a user's recording only through its row, so an unlisted file would be
    decoded into the store and then silently never trained on.
    """
    from birdclef.tables import TableError

    unlisted = sorted(set(audio_names(audio_root)) - listed)
    if unlisted:
        named = ", ".join(unlisted[:MAX_NAMED])
        more = f" and {len(unlisted) - MAX_NAMED} more" if len(unlisted) > MAX_NAMED else ""
        problem, fix = ((f"does not list {len(unlisted)} recording(s) under {audio_root}", "add a row") if table.is_file()
                        else (f"not found, but {audio_root} holds {len(unlisted)} recording(s)", "write it with a row"))
        raise TableError(f"{table}: {problem}: {named}{more}; {fix} for each (filename = <label>/<file>, see "
                         f"{table.parent / 'README.md'}) or move them out of {audio_root}.")


def plan_shards(sources: list[Source], files_per_shard: int) -> list[ShardPlan]:
    """Group sources by collection, then cut each group into shards of fixed size."""
    groups: dict[str, list[Source]] = {}
    for source in sources:
        groups.setdefault(collection_of(source.key), []).append(source)
    plans = []
    for collection, members in sorted(groups.items()):
        for number, start in enumerate(range(0, len(members), files_per_shard)):
            plans.append(ShardPlan(f"{collection}-{number:03d}.h5", members[start:start + files_per_shard]))
    return plans


def decoder_identity() -> str:
    """What besides a file's bytes and the settings decides the samples stored from it: the
    decoding and writing code, and the versions of the libraries under it.

    ``data/store`` persists across ``dvc repro``, so when DVC re-runs precompute after an
    edit to audio.py or an upgrade of libsndfile, only this keeps the old shards from being
    taken as finished.
    """
    import h5py
    import soundfile
    import soxr

    code = hashlib.blake2b(digest_size=16)
    for module in (audio, store):
        code.update(Path(module.__file__).read_bytes())
    return "|".join([
        f"format {FORMAT_VERSION}", f"min_samples {MIN_SAMPLES}", f"code {code.hexdigest()}",
        f"numpy {np.__version__}", f"soundfile {soundfile.__version__}",
        f"libsndfile {soundfile.__libsndfile_version__}", f"soxr {soxr.__version__}",
        f"h5py {h5py.__version__}", f"hdf5 {h5py.version.hdf5_version}",
    ])


def fingerprints(plan: ShardPlan, sample_rate: int, dtype: str, modes: tuple[str, ...],
                 decoder: str) -> list[str]:
    """A hash of what a shard is made of (file names and bytes, every setting and the
    ``decoder``), one per ``on_error`` mode in ``modes``; the files are read once for all."""
    digests = []
    for on_error in modes:
        digests.append(hashlib.blake2b(digest_size=16))
        digests[-1].update(f"{decoder}|{sample_rate}|{dtype}|{on_error}".encode())
    for source in plan.sources:
        for digest in digests:
            digest.update(source.key.encode())
        with open(source.path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                for digest in digests:
                    digest.update(block)
    return [digest.hexdigest() for digest in digests]


def _decode_or_reason(source: Source, sample_rate: int, dtype: str) -> Recording | str:
    """The recording decoded, or why it cannot be stored (naming the file).

    ``decode`` checks the file before resampling and knows no ``dtype``; here the samples are
    checked as they will be stored: a very short file can resample to none, and float16 overflows.
    """
    try:
        recording = decode(source.path, sample_rate)
    except AudioError as error:
        return str(error)
    samples = len(recording.wave)
    if samples < MIN_SAMPLES:
        return (f"{source.path}: {samples} samples after resampling from {recording.source_rate} Hz to "
                f"{sample_rate} Hz, too short to train on; delete or replace it.")
    if dtype == "float16":
        peak = float(np.abs(recording.wave).max())
        if peak > FLOAT16_MAX:
            return (f"{source.path}: peak {peak:.6g} is beyond float16's range (±{FLOAT16_MAX:.0f}) and would be "
                    "stored as infinity; normalise the file (e.g. to [-1, 1]) or set precompute.dtype: float32.")
    return recording


def precompute(raw: Path, external: Path, out: Path, params: Params, progress: bool = True) -> Summary:
    """Decode everything under ``raw`` and ``external`` into shards in ``out``."""
    raw, external = Path(raw), Path(external)
    out = check_replaceable(out, SHARD_NAME, SHARD_NAMES)  # stale shards in it are deleted
    check_tables(raw, external)
    settings = params.precompute
    sample_rate = params.audio.sample_rate
    plans = plan_shards(find_sources(raw, external), settings.files_per_shard)
    if not plans:
        raise PrecomputeError(f"no audio found under {raw} or {external / layout.EXTERNAL_AUDIO}; "
                              "run the download stage first (`dvc repro download`).")
    out.mkdir(parents=True, exist_ok=True)
    summary = Summary()
    # A shard written under `fail` skipped nothing (any failure aborts it), so it is exactly
    # what `skip` would write: following the failure message's advice re-decodes nothing.
    modes = (settings.on_error, "fail") if settings.on_error == "skip" else (settings.on_error,)
    decoder = decoder_identity()
    todo = []
    for plan in plans:
        accepted = fingerprints(plan, sample_rate, settings.dtype, modes, decoder)
        if shard_fingerprint(out / plan.name) in accepted:
            summary.shards_reused += 1
        else:
            todo.append((plan, accepted[0]))
    # The index must never point into a shard that is deleted or replaced: a failed run
    # leaves no index (readers then say "run precompute") rather than a wrong one.
    (out / INDEX_CSV).unlink(missing_ok=True)
    _remove_stale(out, {plan.name for plan in plans})
    workers = settings.workers or os.cpu_count() or 1
    with progress_bar("precompute", sum(len(plan.sources) for plan, _ in todo), progress) as advance:
        for plan, expected in todo:
            _write_shard(out, plan, expected, sample_rate, settings.dtype, settings.on_error,
                         workers, summary, advance)
    rows = []
    for plan in plans:
        shard_rows, shard_skipped = read_shard_rows(out / plan.name)
        rows += shard_rows
        summary.skipped += shard_skipped
    summary.recordings = len(rows)
    summary.seconds = sum(row.duration_s for row in rows)
    _write_skipped(out, summary.skipped)
    write_index(out, rows)
    return summary


def _write_shard(out, plan, expected, sample_rate, dtype, on_error, workers, summary, advance):
    writer = ShardWriter(out / plan.name, sample_rate, dtype, expected)
    try:
        for source, result in _decoded(plan.sources, sample_rate, dtype, workers):
            if isinstance(result, str):
                if on_error == "fail":
                    raise PrecomputeError(f"{result}\n(Or skip such files, listed then in {out / SKIPPED_CSV}: "
                                          "`dvc exp run -S precompute.on_error=skip precompute`, or set it in "
                                          "conf/config.yaml, which `dvc exp run` composes params.yaml from.)")
                writer.skip(source.key, result)
            else:
                writer.append(source.key, result.wave, result.source_rate, result.source_channels,
                              result.source_format)
            advance(1)
    except BaseException:
        writer.abort()
        raise
    writer.close()
    summary.shards_written += 1


def _decoded(sources: list[Source], sample_rate: int, dtype: str, workers: int):
    """Yield (source, Recording or failure reason) in order, decoding up to ``workers`` ahead.

    The look-ahead is bounded, so memory stays flat however many files a shard holds.
    """
    if workers <= 1:
        for source in sources:
            yield source, _decode_or_reason(source, sample_rate, dtype)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        pending: deque = deque()
        queue = iter(sources)
        for source in queue:
            pending.append((source, pool.submit(_decode_or_reason, source, sample_rate, dtype)))
            if len(pending) >= 2 * workers:
                break
        while pending:
            source, future = pending.popleft()
            yield source, future.result()
            following = next(queue, None)
            if following is not None:
                pending.append((following, pool.submit(_decode_or_reason, following, sample_rate, dtype)))


def _remove_stale(out: Path, keep: set[str]) -> None:
    """Delete shards of an earlier plan and leftovers of an interrupted write: only files
    named as precompute names them, so nothing else in ``out`` is lost."""
    leftovers = {INDEX_CSV + ".tmp", SKIPPED_CSV + ".tmp"}  # see outputs.write_atomically
    for path in out.iterdir():
        if path.name not in keep and (SHARD_NAME.fullmatch(path.name) or path.name in leftovers):
            path.unlink()


def _write_skipped(out: Path, skipped: list[tuple[str, str]]) -> None:
    import pandas as pd

    frame = pd.DataFrame(skipped, columns=["key", "reason"])
    write_atomically(out / SKIPPED_CSV, lambda tmp: frame.to_csv(tmp, index=False))
