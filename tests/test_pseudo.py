"""The seed's pseudo-label rules on small hand-made CSVs, and `birdclef pseudo` refusing bad inputs."""

import os

import numpy as np
import pandas as pd
import pytest
import yaml

from birdclef.pseudo import PseudoError, load_pool, split_row_id, stack
from birdclef.store import ShardWriter, write_index
from conftest import REPO, python, run, tone
from trained_models import CLASSES as TEACHER_CLASSES, realistic_random_model, save_trained

CLASSES = ["aaa1", "bbb1", "41778"]


def chunks(rows):
    """rows: (row_id, probabilities) -> a pseudo CSV frame with the primary columns."""
    frame = pd.DataFrame([probs for _, probs in rows], columns=CLASSES)
    frame.insert(0, "row_id", [row_id for row_id, _ in rows])
    frame["primary_label"] = np.asarray(CLASSES)[frame[CLASSES].to_numpy().argmax(1)]
    frame["primary_label_prob"] = frame[CLASSES].to_numpy().max(1)
    return frame


def test_threshold_keeps_only_confident_chunks():
    frame = chunks([("S1_5", [0.9, 0.2, 0.0]), ("S1_10", [0.5, 0.4, 0.0]), ("S1_15", [0.3, 0.51, 0.05])])
    kept = stack([frame], CLASSES, min_primary_prob=0.5, trim_prob=0.1)
    assert kept["row_id"].tolist() == ["S1_5", "S1_15"]  # 0.5 is not > 0.5
    assert kept["primary_label"].tolist() == ["aaa1", "bbb1"]


def test_trim_zeroes_small_probabilities_without_renormalising():
    kept = stack([chunks([("S1_5", [0.9, 0.09, 0.1])])], CLASSES, 0.5, 0.1)
    np.testing.assert_allclose(kept[CLASSES].to_numpy()[0], [0.9, 0.0, 0.1])


def test_later_files_only_add_soundscapes_the_earlier_did_not_cover():
    first = chunks([("S1_5", [0.9, 0.0, 0.0]), ("S2_5", [0.2, 0.2, 0.2])])
    second = chunks([("S1_10", [0.0, 0.8, 0.0]), ("S2_10", [0.0, 0.0, 0.7]), ("S3_5", [0.6, 0.0, 0.0])])
    kept = stack([first, second], CLASSES, 0.5, 0.1)
    # S1 came from the first file, so the second's S1 chunk is dropped; S2 had no kept chunk
    # in the first file (0.2 < 0.5), so the second file may add it.
    assert kept["row_id"].tolist() == ["S1_5", "S2_10", "S3_5"]
    kept_reversed = stack([second, first], CLASSES, 0.5, 0.1)
    assert kept_reversed["row_id"].tolist() == ["S1_10", "S2_10", "S3_5"]


def test_pool_files_chunks_under_their_class_in_priority_order(tmp_path):
    chunks([("S1_5", [0.9, 0.0, 0.0]), ("S1_60", [0.0, 0.3, 0.95])]).to_csv(tmp_path / "00-a.csv", index=False)
    chunks([("S1_10", [0.0, 0.99, 0.0]), ("S2_15", [0.0, 0.99, 0.0])]).to_csv(tmp_path / "01-b.csv", index=False)
    keys = {"train_soundscapes/S1.ogg", "train_soundscapes/S2.flac"}  # any format the store took
    pool = load_pool(tmp_path, CLASSES, 0.5, 0.1, swap_p=0.4, store_keys=keys)
    assert len(pool) == 3
    assert [(c.key, c.end_s) for c in pool.chunks_by_class["41778"]] == [("train_soundscapes/S1.ogg", 60.0)]
    np.testing.assert_allclose(pool.chunks_by_class["41778"][0].target, [0.0, 0.3, 0.95])
    assert [(c.key, c.end_s) for c in pool.chunks_by_class["bbb1"]] == [("train_soundscapes/S2.flac", 15.0)]


def test_swap_probability_and_same_class_draws(tmp_path):
    chunks([("S1_5", [0.9, 0.0, 0.0])]).to_csv(tmp_path / "00.csv", index=False)
    pool = load_pool(tmp_path, CLASSES, 0.5, 0.1, swap_p=0.4, store_keys={"train_soundscapes/S1.ogg"})
    rng = np.random.default_rng(0)
    draws = [pool.draw("aaa1", rng) for _ in range(4000)]
    assert 0.37 < np.mean([d is not None for d in draws]) < 0.43
    assert all(pool.draw("bbb1", rng) is None for _ in range(100))  # no chunks of that class


def test_pseudo_labels_for_another_dataset_are_refused(tmp_path):
    chunks([("ELSEWHERE_5", [0.9, 0.0, 0.0])]).to_csv(tmp_path / "00.csv", index=False)
    with pytest.raises(PseudoError, match="ELSEWHERE.*not in the store"):
        load_pool(tmp_path, CLASSES, 0.5, 0.1, 0.4, store_keys={"train_soundscapes/S1.ogg"})


