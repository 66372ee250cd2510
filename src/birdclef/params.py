"""The schema of ``params.yaml``: one typed dataclass per section, with no defaults.

The values live in ``conf/`` (composed into ``params.yaml``), so nothing here can drift from
them: a key missing from the file is an error, like an unknown key or a wrong type.

``load_params`` checks the whole file against the schema, so a typo or a wrong type anywhere
fails at once with the full key path, instead of as a ``KeyError`` deep inside a stage.
Heavy libraries are not imported here: every stage reads its params first.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass, is_dataclass
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

    @property
    def window_samples(self) -> int:
        """Samples in one training/scoring window (5 s at 32 kHz: 160000)."""
        return round(self.window_seconds * self.sample_rate)


@dataclass
class PrecomputeParams:
    dtype: str
    files_per_shard: int
    workers: int
    on_error: str


@dataclass
class PrepareParams:
    """The training table, the 5-fold splits and the explicit per-class oversampling."""

    n_folds: int
    split_seed: int
    rare_max_recordings: int
    oversample: dict[str, int]
    oversample_to: int


@dataclass
class FamilyParams:
    """One model family of the ensemble: a backbone and the recipe that trains it."""

    backbone: str
    optimizer: str
    lr: float
    weight_decay: float
    sampler: str
    split: str
    oversample: bool


@dataclass
class AugmentParams:
    mixup_p: float
    background_p: float
    background_weight: list[float]
    background_categories: list[str]
    filtering_bands: int
    filtering_min_db: float
    spec_freq_width: int
    spec_time_width: int
    spec_max_masks: int
    spec_p: float


@dataclass
class TrainParams:
    epochs: int
    validate_every: int
    batch_size: int
    num_workers: int
    precision: str
    channels_last: bool
    compile: str
    min_lr: float
    label_smoothing: float
    hidden: int
    accelerator: str
    devices: str
    strategy: str
    augment: AugmentParams


@dataclass
class PretrainParams:
    source: str
    epochs: int
    lr: float
    published: dict[str, str]


@dataclass
class RoundParams:
    """A self-training round: its name and the pseudo labels it trains with."""

    name: str
    pseudo: str


@dataclass
class PseudoParams:
    min_primary_prob: float
    trim_prob: float
    swap_p: float
    published: list[str]


@dataclass
class ExportParams:
    round: str


@dataclass
class InferParams:
    family_weights: dict[str, float]
    top_n: int
    threads: int
    streams: int
    precision: Optional[str]


@dataclass
class Params:
    seed: int
    loss: str
    families: list[str]
    folds: list[int]
    data: DataParams
    audio: AudioParams
    precompute: PrecomputeParams
    prepare: PrepareParams
    family: dict[str, FamilyParams]
    train: TrainParams
    pretrain: PretrainParams
    rounds: list[RoundParams]
    teachers: dict[str, str]
    pseudo: PseudoParams
    export: ExportParams
    infer: InferParams


PSEUDO_ROOT = "data/pseudo"  # where the pseudo stage writes each teacher round's labels

CHOICES = {
    "loss": ("bce", "focal", "focal_bce"),
    "pretrain.source": ("corpus", "published", "none"),
    "data.source": ("sample", "birdclef2025"),
    "precompute.dtype": ("float16", "float32"),
    "precompute.on_error": ("fail", "skip"),
    "train.compile": ("none", "default", "reduce-overhead", "max-autotune"),
    # Lightning's precision names; a typo would otherwise surface as its traceback.
    "train.precision": ("32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true"),
}

FAMILY_CHOICES = {
    "optimizer": ("radam", "adamw"),
    "sampler": ("sqrt", "balanced", "uniform"),
    "split": ("allbirds", "rare_noleak"),
}


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate ``params.yaml``; raise ``ParamsError`` naming the bad key."""
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

    path = Path(path)
    if path.is_dir():
        raise ParamsError(f"{path} is a folder; name the params file (params.yaml).")
    if not path.is_file():
        raise ParamsError(f"{path}: not found; run from the project root (where dvc.yaml is).")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Params), OmegaConf.load(path))
        params = OmegaConf.to_object(merged)
    except MissingMandatoryValue as error:
        raise ParamsError(f"{path}: '{error.full_key}' is missing; regenerate the file from conf/ or add the key "
                          "(the README's Parameters table).") from None
    except ConfigKeyError as error:
        raise ParamsError(f"{path}: unknown key '{error.full_key}'; check its spelling against conf/.") from None
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or _misshapen_key(Params, yaml.safe_load(path.read_text())) or "?"
        raise ParamsError(f"{path}: bad value at '{key}': {str(error.msg).splitlines()[0]}") from None
    except yaml.YAMLError as error:
        place = getattr(error, "problem_mark", None)
        where = f" (line {place.line + 1}, column {place.column + 1})" if place else ""
        raise ParamsError(f"{path}: not valid YAML{where}: {getattr(error, 'problem', None) or error}; "
                          "regenerate it from conf/ or fix the line.") from None
    _check(params, path)
    return params


