"""Decoding any recording the competition ships (ogg, mp3, flac, wav) to mono float32 at 32 kHz.

soundfile (libsndfile) decodes every format with no system packages; soxr resamples with the
same "HQ" filter that ``librosa.load(path, sr=32000)`` uses (``res_type="soxr_hq"``), so the
samples match the seed's decoding. Channels are averaged, like librosa.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


class AudioError(ValueError):
    """A recording that cannot be used; the message names the file and what to do."""


@dataclass(frozen=True)
class Recording:
    wave: np.ndarray  # (samples,) float32 at `sample_rate`
    sample_rate: int
    source_rate: int
    source_channels: int
    source_format: str


def decode(path: str | Path, sample_rate: int = 32000) -> Recording:
    """Read ``path``, average the channels, resample to ``sample_rate``."""
    import soundfile as sf
    import soxr

    path = Path(path)
    try:  # libsndfile words a missing, unreadable or empty file as a format problem
        with path.open("rb") as handle:
            empty = not handle.read(1)
    except OSError as error:
        raise AudioError(f"{path}: cannot open it ({error.strerror}); check the path (a broken link?) "
                         "and its permissions.") from None
    if empty:
        raise AudioError(f"{path}: empty file (0 bytes); delete or replace it.")
    try:
        info = sf.info(str(path))
        if info.subtype == "OPUS":
            # libsndfile reports a wrong sample rate for Ogg/Opus (seen: 24000 for 32 kHz).
            raise AudioError(
                f"{path}: Ogg/Opus is decoded at a wrong rate by libsndfile; "
                "convert it first, e.g. `ffmpeg -i in.opus out.ogg` (Vorbis) or to FLAC."
            )
        data, source_rate = sf.read(str(path), dtype="float32", always_2d=True)
    except AudioError:
        raise
    except (sf.LibsndfileError, RuntimeError, OSError) as error:
        reason = getattr(error, "error_string", None) or str(error)
        if reason.startswith("File does not exist"):  # libsndfile's words for a file it opened but cannot parse
            reason = "libsndfile cannot parse it"
        raise AudioError(f"{path}: cannot decode ({reason}); the file is corrupt or not audio. "
                         "Re-download or delete it.") from None
    if source_rate <= 0:
        raise AudioError(f"{path}: unreadable sample rate {source_rate}; re-encode the file.")
    if data.shape[0] == 0:
        raise AudioError(f"{path}: contains no samples (empty or truncated); delete or replace it.")
    if not np.isfinite(data).all():
        raise AudioError(f"{path}: contains NaN or infinite samples; re-encode the file.")
    wave = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if source_rate != sample_rate:
        wave = soxr.resample(wave, source_rate, sample_rate, quality="HQ").astype(np.float32, copy=False)
    return Recording(
        wave=np.ascontiguousarray(wave),
        sample_rate=sample_rate,
        source_rate=int(source_rate),
        source_channels=int(data.shape[1]),
        source_format=str(info.format),
    )
