"""The schema of ``params.yaml``: one typed dataclass per section, with no defaults.

The values live in ``conf/`` (composed into ``params.yaml``), so nothing here can drift from
them: a key missing from the file is an error, like an unknown key or a wrong type.

``load_params`` checks the whole file against the schema, so a typo or a wrong type anywhere
fails at once with the full key path, instead of as a ``KeyError`` deep inside a stage.
Heavy libraries are not imported here: every stage reads its params first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional
from pathlib import Path


class ParamsError(ValueError):
    """``params.yaml`` does not match the schema (the message names the key and the fix)."""


@dataclass
class SampleParams:
    """The embedded, generated dataset (``data.source: sample``; see conf/data/sample.yaml)."""

    seed: int
    species: int
    min_recordings: int
    max_recordings: int
    min_recording_seconds: float
    max_recording_seconds: float
    extra_recordings_per_species: int
    train_soundscapes: int
    test_soundscapes: int
    soundscape_seconds: int
    calls_per_soundscape: int
    background_clips: int
    pretrain_extra_species: int
    pretrain_recordings_per_species: int


@dataclass
class DataParams:
    source: str
    sample: Optional[SampleParams] = None  # only for `source: sample`


@dataclass
class AudioParams:
    sample_rate: int
    window_seconds: float


@dataclass
class PrecomputeParams:
    dtype: str
    files_per_shard: int
    workers: int
    on_error: str


@dataclass
class Params:
    seed: int
    data: DataParams
    audio: AudioParams
    precompute: PrecomputeParams


CHOICES = {
    "data.source": ("sample", "birdclef2025"),
    "precompute.dtype": ("float16", "float32"),
    "precompute.on_error": ("fail", "skip"),
}


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate ``params.yaml``; raise ``ParamsError`` naming the bad key."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: not found; run from the project root (where dvc.yaml is).")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Params), OmegaConf.load(path))
        params = OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or "?"
        raise ParamsError(f"{path}: bad value at '{key}': {str(error.msg).splitlines()[0]}") from None
    _check(params, path)
    return params


def _check(params: Params, path: Path) -> None:
    for key, allowed in CHOICES.items():
        value = _get(params, key)
        if value not in allowed:
            raise ParamsError(f"{path}: '{key}' is {value!r}; use one of {', '.join(allowed)}.")
    sample = params.data.sample
    if params.data.source == "sample" and sample is None:
        raise ParamsError(f"{path}: 'data.source' is sample but there is no 'data.sample' section.")
    if sample is None:
        return
    if sample.min_recordings > sample.max_recordings:
        raise ParamsError(f"{path}: data.sample.min_recordings exceeds max_recordings.")
    if sample.min_recording_seconds > sample.max_recording_seconds:
        raise ParamsError(f"{path}: data.sample.min_recording_seconds exceeds max_recording_seconds.")
    if params.precompute.files_per_shard < 1:
        raise ParamsError(f"{path}: precompute.files_per_shard must be at least 1.")


def _get(obj, dotted: str):
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj
