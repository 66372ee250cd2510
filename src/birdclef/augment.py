"""The recipe's augmentations (seed spec §2.5), in the order they run.

Per item, in the dataset (numpy, explicit ``numpy.random.Generator``): ``peak_normalize``,
``mixup`` of two windows, ``BackgroundMixer`` (no-call soundscapes or ESC-50 noise).
Per batch, on the training device (torch): ``RandomFiltering`` on the waves, then
``SpecAugment`` on the [0, 1] spectrogram inside the model. Targets change only in mixup.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

# (rng, n_samples) -> background audio at the training rate, scaled so that its whole
# recording peaks at 1 (the seed normalises the recording, then crops). Any length: the mixer
# crops a longer one at random and tiles a shorter one.
BackgroundSource = Callable[[np.random.Generator, int], np.ndarray]


def peak_normalize(wave: np.ndarray) -> np.ndarray:
    """Scale to max |x| = 1, so loudness differences between recordings carry no label signal.

    Silence stays silence instead of dividing by zero.
    """
    wave = np.asarray(wave, dtype=np.float32)
    peak = float(np.max(np.abs(wave))) if wave.size else 0.0
    if peak == 0.0:
        return wave.copy()
    return wave / np.float32(peak)


def mixup(
    wave_a: np.ndarray, target_a: np.ndarray, wave_b: np.ndarray, target_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Equal-weight mix of two windows; the target is the hard union of both.

    Both species are audible at comparable level, so both are labelled fully present
    rather than at the mixing weight.
    """
    if np.shape(wave_a) != np.shape(wave_b) or np.shape(target_a) != np.shape(target_b):
        raise ValueError(
            f"mixup needs equal shapes: waves {np.shape(wave_a)} / {np.shape(wave_b)}, "
            f"targets {np.shape(target_a)} / {np.shape(target_b)}"
        )
    wave = peak_normalize((np.asarray(wave_a, np.float32) + np.asarray(wave_b, np.float32)) / 2)
    target = np.clip(np.asarray(target_a, np.float32) + np.asarray(target_b, np.float32), 0, 1)
    return wave, target


