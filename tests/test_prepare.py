"""The prepare stage: training table, class list, both fold variants and the oversampling."""

import json
import warnings
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from conftest import REPO, tone, write_audio

from birdclef.labels import parse_label_list
from birdclef.params import load_params
from birdclef.precompute import precompute
from birdclef.prepare import (CLASSES_JSON, FOLDS_CSV, TABLE_COLUMNS, TRAIN_TABLE, PrepareError, add_missing_species,
                              prepare)
from birdclef.store import AudioStore

# Taxonomy order on purpose not alphabetical; the last class has no recording at all.
TAXONOMY = ["zebdov", "amerob", "41778", "bkcchi", "houspa", "norcar", "mallar3", "comrav", "gretit1"]
COMPETITION_COUNTS = {"zebdov": 20, "amerob": 14, "41778": 12, "bkcchi": 8, "houspa": 5,
                      "norcar": 3, "mallar3": 2, "comrav": 1}
EXTRA = [("amerob", "Extra One"), ("norcar", "extra one"), ("houspa", "Extra Two")]
EXTERNAL = [("mallar3", "Me"), ("houspa", "unknown")]
RARE_MAX = 4  # norcar (3 + 1 extra), mallar3 (2 + 1 external) and comrav (1) are rare
RARE = {"norcar", "mallar3", "comrav"}
N_FOLDS = 5
RATE = 32000


def author_of(number: int) -> str:
    """~12 authors in mixed case, plus "unknown" and empty authors."""
    if number % 11 == 4:
        return "Unknown"
    if number % 11 == 7:
        return ""
    name = f"author{number % 12}"
    return name.upper() if number % 2 else name


def table_row(label: str, filename: str, author: str, secondary: str = "[]") -> dict:
    return {"primary_label": label, "secondary_labels": secondary, "type": "['song']",
            "filename": filename, "collection": "XC", "rating": "4.0", "url": "",
            "latitude": "0", "longitude": "0", "scientific_name": label, "common_name": label,
            "author": author, "license": "cc"}


def write_clip(path, number: int) -> None:
    write_audio(path, tone(400 + 37 * number, 1.0 + 0.25 * (number % 3), RATE), RATE)


def write_split_dataset(root):
    """data/raw with 8 species of 1-20 recordings, extra recordings, and data/external."""
    raw, external = root / "raw", root / "external"
    raw.mkdir(parents=True)
    pd.DataFrame({"primary_label": TAXONOMY, "inat_taxon_id": [str(i) for i in range(len(TAXONOMY))],
                  "scientific_name": TAXONOMY, "common_name": TAXONOMY,
                  "class_name": "Aves"}).to_csv(raw / "taxonomy.csv", index=False)
    rows, number = [], 0
    for label, count in COMPETITION_COUNTS.items():
        for _ in range(count):
            name = f"{label}/XC{1000 + number}.wav"
            write_clip(raw / "train_audio" / name, number)
            rows.append(table_row(label, name, author_of(number)))
            number += 1
    rows[0]["secondary_labels"] = "['amerob', 'notscored', 'bkcchi']"
    pd.DataFrame(rows).to_csv(raw / "train.csv", index=False)
    extra = []
    for offset, (label, author) in enumerate(EXTRA):
        name = f"{label}/XC{9000 + offset}.wav"
        write_clip(raw / "extra" / "audio" / name, 100 + offset)
        extra.append(table_row(label, name, author))
    pd.DataFrame(extra).to_csv(raw / "extra" / "train.csv", index=False)
    mine = []
    for offset, (label, author) in enumerate(EXTERNAL):
        name = f"{label}/mine{offset}.wav"
        write_clip(external / "audio" / name, 200 + offset)
        mine.append(table_row(label, name, author))
    pd.DataFrame(mine).drop(columns=["collection", "rating"]).to_csv(external / "train.csv", index=False)
    return raw, external


