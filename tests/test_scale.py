"""Precompute at growing file counts: memory stays flat, shards follow files_per_shard.

The test runs ``benchmarks/scale.py``'s own code (the dataset writer, the measured
``python -m birdclef precompute`` subprocess) at a few hundred short files, so the benchmark
cannot rot unnoticed.
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pandas as pd

from conftest import REPO, load_benchmark, python, run

scale = load_benchmark("scale")

FILES_PER_SHARD = 40
COUNTS = {"train_audio": 260, "extra": 60, "train_soundscapes": 80}
# Soundscapes 3 s, focal recordings ~1.1 s median: ~100 MB of float32 audio in all, so a
# precompute that held every decoded recording would show far above the 1.3 bound.
DURATION_SCALE = 1 / 20


def test_the_modelled_durations_have_the_real_shape():
    items = scale.plan_dataset(scale.REAL_COUNTS, seed=0)
    assert Counter(item.collection for item in items) == scale.REAL_COUNTS
    focal = np.array([item.seconds for item in items if item.collection != "train_soundscapes"])
    assert 20 < np.median(focal) < 24 and 0.8 < np.mean(focal < 60) < 0.93
    assert 1 <= np.sum(focal > 600) <= 20 and focal.min() >= scale.FOCAL_MIN_S
    assert {item.seconds for item in items if item.collection == "train_soundscapes"} == {60.0}


def test_precompute_memory_does_not_grow_with_file_count(tmp_path):
    items = scale.plan_dataset(COUNTS, seed=0)
    quarter = scale.every_nth(items, 4)
    scale.write_dataset(tmp_path / "raw-all", items, DURATION_SCALE)
    scale.write_dataset(tmp_path / "raw-quarter", quarter, DURATION_SCALE, link_from=tmp_path / "raw-all")
    params = scale.write_params(tmp_path / "params.yaml", FILES_PER_SHARD, workers=2, dtype="float16")
    runs = {name: scale.measure_precompute(tmp_path / f"raw-{name}", tmp_path / f"store-{name}", params,
                                           chosen, DURATION_SCALE)
            for name, chosen in (("quarter", quarter), ("all", items))}

    for name, chosen in (("quarter", quarter), ("all", items)):
        index = pd.read_csv(tmp_path / f"store-{name}" / "index.csv")
        assert sorted(index["key"]) == sorted(item.path for item in chosen)
        per_shard = index.groupby("shard").size()
        assert per_shard.max() <= FILES_PER_SHARD
        for collection, members in index.groupby("collection"):
            expected = -(-len(members) // FILES_PER_SHARD)
            assert sorted(set(members["shard"])) == [f"{collection}-{n:03d}.h5" for n in range(expected)]
        assert runs[name].shards == scale.expected_shards(chosen, FILES_PER_SHARD) == index["shard"].nunique()
    assert runs["all"].shards == 2 + 7 + 2 and runs["quarter"].shards == 1 + 2 + 1

    audio_mb = sum(scale.samples_of(item, DURATION_SCALE) for item in items) * 4 / 2**20
    small, big = runs["quarter"].measured.max_rss_mb, runs["all"].measured.max_rss_mb
    assert audio_mb > 0.5 * small  # holding the decoded audio would break the bound below
    assert big / small < 1.3, f"peak RSS {small:.0f} MB -> {big:.0f} MB for 4x the files"


def test_read_measurements_run(tmp_path):
    items = scale.plan_dataset({"train_audio": 12, "extra": 3, "train_soundscapes": 3}, seed=1)
    scale.write_dataset(tmp_path / "raw", items, 0.1)
    params = scale.write_params(tmp_path / "params.yaml", 5, workers=1, dtype="float16")
    scale.measure_precompute(tmp_path / "raw", tmp_path / "store", params, items, 0.1)
    for mode in scale.READ_MODES:
        stats = scale.measure_reads(tmp_path / "store", 50, mode)
        assert stats["recordings"] == len(items) and stats["shards"] == 3 + 1 + 1
        assert 0 < stats["mean_read_s"] <= 5.0


def test_the_benchmark_measures_and_removes_only_what_it_wrote(tmp_path):
    """The command line as a user runs it, into a --work folder that also holds a file of theirs."""
    (tmp_path / "notes.txt").write_text("mine")
    result = run([python(), "benchmarks/scale.py", "--files-scale", "0.005", "--duration-scale", "0.005",
                  "--reads", "50", "--files-per-shard", "100", "--work", str(tmp_path)], cwd=REPO)
    assert re.search(r"^files\s+59\s+229\s+3\.88$", result.stdout, re.MULTILINE), result.stdout
    assert re.search(r"^peak RSS, largest process \(MB\)\s+\d+\s+\d+\s+\d+\.\d\d$", result.stdout, re.MULTILINE)
    assert re.search(r"chunk cache off \(as AudioStore\)\s+[\d,]+\s", result.stdout), result.stdout
    assert [path.name for path in tmp_path.iterdir()] == ["notes.txt"]
