"""`dvc exp run -S experiment=birdclef2025` end to end, the kaggle client faked at the network edge.

The archives have the real datasets' names and layouts (tests/kaggle_archives.py) and the
published backbones are state dicts of the real backbones (eca_nfnet_l0,
tf_efficientnetv2_s.in21k; random weights). The -S overrides only shrink the budget: one
epoch, two folds, small batches, a lower "rare species" bound for the tiny dataset.
"""

import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import REPO, dvc, project_copy, run, tool_env

FAKES = Path(__file__).parent / "fakes"
TINY_REAL = ["train.epochs=1", "train.batch_size=4", "train.num_workers=0", "prepare.n_folds=2", "folds=[0,1]",
             "prepare.rare_max_recordings=3"]  # 6 recordings per species: not rare here


@pytest.mark.slow
def test_birdclef2025_experiment_runs_every_stage(tmp_path):
    from kaggle_archives import BACKBONE_FILES, write_archives

    experiment = yaml.safe_load((REPO / "conf/experiment/birdclef2025.yaml").read_text())
    taxonomy = sorted(experiment["prepare"]["oversample"])  # the oversampling table's 59 classes
    backbones = {name: experiment["family"][name]["backbone"] for name in ("eca", "ebs")}
    archives = write_archives(tmp_path / "archives", taxonomy, backbones)
    project = project_copy(tmp_path / "project")
    # The stages run `PYTHONPATH=src python -m birdclef`: the fake client goes into this copy's src/.
    shutil.copytree(FAKES / "kaggle", project / "src" / "kaggle")
    env = tool_env(KAGGLE_USERNAME="someone", KAGGLE_KEY="secret", FAKE_KAGGLE_ARCHIVES=str(archives))
    run(["git", "add", "src/kaggle"], project, env)
    run(["git", "commit", "-qm", "fake kaggle client"], project, env)

    dvc(["pull", "data.dvc"], project, env)
    overrides = [flag for item in ["experiment=birdclef2025", *TINY_REAL] for flag in ("-S", item)]
    dvc(["exp", "run", "-n", "real-tiny", *overrides], project, env)

    params = yaml.safe_load((project / "params.yaml").read_text())
    assert params["family"]["eca"]["backbone"] == "eca_nfnet_l0" and params["train"]["epochs"] == 1
    for family, name in BACKBONE_FILES.items():
        source = json.loads((project / "metrics/pretrain" / family / "source.json").read_text())
        published = archives / "work/vladimirsydor__bird-clef-2025-all-pretrained-models" / name
        assert source["source"] == "published"
        assert source["sha256"] == hashlib.sha256(published.read_bytes()).hexdigest()
        meta = json.loads((project / "models/round0" / family / "fold0/meta.json").read_text())
        assert meta["backbone"] == backbones[family] and meta["pseudo_chunks"] > 0
        export = json.loads((project / "models/export" / family / "export.json").read_text())
        assert export["folds"] == [0, 1]
    submission = pd.read_csv(project / "submission.csv")
    template = pd.read_csv(project / "data/raw/sample_submission.csv")
    assert list(submission.columns) == list(template.columns)
    assert submission["row_id"].tolist() == [f"H02_20230502_120000_{end}" for end in range(5, 65, 5)]
    assert "Data and pipelines are up to date" in dvc(["status"], project, env).stdout
