"""A round's models on soundscapes: per-family scores for evaluate, their mean for pseudo labels."""

import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from birdclef import layout
from birdclef.evaluate import evaluate, round_predictions
from birdclef.export import FoldEnsemble
from birdclef.pseudo import load_pool, pseudo_label_round
from birdclef.store import AudioStore, ShardWriter, write_index
from conftest import REPO, python, run
from trained_models import CLASSES, SAMPLES, realistic_random_model, save_trained

RATE = 32000


def soundscape_store(root, collection: str, seconds: float = 10.0):
    """Two synthetic soundscapes of ``seconds`` in a real HDF5 store."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    writer = ShardWriter(root / f"{collection}-000.h5", RATE, "float16", "test")
    for name in ("S1", "S2"):
        wave = (0.3 * np.sin(2 * np.pi * rng.uniform(2000, 6000) * np.arange(int(seconds * RATE)) / RATE)
                + 0.05 * rng.standard_normal(int(seconds * RATE))).astype(np.float32)
        writer.append(f"{collection}/{name}.ogg", wave, RATE, 1, "OGG")
    write_index(root, writer.close())
    return AudioStore(root)


@pytest.fixture(scope="module")
def round_models(tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    for seed, family in enumerate(("eca", "ebs")):
        save_trained(realistic_random_model(seed), models / "round0" / family / "fold0", fold=0, family=family)
    return models


def family_scores(models, family: str, store: AudioStore, key: str) -> np.ndarray:
    """The family's fold ensemble run directly on the soundscape's 5-s windows."""
    from birdclef.export import load_fold_models

    fold_models, _ = load_fold_models(models / "round0" / family, [0])
    windows = torch.from_numpy(store.read_samples(key).astype(np.float32).reshape(-1, SAMPLES))
    with torch.inference_mode():
        return FoldEnsemble(fold_models).eval()(windows).numpy()


def published_file(path):
    """A published pseudo-label file: one confident chunk of soundscape S1."""
    path.parent.mkdir(parents=True)
    pd.DataFrame([["S1_5", 0.9] + [0.0] * (len(CLASSES) - 1)], columns=["row_id", *CLASSES]).to_csv(path, index=False)


def test_round_predictions_score_each_family_and_their_weighted_mean(params, round_models, tmp_path):
    store = soundscape_store(tmp_path / "store", "test_soundscapes")
    params.families, params.folds, params.infer.top_n = ["eca", "ebs"], [0], 0
    params.infer.family_weights = {"eca": 3.0, "ebs": 1.0}
    keys = store.keys("test_soundscapes")
    frames = round_predictions(params, round_models / "round0", tmp_path / "store", keys, CLASSES)
    assert list(frames) == ["eca", "ebs", "ensemble"]
    assert frames["eca"]["row_id"].tolist() == ["S1_5", "S1_10", "S2_5", "S2_10"]
    for family in ("eca", "ebs"):
        direct = np.concatenate([family_scores(round_models, family, store, key) for key in keys])
        np.testing.assert_allclose(frames[family][CLASSES].to_numpy(), direct, atol=1e-5)
    assert not np.allclose(frames["eca"][CLASSES], frames["ebs"][CLASSES], atol=1e-3)
    weighted = (3 * frames["eca"][CLASSES].to_numpy() + frames["ebs"][CLASSES].to_numpy()) / 4
    np.testing.assert_allclose(frames["ensemble"][CLASSES].to_numpy(), weighted, atol=1e-6)


def test_pseudo_labels_are_the_families_mean_after_the_inherited_files(params, round_models, tmp_path):
    store = soundscape_store(tmp_path / "store", "train_soundscapes")
    inherit = tmp_path / "inherit"
    published_file(inherit / "00-published.csv")
    params.families, params.folds = ["eca", "ebs"], [0]
    params.pseudo.min_primary_prob = 0.0  # every chunk passes: what is kept is the priority rule's
    out = tmp_path / "pseudo"
    summary = pseudo_label_round(params, "round0", round_models, inherit, tmp_path / "store", out)
    assert sorted(path.name for path in out.iterdir()) == ["00-published.csv", "01-round0.csv"]
    labels = pd.read_csv(out / "01-round0.csv")
    keys = store.keys("train_soundscapes")
    mean = np.mean([np.concatenate([family_scores(round_models, family, store, key) for key in keys])
                    for family in ("eca", "ebs")], axis=0)
    np.testing.assert_allclose(labels[CLASSES].to_numpy(), mean, atol=1e-5)
    assert labels["primary_label"].tolist() == np.asarray(CLASSES)[mean.argmax(axis=1)].tolist()
    assert summary["chunks"] == 4 and summary["inherited_files"] == 1
    # S1 is the published file's: the new labels add S2's two chunks behind its one.
    assert summary["kept_chunks"] == 3


def test_kept_chunks_counts_what_the_next_round_loads(params, tmp_path):
    """A teacher sure of nothing: every probability is sigmoid(1.6e-6) = 0.5000004, above the
    0.5 threshold, but 0.500000 as written; the count must be the written file's."""
    model = realistic_random_model(0)
    torch.nn.init.zeros_(model.head.classifier.weight)
    torch.nn.init.constant_(model.head.classifier.bias, 1.6e-6)
    save_trained(model, tmp_path / "models" / "round0" / "eca" / "fold0", fold=0)
    store = soundscape_store(tmp_path / "store", "train_soundscapes")
    params.families, params.folds = ["eca"], [0]
    summary = pseudo_label_round(params, "round0", tmp_path / "models", tmp_path / "none", tmp_path / "store",
                                 tmp_path / "pseudo")
    pool = load_pool(tmp_path / "pseudo", CLASSES, params.pseudo.min_primary_prob, params.pseudo.trim_prob,
                     params.pseudo.swap_p, set(store.keys("train_soundscapes")))
    assert summary["chunks"] == 4
    assert summary["kept_chunks"] == len(pool) == 0

