"""The evaluate stage: one small metrics file for ``dvc exp show`` and the plots.

Scores, all with the Kaggle rule (macro ROC-AUC over the classes that have positives):
- per round and family: the mean of the folds' validation ROC-AUC and the OOF ROC-AUC (all
  folds' best-epoch validation scores pooled, files reduced by max over 5-s chunks);
- per round: the soundscape ROC-AUC of that round's PyTorch ensemble, and of each family, on
  the labelled test soundscapes (windows as rows), so the student round can be compared with
  its teacher and the families with each other;
- the submission's soundscape ROC-AUC: the exported OpenVINO ensemble, as submitted.
The last two need ``test_soundscapes_labels.csv`` (the sample has it; Kaggle's test is hidden).
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np

from birdclef import layout
from birdclef.labels import multi_hot
from birdclef.metrics import macro_roc_auc
from birdclef.outputs import check_output_path, json_to_file, write_together
from birdclef.tables import TableError, read_csv, row_lines


def cross_validation(models: Path, family: str, folds: list[int], table, classes: list[str],
                     validation_keys: dict[int, list[str]]) -> dict:
    """Mean fold ROC-AUC and OOF ROC-AUC of one family in one round (``validation_keys``: each
    fold's validation recordings, which its ``oof.csv`` must score)."""
    import pandas as pd

    folders = [models / family / f"fold{fold}" for fold in folds]
    untrained = [folder for folder in folders
                 if not ((folder / "meta.json").is_file() and (folder / "oof.csv").is_file())]
    if untrained:
        raise FileNotFoundError(f"{untrained[0]}: no trained model (meta.json + oof.csv); run `dvc repro train` "
                                "first, or evaluate only the trained folds (`folds`).")
    fold_aucs, oofs = zip(*(_trained_fold(folder, classes, validation_keys[fold])
                            for folder, fold in zip(folders, folds)))
    oof = pd.concat(oofs, ignore_index=True)
    rows = table.set_index("key").loc[oof["key"]]
    class_index = {label: index for index, label in enumerate(classes)}
    targets = np.stack([multi_hot(primary, secondary, class_index)
                        for primary, secondary in zip(rows["primary_label"], rows["secondary_labels"])])
    return {"cv_auc": round(float(np.mean(fold_aucs)), 5),
            "oof_auc": round(macro_roc_auc(targets, oof[classes].to_numpy()), 5),
            "fold_auc": [round(float(value), 5) for value in fold_aucs]}


def _trained_fold(folder: Path, classes: list[str], validation_keys: list[str]):
    """A fold's validation ROC-AUC (``meta.json``) and OOF scores, checked: a damaged file would
    crash, and a truncated ``oof.csv`` would quietly change the OOF ROC-AUC."""
    import pandas as pd

    fix = "train the fold again (`dvc repro train`) or `dvc pull` it"
    path = folder / "meta.json"
    try:
        val_auc = json.loads(path.read_text())["val_auc"]
    except (ValueError, UnicodeDecodeError, KeyError, TypeError) as error:
        raise TableError(f"{path}: damaged ({type(error).__name__}: {error}); {fix}.") from None
    if isinstance(val_auc, bool) or not isinstance(val_auc, (int, float)) or not 0 <= val_auc <= 1:
        raise TableError(f"{path}: val_auc {val_auc!r} is not a ROC-AUC; {fix}.")
    path = folder / "oof.csv"
    oof = read_csv(path, ("key", *classes), fix)
    if sorted(oof["key"]) != sorted(validation_keys):
        raise TableError(f"{path}: scores {len(oof)} recordings, not the fold's {len(validation_keys)} validation "
                         f"recordings (data/tables); {fix}, or rebuild the tables it was trained on.")
    oof[classes] = oof[classes].apply(pd.to_numeric, errors="coerce")
    if not np.isfinite(oof[classes].to_numpy()).all():
        raise TableError(f"{path}: holds a score that is not a finite number; {fix}.")
    return float(val_auc), oof


def soundscape_auc(labels, predictions, source: str) -> tuple[float, dict[str, float]]:
    """Kaggle's score of a submission-like frame against window labels, and per class.

    ``predictions`` must score exactly the labelled windows: a missing one would quietly score a
    subset, an extra one has nothing to be scored against. ``source`` names them in the error."""
    from sklearn.metrics import roc_auc_score

    repeated = sorted(set(predictions["row_id"][predictions["row_id"].duplicated()]))
    if repeated:
        raise TableError(f"{source}: {len(repeated)} row_id(s) {repeated[:3]} are listed more than once; score "
                         "each labelled test window once (`dvc repro infer`).")
    predicted, labelled = set(predictions["row_id"]), set(labels["row_id"])
    for rows, problem in ((predicted - labelled, f"are not windows of {layout.TEST_LABELS_CSV}"),
                          (labelled - predicted, f"of {layout.TEST_LABELS_CSV} are not scored")):
        if rows:
            raise TableError(f"{source}: {len(rows)} row_id(s) {sorted(rows)[:3]} {problem}; score every labelled "
                             "test window, no other (`dvc repro infer`, or check the test soundscapes' labels).")
    classes = [column for column in labels.columns if column != "row_id"]
    merged = labels.set_index("row_id").loc[predictions["row_id"]]
    targets, scores = merged[classes].to_numpy(), predictions[classes].to_numpy()
    per_class = {label: round(float(roc_auc_score(targets[:, i], scores[:, i])), 5)
                 for i, label in enumerate(classes) if 0 < targets[:, i].sum() < len(targets)}
    return round(macro_roc_auc(targets, scores), 5), per_class


def read_labels(path: Path):
    """The test soundscapes' labels: one row per window (``row_id``), a 0 or 1 per class.

    Checked here, as sklearn's errors for a blank, a 2 or a repeated window name no file or row."""
    import pandas as pd

    fix = f"restore {layout.TEST_LABELS_CSV} (`dvc repro download`) or fix it by hand"
    frame = read_csv(path, ("row_id",), fix=fix)
    classes = [column for column in frame.columns if column != "row_id"]
    if frame.empty or not classes:
        raise TableError(f"{path}: no windows or no classes; it needs a row per test window and a column per "
                         f"class; {fix}.")
    lines = row_lines(path)
    first_line = {}
    for line, row_id in zip(lines, frame["row_id"]):
        if row_id in first_line:
            raise TableError(f"{path}:{line}: row_id {row_id!r} is on line {first_line[row_id]} too; remove one "
                             "of the rows.")
        first_line[row_id] = line
    values = frame[classes].apply(pd.to_numeric, errors="coerce")  # a blank or a word: NaN
    for name in classes:
        wrong = np.flatnonzero(~values[name].isin((0, 1)))
        if len(wrong):
            raise TableError(f"{path}:{lines[wrong[0]]}: column {name!r} holds {frame[name].iloc[wrong[0]]!r}; a "
                             f"label is 0 or 1 (1: the species calls in the window); {fix}.")
    frame[classes] = values.astype(int)
    return frame


def read_submission(path: Path, labels):
    """A submission to score against ``labels``: their class columns, each a finite score per row."""
    import pandas as pd

    classes = [column for column in labels.columns if column != "row_id"]
    frame = read_csv(path, ("row_id", *classes))  # strings; a TableError names the file
    frame[classes] = frame[classes].apply(pd.to_numeric, errors="coerce")  # a blank or a word: NaN
    broken = [name for name in classes if not np.isfinite(frame[name]).all()]
    if broken:
        raise TableError(f"{path}: column(s) {broken[:3]} hold a blank, text or infinite score; write the "
                         "submission again (`dvc repro infer`).")
    return frame


def round_predictions(params, models: Path, store: Path, keys: list[str], classes: list[str]) -> dict:
    """A round's PyTorch models on the test soundscapes, with TopN, as submission frames: one
    per family and ``"ensemble"``, their mean weighted by ``infer.family_weights`` (as submitted)."""
    import pandas as pd

    from birdclef.infer import top_n_rescale
    from birdclef.pseudo import predict_chunks, split_row_id, teacher_ensembles

    ensembles, model_classes = teacher_ensembles(models, params.families, params.folds)
    window = params.audio.window_samples
    family_scores, row_ids = predict_chunks(ensembles, store, keys, window, label=f"evaluate {models.name}")
    soundscapes = np.asarray([split_row_id(row_id)[0] for row_id in row_ids])
    per_soundscape = [soundscapes == soundscape for soundscape in np.unique(soundscapes)]
    named = dict(zip(params.families, family_scores))
    weights = [params.infer.family_weights[family] for family in params.families]
    named["ensemble"] = np.average(family_scores, axis=0, weights=weights)  # before TopN, as infer's ensemble
    frames = {}
    for name, scores in named.items():
        for chosen in per_soundscape:
            scores[chosen] = top_n_rescale(scores[chosen], params.infer.top_n)
        frames[name] = pd.DataFrame(scores, columns=model_classes)[classes]
        frames[name].insert(0, "row_id", row_ids)
    return frames


def evaluate(params, models: Path, tables: Path, store: Path, raw: Path, submission: Path,
             out: Path, plots: Path) -> dict:
    import pandas as pd

    from birdclef.store import AudioStore
    from birdclef.train import read_tables, validation_rows

    plot = check_output_path(plots / "per_class_auc.csv")  # before the long part, not after it
    table, classes, folds = read_tables(tables)
    metrics: dict = {}
    labels_path = raw / layout.TEST_LABELS_CSV
    labels = read_labels(labels_path) if labels_path.is_file() else None
    submitted = None  # scored first: a broken submission fails before the long part
    if labels is not None and Path(submission).is_file():
        submitted = soundscape_auc(labels, read_submission(submission, labels), str(submission))
    test_keys = AudioStore(store).keys(layout.TEST_SOUNDSCAPES)
    validation = {family: {fold: table["key"].iloc[validation_rows(folds, params.family[family].split, fold)].tolist()
                           for fold in params.folds} for family in params.families}
    for round_params in params.rounds:
        round_models = models / round_params.name
        result = {family: cross_validation(round_models, family, params.folds, table, classes, validation[family])
                  for family in params.families}
        if labels is not None and test_keys:
            source = f"{round_models}'s predictions of the test soundscapes in {store}"
            frames = round_predictions(params, round_models, store, test_keys, classes)
            for family in params.families:
                result[family]["soundscape_auc"] = soundscape_auc(labels, frames[family], source)[0]
            result["soundscape_auc"] = soundscape_auc(labels, frames["ensemble"], source)[0]
        metrics[round_params.name] = result
    per_class = {}
    if submitted is not None:
        metrics["submission_soundscape_auc"], per_class = submitted
    per_class_frame = pd.DataFrame({"species": list(per_class), "auc": list(per_class.values())})
    write_together({out: partial(json_to_file, metrics), plot: partial(per_class_frame.to_csv, index=False)})
    return metrics
