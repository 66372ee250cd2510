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
from conftest import REPO, python, run, write_raw_dataset


def test_inference_benchmark_exports_and_times_a_family(tmp_path: Path):
    command = [python(), "benchmarks/inference.py", "--backbones", "mobilenetv3_small_050", "--folds", "1",
               "--repeats", "1", "--warmup", "0", "--classes", "3", "--work", str(tmp_path)]
    result = run(command, cwd=REPO)
    row = re.search(r"^mobilenetv3_small_050\s+(\d+\.\d+)\s+(\d+\.\d+) \((\d+\.\d+)x\)", result.stdout, re.MULTILINE)
    assert row and float(row.group(1)) > 0, result.stdout
    eager, ort, speedup = map(float, row.groups())
    assert abs(speedup - eager / ort) <= 0.05 * speedup, result.stdout  # a cell's ratio: eager time / its time
    ort_error = re.search(r"parity \(4 windows, max \|err\|\): ORT (\S+),", result.stdout)
    assert ort_error and float(ort_error.group(1)) < 1e-3, result.stdout  # the export computes the model
    assert (tmp_path / "export" / "f0" / "model.xml").is_file()
    assert "peak memory per group (GB): mobilenetv3_small_050 " in result.stdout, result.stdout

    # --quick sets defaults only: the options given win (and the export above is reused)
    quick = run(command + ["--quick"], cwd=REPO).stdout
    assert quick.startswith("1 families x 1 folds, 3 classes"), quick
    assert "median of 1 rounds after 0 warm-up; all in this one process" in quick, quick
    assert "peak memory of this one process, all groups so far" in quick, quick


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


def test_dataloader_benchmark_times_the_store_against_a_file_per_recording(workspace):
    root, _ = workspace
    result = run([python(), "benchmarks/dataloader.py", "--store", str(root / "store"), "--tables",
                  str(root / "tables"), "--raw", str(root / "raw"), "--items", "6", "--repeats", "1"], cwd=REPO)
    speeds = re.findall(r"^(?:birdclef|seed): .*\s(\d+) items/s$", result.stdout, re.MULTILINE)
    assert len(speeds) == 2 and all(int(speed) > 0 for speed in speeds), result.stdout
    assert re.search(r"^ratio: \d+\.\d\dx$", result.stdout, re.MULTILINE), result.stdout
    casts = re.findall(r"^  float(?:16|32) -> float(?:16|32): .* (\d+\.\d)x  (True|False)$", result.stdout, re.MULTILINE)
    assert len(casts) == 2 and all(same == "True" for _, same in casts), result.stdout


def test_precompute_benchmark_times_both_methods_and_compares_their_audio(tmp_path: Path):
    raw = write_raw_dataset(tmp_path / "raw", files_per_label=1)
    result = run([python(), "benchmarks/precompute.py", "--raw", str(raw), "--repeats", "1"], cwd=REPO)
    assert result.stdout.startswith("5 recordings,"), result.stdout  # 3 focal, 2 soundscapes
    assert re.search(r"^ratio float32 / seed: \d+\.\d\dx", result.stdout, re.MULTILINE), result.stdout
    worst = re.search(r"max \|float32 store - seed\| = (\S+) ", result.stdout)
    assert worst and float(worst.group(1)) < 1e-4, result.stdout  # both decoded the same audio


def test_training_step_benchmark_times_every_variant():
    result = run([python(), "benchmarks/training_step.py", "--families", "ebs", "--batch", "2", "--steps", "1",
                  "--classes", "3"], cwd=REPO)
    for variant in ("baseline", "channels_last", "+ multi-tensor"):
        assert re.search(rf"^  {re.escape(variant)}\s+\d+\.\d ms/step\s+\d+\.\d\dx$", result.stdout,
                         re.MULTILINE), result.stdout
