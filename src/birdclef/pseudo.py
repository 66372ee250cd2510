"""Pseudo labels (seed spec §2.7, §4): the rules that turn teacher predictions into training
chunks, and the stage that predicts them.

A pseudo folder holds CSVs in priority order (sorted file names, e.g. ``00-external.csv``,
``01-round0.csv``): ``row_id`` (``<soundscape>_<end second>``), one probability column per
class, ``primary_label`` and ``primary_label_prob``. Rules when loading, as the seed:
keep chunks with ``primary_label_prob > min_primary_prob``; a later file only adds
soundscapes that no earlier file kept a chunk of; zero probabilities below ``trim_prob``;
file each chunk under its primary label; no smoothing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from birdclef import layout
from birdclef.outputs import check_replaceable, folder_written_atomically



class PseudoError(ValueError):
    """A pseudo-label file that does not fit the class list or the format."""


def split_row_id(row_id: str) -> tuple[str, int]:
    """``H02_20230420_074000_15`` -> (``H02_20230420_074000``, 15)."""
    stem, _, end = row_id.rpartition("_")
    if not stem or not end.isdigit():
        raise PseudoError(f"bad row_id {row_id!r}; expected <soundscape>_<end second>")
    return stem, int(end)


PSEUDO_MARKER = "*.csv"  # a pseudo folder holds pseudo files only


def pseudo_files(folder: Path) -> list[Path]:
    """The folder's pseudo-label CSVs in priority order (sorted names)."""
    return sorted(Path(folder).glob(PSEUDO_MARKER))


def stack(frames: list, classes: list[str], min_primary_prob: float, trim_prob: float):
    """Apply the seed's filtering and priority rules; return one frame of kept chunks."""
    import pandas as pd

    kept, covered = [], set()
    for frame in frames:
        frame = frame[["row_id", *classes]].copy()
        frame["soundscape"] = [split_row_id(row_id)[0] for row_id in frame["row_id"]]
        probs = frame[classes].to_numpy(np.float32)
        frame["primary_label"] = np.asarray(classes)[probs.argmax(axis=1)]
        frame["primary_label_prob"] = probs.max(axis=1)
        frame = frame[frame["primary_label_prob"] > min_primary_prob]
        frame = frame[~frame["soundscape"].isin(covered)]
        covered |= set(frame["soundscape"])
        kept.append(frame)
    if not kept:
        return pd.DataFrame(columns=["row_id", *classes, "soundscape", "primary_label", "primary_label_prob"])
    result = pd.concat(kept, ignore_index=True)
    values = result[classes].to_numpy(np.float32, copy=True)
    values[values < trim_prob] = 0.0
    result[classes] = values
    return result


def read_pseudo_file(path: Path, classes: list[str]):
    """One pseudo-label CSV: row_id and a probability column per class (more columns are fine),
    every row checked here, so that a bad file is named before the work that uses it."""
    import pandas as pd

    try:  # an empty cell stays '' (named below), not NaN
        frame = pd.read_csv(path, dtype={"row_id": str}, keep_default_na=False)
    except (OSError, ValueError) as error:  # pandas' parser, empty-file and decoding errors are ValueErrors
        raise PseudoError(f"{path}: unreadable ({str(error).strip()}); a pseudo file is a UTF-8 CSV with row_id and one "
                          "probability column per class.") from None
    missing = [column for column in ["row_id", *classes] if column not in frame.columns]
    if missing:
        raise PseudoError(f"{path}: lacks columns {missing[:5]}; a pseudo file needs row_id and "
                          "one probability column per class.")
    for row_id in frame["row_id"]:
        try:
            split_row_id(row_id)
        except PseudoError as error:
            raise PseudoError(f"{path}: {error}.") from None
    values = frame[classes].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)  # text: NaN
    bad = np.argwhere(~((values >= 0) & (values <= 1)))
    if len(bad):
        row, column = bad[0]
        raise PseudoError(f"{path}: row_id {frame['row_id'].iloc[row]!r}, column {classes[column]!r}: "
                          f"{str(frame[classes[column]].iloc[row])!r} is not a probability; the class columns "
                          "hold numbers in [0, 1].")
    return frame


def stack_folder(folder: Path, classes: list[str], min_primary_prob: float, trim_prob: float):
    """The kept chunks of a pseudo folder's files, read as written (probabilities rounded to
    6 decimals), so that what a round reports is what the next one loads."""
    frames = [read_pseudo_file(path, classes) for path in pseudo_files(folder)]
    return stack(frames, classes, min_primary_prob, trim_prob)


def load_pool(folder: Path, classes: list[str], min_primary_prob: float, trim_prob: float,
              swap_p: float, store_keys: set[str]):
    """The ``PseudoPool`` a training run swaps items from (empty when the folder has none)."""

    from birdclef.data import PseudoChunk, PseudoPool

    kept = stack_folder(folder, classes, min_primary_prob, trim_prob)
    targets = kept[classes].to_numpy(np.float32)
    soundscape_keys = {Path(key).stem: key for key in store_keys}  # row ids name soundscapes by stem
    chunks: dict[str, list[PseudoChunk]] = {}
    for row_id, soundscape, label, target in zip(kept["row_id"], kept["soundscape"],
                                                   kept["primary_label"], targets):
        key = soundscape_keys.get(soundscape)
        if key is None:
            raise PseudoError(f"{folder}: pseudo labels name soundscape {soundscape!r}, which is "
                              "not in the store; are they for this dataset?")
        chunks.setdefault(label, []).append(PseudoChunk(key, float(split_row_id(row_id)[1]), target))
    return PseudoPool(chunks, swap_p)


def predict_chunks(ensembles, store_root: Path, keys: list[str], window_samples: int,
                   batch_size: int = 32, label: str = "predict") -> tuple[np.ndarray, list[str]]:
    """Probabilities of each of ``ensembles`` (torch modules: waves -> (B, K)) on every 5-s
    chunk of ``keys`` (on the GPU where there is one); returns (ensembles, rows, K) scores and
    the Kaggle ``row_id`` of each row."""
    import torch

    from birdclef.data import ValidationChunks
    from birdclef.progress import progress_bar

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ensembles = [ensemble.to(device) for ensemble in ensembles]
    chunks = ValidationChunks(store_root, keys, window_samples)
    loader = torch.utils.data.DataLoader(chunks, batch_size=batch_size)
    scores = []
    with torch.inference_mode(), progress_bar(label, len(loader)) as advance:
        for wave, _ in loader:
            wave = wave.to(device)
            scores.append(torch.stack([ensemble(wave) for ensemble in ensembles]).float().cpu().numpy())
            advance(1)
    seconds = window_samples / chunks.store.sample_rate
    row_ids = [layout.row_id(Path(keys[file]).stem, round((chunk + 1) * seconds)) for file, chunk in chunks.chunks]
    return np.concatenate(scores, axis=1), row_ids


def teacher_ensembles(models: Path, families: list[str], folds: list[int]):
    """One fold-averaging module per family, from a round's trained models."""
    from birdclef.export import FoldEnsemble, load_fold_models

    ensembles, classes = [], None
    for family in families:
        fold_models, meta = load_fold_models(models / family, folds)
        if classes is not None and meta["classes"] != classes:
            raise PseudoError(f"{models / family}: its classes differ from the other families'.")
        classes = meta["classes"]
        ensembles.append(FoldEnsemble(fold_models).eval())
    return ensembles, classes


def pseudo_label_round(params, round_name: str, models: Path, inherit: Path, store: Path, out: Path) -> dict:
    """The pseudo stage: the round's ensemble labels every unlabelled soundscape; the folder
    ``out`` gets the inherited files first (they keep priority), then the new one."""
    import shutil

    import pandas as pd

    from birdclef.store import AudioStore

    out = check_replaceable(out, PSEUDO_MARKER)
    ensembles, classes = teacher_ensembles(models / round_name, params.families, params.folds)
    # absent published labels (data/raw/pseudo) are none; the command refuses a missing teacher round's folder
    inherited = pseudo_files(inherit) if inherit.is_dir() else []
    inherited_frames = [read_pseudo_file(path, classes) for path in inherited]  # checked before the long part
    keys = AudioStore(store).keys(layout.TRAIN_SOUNDSCAPES)
    if not keys:
        raise PseudoError(f"{store}: no {layout.TRAIN_SOUNDSCAPES} in the store to pseudo-label.")
    window = params.audio.window_samples
    family_scores, row_ids = predict_chunks(ensembles, store, keys, window, label=f"pseudo {round_name}")
    scores = family_scores.mean(axis=0)
    frame = pd.DataFrame(scores, columns=classes)
    frame.insert(0, "row_id", row_ids)
    frame["primary_label"] = np.asarray(classes)[scores.argmax(axis=1)]
    frame["primary_label_prob"] = scores.max(axis=1)
    with folder_written_atomically(out, PSEUDO_MARKER) as folder:
        for number, path in enumerate(inherited):
            shutil.copyfile(path, folder / f"{number:02d}-{path.name.split('-', 1)[-1]}")
        frame.to_csv(folder / f"{len(inherited):02d}-{round_name}.csv", index=False, float_format="%.6f")
    # What the next round can swap in: the inherited files keep their soundscapes first.
    kept = stack_folder(out, classes, params.pseudo.min_primary_prob, params.pseudo.trim_prob)
    return {"soundscapes": len(keys), "chunks": len(frame), "kept_chunks": len(kept),
            "inherited_files": len(inherited)}