def make_params(**prepare_settings):
    params = load_params(REPO / "params.yaml")
    params.precompute.workers = 1
    params.prepare.n_folds = N_FOLDS
    params.prepare.split_seed = 42
    params.prepare.rare_max_recordings = RARE_MAX
    params.prepare.oversample = {}
    params.prepare.oversample_to = 0
    for name, value in prepare_settings.items():
        setattr(params.prepare, name, value)
    return params


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """One raw dataset, store and prepare output shared by the read-only tests."""
    root = tmp_path_factory.mktemp("prepare")
    raw, external = write_split_dataset(root)
    precompute(raw, external, root / "store", make_params(), progress=False)
    summary = prepare(raw, external, root / "store", root / "tables", make_params())
    return {"raw": raw, "external": external, "store": root / "store", "out": root / "tables",
            "summary": summary, "root": root}


def read_table(out) -> pd.DataFrame:
    return pd.read_csv(out / TRAIN_TABLE, dtype=str, keep_default_na=False)


def read_folds(out) -> dict:
    """(variant, fold, subset) -> row numbers, as numpy arrays (repeats kept)."""
    frame = pd.read_csv(out / FOLDS_CSV)
    assert list(frame.columns) == ["variant", "fold", "subset", "row"]
    return {key: group["row"].to_numpy() for key, group in frame.groupby(["variant", "fold", "subset"])}


def rows_of(folds, variant, fold, subset):
    return folds.get((variant, fold, subset), np.empty(0, dtype=int))


def test_table_holds_every_labelled_recording_with_store_durations(dataset):
    table = read_table(dataset["out"])
    assert list(table.columns) == list(TABLE_COLUMNS)
    competition = pd.read_csv(dataset["raw"] / "train.csv", dtype=str, keep_default_na=False)
    expected = ([f"train_audio/{name}" for name in competition["filename"]]
                + [f"extra/audio/{label}/XC{9000 + i}.wav" for i, (label, _) in enumerate(EXTRA)]
                + [f"external/audio/{label}/mine{i}.wav" for i, (label, _) in enumerate(EXTERNAL)])
    assert table["key"].tolist() == expected
    assert table["source"].tolist() == (["train_audio"] * len(competition) + ["extra"] * len(EXTRA)
                                        + ["external"] * len(EXTERNAL))
    store = AudioStore(dataset["store"])
    durations = table["duration_s"].astype(float).tolist()
    assert durations == [store.duration(key) for key in table["key"]]
    assert set(durations) == {1.0, 1.25, 1.5}
    assert table["collection"].tolist()[-len(EXTERNAL):] == ["", ""]  # external table has none
    summary = dataset["summary"]
    assert summary["rows"] == len(expected) and summary["missing_from_store"] == 0
    assert summary["rows_by_source"] == {"external": 2, "extra": 3, "train_audio": len(competition)}
    assert summary["classes_without_recordings"] == ["gretit1"]
    assert not list(dataset["out"].glob("*.tmp"))


def test_secondary_labels_are_pruned_json_lists(dataset):
    table = read_table(dataset["out"])
    assert table.loc[0, "secondary_labels"] == '["amerob", "bkcchi"]'
    assert parse_label_list(table.loc[0, "secondary_labels"]) == ["amerob", "bkcchi"]
    assert set(table["secondary_labels"].iloc[1:]) == {"[]"}


def test_classes_follow_the_taxonomy_order(dataset):
    assert json.loads((dataset["out"] / CLASSES_JSON).read_text()) == TAXONOMY


def test_anonymous_copies_of_one_recording_share_a_group():
    """The seed's file name is <label>/<file>; ours carries the extra data's source folder."""
    from birdclef.prepare import author_group

    prev = author_group("", "add_train_audio_from_prev_comps/amerob/XC1.mp3")
    scrape = author_group("unknown", "add_train_audio_from_xeno_canto_28032025/amerob/XC1.mp3")
    assert prev == scrape == "amerob/XC1.mp3"
    assert author_group("", "add_train_audio_from_prev_comps/amerob/XC2.mp3") != prev