# Settings that would otherwise fail deep inside a library (soxr, the DataLoader, a division,
# an optimizer) or, worse, train without complaint on a value that means nothing.
POSITIVE = ("audio.sample_rate", "train.epochs", "train.batch_size", "train.hidden",
            "train.augment.filtering_bands", "pretrain.lr", "precompute.files_per_shard", "infer.streams")
NOT_NEGATIVE = {"precompute.workers": "all cores", "infer.top_n": "TopN off", "infer.threads": "all cores",
                "prepare.rare_max_recordings": "no rare species", "prepare.oversample_to": "off",
                "train.min_lr": "decay to 0", "train.augment.spec_max_masks": "no masks",
                "train.augment.spec_freq_width": "no frequency masks", "train.augment.spec_time_width": "no time masks"}
PROBABILITIES = ("train.augment.mixup_p", "train.augment.background_p", "train.augment.spec_p",
                 "pseudo.min_primary_prob", "pseudo.trim_prob", "pseudo.swap_p")
# numpy's and sklearn's seeds are unsigned 32-bit integers.
MAX_SEED = 2**32 - 1
# The competition scores 5-s windows (row_id `<soundscape>_<end second>`), and the published
# pseudo labels and the test labels lie on the same grid: any other window trains on the wrong
# part of each pseudo chunk and ends in a submission that no label matches.
SCORED_WINDOW_SECONDS = 5.0


def _check(params: Params, path: Path) -> None:
    for key, allowed in CHOICES.items():
        value = _get(params, key)
        if value not in allowed:
            raise ParamsError(f"{path}: '{key}' is {value!r}; use one of {', '.join(allowed)}.")
    for name in params.families:
        if name not in params.family:
            raise ParamsError(f"{path}: family {name!r} is listed in 'families' but has no "
                              f"'family.{name}' section; known: {', '.join(params.family)}.")
    for name, family in params.family.items():
        for key, allowed in FAMILY_CHOICES.items():
            if getattr(family, key) not in allowed:
                raise ParamsError(f"{path}: 'family.{name}.{key}' is {getattr(family, key)!r}; "
                                  f"use one of {', '.join(allowed)}.")
        if not family.lr > 0 or not family.weight_decay >= 0:
            raise ParamsError(f"{path}: 'family.{name}' has lr {family.lr!r} and weight_decay "
                              f"{family.weight_decay!r}; lr must be more than 0, weight_decay 0 or more.")
    for key, item in (("families", "family"), ("folds", "fold"), ("rounds", "round")):
        if not _get(params, key):
            raise ParamsError(f"{path}: '{key}' needs at least one {item}.")
    round_names = [item.name for item in params.rounds]
    if params.export.round not in round_names:
        raise ParamsError(f"{path}: 'export.round' is {params.export.round!r}; use one of "
                          f"{', '.join(round_names)} (normally the last).")
    _check_teachers(params, path)
    if params.prepare.n_folds < 2:
        raise ParamsError(f"{path}: 'prepare.n_folds' is {params.prepare.n_folds!r}; it must be 2 or more "
                          "(a fold validates on what the others train on; the seed's: 5).")
    if len(set(params.folds)) != len(params.folds):
        raise ParamsError(f"{path}: 'folds' {params.folds} lists a fold twice; list each once.")
    if any(fold not in range(params.prepare.n_folds) for fold in params.folds):
        raise ParamsError(f"{path}: 'folds' {params.folds} must lie in 0..{params.prepare.n_folds - 1} "
                          "(prepare.n_folds).")
    if params.audio.window_seconds != SCORED_WINDOW_SECONDS:
        raise ParamsError(f"{path}: 'audio.window_seconds' is {params.audio.window_seconds!r}; it must be "
                          f"{SCORED_WINDOW_SECONDS}: the competition scores 5-s windows, and the pseudo labels and "
                          "the test soundscapes' labels are 5-s windows.")
    for key in POSITIVE:
        if _get(params, key) <= 0:
            raise ParamsError(f"{path}: '{key}' is {_get(params, key)!r}; it must be more than 0.")
    for key, zero in NOT_NEGATIVE.items():
        if _get(params, key) < 0:
            raise ParamsError(f"{path}: '{key}' is {_get(params, key)!r}; it must be 0 or more (0: {zero}).")
    for key in PROBABILITIES:
        if not 0 <= _get(params, key) <= 1:
            raise ParamsError(f"{path}: '{key}' is {_get(params, key)!r}; a probability must lie in 0..1.")
    for key in ("seed", "prepare.split_seed"):
        if not 0 <= _get(params, key) <= MAX_SEED:
            raise ParamsError(f"{path}: '{key}' is {_get(params, key)!r}; it must lie in 0..{MAX_SEED}.")
    _check_augment(params.train, path)
    if params.infer.precision not in (None, "f32", "bf16"):
        raise ParamsError(f"{path}: 'infer.precision' is {params.infer.precision!r}; use f32, bf16 or null "
                          "(the CPU's default: bf16 where it has it).")
    train = params.train
    if train.validate_every < 1 or train.epochs % train.validate_every:
        raise ParamsError(f"{path}: train.epochs ({train.epochs}) must be a multiple of train.validate_every "
                          f"({train.validate_every}, at least 1), so that the last epoch is validated.")
    if params.data.source == "sample" and params.data.sample is None:
        raise ParamsError(f"{path}: 'data.source' is sample but there is no 'data.sample' section.")
    weights = params.infer.family_weights
    missing = [name for name in params.families if name not in weights]
    if missing:
        raise ParamsError(f"{path}: 'infer.family_weights' has no weight for {', '.join(missing)}; give every "
                          "family in 'families' one (equal weights: the seed's mean).")
    unknown = [name for name in weights if name not in params.family]
    if unknown:
        raise ParamsError(f"{path}: 'infer.family_weights' names {', '.join(unknown)}, which is no family; "
                          f"known: {', '.join(params.family)}.")
    broken = [f"{name}: {weight}" for name, weight in weights.items() if not (math.isfinite(weight) and weight >= 0)]
    if broken:
        raise ParamsError(f"{path}: 'infer.family_weights' has {', '.join(broken)}; a weight must be a number, "
                          "0 or more (0 leaves the family out of the average).")
    if sum(weights[name] for name in params.families) == 0:
        raise ParamsError(f"{path}: 'infer.family_weights' gives every family in 'families' weight 0, so there is "
                          "nothing to average; give at least one more than 0 (equal weights: the seed's mean).")


