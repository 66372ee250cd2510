"""The prepare stage: the training table, the class list and the cross-validation folds.

Everything the training stage needs to know about *which* rows it trains and validates on is
decided here, once, from the label tables and the store index (seed spec §1.7, §2.4, §2.9,
§3.2). Three files are written to ``out`` (normally ``data/tables/``):

``train.csv``
    One row per labelled recording: the competition's ``train.csv``, then ``extra/train.csv``,
    then the user's ``external/train.csv`` (each when present), in that order. The row
    number is the row id that ``folds.csv`` refers to.
``classes.json``
    The class list in taxonomy order: the model's output order and the submission's columns.
``folds.csv``
    Long format ``variant, fold, subset, row``: for each split variant and fold, the
    ``train`` rows, the ``valid`` rows and the ``oversample`` rows (extra copies of training
    rows of under-represented classes, on top of the ``train`` rows).

The same inputs and params always give byte-identical files: the split uses a fixed seed, the
oversampling draws from generators seeded per (variant, fold, class), and rows are sorted.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from birdclef import layout
from birdclef.outputs import check_replaceable, folder_written_atomically, write_atomically
from birdclef.params import Params, PrepareParams
from birdclef.store import AudioStore, collection_of
from birdclef.tables import TableError, read_taxonomy, read_train_table

TRAIN_TABLE = "train.csv"
CLASSES_JSON = "classes.json"
FOLDS_CSV = "folds.csv"

VARIANTS = ("allbirds", "rare_noleak")
SUBSETS = ("train", "valid", "oversample")
TABLE_COLUMNS = ("key", "source", "primary_label", "secondary_labels", "author", "group",
                 "duration_s", "rating", "collection")
FOLD_COLUMNS = ("variant", "fold", "subset", "row")

# Authors that say nothing about who recorded: each such recording is its own group (seed).
ANONYMOUS_AUTHORS = ("", "unknown")
# How many missing recordings a warning lists by name before it only counts the rest.
MAX_NAMED = 50


class PrepareError(ValueError):
    """The tables or params cannot give a usable split; the message says what to change."""


# --------------------------------------------------------------------------- training table

def table_sources(raw: Path, external: Path) -> list[tuple[Path, Path, str]]:
    """(label table, audio root, store-key prefix) of each labelled collection, in row order.

    The competition table is required; the extra and external tables are used when present.
    """
    competition = (raw / layout.TRAIN_CSV, raw / layout.TRAIN_AUDIO, layout.TRAIN_AUDIO)
    if not competition[0].is_file():
        raise TableError(f"{competition[0]}: not found; the download stage writes it.")
    optional = [
        (raw / layout.EXTRA_CSV, raw / layout.EXTRA_AUDIO, layout.EXTRA_AUDIO),
        (external / layout.TRAIN_CSV, external / layout.EXTERNAL_AUDIO,
         f"{layout.EXTERNAL_PREFIX}/{layout.EXTERNAL_AUDIO}"),
    ]
    return [competition] + [source for source in optional if source[0].is_file()]


def author_group(author: str, filename: str) -> str:
    """The split's group: the lower-cased author, so one recordist never spans train and valid.

    An empty or "unknown" author would lump unrelated recordings into one huge group; the
    seed makes each of them its own group by using the file name instead: ``<label>/<file>``,
    without the extra data's source folder, so that the copies of one recording in both extra
    folders share a group, as in the seed.
    """
    name = str(author).strip().lower()
    return "/".join(Path(filename).parts[-2:]) if name in ANONYMOUS_AUTHORS else name


def read_labelled_rows(table: Path, audio_root: Path, prefix: str, vocabulary: list[str]) -> pd.DataFrame:
    """One checked label table in the training table's columns (durations still missing)."""
    frame = read_train_table(table, audio_root, vocabulary)
    keys = [f"{prefix}/{filename}" for filename in frame["filename"]]
    return pd.DataFrame({
        "key": keys,
        "source": [collection_of(key) for key in keys],
        "primary_label": frame["primary_label"].tolist(),
        "secondary_labels": [json.dumps(labels) for labels in frame["secondary_labels"]],
        "author": frame["author"].tolist(),
        "group": [author_group(author, filename)
                  for author, filename in zip(frame["author"], frame["filename"])],
        "rating": frame["rating"].tolist() if "rating" in frame.columns else [""] * len(frame),
        "collection": (frame["collection"].tolist() if "collection" in frame.columns
                       else [""] * len(frame)),
    })