def test_groups_are_lower_cased_authors_or_the_file_name(dataset):
    table = read_table(dataset["out"])
    for row in table.itertuples():
        if row.author.strip().lower() in ("", "unknown"):
            assert row.group == "/".join(row.key.split("/")[-2:])  # <label>/<file>, the seed's file name
        else:
            assert row.group == row.author.lower()
    assert (table["author"] == "").any() and (table["author"] == "Unknown").any()
    assert {"author3", "author2"} <= set(table["group"])
    assert table.loc[table["author"] == "AUTHOR3", "group"].unique().tolist() == ["author3"]
    extra = table[table["source"] == "extra"]
    assert extra["group"].tolist() == ["extra one", "extra one", "extra two"]
    assert table.loc[table["key"] == "external/audio/houspa/mine1.wav", "group"].item() == "houspa/mine1.wav"


def test_allbirds_split_invariants(dataset):
    table = read_table(dataset["out"])
    folds = read_folds(dataset["out"])
    labels, groups = table["primary_label"].to_numpy(), table["group"].to_numpy()
    present = set(labels)
    valid_all = np.concatenate([rows_of(folds, "allbirds", f, "valid") for f in range(N_FOLDS)])
    assert sorted(valid_all.tolist()) == list(range(len(table)))  # every row validated once
    copies = 0
    for fold in range(N_FOLDS):
        train, valid = rows_of(folds, "allbirds", fold, "train"), rows_of(folds, "allbirds", fold, "valid")
        assert len(np.unique(train)) == len(train) and len(valid) > 0
        assert set(labels[train]) == present  # every species trains in every fold
        overlap = np.intersect1d(train, valid)
        copies += len(overlap)
        for row in overlap:  # the documented leak: one copy of a species absent otherwise
            assert (labels[train] == labels[row]).sum() == 1
            assert row == np.flatnonzero(labels == labels[row])[0]
        plain_train = np.setdiff1d(train, overlap)
        assert not set(groups[plain_train]) & set(groups[valid])
        assert set(np.union1d(train, valid)) == set(range(len(table)))
    assert copies >= 1  # comrav has a single recording: its validation fold needs a copy
    assert sum(dataset["summary"]["folds"]["allbirds"]["overlap_rows"]) == copies
    # comrav's first row is its only one: a species with several rows is copied by its first
    mallar3 = np.flatnonzero(labels == "mallar3")
    without = np.setdiff1d(np.arange(len(table)), mallar3)
    assert np.setdiff1d(add_missing_species(table, without), without).tolist() == [mallar3[0]]


def test_rare_noleak_split_invariants(dataset):
    table = read_table(dataset["out"])
    folds = read_folds(dataset["out"])
    labels, groups = table["primary_label"].to_numpy(), table["group"].to_numpy()
    rare = np.flatnonzero(np.isin(labels, sorted(RARE)))
    assert len(rare) == 4 + 3 + 1 and dataset["summary"]["rare_rows"] == len(rare)
    valid_all = np.concatenate([rows_of(folds, "rare_noleak", f, "valid") for f in range(N_FOLDS)])
    assert sorted(valid_all.tolist()) == sorted(set(range(len(table))) - set(rare.tolist()))
    for fold in range(N_FOLDS):
        train = rows_of(folds, "rare_noleak", fold, "train")
        valid = rows_of(folds, "rare_noleak", fold, "valid")
        assert set(rare) <= set(train)
        assert not set(rare) & set(valid)
        assert not set(train) & set(valid)  # no leak at all
        plain_train = np.setdiff1d(train, rare)
        assert not set(groups[plain_train]) & set(groups[valid])
        # the same plain split as allbirds, minus the rare rows in validation
        allbirds_valid = rows_of(folds, "allbirds", fold, "valid")
        assert valid.tolist() == np.setdiff1d(allbirds_valid, rare).tolist()


def expected_extra(count: int, label: str, oversample: dict, oversample_to: int) -> int:
    if label in oversample:
        return oversample[label] if count else 0
    return oversample_to - count if 0 < count < oversample_to else 0


