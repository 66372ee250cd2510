"""Waveform to normalised log-mel spectrogram, computed inside the network.

The spectrogram lives in the model so that the exported ONNX graph takes raw 32 kHz audio,
exactly as the seed's exported ensemble does (seed spec §2.3, steps 1-5). Two equal STFTs:
``torch.stft`` (an FFT, ~10x cheaper: what training and eager inference run) and a conv1d
with fixed Fourier kernels, which exports cleanly (a complex ``torch.stft`` does not). The
conv path is taken when ``exportable`` is set and while torch is exporting a graph.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torchaudio.functional
from torch import nn


class MelFrontend(nn.Module):
    """(B, samples) waveform -> (B, 1, n_mels, frames) log-mel spectrogram in [0, 1].

    Steps: reflect-padded one-sided STFT (window-normalised) -> power -> HTK mel filterbank
    -> dB with ``top_db`` per sample -> per-sample standardisation -> per-sample min-max.
    With the defaults, 160,000 samples (5 s) give 313 frames. There are no learned weights.
    """

    def __init__(
        self,
        sample_rate: int = 32000,
        n_fft: int = 2048,
        win_length: int | None = None,
        hop_length: int = 512,
        n_mels: int = 128,
        f_min: float = 20.0,
        f_max: float | None = None,
        power: float = 2.0,
        top_db: float = 80.0,
        amin: float = 1e-10,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        win_length = n_fft if win_length is None else win_length
        if win_length > n_fft:
            raise ValueError(f"win_length {win_length} must not exceed n_fft {n_fft}")
        self.n_fft = n_fft
        self.win_length = win_length
        self.hop_length = hop_length
        self.exportable = False
        self.power = power
        self.top_db = top_db
        self.amin = amin
        self.eps = eps

        self.register_buffer("fourier_kernels", _fourier_kernels(n_fft, win_length), persistent=False)
        window = torch.hann_window(win_length, periodic=True, dtype=torch.float64)
        self.register_buffer("window", (window / window.pow(2).sum().sqrt()).float(), persistent=False)
        mel_filters = torchaudio.functional.melscale_fbanks(
            n_freqs=n_fft // 2 + 1,
            f_min=f_min,
            f_max=sample_rate / 2 if f_max is None else f_max,
            n_mels=n_mels,
            sample_rate=sample_rate,
            norm=None,
            mel_scale="htk",
        )
        self.register_buffer("mel_filters", mel_filters, persistent=False)  # (n_freqs, n_mels)

    def power_spectrogram(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, samples) -> (B, n_freqs, frames) window-normalised |STFT| ** power."""
        if self.exportable or torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export():
            return self._conv_power_spectrogram(wave)
        spectrum = torch.stft(wave, self.n_fft, self.hop_length, self.win_length, self.window,
                              center=True, pad_mode="reflect", return_complex=True)
        power = spectrum.real.square() + spectrum.imag.square()
        return power if self.power == 2.0 else power.pow(self.power / 2.0)

    def _conv_power_spectrogram(self, wave: torch.Tensor) -> torch.Tensor:
        pad = self.n_fft // 2
        padded = F.pad(wave.unsqueeze(1), (pad, pad), mode="reflect")  # (B, 1, samples + n_fft)
        # (B, 2 * n_freqs, frames): real parts stacked over imaginary parts
        spectrum = F.conv1d(padded, self.fourier_kernels, stride=self.hop_length)
        real, imag = spectrum.chunk(2, dim=1)
        power = real * real + imag * imag
        if self.power != 2.0:
            power = power.pow(self.power / 2.0)
        return power

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, samples) float waveform -> (B, 1, n_mels, frames) in [0, 1]."""
        power = self.power_spectrogram(wave)
        mel = torch.matmul(power.transpose(1, 2), self.mel_filters)  # (B, frames, n_mels)
        mel = mel.transpose(1, 2)  # (B, n_mels, frames)

        db = 10.0 * torch.log10(torch.clamp(mel, min=self.amin))
        # The floor is relative to each item's own peak, so a quiet recording is not crushed
        # by a loud one in the same batch.
        floor = db.amax(dim=(1, 2), keepdim=True) - self.top_db
        db = torch.maximum(db, floor)

        mean = db.mean(dim=(1, 2), keepdim=True)
        std = db.std(dim=(1, 2), keepdim=True)  # unbiased, as in the seed
        standard = (db - mean) / (std + self.eps)
        low = standard.amin(dim=(1, 2), keepdim=True)
        high = standard.amax(dim=(1, 2), keepdim=True)
        scaled = (standard - low) / (high - low + self.eps)
        return scaled.unsqueeze(1)


def _fourier_kernels(n_fft: int, win_length: int) -> torch.Tensor:
    """(2 * (n_fft // 2 + 1), 1, n_fft) conv1d weights: windowed cos rows, then -sin rows.

    The periodic Hann window is centred in n_fft (as ``torch.stft`` does when win_length <
    n_fft), and the kernels are divided by sqrt(sum(window ** 2)), which is torchaudio's
    "window" normalisation of the complex STFT. Built in float64, stored as float32.
    """
    window = torch.hann_window(win_length, periodic=True, dtype=torch.float64)
    left = (n_fft - win_length) // 2
    window = F.pad(window, (left, n_fft - win_length - left))
    window = window / window.pow(2).sum().sqrt()

    time = torch.arange(n_fft, dtype=torch.float64)
    bins = torch.arange(n_fft // 2 + 1, dtype=torch.float64)
    angle = 2.0 * math.pi * bins[:, None] * time[None, :] / n_fft  # (n_freqs, n_fft)
    kernels = torch.cat([torch.cos(angle) * window, -torch.sin(angle) * window], dim=0)
    return kernels.unsqueeze(1).to(torch.float32)