def _check_augment(train: TrainParams, path: Path) -> None:
    if not 0 <= train.label_smoothing < 1:
        raise ParamsError(f"{path}: 'train.label_smoothing' is {train.label_smoothing!r}; it must lie in [0, 1) "
                          "(0: off; the seed's: 0.05).")
    weight = train.augment.background_weight
    if len(weight) != 2 or not 0 <= weight[0] <= weight[1] <= 1:
        raise ParamsError(f"{path}: 'train.augment.background_weight' is {list(weight)}; give the range the "
                          "background's weight is drawn from, [low, high] with 0 <= low <= high <= 1 "
                          "(the seed's: [0.25, 0.75]).")
    if train.augment.filtering_min_db > 0:
        raise ParamsError(f"{path}: 'train.augment.filtering_min_db' is {train.augment.filtering_min_db!r}; "
                          "the EQ's band gains are drawn in [min_db, 0] dB, so it must be 0 or less "
                          "(the seed's: -20).")


def _check_teachers(params: Params, path: Path) -> None:
    """A teacher round's pseudo stage must inherit what the round trained with, and every
    ``data/pseudo/<round>`` a round trains with must have its teacher (else no stage writes it)."""
    pseudo_of = {item.name: item.pseudo for item in params.rounds}
    for name, inherit in params.teachers.items():
        if name not in pseudo_of:
            raise ParamsError(f"{path}: 'teachers.{name}' is not a round; rounds are {', '.join(pseudo_of)}.")
        if inherit != pseudo_of[name]:
            raise ParamsError(f"{path}: 'teachers.{name}' is {inherit!r}, but round {name} trains with "
                              f"{pseudo_of[name]!r}; make them equal.")
    for item in params.rounds:
        parent, _, teacher = item.pseudo.rpartition("/")
        if parent == PSEUDO_ROOT and teacher not in params.teachers:
            raise ParamsError(f"{path}: round {item.name} trains with {item.pseudo}, which no stage writes; "
                              f"add 'teachers.{teacher}: {pseudo_of.get(teacher, '<its pseudo folder>')}'.")


def _misshapen_key(hint, value, key: str = "") -> str | None:
    """The first key where ``value`` (the YAML as read) holds a list for a mapping or a mapping
    for a list, by the schema type ``hint``: omegaconf names no key for that."""
    if value is None:  # an Optional section left out; omegaconf names a None where one is not allowed
        return None
    if typing.get_origin(hint) is typing.Union:  # Optional[X]
        hint = typing.get_args(hint)[0]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    prefix = f"{key}." if key else ""
    if is_dataclass(hint) and isinstance(value, dict):
        fields = typing.get_type_hints(hint)
        children = [(fields[name], item, prefix + name) for name, item in value.items() if name in fields]
    elif origin is dict and isinstance(value, dict):
        children = [(args[1], item, prefix + name) for name, item in value.items()]
    elif origin is list and isinstance(value, list):
        children = [(args[0], item, f"{key}[{index}]") for index, item in enumerate(value)]
    elif is_dataclass(hint) or origin in (dict, list):
        return key
    else:
        return None
    return next(filter(None, (_misshapen_key(*child) for child in children)), None)


def _get(obj, dotted: str):
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj
