"""Reading and checking the label tables (``train.csv`` and its extra/external siblings).

A table is checked before hours of decoding start: required columns, known primary labels,
every listed file present. Secondary labels outside the vocabulary are pruned (the seed's
"pruneSL"), since the real data names many species that are not scored.
"""

from __future__ import annotations

from pathlib import Path

REQUIRED_COLUMNS = ("primary_label", "secondary_labels", "filename", "author")


class TableError(ValueError):
    """A label table the pipeline cannot use; the message names the file, row and fix."""


def read_taxonomy(path: Path) -> list[str]:
    """The class vocabulary, in taxonomy order (the order of the submission's columns)."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise TableError(f"{path}: not found; the download stage writes it.")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if "primary_label" not in frame.columns:
        raise TableError(f"{path}: missing column 'primary_label'.")
    labels = frame["primary_label"].tolist()
    duplicated = sorted({label for label in labels if labels.count(label) > 1})
    if duplicated:
        raise TableError(f"{path}: duplicated labels {duplicated[:5]}.")
    return labels


def read_train_table(path: Path, audio_root: Path, vocabulary: list[str] | None):
    """Load a train.csv-like table; check it; return it with ``secondary_labels`` as lists.

    ``vocabulary`` None accepts any label (the pretraining corpus has its own classes).
    """
    import pandas as pd

    from birdclef.labels import parse_label_list

    path, audio_root = Path(path), Path(audio_root)
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [column for column in REQUIRED_COLUMNS if column not in frame.columns]
    if missing:
        raise TableError(f"{path}: missing column(s) {missing}; a train.csv needs "
                         f"{list(REQUIRED_COLUMNS)} (the competition's layout).")
    known = None if vocabulary is None else set(vocabulary)
    secondary = []
    for line, row in enumerate(frame.itertuples(index=False), start=2):
        if known is not None and row.primary_label not in known:
            raise TableError(f"{path}:{line}: unknown primary_label {row.primary_label!r}; add it to "
                             "taxonomy.csv or remove the row.")
        if not (audio_root / row.filename).is_file():
            raise TableError(f"{path}:{line}: {audio_root / row.filename} does not exist; fix "
                             "'filename' (relative to the audio folder) or remove the row.")
        try:
            labels = parse_label_list(row.secondary_labels)
        except ValueError as error:
            raise TableError(f"{path}:{line}: {error}") from None
        secondary.append([label for label in labels if known is None or label in known])
    frame["secondary_labels"] = secondary
    return frame