def test_missing_class_columns_are_named(tmp_path):
    chunks([("S1_5", [0.9, 0.0, 0.0])]).drop(columns=["41778"]).to_csv(tmp_path / "00.csv", index=False)
    with pytest.raises(PseudoError, match="41778"):
        load_pool(tmp_path, CLASSES, 0.5, 0.1, 0.4, store_keys={"train_soundscapes/S1.ogg"})


@pytest.mark.parametrize("content", [b"", "row_id,amerob\nS1_5,caf\xe9\n".encode("latin-1"),
                                     b"row_id,a\nS1_5,1\nS1_10,1,2,3\n"], ids=["empty", "latin-1", "ragged"])
def test_unreadable_pseudo_files_are_named(tmp_path, content):
    (tmp_path / "00-bad.csv").write_bytes(content)
    with pytest.raises(PseudoError, match=r"00-bad.csv: unreadable .*a UTF-8 CSV"):
        load_pool(tmp_path, CLASSES, 0.5, 0.1, 0.4, store_keys={"train_soundscapes/S1.ogg"})


def test_row_ids():
    assert split_row_id("H02_20230420_074000_55") == ("H02_20230420_074000", 55)
    with pytest.raises(PseudoError):
        split_row_id("nodigits_x")


@pytest.mark.parametrize("row, message", [
    ("noid,0.9,0,0", "bad row_id 'noid'; expected <soundscape>_<end second>"),
    (",0.9,0,0", "bad row_id ''"),
    ("S1_10,0.9,abc,0", "row_id 'S1_10', column 'bbb1': 'abc' is not a probability; the class columns hold "
                        "numbers in [0, 1]"),
    ("S1_10,0.9,,0", "row_id 'S1_10', column 'bbb1': '' is not a probability"),
    ("S1_10,0.9,nan,0", "row_id 'S1_10', column 'bbb1': 'nan' is not a probability"),
    ("S1_10,0.9,0,inf", "row_id 'S1_10', column '41778': 'inf' is not a probability"),
    ("S1_10,1.5,0,0", "row_id 'S1_10', column 'aaa1': '1.5' is not a probability"),
    ("S1_10,0.9,-0.1,0", "row_id 'S1_10', column 'bbb1': '-0.1' is not a probability"),
])
def test_bad_rows_are_named_with_their_file(tmp_path, row, message):
    (tmp_path / "00-bad.csv").write_text(f"row_id,{','.join(CLASSES)}\nS1_5,0.9,0,0\n{row}\n")
    with pytest.raises(PseudoError) as error:
        load_pool(tmp_path, CLASSES, 0.5, 0.1, 0.4, store_keys={"train_soundscapes/S1.ogg"})
    assert str(error.value).startswith(f"{tmp_path / '00-bad.csv'}: {message}")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """What `birdclef pseudo` reads: params.yaml (one family, one fold), round0's trained fold
    under models/, and a store holding one 10-s unlabelled soundscape, S1."""
    root = tmp_path_factory.mktemp("teacher")
    values = yaml.safe_load((REPO / "params.yaml").read_text())
    values.update(families=["eca"], folds=[0])
    (root / "params.yaml").write_text(yaml.safe_dump(values))
    save_trained(realistic_random_model(0), root / "models" / "round0" / "eca" / "fold0", fold=0)
    (root / "store").mkdir()
    writer = ShardWriter(root / "store" / "train_soundscapes-000.h5", 32000, "float16", "test")
    writer.append("train_soundscapes/S1.ogg", tone(3000, 10.0, 32000), 32000, 1, "OGG")
    write_index(root / "store", writer.close())
    return root


def pseudo_command(teacher, cwd, *args):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return run([python(), "-m", "birdclef", "pseudo", "--params", teacher / "params.yaml", "--models",
                teacher / "models", *args], cwd, env, check=False)


def test_a_missing_store_is_named(teacher, tmp_path):
    result = pseudo_command(teacher, tmp_path, "--store", "nope")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "error: nope/index.csv: no store index; run `dvc repro precompute`" in result.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("row, message", [
    ("noid,0.9", "bad row_id 'noid'"),
    ("S1_10,abc", "row_id 'S1_10', column 'amerob': 'abc' is not a probability"),
])
def test_a_bad_inherited_file_is_named_before_anything_is_written(teacher, tmp_path, row, message):
    inherit = tmp_path / "inherit"
    inherit.mkdir()
    zeros = ",0" * (len(TEACHER_CLASSES) - 1)
    (inherit / "00-published.csv").write_text(f"row_id,{','.join(TEACHER_CLASSES)}\nS1_5,0.9{zeros}\n{row}{zeros}\n")
    result = pseudo_command(teacher, tmp_path, "--store", teacher / "store", "--inherit", inherit, "--out", "out")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"error: {inherit / '00-published.csv'}: {message}" in result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["inherit"]
