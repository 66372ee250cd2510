"""The benchmarks run, at their smallest, on the code they measure.

A benchmark is run by hand, rarely, and on a GPU only in the few sessions that have one: one
that no longer fits the code (``inference.py`` once wrote a ``meta.json`` that export had
since learnt to reject) would waste that run. These tests run each command line as a user
would, with settings small enough for CI; its numbers are not checked, only that it measures.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from birdclef.store import INDEX_CSV
from conftest import REPO, python, run


def test_inference_benchmark_exports_and_times_a_family(tmp_path: Path):
    result = run([python(), "benchmarks/inference.py", "--backbones", "mobilenetv3_small_050", "--folds", "1",
                  "--repeats", "1", "--warmup", "0", "--classes", "3", "--work", str(tmp_path)], cwd=REPO)
    row = re.search(r"^mobilenetv3_small_050\s+(\d+\.\d+)\s", result.stdout, re.MULTILINE)
    assert row and float(row.group(1)) > 0, result.stdout
    ort_error = re.search(r"parity \(4 windows, max \|err\|\): ORT (\S+),", result.stdout)
    assert ort_error and float(ort_error.group(1)) < 1e-3, result.stdout  # the export computes the model
    assert (tmp_path / "export" / "f0" / "model.xml").is_file()


def test_gpu_training_benchmark_runs_on_the_cpu(tmp_path: Path):
    """``--device cpu`` is the script's smoke test: the train stage's model, optimizer, loss and
    DataLoader over a synthetic store, fed by random tensors and by the loader."""
    result = run([python(), "benchmarks/gpu_training.py", "--device", "cpu", "--params", "params.yaml",
                  "--families", "ebs", "--batch", "2", "--steps", "1", "--warmup", "1", "--recordings", "8",
                  "--workers", "0",
                  "--work", str(tmp_path)], cwd=REPO)
    assert re.search(r"^ebs \(\S+, adamw\), channels_last True, compile none", result.stdout, re.MULTILINE), result.stdout
    fed = re.search(r"loader alone\s+(\d+) samples/s\s+with loader\s+(\d+) samples/s\s+ratio \d+%", result.stdout)
    assert fed and int(fed.group(1)) > 0 and int(fed.group(2)) > 0, result.stdout
    assert len(pd.read_csv(tmp_path / INDEX_CSV)) == 8  # the synthetic store it read
