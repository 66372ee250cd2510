"""The decoded-audio store: a few large HDF5 shards plus one index table.

Why shards: DVC hashes, pushes and checks out every file of an output, so one HDF5 file per
recording (the seed's layout: ~46,000 files on the real data) makes every ``dvc status`` slow.
Here each shard holds up to ``files_per_shard`` recordings concatenated in one 1-D dataset
``audio`` (mono, 32 kHz), chunked in ~2-s blocks so a random 5-s window touches 3-4 chunks.
``index.csv`` maps each recording to its shard, offset and length.

Shard file format (self-describing, so ``index.csv`` can be rebuilt from the shards)::

    /audio                 float16|float32 (total_samples,), chunks of 65,536 samples
    /recordings            the shard's rows of the index (key, offset, length, source_*)
    attrs: sample_rate, dtype, fingerprint (of the inputs and settings that made it)

A shard is written to ``<name>.h5.tmp`` and renamed when complete, so a crash never leaves a
half-written shard behind under its final name.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from birdclef.outputs import write_atomically

CHUNK_SAMPLES = 1 << 16
INDEX_CSV = "index.csv"
INDEX_COLUMNS = (
    "key",
    "collection",
    "shard",
    "offset",
    "length",
    "duration_s",
    "source_rate",
    "source_channels",
    "source_format",
)


class StoreError(LookupError):
    """A key or shard that the store does not hold; the message says how to rebuild it."""


@dataclass(frozen=True)
class StoredRecording:
    key: str
    collection: str
    shard: str
    offset: int
    length: int
    duration_s: float
    source_rate: int
    source_channels: int
    source_format: str


def collection_of(key: str) -> str:
    """The first folder of a key: ``train_audio``, ``extra``, ``train_soundscapes``, ..."""
    return key.split("/", 1)[0]


class ShardWriter:
    """Appends decoded recordings to one new shard; ``close()`` makes it visible atomically."""

    def __init__(self, path: Path, sample_rate: int, dtype: str, fingerprint: str):
        import h5py

        self.path = Path(path)
        self.tmp_path = self.path.with_name(self.path.name + ".tmp")
        self.tmp_path.unlink(missing_ok=True)
        self._file = h5py.File(self.tmp_path, "w")
        self._audio = self._file.create_dataset(
            "audio", shape=(0,), maxshape=(None,), dtype=dtype, chunks=(CHUNK_SAMPLES,)
        )
        self._file.attrs.update(sample_rate=sample_rate, dtype=dtype, fingerprint=fingerprint)
        self.sample_rate = sample_rate
        self.rows: list[StoredRecording] = []
        self.skipped: list[tuple[str, str]] = []

    def append(self, key: str, wave: np.ndarray, source_rate: int, source_channels: int,
               source_format: str) -> None:
        offset = self._audio.shape[0]
        self._audio.resize((offset + wave.shape[0],))
        self._audio[offset:] = wave
        self.rows.append(StoredRecording(
            key=key,
            collection=collection_of(key),
            shard=self.path.name,
            offset=offset,
            length=int(wave.shape[0]),
            duration_s=round(wave.shape[0] / self.sample_rate, 6),
            source_rate=source_rate,
            source_channels=source_channels,
            source_format=source_format,
        ))

    def skip(self, key: str, reason: str) -> None:
        """Record a recording left out (``precompute.on_error: skip``) inside the shard."""
        self.skipped.append((key, reason))

    def close(self) -> list[StoredRecording]:
        import h5py

        table = np.array(
            [tuple(getattr(row, name) for name in INDEX_COLUMNS) for row in self.rows],
            dtype=_recordings_dtype(h5py),
        )
        self._file.create_dataset("recordings", data=table)
        self._file.attrs["skipped"] = json.dumps(self.skipped)
        self._file.close()
        os.replace(self.tmp_path, self.path)
        return self.rows

    def abort(self) -> None:
        self._file.close()
        self.tmp_path.unlink(missing_ok=True)


def _recordings_dtype(h5py) -> np.dtype:
    text = h5py.string_dtype()
    return np.dtype([
        ("key", text), ("collection", text), ("shard", text), ("offset", "i8"), ("length", "i8"),
        ("duration_s", "f8"), ("source_rate", "i8"), ("source_channels", "i8"),
        ("source_format", text),
    ])


def read_shard_rows(path: Path) -> tuple[list[StoredRecording], list[tuple[str, str]]]:
    """The index rows stored inside a finished shard, and the recordings it skipped."""
    import h5py

    with h5py.File(path, "r") as shard:
        table = shard["recordings"][()]
        skipped = [tuple(pair) for pair in json.loads(shard.attrs.get("skipped", "[]"))]
    rows = []
    for record in table:
        values = {name: record[name] for name in INDEX_COLUMNS}
        for name in ("key", "collection", "shard", "source_format"):
            value = values[name]
            values[name] = value.decode() if isinstance(value, bytes) else str(value)
        for name in ("offset", "length", "source_rate", "source_channels"):
            values[name] = int(values[name])
        values["duration_s"] = float(values["duration_s"])
        rows.append(StoredRecording(**values))
    return rows, skipped


def shard_fingerprint(path: Path) -> str | None:
    """The fingerprint of a finished shard, or None when it is missing or unreadable."""
    import h5py

    try:
        with h5py.File(path, "r") as shard:
            if "recordings" not in shard:
                return None
            return str(shard.attrs.get("fingerprint", ""))
    except OSError:
        return None


def write_index(root: Path, rows: list[StoredRecording]) -> Path:
    """Write ``index.csv`` atomically, sorted by key so it is byte-stable."""
    import pandas as pd

    frame = pd.DataFrame([row.__dict__ for row in rows], columns=list(INDEX_COLUMNS))
    frame = frame.sort_values("key", kind="stable").reset_index(drop=True)
    path = Path(root) / INDEX_CSV
    write_atomically(path, lambda tmp: frame.to_csv(tmp, index=False))
    return path


def as_float32(samples: np.ndarray) -> np.ndarray:
    """Stored samples as float32. float16 is widened by torch (vectorised): numpy's cast is
    ~20x slower (benchmarks/dataloader.py times both), and was most of a DataLoader worker's
    time. Widening is exact either way."""
    if samples.dtype != np.float16:
        return samples.astype(np.float32, copy=False)
    import torch

    return torch.from_numpy(samples).float().numpy()


class AudioStore:
    """Read windows of stored recordings: ``store.read("train_audio/x/y.ogg", 10.0, 15.0)``.

    Shards are opened read-only on first use and once per process, so the object can be
    handed to DataLoader workers (they re-open after the fork).
    """

    def __init__(self, root: str | Path = "data/store"):
        import pandas as pd

        self.root = Path(root)
        index_path = self.root / INDEX_CSV
        if not index_path.is_file():
            raise StoreError(f"{index_path}: no store index; run `dvc repro precompute` "
                             "(or `birdclef precompute`) first.")
        frame = pd.read_csv(index_path, keep_default_na=False)
        missing = set(INDEX_COLUMNS) - set(frame.columns)
        if missing:
            raise StoreError(f"{index_path}: missing columns {sorted(missing)}; rebuild the store.")
        self.index = frame.set_index("key", drop=False)
        self._rows = {record["key"]: StoredRecording(**record) for record in frame.to_dict("records")}
        self._files: dict[str, object] = {}
        self._datasets: dict[str, object] = {}
        self._pid = os.getpid()
        self.sample_rate = self._read_sample_rate()

    def _read_sample_rate(self) -> int:
        shards = sorted(set(self.index["shard"]))
        if not shards:
            return 32000
        return int(self._shard(shards[0]).attrs["sample_rate"])

    def __contains__(self, key: str) -> bool:
        return key in self._rows

    def __len__(self) -> int:
        return len(self._rows)

    def keys(self, collection: str | None = None) -> list[str]:
        if collection is None:
            return list(self._rows)
        return [key for key, row in self._rows.items() if row.collection == collection]

    def _row(self, key: str):
        try:
            return self._rows[key]
        except KeyError:
            raise StoreError(f"{key}: not in the store {self.root}; is the file under data/raw "
                             "or data/external, and was precompute re-run since it was added?") from None

    def duration(self, key: str) -> float:
        return float(self._row(key).duration_s)

    def length(self, key: str) -> int:
        return int(self._row(key).length)

    def _shard(self, name: str):
        import h5py

        if self._pid != os.getpid():  # a forked worker must not share HDF5 handles
            self._files, self._datasets, self._pid = {}, {}, os.getpid()
        if name not in self._files:
            path = self.root / name
            if not path.is_file():
                raise StoreError(f"{path}: shard missing; re-run `dvc repro precompute`.")
            # No chunk cache: random 5-s windows seldom hit a cached chunk again, and 8 MiB per
            # open shard per DataLoader worker adds up (+209 MB at 24 shards, benchmarks/scale.py).
            try:
                self._files[name] = h5py.File(path, "r", rdcc_nbytes=0)
            except OSError as error:  # truncated, or not HDF5 at all
                raise StoreError(f"{path}: damaged shard ({error}); re-run `dvc repro precompute`, which "
                                 "rebuilds it.") from None
        return self._files[name]

    def _audio(self, name: str):
        """The shard's ``audio`` dataset, looked up once (h5py's name lookup costs per read)."""
        if self._pid != os.getpid() or name not in self._datasets:
            self._datasets[name] = self._shard(name)["audio"]
        return self._datasets[name]

    def read_samples(self, key: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Samples ``[start, stop)`` of a recording, clipped to its length, as float32."""
        row = self._row(key)
        stop = row.length if stop is None else min(int(stop), row.length)
        start = max(0, min(int(start), stop))
        return as_float32(self._audio(row.shard)[row.offset + start: row.offset + stop])

    def read(self, key: str, start_s: float = 0.0, end_s: float | None = None) -> np.ndarray:
        """Seconds ``[start_s, end_s)`` of a recording (clipped to its length), as float32."""
        stop = None if end_s is None else round(end_s * self.sample_rate)
        return self.read_samples(key, round(start_s * self.sample_rate), stop)

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()
        self._files, self._datasets = {}, {}

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_files"], state["_datasets"] = {}, {}
        return state
