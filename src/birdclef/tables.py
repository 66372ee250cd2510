"""Reading and checking the label tables (``train.csv`` and its extra/external siblings).

A table is checked before hours of decoding start: readable UTF-8 CSV, required columns,
known primary labels, every listed file present and in a format precompute decodes.
Secondary labels outside the vocabulary are pruned (the seed's "pruneSL"), since the real
data names many species that are not scored.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path, PurePosixPath

from birdclef import layout

REQUIRED_COLUMNS = ("primary_label", "secondary_labels", "filename", "author")


class TableError(ValueError):
    """A label table the pipeline cannot use; the message names the file, row and fix."""


def read_csv(path: Path, columns: tuple[str, ...], fix: str | None = None):
    """``path`` as strings, with ``columns`` present; a broken file is a TableError naming it
    and ``fix`` (by default, how to repair the file by hand).

    pandas' own errors name neither the file nor the fix, and a spreadsheet easily saves
    Latin-1 or a stray comma.
    """
    import pandas as pd

    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")  # -sig: a spreadsheet's "CSV UTF-8" starts with a BOM
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        fix = fix or 'save the file as UTF-8 ("CSV UTF-8" in a spreadsheet)'
        raise TableError(f"{path}:{line}: not UTF-8 text; {fix}.") from None
    header = f"a header row with the columns {list(columns)}" if columns else "a header row"
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise TableError(f"{path}: empty; {fix or f'it needs {header}'}.") from None
    except pd.errors.ParserError as error:
        reason = str(error).removeprefix("Error tokenizing data. C error: ").strip()
        raise TableError(f"{path}: malformed CSV ({reason}); "
                         f"{fix or 'fix that line (quote a field that holds a comma) or remove it'}.") from None
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        fix = fix or f"it needs {list(columns)} (the competition's layout)"
        raise TableError(f"{path}: missing column(s) {missing}; {fix}.")
    return frame


def row_lines(path: Path) -> list[int]:
    """The line of ``path`` on which each data row starts, for messages: blank lines (which
    pandas skips) and multi-line cells make it differ from the row's number."""
    reader = csv.reader(io.StringIO(path.read_text("utf-8-sig")))
    starts, end = [], 0
    for record in reader:
        if len(record) > 1 or (record and record[0].strip()):  # pandas skips whitespace-only lines
            starts.append(end + 1)
        end = reader.line_num
    return starts[1:]  # the first is the header


def read_taxonomy(path: Path) -> list[str]:
    """The class vocabulary, in taxonomy order (the order of the submission's columns)."""
    path = Path(path)
    if not path.is_file():
        raise TableError(f"{path}: not found; the download stage writes it.")
    labels = read_csv(path, ("primary_label",))["primary_label"].tolist()
    duplicated = sorted({label for label in labels if labels.count(label) > 1})
    if duplicated:
        raise TableError(f"{path}: duplicated labels {duplicated[:5]}.")
    return labels


def read_train_table(path: Path, audio_root: Path, vocabulary: list[str] | None):
    """Load a train.csv-like table; check it; return it with ``secondary_labels`` as lists.

    ``vocabulary`` None accepts any label (the pretraining corpus has its own classes).
    """
    from birdclef.labels import parse_label_list

    path, audio_root = Path(path), Path(audio_root)
    frame = read_csv(path, REQUIRED_COLUMNS)
    known = None if vocabulary is None else set(vocabulary)
    filenames, secondary, line_of = [], [], {}
    for line, row in zip(row_lines(path), frame.itertuples(index=False)):
        if not row.filename.strip():
            raise TableError(f"{path}:{line}: 'filename' is empty; name the recording (<label>/<file>, "
                             f"relative to {audio_root}) or remove the row.")
        relative = PurePosixPath(row.filename)
        if relative.is_absolute() or ".." in relative.parts:
            raise TableError(f"{path}:{line}: {row.filename}: 'filename' must be a path inside {audio_root}, "
                             "relative to it (<label>/<file>).")
        filename = relative.as_posix()  # "./amerob/x.ogg" and "amerob//x.ogg" are "amerob/x.ogg"
        if filename in line_of:
            raise TableError(f"{path}:{line}: {row.filename} is listed on line {line_of[filename]} too; "
                             "remove one of the rows (a recording listed twice would be trained on twice).")
        line_of[filename] = line
        filenames.append(filename)
        if known is not None and row.primary_label not in known:
            raise TableError(f"{path}:{line}: unknown primary_label {row.primary_label!r}; use a "
                             "species of taxonomy.csv (the classes the models score; the download "
                             "stage writes that file, so a new species cannot be added there) or "
                             "remove the row.")
        if relative.suffix.lower() not in layout.AUDIO_SUFFIXES:
            raise TableError(f"{path}:{line}: {row.filename}: precompute decodes only "
                             f"{', '.join(layout.AUDIO_SUFFIXES)} files; convert it (e.g. `ffmpeg "
                             "-i in.aiff out.flac`) and fix 'filename', or remove the row.")
        if not (audio_root / filename).is_file():
            missing = "is a broken link" if (audio_root / filename).is_symlink() else "does not exist"
            raise TableError(f"{path}:{line}: {audio_root / filename} {missing}; fix "
                             "'filename' (relative to the audio folder) or remove the row.")
        try:
            labels = parse_label_list(row.secondary_labels)
        except ValueError as error:
            raise TableError(f"{path}:{line}: {error}; write them as a list of species codes, e.g. "
                             "['barswa', 'comsan'], or [] for none.") from None
        secondary.append([label for label in labels if known is None or label in known])
    frame["filename"] = filenames
    frame["secondary_labels"] = secondary
    return frame
