"""The infer stage and ``birdclef predict``: the exported OpenVINO ensemble on soundscapes.

Each recording is cut into 5-s windows (each peak-normalised); the families' IRs (folds
averaged inside each) are joined into one OpenVINO graph that computes the mel front end once
and averages the families with weights from params, run on ``infer.streams`` streams;
the seed's TopN rescaling multiplies each window's score by the mean of the class's N best
windows in the same soundscape. Decoding runs in a background thread while OpenVINO runs.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from birdclef import layout
from birdclef.audio import AudioError, decode
from birdclef.data import split_windows
from birdclef.outputs import json_to_file, scores_to_csv, write_together
from birdclef.progress import progress_bar
from birdclef.tables import read_csv

if TYPE_CHECKING:  # OpenVINO loads only where an ensemble is built
    from birdclef.export import ExportedEnsemble


# Kaggle's test soundscapes are one minute long: infer compiles the graph for their windows.
SOUNDSCAPE_SECONDS = 60


class InferError(RuntimeError):
    """Missing models or a sample submission that does not match the models' classes."""


def top_n_rescale(probs: np.ndarray, n: int) -> np.ndarray:
    """(windows, K) -> same shape: each column times the mean of its ``n`` largest values.

    ``n = 1`` multiplies by the soundscape's maximum: a species heard clearly once lifts its
    weaker windows, a species never heard clearly is pushed down (seed spec §5.4).
    """
    if n <= 0:
        return probs
    top = np.sort(probs, axis=0)[-min(n, len(probs)):]
    return probs * top.mean(axis=0, keepdims=True)


def load_ensemble(exports: Path, families: list[str], weights: dict[str, float], threads: int | None = None,
                  precision: str | None = None, streams: int = 1, batch: int | None = None, audio=None):
    """The families' exported graphs joined into one OpenVINO model (the mel front end computed
    once), averaged with ``weights``: (n, samples) windows -> (n, K) scores. ``batch``: compile
    for that many windows per call (``ExportedEnsemble``). ``audio`` (params' section): the
    graphs take windows of one length at one rate, so params must still give those."""
    from birdclef.export import ExportedEnsemble, read_export_info

    missing = [family for family in families if family not in weights]
    if missing:
        raise InferError(f"infer.family_weights has no weight for {missing}.")
    if not exports.is_dir():
        raise InferError(f"{exports} is not a folder; name the folder that holds one export per family "
                         f"({', '.join(families)}), models/export after `dvc repro`.")
    if (exports / "model.xml").is_file():
        raise InferError(f"{exports} is one family's export; name the folder above it, which holds one per "
                         f"family ({', '.join(families)}).")
    if audio is not None:  # before the compile: infer's batch is a minute of params' windows (60,000 of 1 ms)
        info = read_export_info(exports / families[0])  # the families share it (``join_families``)
        if (info["sample_rate"], info["window_samples"]) != (audio.sample_rate, audio.window_samples):
            raise InferError(f"{exports}: the models take {info['window_samples']}-sample windows at "
                             f"{info['sample_rate']} Hz, but params' audio gives {audio.window_samples} at "
                             f"{audio.sample_rate} Hz; restore audio.* or export again (`dvc repro`).")
    return ExportedEnsemble([exports / family for family in families], threads, precision, streams,
                            [weights[family] for family in families], batch)