def test_pseudo_command_inherits_what_the_round_trained_with(round_models, tmp_path):
    """`birdclef pseudo` with its defaults: round0, which trains with `rounds`' data/raw/pseudo."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["folds"] = [0]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    soundscape_store(tmp_path / "data" / "store", "train_soundscapes")
    published_file(tmp_path / "data" / "raw" / "pseudo" / "00-published.csv")
    result = run([python(), "-m", "birdclef", "pseudo", "--models", str(round_models)], tmp_path,
                 {**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert "pseudo round0: {'soundscapes': 2, 'chunks': 4" in result.stdout
    written = sorted(path.name for path in (tmp_path / "data" / "pseudo" / "round0").iterdir())
    assert written == ["00-published.csv", "01-round0.csv"]


def test_cross_validation_names_a_fold_without_its_oof_scores(tmp_path):
    from birdclef.evaluate import cross_validation

    fold = tmp_path / "eca" / "fold0"
    fold.mkdir(parents=True)
    (fold / "meta.json").write_text('{"val_auc": 0.9}')
    with pytest.raises(FileNotFoundError, match=r"fold0: no trained model \(meta.json \+ oof.csv\)"):
        cross_validation(tmp_path, "eca", [0], None, CLASSES, {0: []})


def test_round_predictions_rescale_each_soundscape_on_its_own(params, round_models, tmp_path):
    from birdclef.infer import top_n_rescale

    store = soundscape_store(tmp_path / "store", "test_soundscapes", seconds=20.0)
    params.families, params.folds, params.infer.top_n = ["eca"], [0], 1
    params.infer.family_weights = {"eca": 1.0}
    keys = store.keys("test_soundscapes")
    frames = round_predictions(params, round_models / "round0", tmp_path / "store", keys, CLASSES)
    direct = [family_scores(round_models, "eca", store, key) for key in keys]
    expected = np.concatenate([top_n_rescale(scores, 1) for scores in direct])
    for name in ("eca", "ensemble"):
        np.testing.assert_allclose(frames[name][CLASSES].to_numpy(), expected, atol=1e-5)
    assert not np.allclose(top_n_rescale(np.concatenate(direct), 1), expected, atol=1e-4)  # not across files


def test_soundscape_auc_matches_sklearn_whatever_the_row_order():
    from sklearn.metrics import roc_auc_score

    from birdclef.evaluate import soundscape_auc

    rng = np.random.default_rng(3)
    row_ids = [f"S{s}_{5 * (w + 1)}" for s in range(4) for w in range(12)]
    targets = (rng.uniform(size=(len(row_ids), len(CLASSES))) < 0.2).astype(int)
    targets[:, 1] = 0  # a class no window has: Kaggle's metric leaves it out
    targets[:, 2] = 1  # a class every window has: no ROC-AUC, left out too
    scores = np.clip(0.6 * targets + rng.uniform(0, 0.7, targets.shape), 0, 1)
    labels = pd.DataFrame(targets, columns=CLASSES).assign(row_id=row_ids)[["row_id", *CLASSES]]
    order = rng.permutation(len(row_ids))
    predictions = pd.DataFrame(scores[order], columns=CLASSES)
    predictions.insert(0, "row_id", np.asarray(row_ids)[order])
    score, per_class = soundscape_auc(labels, predictions[["row_id", *CLASSES[::-1]]], "predictions")
    expected = {name: roc_auc_score(targets[:, i], scores[:, i]) for i, name in enumerate(CLASSES) if i not in (1, 2)}
    assert per_class == {name: round(value, 5) for name, value in expected.items()}
    assert score == round(float(np.mean(list(expected.values()))), 5)


def two_trained_folds(models: Path):
    """A family's two folds (even and odd rows of a 30-recording table), their OOF scores in
    another order than the table's; returns the table, the scores and each fold's keys."""
    rng = np.random.default_rng(5)
    table = pd.DataFrame({"key": [f"train_audio/r{i}.ogg" for i in range(30)],
                          "primary_label": [CLASSES[i % 3] for i in range(30)],
                          "secondary_labels": [[]] * 29 + [[CLASSES[2]]]})
    scores = rng.uniform(size=(30, len(CLASSES)))
    validation = {}
    for fold, (rows, auc) in enumerate(((range(0, 30, 2), 0.75), (range(1, 30, 2), 0.85))):
        folder = models / "eca" / f"fold{fold}"
        folder.mkdir(parents=True)
        (folder / "meta.json").write_text(f'{{"val_auc": {auc}}}')
        validation[fold] = table["key"].iloc[list(rows)].tolist()
        rows = list(rows)[::-1]
        oof = pd.DataFrame(scores[rows], columns=CLASSES)
        oof.insert(0, "key", table["key"].iloc[rows].tolist())
        oof.to_csv(folder / "oof.csv", index=False)
    return table, scores, validation


def test_cross_validation_pools_the_folds_out_of_fold_scores(tmp_path):
    from sklearn.metrics import roc_auc_score

    from birdclef.evaluate import cross_validation

    table, scores, validation = two_trained_folds(tmp_path)
    result = cross_validation(tmp_path, "eca", [0, 1], table, CLASSES, validation)
    targets = np.zeros_like(scores)
    for i in range(30):
        targets[i, i % 3] = 1
    targets[29, 2] = 1
    expected = np.mean([roc_auc_score(targets[:, c], scores[:, c]) for c in range(3)])  # the other classes: no positives
    assert result == {"cv_auc": 0.8, "oof_auc": round(expected, 5), "fold_auc": [0.75, 0.85]}


@pytest.mark.parametrize("name, damage, message", [
    ("meta.json", lambda text: text[:5], r"fold1/meta.json: damaged \(JSONDecodeError"),
    ("meta.json", lambda text: "{}", r"fold1/meta.json: damaged \(KeyError: 'val_auc'\)"),
    ("meta.json", lambda text: '{"val_auc": "0.9"}', r"fold1/meta.json: val_auc '0.9' is not a ROC-AUC"),
    ("meta.json", lambda text: '{"val_auc": 1.5}', r"fold1/meta.json: val_auc 1.5 is not a ROC-AUC"),
    ("oof.csv", lambda text: "\n".join(text.splitlines()[:5]),
     r"fold1/oof.csv: scores 4 recordings, not the fold's 15 validation recordings"),
    ("oof.csv", lambda text: text.replace(text.splitlines()[1].split(",")[1], "inf", 1), r"fold1/oof.csv: holds a score that is not a finite number"),
])
def test_cross_validation_names_a_damaged_fold(tmp_path, name, damage, message):
    """A damaged or truncated meta.json or oof.csv is named with the fix, not a traceback or a
    quietly different OOF ROC-AUC."""
    from birdclef.evaluate import cross_validation
    from birdclef.tables import TableError

    table, _, validation = two_trained_folds(tmp_path)
    path = tmp_path / "eca" / "fold1" / name
    path.write_text(damage(path.read_text()))
    with pytest.raises(TableError, match=message + r".*train the fold again \(`dvc repro train`\) or `dvc pull` it"):
        cross_validation(tmp_path, "eca", [0, 1], table, CLASSES, validation)


@pytest.mark.parametrize("edit, message", [
    (lambda frame: frame.drop(columns=[CLASSES[0]]), rf"missing column\(s\) \['{CLASSES[0]}'\]"),
    (lambda frame: frame.assign(row_id=["elsewhere_5", *frame["row_id"][1:]]),
     r"1 row_id\(s\) \['elsewhere_5'\] are not windows of test_soundscapes_labels.csv"),
    (lambda frame: frame.iloc[:1], r"1 row_id\(s\) \['S0_10'\] of test_soundscapes_labels.csv are not scored"),
    (lambda frame: pd.concat([frame, frame.iloc[:1]]), r"1 row_id\(s\) \['S0_5'\] are listed more than once"),
    (lambda frame: frame.assign(**{CLASSES[1]: [0.5, None]}), rf"column\(s\) \['{CLASSES[1]}'\] hold a blank"),
    (lambda frame: frame.assign(**{CLASSES[2]: ["0.5", "high"]}), rf"column\(s\) \['{CLASSES[2]}'\] hold a blank"),
    (lambda frame: frame.assign(**{CLASSES[0]: ["inf", "0.5"]}), rf"column\(s\) \['{CLASSES[0]}'\] hold a blank, "
                                                                 "text or infinite score"),
])
def test_a_submission_for_other_classes_or_windows_is_named(tmp_path, edit, message):
    from birdclef.evaluate import read_submission, soundscape_auc
    from birdclef.tables import TableError

    labels = pd.DataFrame({"row_id": ["S0_5", "S0_10"], **{name: [0, 1] for name in CLASSES}})
    path = tmp_path / "submission.csv"
    edit(labels.assign(**{name: [0.2, 0.7] for name in CLASSES})).to_csv(path, index=False)
    with pytest.raises(TableError, match=rf"submission.csv: {message}"):
        soundscape_auc(labels, read_submission(path, labels), str(path))


def evaluate_inputs(root, params):
    """What ``evaluate`` reads, small: prepare's tables, OOF scores of fold 0 per round and family,
    a store without test soundscapes (so no model runs), the test labels and a submission."""
    rng = np.random.default_rng(7)
    keys = [f"train_audio/r{i}.ogg" for i in range(12)]
    tables = root / "tables"
    tables.mkdir(parents=True)
    pd.DataFrame({"key": keys, "primary_label": [CLASSES[i % len(CLASSES)] for i in range(12)],
                  "secondary_labels": "[]"}).to_csv(tables / "train.csv", index=False)
    (tables / "classes.json").write_text(json.dumps(CLASSES))
    pd.DataFrame([{"variant": variant, "fold": 0, "subset": "valid", "row": row}  # fold 0 validates on all
                  for variant in ("allbirds", "rare_noleak") for row in range(len(keys))]
                 ).to_csv(tables / "folds.csv", index=False)
    for round_params in params.rounds:
        for family in params.families:
            fold = root / "models" / round_params.name / family / "fold0"
            fold.mkdir(parents=True)
            (fold / "meta.json").write_text('{"val_auc": 0.5}')
            oof = pd.DataFrame(rng.uniform(size=(len(keys), len(CLASSES))), columns=CLASSES)
            oof.insert(0, "key", keys)
            oof.to_csv(fold / "oof.csv", index=False)
    soundscape_store(root / "store", "train_soundscapes")
    row_ids = [f"S{s}_{5 * (w + 1)}" for s in range(2) for w in range(4)]
    labels = pd.DataFrame(np.eye(len(CLASSES), dtype=int)[np.arange(8) % len(CLASSES)], columns=CLASSES)
    labels.insert(0, "row_id", row_ids)
    (root / "raw").mkdir()
    labels.to_csv(root / "raw" / layout.TEST_LABELS_CSV, index=False)
    labels.assign(**{name: rng.uniform(size=8) for name in CLASSES}).to_csv(root / "submission.csv", index=False)
    return root


def run_evaluate(params, root, out=None, plots=None):
    return evaluate(params, root / "models", root / "tables", root / "store", root / "raw", root / "submission.csv",
                    out or root / "metrics" / "evaluate.json", plots or root / "metrics" / "plots")


def test_evaluate_keeps_the_old_metrics_when_the_plot_cannot_be_written(params, tmp_path):
    from birdclef.outputs import OutputError

    params.folds = [0]
    root = evaluate_inputs(tmp_path, params)
    out, plot = root / "metrics" / "evaluate.json", root / "metrics" / "plots" / "per_class_auc.csv"
    out.parent.mkdir()
    out.write_text("{}\n")  # an earlier run's
    plot.mkdir(parents=True)
    with pytest.raises(OutputError, match="per_class_auc.csv is a folder"):
        run_evaluate(params, root)
    assert out.read_text() == "{}\n" and plot.is_dir()
    plot.rmdir()
    metrics = run_evaluate(params, root)
    assert json.loads(out.read_text()) == metrics and {"round0", "round1", "submission_soundscape_auc"} <= set(metrics)
    assert pd.read_csv(plot)["species"].tolist() == CLASSES


def test_evaluate_command_keeps_the_old_metrics_when_the_plot_cannot_be_written(tmp_path):
    """The reviewer's case, through the command: exit 1, no traceback, the metrics file as it was."""
    from birdclef.params import load_params

    settings = yaml.safe_load((REPO / "params.yaml").read_text())
    settings["folds"] = [0]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(settings))
    evaluate_inputs(tmp_path, load_params(tmp_path / "params.yaml"))
    (tmp_path / "metrics" / "plots" / "per_class_auc.csv").mkdir(parents=True)
    (tmp_path / "metrics" / "evaluate.json").write_text("{}\n")
    result = run([python(), "-m", "birdclef", "evaluate", "--models", "models", "--tables", "tables", "--store",
                  "store", "--raw", "raw"], tmp_path, {**os.environ, "PYTHONPATH": str(REPO / "src")}, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "per_class_auc.csv is a folder" in result.stderr
    assert (tmp_path / "metrics" / "evaluate.json").read_text() == "{}\n"


@pytest.mark.parametrize("damage, message", [
    (lambda text: text.replace("\nS0_10,0,1,", "\nS0_10,0,2,", 1),
     r":3: column 'bkcchi' holds '2'; a label is 0 or 1"),
    (lambda text: text.replace("\nS0_10,0,1,", "\nS0_10,0,,", 1), r":3: column 'bkcchi' holds ''; a label is 0 or 1"),
    (lambda text: "", r": empty; restore test_soundscapes_labels.csv"),
    (lambda text: text.split("\n")[0] + "\n", r": no windows or no classes"),
    (lambda text: "row_id\n" + "\n".join(line.split(",")[0] for line in text.splitlines()[1:]) + "\n",
     r": no windows or no classes"),
    (lambda text: text + text.splitlines()[1] + "\n", r":10: row_id 'S0_5' is on line 2 too; remove one of the rows"),
    (lambda text: text.replace("row_id,", "window,", 1), r": missing column\(s\) \['row_id'\]"),
])
def test_damaged_test_labels_are_named(params, tmp_path, damage, message):
    from birdclef.tables import TableError

    params.folds = [0]
    root = evaluate_inputs(tmp_path, params)
    labels = root / "raw" / layout.TEST_LABELS_CSV
    labels.write_text(damage(labels.read_text()))
    with pytest.raises(TableError, match=re.escape(str(labels)) + message):
        run_evaluate(params, root)
    assert not (root / "metrics").exists()