def build_train_table(raw: Path, external: Path, store: AudioStore,
                      vocabulary: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """The training table with store durations, and the keys dropped as absent from the store.

    A recording is absent when precompute skipped it (``on_error: skip``): it has no audio to
    train on, so it is dropped rather than failing the whole stage.
    """
    parts = [read_labelled_rows(table, root, prefix, vocabulary)
             for table, root, prefix in table_sources(raw, external)]
    table = pd.concat(parts, ignore_index=True)
    stored = np.array([key in store for key in table["key"]], dtype=bool)
    missing = table.loc[~stored, "key"].tolist()
    table = table.loc[stored].reset_index(drop=True)
    table["duration_s"] = [store.duration(key) for key in table["key"]]
    if table.empty:
        raise PrepareError("no labelled recording is in the store; run precompute first "
                           "(`dvc repro precompute`).")
    return table[list(TABLE_COLUMNS)], missing


def warn_missing(missing: list[str], store_root: Path) -> None:
    """Name the recordings dropped for lack of audio, so a skipped file is never silent."""
    if not missing:
        return
    named = ", ".join(missing[:MAX_NAMED])
    more = f" and {len(missing) - MAX_NAMED} more" if len(missing) > MAX_NAMED else ""
    warnings.warn(f"{len(missing)} labelled recording(s) are not in the store {store_root} "
                  f"(skipped by precompute?) and were dropped from the training table: "
                  f"{named}{more}", stacklevel=3)


# --------------------------------------------------------------------------------- folds

def check_split_possible(table: pd.DataFrame, n_folds: int) -> None:
    """Fail with a readable message where StratifiedGroupKFold would fail cryptically."""
    if n_folds < 2:
        raise PrepareError(f"prepare.n_folds is {n_folds}; it must be at least 2.")
    groups = table["group"].nunique()
    if groups < n_folds:
        raise PrepareError(f"only {groups} distinct author group(s) for prepare.n_folds="
                           f"{n_folds}; add recordings by more authors or lower n_folds.")
    if table["primary_label"].value_counts().max() < n_folds:
        raise PrepareError(f"every species has fewer than prepare.n_folds={n_folds} recordings; "
                           "lower n_folds or add recordings.")


def split_folds(table: pd.DataFrame, n_folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The plain split: (train rows, valid rows) per fold, stratified on species, by author.

    Rare species with fewer recordings than folds are expected (they are what the variants
    below handle), so sklearn's warning about them is silenced here and only here.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    check_split_possible(table, n_folds)
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    rows = np.arange(len(table))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class in y has only",
                                category=UserWarning)
        folds = list(splitter.split(rows, table["primary_label"].to_numpy(),
                                    table["group"].to_numpy()))
    return [(np.sort(train), np.sort(valid)) for train, valid in folds]


def add_missing_species(table: pd.DataFrame, train: np.ndarray) -> np.ndarray:
    """allbirds: copy one recording of each species absent from these training rows into them.

    The seed's ``--all_species_in_train_folds``: the copied recording is the species' first
    row in the table. It deliberately STAYS in validation too (the seed's split has 16 such
    rows): a small, documented train/valid leak that lets every fold's model learn every
    species. The rare_noleak variant is the leak-free alternative.
    """
    labels = table["primary_label"]
    present = set(labels.iloc[train])
    firsts = labels.drop_duplicates(keep="first")
    copies = firsts.index[~firsts.isin(present)].to_numpy()
    return np.union1d(train, copies)


def rare_rows(table: pd.DataFrame, rare_max_recordings: int) -> np.ndarray:
    """Rows of species with at most ``rare_max_recordings`` recordings in the whole table."""
    counts = table["primary_label"].map(table["primary_label"].value_counts())
    return np.flatnonzero(counts.to_numpy() <= rare_max_recordings)


def variant_folds(table: pd.DataFrame, plain: list[tuple[np.ndarray, np.ndarray]],
                  settings: PrepareParams) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """Both split variants, from the same plain split.

    ``rare_noleak`` is the seed's ``--duplicate_rare_species_in_train_folds
    --remove_duplicates_from_val``: rare species train in every fold and are never validated
    on, so there is no overlap between training and validation at all.
    """
    rare = rare_rows(table, settings.rare_max_recordings)
    return {
        "allbirds": [(add_missing_species(table, train), valid) for train, valid in plain],
        "rare_noleak": [(np.union1d(train, rare), np.setdiff1d(valid, rare)) for train, valid in plain],
    }


# ---------------------------------------------------------------------------- oversampling

def check_oversample(oversample: dict[str, int], vocabulary: list[str]) -> None:
    """Refuse an oversample table naming classes outside the vocabulary, or negative counts."""
    known = set(vocabulary)
    unknown = sorted(label for label in oversample if label not in known)
    if unknown:
        raise PrepareError(f"prepare.oversample names label(s) not in taxonomy.csv: {unknown}; "
                           "fix the spelling or remove them.")
    negative = sorted(label for label, extra in oversample.items() if int(extra) < 0)
    if negative:
        raise PrepareError(f"prepare.oversample has negative counts for {negative}.")


def oversample_plan(counts: dict[str, int], vocabulary: list[str],
                    settings: PrepareParams) -> dict[str, int]:
    """Extra rows per class for one fold's training rows, in vocabulary order.

    ``oversample_to`` tops every present class up to that many training rows; the explicit
    table (the seed's MinorOverSampleV1) overrides it for each class it names, 0 included.
    """
    plan = {}
    for label in vocabulary:
        count = counts.get(label, 0)
        if label in settings.oversample:
            plan[label] = int(settings.oversample[label])
        elif settings.oversample_to > 0 and 0 < count < settings.oversample_to:
            plan[label] = settings.oversample_to - count
    return {label: extra for label, extra in plan.items() if extra > 0}


def repeat_shuffled(rows: np.ndarray, extra: int, rng: np.random.Generator) -> np.ndarray:
    """Exactly ``extra`` copies drawn from ``rows``: whole shuffled passes, the last one cut.

    Every row is copied either floor(extra / len) or ceil(extra / len) times, so no single
    recording dominates; which rows get the one extra copy is the seeded draw.
    """
    passes = -(-extra // len(rows))
    drawn = np.concatenate([rng.permutation(rows) for _ in range(passes)])
    return drawn[:extra]


def oversample_rows(table: pd.DataFrame, train: np.ndarray, vocabulary: list[str],
                    settings: PrepareParams, variant: str, fold: int) -> tuple[np.ndarray, list[str]]:
    """The fold's extra training copies, drawn only from its own training rows of each class.

    Returns the rows and the classes the plan asked for that have no training row here (so
    nothing can be drawn for them).
    """
    labels = table["primary_label"].to_numpy()[train]
    counts = pd.Series(labels).value_counts().to_dict()
    drawn, empty = [], []
    for label, extra in oversample_plan(counts, vocabulary, settings).items():
        rows = train[labels == label]
        if len(rows) == 0:
            empty.append(label)
            continue
        seed = [settings.split_seed, VARIANTS.index(variant), fold, vocabulary.index(label)]
        drawn.append(repeat_shuffled(rows, extra, np.random.default_rng(seed)))
    rows = np.sort(np.concatenate(drawn)) if drawn else np.empty(0, dtype=np.int64)
    return rows, empty


# ------------------------------------------------------------------------------- writing

def folds_frame(table: pd.DataFrame, vocabulary: list[str],
                settings: PrepareParams) -> tuple[pd.DataFrame, dict]:
    """``folds.csv`` in long format, and the per-variant counts for the summary."""
    plain = split_folds(table, settings.n_folds, settings.split_seed)
    parts, stats = [], {}
    for variant, folds in variant_folds(table, plain, settings).items():
        stats[variant] = {"valid_rows": [], "oversample_rows": [], "overlap_rows": [],
                          "not_oversampled": []}
        for fold, (train, valid) in enumerate(folds):
            extra, empty = oversample_rows(table, train, vocabulary, settings, variant, fold)
            for subset, rows in zip(SUBSETS, (train, valid, extra)):
                parts.append(pd.DataFrame({"variant": variant, "fold": fold, "subset": subset,
                                           "row": rows.astype(np.int64)}))
            stats[variant]["valid_rows"].append(int(len(valid)))
            stats[variant]["oversample_rows"].append(int(len(extra)))
            stats[variant]["overlap_rows"].append(int(len(np.intersect1d(train, valid))))
            stats[variant]["not_oversampled"].append(empty)
    return pd.concat(parts, ignore_index=True)[list(FOLD_COLUMNS)], stats


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    """Write a table atomically, with the same line endings on every platform."""
    write_atomically(path, lambda tmp: frame.to_csv(tmp, index=False, lineterminator="\n"))


def write_text(text: str, path: Path) -> None:
    write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8", newline="\n"))


def prepare(raw: Path, external: Path, store: Path, out: Path, params: Params) -> dict:
    """Write ``train.csv``, ``classes.json`` and ``folds.csv`` to ``out``; return counts."""
    raw, external, store = Path(raw), Path(external), Path(store)
    check_replaceable(out, CLASSES_JSON)  # before the work; the three tables replace the folder whole
    settings = params.prepare
    vocabulary = read_taxonomy(raw / layout.TAXONOMY_CSV)
    check_oversample(settings.oversample, vocabulary)
    audio = AudioStore(store)
    try:
        table, missing = build_train_table(raw, external, audio, vocabulary)
    finally:
        audio.close()
    warn_missing(missing, store)
    folds, stats = folds_frame(table, vocabulary, settings)
    empty = sorted({label for fold in stats["allbirds"]["not_oversampled"]
                    + stats["rare_noleak"]["not_oversampled"] for label in fold})
    if empty:
        warnings.warn(f"oversampling asked for class(es) {empty} in a fold without training rows "
                      "of them; nothing was drawn for those folds.", stacklevel=2)
    with folder_written_atomically(out, CLASSES_JSON) as tmp:
        write_csv(table, tmp / TRAIN_TABLE)
        write_text(json.dumps(vocabulary, indent=1) + "\n", tmp / CLASSES_JSON)
        write_csv(folds, tmp / FOLDS_CSV)
    present = set(table["primary_label"])
    rare = rare_rows(table, settings.rare_max_recordings)
    return {
        "rows": int(len(table)),
        "rows_by_source": {source: int(count) for source, count
                           in table["source"].value_counts().sort_index().items()},
        "missing_from_store": len(missing),
        "classes": len(vocabulary),
        "classes_without_recordings": [label for label in vocabulary if label not in present],
        "groups": int(table["group"].nunique()),
        "rare_species": int(table["primary_label"].iloc[rare].nunique()),
        "rare_rows": int(len(rare)),
        "folds": {variant: {key: value for key, value in counts.items() if key != "not_oversampled"}
                  for variant, counts in stats.items()},
    }