def read_ahead(paths: list[Path], sample_rate: int):
    """Yield (path, Recording or AudioError) in order, decoding the next file in a thread."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        def load(path):
            try:
                return decode(path, sample_rate)
            except AudioError as error:
                return error

        pending = pool.submit(load, paths[0]) if paths else None
        for index, path in enumerate(paths):
            result = pending.result()
            pending = pool.submit(load, paths[index + 1]) if index + 1 < len(paths) else None
            yield path, result


def infer(params, exports: Path, soundscapes: Path, sample_submission: Path, out: Path,
          metrics: Path) -> dict:
    """Write ``submission.csv`` for every soundscape in ``soundscapes`` and time it."""
    import pandas as pd

    if Path(out).resolve() == Path(metrics).resolve():  # one file cannot hold both
        raise InferError(f"the submission and the metrics would both be written to {out}: name two files.")
    settings = params.infer
    window_seconds = params.audio.window_seconds
    ensemble = load_ensemble(exports, params.families, settings.family_weights, settings.threads or None,
                             settings.precision, settings.streams, round(SOUNDSCAPE_SECONDS / window_seconds),
                             params.audio)
    columns = [column for column in read_csv(sample_submission, ("row_id",)).columns if column != "row_id"]
    if not columns:
        raise InferError(f"{sample_submission}: no class columns; it needs row_id and one column per class "
                         "(Kaggle's sample_submission.csv).")
    unknown = sorted(set(columns) - set(ensemble.classes))
    if unknown:
        raise InferError(f"{sample_submission}: columns {unknown[:5]} are not among the models' classes.")
    order = [ensemble.classes.index(column) for column in columns]
    paths = audio_files(Path(soundscapes).iterdir())
    _check_unique_stems(paths)
    window = params.audio.window_samples
    rows, ids, audio_seconds = [], [], 0.0
    start = time.perf_counter()
    with progress_bar("infer", len(paths)) as advance:
        for path, recording in read_ahead(paths, params.audio.sample_rate):
            if isinstance(recording, AudioError):
                raise InferError(str(recording))
            windows = split_windows(recording.wave, window)
            scores = top_n_rescale(ensemble(windows), settings.top_n)
            rows.append(scores[:, order])
            ids += [layout.row_id(path.stem, round((i + 1) * params.audio.window_seconds))
                    for i in range(len(windows))]
            audio_seconds += len(recording.wave) / params.audio.sample_rate
            advance(1)
    elapsed = time.perf_counter() - start
    if paths:
        submission = pd.DataFrame(np.concatenate(rows), columns=columns)
        submission.insert(0, "row_id", ids)
    else:  # Kaggle hides the test soundscapes until submission: keep the template's rows
        submission = pd.read_csv(sample_submission)
    summary = {"soundscapes": len(paths), "windows": len(ids), "threads": settings.threads,
               "streams": settings.streams, "precision": ensemble.precision,
               "seconds_per_minute_of_audio": round(elapsed / max(audio_seconds / 60, 1e-9), 4) if paths else None,
               "total_seconds": round(elapsed, 3)}
    write_together({out: partial(scores_to_csv, submission), metrics: partial(json_to_file, summary)})
    return summary


def _check_unique_stems(paths: list[Path]) -> None:
    """A row_id names the soundscape by its stem, so ``x.ogg`` beside ``x.wav`` would give one
    submission two rows of the same id."""
    seen: dict[str, Path] = {}
    for path in paths:
        if path.stem in seen:
            raise InferError(f"{seen[path.stem]} and {path.name} share the name {path.stem!r}, which the "
                             "submission's row_id is made of; keep one of them.")
        seen[path.stem] = path


def audio_files(paths) -> list[Path]:
    """The audio files among ``paths``, sorted: a folder named like audio is no recording; a
    broken link is kept, so that it is reported."""
    return sorted(p for p in paths if p.suffix.lower() in layout.AUDIO_SUFFIXES and not p.is_dir())


def find_audio(inputs: list[Path]) -> list[Path]:
    """Files given directly, plus every audio file under the given folders, sorted."""
    found = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            found += audio_files(item.rglob("*"))
        elif item.exists():
            found.append(item)
        else:
            raise InferError(f"{item}: no such file or folder.")
    unique = {}
    for path in found:  # a file named twice, or also inside a folder given, is scored once
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def predict(inputs: list[Path], ensemble: ExportedEnsemble, out: Path, window_seconds: float, sample_rate: int,
            top_n: int = 0, raven: Path | None = None, threshold: float = 0.5) -> dict:
    """Score every 5-s window of the given recordings. Files that cannot be scored are skipped
    and listed with the reason (``skipped``: path -> reason); when none can, nothing is written.
    A recording sampled below half the models' rate is scored, with a note (``notes``).

    ``out`` and the Raven tables are written together once every file is scored
    (``outputs.write_together``): an interrupted run, or a disk that fills up while they are
    written, leaves the previous CSV and tables, never new tables of some files beside them."""
    import warnings

    import pandas as pd

    out = Path(out)  # the command checked it and ``raven`` (outputs.check_output_path)
    audio = find_audio(inputs)
    if not audio:
        raise InferError(f"no audio files ({', '.join(layout.AUDIO_SUFFIXES)}) in {', '.join(map(str, inputs))}.")
    skipped = {}
    tables = {path: raven / name for path, name in raven_tables(audio, inputs).items()} if raven is not None else {}
    for path, table in tables.items():  # refused before the scoring, not after it
        if table.is_dir():
            raise InferError(f"{table} is a folder, where the Raven table of {path} goes: move it, "
                             "or name another Raven folder.")
        if table.resolve() == out.resolve():
            raise InferError(f"{out} is where the Raven table of {path} goes: name another output file "
                             "or Raven folder.")
    recordings = {path.resolve() for path in audio}
    for target in (out, *tables.values()):
        if target.resolve() in recordings:
            raise InferError(f"{target} is one of the recordings to score, and the output would replace it: "
                             "name another output path.")
    window = round(window_seconds * sample_rate)
    frames, bandwidths, notes = {}, {}, {}
    with progress_bar("predict", len(audio)) as advance:
        for path, recording in read_ahead(audio, sample_rate):
            advance(1)
            if isinstance(recording, AudioError):
                warnings.warn(f"skipped: {recording}", stacklevel=2)
                skipped[str(path)] = str(recording)
                continue
            windows = split_windows(recording.wave, window)
            scores = top_n_rescale(ensemble(windows), top_n)
            frame = pd.DataFrame(scores, columns=ensemble.classes)
            frame.insert(0, "file", str(path))
            frame.insert(1, "start_s", np.arange(len(windows)) * window_seconds)
            frame.insert(2, "end_s", np.minimum((np.arange(len(windows)) + 1) * window_seconds,
                                                len(recording.wave) / sample_rate).round(3))
            frames[path] = frame
            bandwidths[path] = min(recording.source_rate, sample_rate) / 2
            if recording.source_rate < sample_rate / 2:
                notes[str(path)] = (f"{path}: recorded at {recording.source_rate} Hz, so nothing above "
                                    f"{bandwidths[path]:g} Hz reaches the models, which learned from "
                                    f"{sample_rate / 2:g} Hz of bandwidth; read its scores with care.")
    if not frames:
        raise InferError(f"no file could be scored, {out} not written:\n  " + "\n  ".join(skipped.values()))
    writes = {out: partial(scores_to_csv, pd.concat(frames.values(), ignore_index=True))}
    for path, frame in frames.items():
        if path in tables:
            writes[tables[path]] = partial(_write_raven, frame, ensemble.classes, threshold, bandwidths[path])
    try:
        write_together(writes)
    except OSError as error:
        raise InferError(f"cannot write {error.filename}: {error.strerror or error}; none of the {len(writes)} "
                         "output files was written, the earlier ones are as they were.") from error
    return {"files": len(frames), "windows": sum(len(f) for f in frames.values()), "skipped": skipped,
            "notes": notes}


def raven_tables(paths: list[Path], inputs: list[Path]) -> dict[Path, str]:
    """Each recording's Raven table name: ``<stem>.selections.txt``, prefixed with the folders
    between its input folder and it (``a/x.wav`` and ``b/x.wav`` get one table each)."""
    folders = [item for item in map(Path, inputs) if item.is_dir()]
    names: dict[Path, str] = {}
    owners: dict[str, Path] = {}
    for path in paths:
        folder = next((item for item in folders if path.is_relative_to(item)), None)
        parts = path.relative_to(folder).parent.parts if folder is not None else ()
        name = "__".join([*parts, f"{path.stem}.selections.txt"])
        if name in owners:
            fix = "rename one" if owners[name].parent == path.parent else \
                "give their common parent folder instead, or rename one"
            raise InferError(f"{owners[name]} and {path} would both write the Raven table {name}; {fix}.")
        names[path], owners[name] = name, path
    return names


def _write_raven(frame, classes: list[str], threshold: float, high_hz: float, path: Path) -> None:
    """A Raven selection table: one selection per window and species scoring >= threshold."""
    import pandas as pd

    records = []
    for row in frame.itertuples(index=False):
        scores = np.asarray(row[3:], dtype=np.float32)
        for index in np.flatnonzero(scores >= threshold):
            records.append({"View": "Spectrogram 1", "Channel": 1, "Begin Time (s)": row.start_s,
                            "End Time (s)": row.end_s, "Low Freq (Hz)": 0, "High Freq (Hz)": high_hz,
                            "Species": classes[index], "Score": round(float(scores[index]), 4)})
    table = pd.DataFrame(records, columns=["View", "Channel", "Begin Time (s)", "End Time (s)",
                                           "Low Freq (Hz)", "High Freq (Hz)", "Species", "Score"])
    table.insert(0, "Selection", np.arange(1, len(table) + 1))
    table.to_csv(path, sep="\t", index=False)
