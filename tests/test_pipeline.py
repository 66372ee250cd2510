"""The whole pipeline through DVC, in a fresh copy of the project, on a tiny composition.

This is what a user runs (`dvc pull data.dvc`, `dvc exp run`, `dvc exp show`, `dvc status`,
`dvc queue start -j 2`), with -S overrides that shrink the sample and the training budget so it
runs in minutes.
"""

import json
import time

import pandas as pd
import pytest
import yaml

from conftest import TINY, dvc, project_copy


@pytest.mark.slow
def test_dvc_pipeline_from_a_fresh_clone(tmp_path):
    project = project_copy(tmp_path / "project")
    dvc(["pull", "data.dvc"], project)
    assert (project / "data/external/README.md").is_file()

    overrides = [flag for item in TINY for flag in ("-S", item)]
    output = dvc(["exp", "run", "-n", "tiny-focal", *overrides], project)
    printed = output.stdout + output.stderr
    assert "validation ROC-AUC" in printed  # the stages' own lines, among Lightning's own
    for noise in ("litlogger", "LeafSpec", "limit_val_batches", "Skipping val loop"):
        assert noise not in printed, noise

    submission = pd.read_csv(project / "submission.csv")
    template = pd.read_csv(project / "data/raw/sample_submission.csv")
    assert list(submission.columns) == list(template.columns)
    soundscapes = sorted((project / "data/raw/test_soundscapes").glob("*.ogg"))
    assert len(submission) == 12 * len(soundscapes)
    assert submission.iloc[:, 1:].to_numpy().min() >= 0 and submission.iloc[:, 1:].to_numpy().max() <= 1
    assert submission["row_id"].iloc[0] == f"{soundscapes[0].stem}_5"
    for family in ("eca", "ebs"):
        export = json.loads((project / "models/export" / family / "export.json").read_text())
        assert export["folds"] == [0, 1]
    metrics = json.loads((project / "metrics/evaluate.json").read_text())
    assert {"round0", "round1", "submission_soundscape_auc"} <= set(metrics)
    assert 0.0 <= metrics["submission_soundscape_auc"] <= 1.0
    assert "Data and pipelines are up to date" in dvc(["status"], project).stdout
    assert not (project / "data/pseudo/round1").exists()  # the last round teaches nobody

    # A training-budget change re-runs the training, not the backbone pretraining.
    params_file = project / "params.yaml"
    committed = params_file.read_text()
    params = yaml.safe_load(committed)
    params["train"]["epochs"] = 2
    params_file.write_text(yaml.safe_dump(params))
    changed = set(json.loads(dvc(["status", "--json"], project).stdout))
    params_file.write_text(committed)
    assert "train@round0-eca-0" in changed and "train@round1-ebs-1" in changed
    assert not {stage for stage in changed if stage.startswith(("pretrain", "download", "precompute", "prepare"))}

    dvc(["exp", "run", "-n", "tiny-bce", *overrides, "-S", "loss=bce"], project)
    table = dvc(["exp", "show", "--csv", "--no-pager"], project).stdout
    assert "tiny-focal" in table and "tiny-bce" in table and "submission_soundscape_auc" in table

    # Two queued experiments run side by side, each in its own copy of the repository. Their
    # stages ran above with the same params and code, so DVC's run cache restores them.
    dvc(["exp", "run", "--queue", "-n", "queued-focal", *overrides], project)
    dvc(["exp", "run", "--queue", "-n", "queued-bce", *overrides, "-S", "loss=bce"], project)
    dvc(["queue", "start", "-j", "2"], project)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status = dvc(["queue", "status"], project).stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(5)
    assert status.count("Success") == 2, status
    table = dvc(["exp", "show", "--csv", "--no-pager"], project).stdout
    assert "queued-focal" in table and "queued-bce" in table
