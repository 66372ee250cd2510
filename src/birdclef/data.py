"""Datasets over the audio store: random training windows and whole-file validation chunks.

Training items follow the seed's order (spec §2.5): maybe swap for a pseudo-labelled
soundscape chunk of the same class, crop 5 s (left-pad short clips), build the target,
peak-normalise, mixup, background. Each process draws from its own generator seeded by
``torch.initial_seed()``, which Lightning's ``seed_everything(workers=True)`` makes
deterministic per worker and epoch: the same seed gives the same batches.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, WeightedRandomSampler

from birdclef.augment import BackgroundMixer, mixup, peak_normalize
from birdclef.labels import multi_hot, smooth
from birdclef.store import AudioStore


def crop_or_pad(wave: np.ndarray, n_samples: int, rng: np.random.Generator | None) -> np.ndarray:
    """A random ``n_samples`` crop (the start anywhere), or the clip left-padded with zeros."""
    if len(wave) >= n_samples:
        start = 0 if rng is None else int(rng.integers(0, len(wave) - n_samples + 1))
        return wave[start:start + n_samples]
    return np.concatenate([np.zeros(n_samples - len(wave), np.float32), wave])


def split_windows(wave: np.ndarray, window_samples: int) -> np.ndarray:
    """(samples,) -> (n, window_samples): non-overlapping windows from 0 s, the last one
    left-padded, each peak-normalised on its own (inference, spec §5.1)."""
    count = max(1, math.ceil(len(wave) / window_samples))
    return np.stack([peak_normalize(crop_or_pad(wave[i * window_samples:(i + 1) * window_samples],
                                                window_samples, None)) for i in range(count)])


@dataclass(frozen=True)
class PseudoChunk:
    """A 5-s soundscape window whose target is the teacher ensemble's probabilities."""

    key: str
    end_s: float
    target: np.ndarray


class PseudoPool:
    """Pseudo-labelled chunks filed under their primary class (seed spec §2.7).

    With probability ``swap_p`` a training item whose class has chunks is replaced by one of
    them, drawn uniformly: the swap follows the row distribution, like the seed's.
    """

    def __init__(self, chunks_by_class: dict[str, list[PseudoChunk]], swap_p: float):
        self.chunks_by_class = {label: chunks for label, chunks in chunks_by_class.items() if chunks}
        self.swap_p = swap_p

    def __len__(self) -> int:
        return sum(len(chunks) for chunks in self.chunks_by_class.values())

    def draw(self, label: str, rng: np.random.Generator) -> PseudoChunk | None:
        chunks = self.chunks_by_class.get(label)
        if not chunks or rng.random() >= self.swap_p:
            return None
        return chunks[int(rng.integers(len(chunks)))]


class _StoreReader:
    """Opens the store lazily, once per process (DataLoader workers fork)."""

    def __init__(self, store_root: Path):
        self.store_root = Path(store_root)
        self._store: AudioStore | None = None

    @property
    def store(self) -> AudioStore:
        if self._store is None:
            self._store = AudioStore(self.store_root)
        return self._store

    def __getstate__(self):
        return {"store_root": self.store_root, "_store": None}


