"""Distributed data parallel on CPU: two processes (gloo) train one fold through the CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from copy import deepcopy

import pandas as pd
import pytest
import torch
import yaml

from birdclef.data import training_sampler
from birdclef.train import _RankShare, build_model, read_tables
from conftest import REPO, python, run

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore:.*LeafSpec:FutureWarning")


def test_ddp_on_cpu_trains_one_fold_and_writes_its_outputs_once(workspace, tmp_path):
    root, tiny = workspace
    params = deepcopy(tiny)
    params.train.strategy, params.train.devices, params.train.accelerator = "ddp", "2", "cpu"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(dataclasses.asdict(params)))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    env.pop("LOCAL_RANK", None)
    result = run([python(), "-m", "birdclef", "train", "--family", "eca", "--fold", "0",
                  "--store", str(root / "store"), "--tables", str(root / "tables"), "--raw", str(root / "raw"),
                  "--out", "models/eca/fold0", "--logs", "metrics/eca/fold0"], tmp_path, env)
    output = result.stdout + result.stderr
    # Lightning relaunched `python -m birdclef ...` as rank 1; the ranks met over gloo.
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in output and "distributed_backend=gloo" in output
    assert len(re.findall(r"train round0/eca/fold0: validation ROC-AUC", result.stdout)) == 1  # rank 0 only

    out = tmp_path / "models" / "eca"
    assert sorted(p.name for p in out.iterdir()) == ["fold0"]  # no fold0.tmp left by either rank
    assert sorted(p.name for p in (out / "fold0").iterdir()) == ["meta.json", "model.pt", "oof.csv"]
    meta = json.loads((out / "fold0" / "meta.json").read_text())
    table, classes, folds = read_tables(root / "tables")
    split = params.family["eca"].split
    valid = folds[(folds["variant"] == split) & (folds["fold"] == 0) & (folds["subset"] == "valid")]
    valid_keys = table["key"].iloc[sorted(set(valid["row"]))].tolist()
    oof = pd.read_csv(out / "fold0" / "oof.csv")
    assert oof["key"].tolist() == valid_keys and list(oof.columns) == ["key", *classes]
    assert oof[classes].notna().all().all() and ((oof[classes] >= 0) & (oof[classes] <= 1)).all().all()
    assert meta["valid_files"] == len(valid_keys) and 0.0 <= meta["val_auc"] <= 1.0
    model = build_model(params.family["eca"], len(classes), params.train, params.audio.sample_rate)
    model.load_state_dict(torch.load(out / "fold0" / "model.pt", weights_only=True))  # strict

    logged = json.loads((tmp_path / "metrics" / "eca" / "fold0" / "metrics.json").read_text())
    # The AUC logged during fit gathers both ranks' halves of the validation chunks; rank 0
    # then scores all chunks alone for meta.json: the same number, so nothing was lost.
    assert logged["val"]["auc"] == pytest.approx(meta["val_auc"], abs=1e-5)
    # Each rank trained on half of the epoch: ceil(items / 2) // batch steps, not items // batch.
    steps = -(-meta["train_items"] // 2) // params.train.batch_size
    assert logged["step"] + 1 == steps < meta["train_items"] // params.train.batch_size


def test_rank_share_gives_each_process_disjoint_rows_in_the_sampler_order():
    labels = ["a"] * 11 + ["b"] * 5 + ["c"]
    drawn = list(training_sampler(labels, "balanced", seed=3))
    shares = [list(_RankShare(training_sampler(labels, "balanced", seed=3), num_replicas=2, rank=rank))
              for rank in (0, 1)]
    assert len(shares[0]) == len(shares[1]) == 9  # 17 rows, padded to 2 x 9
    assert shares[0] == drawn[0::2] and shares[1] == drawn[1::2] + drawn[:1]
    assert set(shares[0]).isdisjoint(drawn[1::2]) and set(shares[0]) | set(shares[1]) == set(range(17))
    alone = _RankShare(training_sampler(labels, "balanced", seed=3))  # no process group: unchanged
    assert len(alone) == 17 and list(alone) == drawn
    assert isinstance(alone, torch.utils.data.DistributedSampler)  # so Lightning does not re-wrap it