@pytest.mark.parametrize("oversample, oversample_to", [
    ({"amerob": 7, "comrav": 9}, 0),
    ({"amerob": 7, "houspa": 0, "zebdov": 3}, 6),
    ({}, 10),
])
def test_oversampling_counts_are_exact_and_from_the_fold_training_rows(dataset, tmp_path, oversample,
                                                                      oversample_to):
    params = make_params(oversample=oversample, oversample_to=oversample_to)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a class absent from some fold is fine here
        summary = prepare(dataset["raw"], dataset["external"], dataset["store"], tmp_path, params)
    table = read_table(tmp_path)
    folds = read_folds(tmp_path)
    labels = table["primary_label"].to_numpy()
    drawn_total = 0
    for variant in ("allbirds", "rare_noleak"):
        for fold in range(N_FOLDS):
            train = rows_of(folds, variant, fold, "train")
            extra = rows_of(folds, variant, fold, "oversample")
            assert set(extra) <= set(train)
            counts = Counter(labels[train])
            got = Counter(labels[extra])
            for label in TAXONOMY:
                assert got[label] == expected_extra(counts[label], label, oversample, oversample_to), \
                    (variant, fold, label)
                if got[label]:  # every training row of the class copied floor or ceil times
                    copies = Counter(extra[labels[extra] == label])
                    times = [copies[row] for row in train[labels[train] == label]]
                    assert max(times) - min(times) <= 1
            drawn_total += len(extra)
            assert summary["folds"][variant]["oversample_rows"][fold] == len(extra)
    assert drawn_total > 0
    # the training table and the plain splits do not depend on the oversampling
    assert (tmp_path / TRAIN_TABLE).read_bytes() == (dataset["out"] / TRAIN_TABLE).read_bytes()
    reference = read_folds(dataset["out"])
    for key, rows in reference.items():
        if key[2] != "oversample":
            assert rows.tolist() == folds[key].tolist()


@pytest.mark.parametrize("oversample, message", [
    ({"amerob": 3, "nosuchbird": 5, "otherbird": 1}, r"not in taxonomy.csv: \['nosuchbird', 'otherbird'\]"),
    ({"amerob": 3, "houspa": -2}, r"negative counts for \['houspa'\]"),
])
def test_unknown_oversample_label_or_negative_count_is_refused(dataset, tmp_path, oversample, message):
    params = make_params(oversample=oversample)
    with pytest.raises(PrepareError, match=message):
        prepare(dataset["raw"], dataset["external"], dataset["store"], tmp_path / "out", params)
    assert not (tmp_path / "out").exists()


def test_too_few_groups_for_the_folds_is_refused(dataset, tmp_path):
    params = make_params(n_folds=40)
    with pytest.raises(PrepareError, match=r"distinct author group"):
        prepare(dataset["raw"], dataset["external"], dataset["store"], tmp_path, params)


def test_same_inputs_give_identical_bytes(dataset, tmp_path):
    params = make_params(oversample={"amerob": 5}, oversample_to=9)
    for name in ("a", "b"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prepare(dataset["raw"], dataset["external"], dataset["store"], tmp_path / name, params)
    for name in (TRAIN_TABLE, CLASSES_JSON, FOLDS_CSV):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_recording_skipped_by_precompute_is_dropped_with_a_warning(tmp_path):
    raw, external = write_split_dataset(tmp_path)
    (raw / "train_audio" / "amerob" / "XC1025.wav").write_bytes(b"")
    params = make_params()
    params.precompute.on_error = "skip"
    precompute(raw, external, tmp_path / "store", params, progress=False)
    with pytest.warns(UserWarning, match=r"1 labelled recording.*train_audio/amerob/XC1025.wav"):
        summary = prepare(raw, external, tmp_path / "store", tmp_path / "tables", params)
    table = read_table(tmp_path / "tables")
    assert "train_audio/amerob/XC1025.wav" not in set(table["key"])
    assert summary["missing_from_store"] == 1 and summary["rows"] == len(table)
    folds = pd.read_csv(tmp_path / "tables" / FOLDS_CSV)
    assert folds["row"].max() == len(table) - 1