class TrainingWindows(Dataset, _StoreReader):
    """Random 5-s training windows with targets, augmented per item (not per batch).

    ``table`` has ``key``, ``primary_label`` and ``secondary_labels`` (lists); ``rows`` picks
    the fold's training rows, duplicates (oversampling) included. Waves leave the worker as
    ``wave_dtype``: float16 (the store's precision; a peak-normalised wave keeps ~66 dB SNR)
    halves what each batch costs in shared memory, pinning and the host-to-device copy; the
    training step computes in float32.
    """

    def __init__(self, store_root: Path, table, rows: list[int], classes: list[str],
                 window_samples: int, label_smoothing: float, mixup_p: float,
                 pseudo: PseudoPool | None = None, background: BackgroundMixer | None = None,
                 wave_dtype: str = "float16"):
        _StoreReader.__init__(self, store_root)
        self.keys = table["key"].tolist()
        self.primary = table["primary_label"].tolist()
        self.secondary = table["secondary_labels"].tolist()
        self.rows = list(rows)
        self.class_index = {label: index for index, label in enumerate(classes)}
        self.window_samples = window_samples
        self.label_smoothing = label_smoothing
        self.mixup_p = mixup_p
        self.pseudo = pseudo
        self.background = background
        self.wave_dtype = getattr(torch, wave_dtype)
        self._rng: np.random.Generator | None = None
        self._rng_seed: int | None = None

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def labels(self) -> list[str]:
        """The primary label of every item: what the samplers weigh."""
        return [self.primary[row] for row in self.rows]

    def rng(self) -> np.random.Generator:
        seed = torch.initial_seed()
        if self._rng is None or self._rng_seed != seed:
            self._rng, self._rng_seed = np.random.default_rng(seed), seed
        return self._rng

    def _window(self, position: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        row = self.rows[position]
        chunk = None if self.pseudo is None else self.pseudo.draw(self.primary[row], rng)
        if chunk is not None:
            start_s = chunk.end_s - self.window_samples / self.store.sample_rate
            wave = crop_or_pad(self.store.read(chunk.key, start_s, chunk.end_s), self.window_samples, None)
            return peak_normalize(wave), chunk.target.astype(np.float32)
        key = self.keys[row]
        length = self.store.length(key)
        start = int(rng.integers(0, length - self.window_samples + 1)) if length > self.window_samples else 0
        wave = crop_or_pad(self.store.read_samples(key, start, start + self.window_samples),
                           self.window_samples, None)
        target = multi_hot(self.primary[row], self.secondary[row], self.class_index)
        if self.label_smoothing:
            target = smooth(target, self.label_smoothing)
        return peak_normalize(wave), target

    def __getitem__(self, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = self.rng()
        wave, target = self._window(position, rng)
        if rng.random() < self.mixup_p:
            partner = int(rng.integers(len(self.rows)))  # uniform over rows, like the seed
            wave, target = mixup(wave, target, *self._window(partner, rng))
        if self.background is not None:
            wave = self.background(wave, rng)
        # torch's cast (vectorised): numpy's float32 -> float16 gives the same values ~20x slower
        # (benchmarks/dataloader.py times both).
        wave = torch.from_numpy(np.ascontiguousarray(wave, np.float32)).to(self.wave_dtype)
        return wave, torch.from_numpy(target)


class ValidationChunks(Dataset, _StoreReader):
    """Every recording cut into non-overlapping 5-s chunks from 0 s; the last one left-padded.

    Each chunk is peak-normalised on its own (spec §2.8). Items are (wave, file position), so
    predictions can be reduced to one row per file by max.
    """

    def __init__(self, store_root: Path, keys: list[str], window_samples: int):
        _StoreReader.__init__(self, store_root)
        self.keys = list(keys)
        self.window_samples = window_samples
        lengths = AudioStore(store_root).index.loc[self.keys, "length"].to_numpy()
        self.chunks = [(file, chunk) for file, length in enumerate(lengths)
                       for chunk in range(max(1, math.ceil(length / window_samples)))]

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, position: int) -> tuple[torch.Tensor, int]:
        file, chunk = self.chunks[position]
        start = chunk * self.window_samples
        wave = self.store.read_samples(self.keys[file], start, start + self.window_samples)
        wave = peak_normalize(crop_or_pad(wave, self.window_samples, None))
        return torch.from_numpy(np.ascontiguousarray(wave)), file


def sample_weights(labels: list[str], mode: str) -> np.ndarray:
    """Per-item weights from class counts: ``sqrt`` (count/total)^-0.5, ``balanced`` 1/count."""
    values, inverse, counts = np.unique(np.asarray(labels), return_inverse=True, return_counts=True)
    if mode == "sqrt":
        per_class = (counts / counts.sum()) ** -0.5
    elif mode == "balanced":
        per_class = 1.0 / counts
    elif mode == "uniform":
        per_class = np.ones(len(values))
    else:
        raise ValueError(f"unknown sampler {mode!r}; use sqrt, balanced or uniform")
    return per_class[inverse]


def training_sampler(labels: list[str], mode: str, seed: int) -> WeightedRandomSampler:
    """The seed's sampler, reproduced as it was: WITHOUT replacement and ``len(data)`` draws.

    So every row is seen exactly once per epoch; the weights only bias the order within the
    epoch (spec §8.1). Rebalancing that changes class frequencies comes from the explicit
    oversampling rows of the prepare stage.
    """
    generator = torch.Generator().manual_seed(seed)
    return WeightedRandomSampler(torch.as_tensor(sample_weights(labels, mode), dtype=torch.double),
                                 num_samples=len(labels), replacement=False, generator=generator)


def worker_count(requested: int) -> int:
    """``requested`` DataLoader workers (0: load in the main process), or for -1 one per core
    but the main process's."""
    return requested if requested >= 0 else max(0, (os.cpu_count() or 1) - 1)
