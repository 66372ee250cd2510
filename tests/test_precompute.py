import numpy as np
import pandas as pd
import pytest

from birdclef.audio import decode
from birdclef.precompute import PrecomputeError, precompute
from birdclef.store import AudioStore
from birdclef.tables import TableError

EXTERNAL_NONE = "no-external"


def run_precompute(raw, out, params, **settings):
    for name, value in settings.items():
        setattr(params.precompute, name, value)
    return precompute(raw, raw.parent / EXTERNAL_NONE, out, params, progress=False)


def test_every_recording_is_stored_as_decoded(raw_dataset, tmp_path, params):
    summary = run_precompute(raw_dataset, tmp_path / "store", params, dtype="float32", workers=2)
    store = AudioStore(tmp_path / "store")
    audio = sorted(p for p in raw_dataset.rglob("*") if p.suffix in (".ogg", ".wav", ".flac", ".mp3"))
    assert summary.recordings == len(audio) == len(store)
    for path in audio:
        key = path.relative_to(raw_dataset).as_posix()
        np.testing.assert_array_equal(store.read(key), decode(path).wave)
    index = pd.read_csv(tmp_path / "store" / "index.csv")
    assert set(index["collection"]) == {"train_audio", "train_soundscapes"}
    assert set(index["source_rate"]) == {22050, 32000, 44100, 48000}
    assert set(index["source_channels"]) == {1, 2}


def test_same_inputs_give_identical_bytes(raw_dataset, tmp_path, params):
    run_precompute(raw_dataset, tmp_path / "a", params, workers=2)
    run_precompute(raw_dataset, tmp_path / "b", params, workers=1)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_corrupt_file_fails_naming_it_and_leaves_no_partial_shard(raw_dataset, tmp_path, params):
    bad = raw_dataset / "train_audio" / "amerob" / "XC1000.wav"
    bad.write_bytes(b"RIFF....not really audio")
    out = tmp_path / "store"
    with pytest.raises(PrecomputeError, match=r"(?s)XC1000.wav: cannot decode.*on_error: skip"):
        run_precompute(raw_dataset, out, params)
    assert not any(p.name.endswith(".tmp") for p in out.iterdir())
    assert not (out / "index.csv").exists()


def test_skip_mode_lists_bad_files(raw_dataset, tmp_path, params):
    (raw_dataset / "train_audio" / "amerob" / "XC1000.wav").write_bytes(b"")
    summary = run_precompute(raw_dataset, tmp_path / "store", params, on_error="skip")
    skipped = pd.read_csv(tmp_path / "store" / "skipped.csv")
    assert skipped["key"].tolist() == ["train_audio/amerob/XC1000.wav"]
    assert "XC1000.wav" in skipped["reason"][0]
    assert "train_audio/amerob/XC1000.wav" not in AudioStore(tmp_path / "store")
    assert summary.recordings == len(AudioStore(tmp_path / "store"))


def test_interrupted_run_resumes_from_finished_shards(raw_dataset, tmp_path, params):
    """A failure in the last shard keeps the finished ones; the re-run only does the rest."""
    out = tmp_path / "store"
    last = raw_dataset / "train_soundscapes" / "H02_20230421.ogg"
    good = last.read_bytes()
    last.write_bytes(b"OggS broken")
    with pytest.raises(PrecomputeError):
        run_precompute(raw_dataset, out, params, files_per_shard=2)
    finished = {p.name: p.stat().st_mtime_ns for p in out.glob("*.h5")}
    assert "train_audio-000.h5" in finished and "train_soundscapes-000.h5" not in finished
    last.write_bytes(good)
    summary = run_precompute(raw_dataset, out, params, files_per_shard=2)
    assert summary.shards_reused == len(finished)
    assert summary.shards_written == 1
    assert {name: (out / name).stat().st_mtime_ns for name in finished} == finished
    assert "train_soundscapes/H02_20230421.ogg" in AudioStore(out)


def test_changed_file_or_setting_rebuilds_only_what_it_touches(raw_dataset, tmp_path, params):
    out = tmp_path / "store"
    run_precompute(raw_dataset, out, params, files_per_shard=2)
    shards = len(list(out.glob("*.h5")))
    soundscape = raw_dataset / "train_soundscapes" / "H02_20230420.ogg"
    soundscape.write_bytes((raw_dataset / "train_soundscapes" / "H02_20230421.ogg").read_bytes())
    summary = run_precompute(raw_dataset, out, params, files_per_shard=2)
    assert (summary.shards_written, summary.shards_reused) == (1, shards - 1)
    summary = run_precompute(raw_dataset, out, params, files_per_shard=2, dtype="float32")
    assert (summary.shards_written, summary.shards_reused) == (shards, 0)


def test_stale_shards_of_an_old_plan_are_removed(raw_dataset, tmp_path, params):
    out = tmp_path / "store"
    run_precompute(raw_dataset, out, params, files_per_shard=1)
    run_precompute(raw_dataset, out, params, files_per_shard=100)
    assert sorted(p.name for p in out.glob("*.h5")) == ["train_audio-000.h5", "train_soundscapes-000.h5"]


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.assign(primary_label=["zzzzz"] + t["primary_label"].tolist()[1:]),
     r"train.csv:2: unknown primary_label 'zzzzz'"),
    (lambda t: t.drop(columns=["author"]), r"missing column\(s\) \['author'\]"),
    (lambda t: t.assign(filename=["amerob/gone.ogg"] + t["filename"].tolist()[1:]),
     r"train.csv:2: .*gone.ogg does not exist"),
    (lambda t: t.assign(secondary_labels=["['oops"] + t["secondary_labels"].tolist()[1:]),
     r"train.csv:2: .*oops"),
])
def test_bad_tables_are_refused_before_decoding(raw_dataset, tmp_path, params, edit, message):
    table = pd.read_csv(raw_dataset / "train.csv", dtype=str, keep_default_na=False)
    edit(table).to_csv(raw_dataset / "train.csv", index=False)
    with pytest.raises(TableError, match=message):
        run_precompute(raw_dataset, tmp_path / "store", params)
    assert not (tmp_path / "store").exists()


def test_unknown_secondary_labels_are_pruned(raw_dataset):
    from birdclef.tables import read_taxonomy, read_train_table

    table = pd.read_csv(raw_dataset / "train.csv", dtype=str, keep_default_na=False)
    table.loc[0, "secondary_labels"] = "['bkcchi', 'notascoredbird']"
    table.to_csv(raw_dataset / "train.csv", index=False)
    frame = read_train_table(raw_dataset / "train.csv", raw_dataset / "train_audio",
                             read_taxonomy(raw_dataset / "taxonomy.csv"))
    assert frame.loc[0, "secondary_labels"] == ["bkcchi"]


def test_user_recordings_in_external_are_merged(raw_dataset, tmp_path, params):
    from conftest import tone, write_audio

    external = tmp_path / "external"
    write_audio(external / "audio" / "amerob" / "mine.flac", tone(700, 2.0, 48000), 48000)
    table = pd.read_csv(raw_dataset / "train.csv", dtype=str, keep_default_na=False).head(1)
    table.assign(filename="amerob/mine.flac").to_csv(external / "train.csv", index=False)
    precompute(raw_dataset, external, tmp_path / "store", params, progress=False)
    assert AudioStore(tmp_path / "store").duration("external/audio/amerob/mine.flac") == 2.0