def fit_to_length(noise: np.ndarray, n_samples: int, rng: np.random.Generator) -> np.ndarray:
    """A random ``n_samples`` crop of a longer background, or a shorter one tiled to length."""
    if len(noise) == 0:
        raise ValueError("background audio is empty")
    if len(noise) > n_samples:
        start = int(rng.integers(0, len(noise) - n_samples + 1))
        return noise[start : start + n_samples]
    repeats = -(-n_samples // len(noise))
    return np.tile(noise, repeats)[:n_samples]


class ClipBackground:
    """Preloaded background clips (the seed's ESC-50 subset): one clip drawn uniformly."""

    def __init__(self, clips: Sequence[np.ndarray]):
        if len(clips) == 0:
            raise ValueError("a background source needs at least one clip")
        self.clips = [peak_normalize(clip) for clip in clips]

    def __call__(self, rng: np.random.Generator, n_samples: int) -> np.ndarray:
        return self.clips[int(rng.integers(len(self.clips)))]


class AudioReader(Protocol):
    """What ``StoreBackground`` needs from the audio store."""

    def read(self, key: str, start_s: float, end_s: float) -> np.ndarray: ...

    def duration(self, key: str) -> float: ...


class StoreBackground:
    """Background recordings read from the audio store (the seed's no-call soundscapes).

    Reads only the window it needs, so long soundscapes cost one 5-s read per item. The
    crop is scaled by the peak of the whole recording, as the seed normalises before
    cropping; each recording's peak is read once and remembered (per worker process).
    """

    def __init__(self, keys: Sequence[str], reader: AudioReader, sample_rate: int):
        if len(keys) == 0:
            raise ValueError("a background source needs at least one recording")
        self.keys = list(keys)
        self.reader = reader
        self.sample_rate = sample_rate
        self._peaks: dict[str, float] = {}

    def _peak(self, key: str) -> float:
        if key not in self._peaks:
            whole = self.reader.read(key, 0.0, self.reader.duration(key))
            self._peaks[key] = float(np.max(np.abs(whole))) if len(whole) else 0.0
        return self._peaks[key]

    def __call__(self, rng: np.random.Generator, n_samples: int) -> np.ndarray:
        key = self.keys[int(rng.integers(len(self.keys)))]
        duration_s = self.reader.duration(key)
        total = int(round(duration_s * self.sample_rate))
        if total > n_samples:
            start = int(rng.integers(0, total - n_samples + 1))
            start_s = start / self.sample_rate
            audio = self.reader.read(key, start_s, start_s + n_samples / self.sample_rate)
        else:
            audio = self.reader.read(key, 0.0, duration_s)
        audio = np.asarray(audio, dtype=np.float32)
        peak = self._peak(key)
        return audio / np.float32(peak) if peak > 0 else audio


class BackgroundMixer:
    """Adds real background (rain, insects, a silent forest) under the call; targets unchanged.

    ``OneOf`` semantics of the seed: one source is chosen uniformly, and it fires with
    probability ``p``. A source is a ``BackgroundSource`` callable or a list of clips.
    """

    def __init__(
        self,
        sources: Sequence[BackgroundSource | Sequence[np.ndarray]],
        p: float = 0.5,
        weight_range: tuple[float, float] = (0.25, 0.75),
    ):
        if len(sources) == 0:
            raise ValueError("BackgroundMixer needs at least one source")
        self.sources = [src if callable(src) else ClipBackground(src) for src in sources]
        self.p = p
        self.weight_range = weight_range

    def __call__(self, wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The peak-normalised mix, or ``wave`` itself when the chosen source does not fire."""
        source = self.sources[int(rng.integers(len(self.sources)))]
        if rng.random() >= self.p:
            return wave
        noise = fit_to_length(np.asarray(source(rng, len(wave)), np.float32), len(wave), rng)
        weight = rng.uniform(*self.weight_range)
        return peak_normalize(wave * (1.0 - weight) + noise * weight)


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device) -> torch.Tensor:
    """U(0, 1) draws from ``generator`` (or the global RNG), moved to ``device``."""
    draw_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=draw_device).to(device)


class RandomFiltering(nn.Module):
    """Random smooth equaliser per sample: the same call through different microphones.

    4 gains in U(min_db, 0) dB spread evenly over the spectrum and interpolated linearly
    between, applied to the STFT. It only attenuates; the peak normalisation afterwards
    restores the level. Identity in eval mode. Input and output: waves (B, N).

    The inverse STFT computes what ``torch.istft(center=True)`` does (bit for bit at the default
    hop of n_fft / 2), but tests the overlap-add envelope for zeros once, here, instead of on
    every call: on a GPU ``torch.istft``'s test copies its answer to the host, which stalls every
    training step until the GPU catches up. The envelope itself is a few small tensor ops per
    call and nothing is cached, so ``torch.compile`` captures the whole module as one graph (a
    cached tensor built inside a CUDA graph is overwritten by the graph's next replay).
    """

    def __init__(
        self,
        n_bands: int = 4,
        min_db: float = -20.0,
        n_fft: int = 1024,
        hop_length: int = 512,
        normalize: bool = True,
    ):
        super().__init__()
        if n_fft % hop_length:
            raise ValueError(f"RandomFiltering: hop_length {hop_length} must divide n_fft {n_fft}")
        self.n_bands = n_bands
        self.min_db = min_db
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.normalize = normalize
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        # Away from the edges the envelope repeats with period hop: the windows' squares summed
        # over their n_fft // hop overlapping positions. The edges are covered by a window's centre.
        if self.window.square().reshape(-1, hop_length).sum(dim=0).min() < 1e-11:
            raise ValueError(f"RandomFiltering: n_fft {n_fft} with hop {hop_length} leaves samples no window "
                             "covers; use a hop of at most n_fft // 2")

    def band_gains(self, batch: int, generator: torch.Generator | None, device) -> torch.Tensor:
        """Amplitude gains (B, n_fft // 2 + 1), each in [10^(min_db/20), 1]."""
        gains_db = _uniform((batch, 1, self.n_bands), generator, device) * self.min_db
        n_bins = self.n_fft // 2 + 1
        gains_db = F.interpolate(gains_db, size=n_bins, mode="linear", align_corners=True)
        return torch.pow(10.0, gains_db[:, 0] / 20.0)

    def forward(self, wave: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if not self.training:
            return wave
        if wave.ndim != 2:
            raise ValueError(f"RandomFiltering expects waves (B, N), got {tuple(wave.shape)}")
        spec = torch.stft(
            wave,
            self.n_fft,
            self.hop_length,
            window=self.window,
            center=True,
            pad_mode="reflect",
            return_complex=True,
        )
        spec = spec * self.band_gains(wave.shape[0], generator, wave.device)[:, :, None]
        # All N samples come back; the seed's inverse STFT dropped the last 256. Same number
        # of mel frames either way, so the fix is harmless and shapes stay fixed.
        filtered = self.inverse_stft(spec, wave.shape[-1])
        if not self.normalize:
            return filtered
        return filtered / (filtered.abs().amax(dim=-1, keepdim=True) + 1e-6)

    def inverse_stft(self, spec: torch.Tensor, length: int) -> torch.Tensor:
        """(B, n_fft // 2 + 1, frames) complex -> (B, length): ``torch.istft(center=True)``."""
        frames = torch.fft.irfft(spec.transpose(1, 2), n=self.n_fft) * self.window  # (B, frames, n_fft)
        return self._overlap_add(frames, length) / self._envelope(frames.shape[1], length, frames)

    def _overlap_add(self, frames: torch.Tensor, length: int) -> torch.Tensor:
        """(B, frames, n_fft) -> (B, length): each frame added at its hop, then the n_fft // 2
        samples that ``center=True`` padded in front are dropped."""
        batch, n_frames, _ = frames.shape
        overlap = self.n_fft // self.hop_length
        parts = frames.reshape(batch, n_frames, overlap, self.hop_length)
        summed = frames.new_zeros(batch, n_frames + overlap - 1, self.hop_length)
        for part in range(overlap):  # part k of frame t lands in hop-slot t + k
            summed[:, part:part + n_frames] += parts[:, :, part]
        start = self.n_fft // 2
        return summed.reshape(batch, -1)[:, start:start + length]

    def _envelope(self, n_frames: int, length: int, like: torch.Tensor) -> torch.Tensor:
        """The summed squared windows over the kept samples, (1, length)."""
        squares = self.window.to(like.dtype).square().expand(1, n_frames, self.n_fft)
        return self._overlap_add(squares, length)


class SpecAugment(nn.Module):
    """Zeroes random frequency bands and time spans of the [0, 1] spectrogram (training only).

    Per sample, independently: with probability ``p`` 1 to ``max_masks`` frequency masks of
    0 to ``freq_width - 1`` bins, and with probability ``p`` 1 to ``max_masks`` time masks of 0
    to ``time_width - 1`` frames (torchaudio's ``FrequencyMasking(freq_width)`` and
    ``TimeMasking(time_width)``, the seed's, drawn per item rather than per batch).
    Input and output: (B, C, F, T).
    """

    def __init__(
        self, freq_width: int = 10, time_width: int = 20, max_masks: int = 3, p: float = 0.3
    ):
        super().__init__()
        self.freq_width = freq_width
        self.time_width = time_width
        self.max_masks = max_masks
        self.p = p

    def _masks(self, batch: int, size: int, width: int, generator, device) -> torch.Tensor:
        """(B, size) bool: the union of each sample's masks along one axis."""
        fires = _uniform((batch,), generator, device) < self.p
        n_masks = 1 + (_uniform((batch,), generator, device) * self.max_masks).long()
        positions = torch.arange(size, device=device)[None, :]
        masked = torch.zeros(batch, size, dtype=torch.bool, device=device)
        for index in range(self.max_masks):
            # torchaudio's mask_along_axis: a real width in [0, width), its integer part
            # masked, starting at the integer part of a uniform draw in [0, size - real width).
            real_widths = (_uniform((batch, 1), generator, device) * width).clamp(max=size)
            widths = real_widths.long()
            starts = (_uniform((batch, 1), generator, device) * (size - real_widths)).long()
            active = (fires & (index < n_masks))[:, None]
            masked |= active & (positions >= starts) & (positions < starts + widths)
        return masked

    def forward(self, spec: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if not self.training:
            return spec
        if spec.ndim != 4:
            raise ValueError(f"SpecAugment expects (B, C, F, T), got {tuple(spec.shape)}")
        batch, _, n_freq, n_time = spec.shape
        freq = self._masks(batch, n_freq, self.freq_width, generator, spec.device)
        time = self._masks(batch, n_time, self.time_width, generator, spec.device)
        return spec.masked_fill(freq[:, None, :, None] | time[:, None, None, :], 0.0)
