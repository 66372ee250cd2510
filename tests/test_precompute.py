import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import tone

from birdclef.audio import decode
from birdclef.outputs import OutputError
from birdclef.precompute import PrecomputeError, precompute
from birdclef.prepare import prepare
from birdclef.store import AudioStore, StoreError
from birdclef.tables import TableError

EXTERNAL_NONE = "no-external"


def run_precompute(raw, out, params, external=None, **settings):
    for name, value in settings.items():
        setattr(params.precompute, name, value)
    return precompute(raw, external or raw.parent / EXTERNAL_NONE, out, params, progress=False)


def write_external(raw, external, filename="amerob/mine.flac"):
    """data/external: one real recording (by its suffix: FLAC or AIFF) and its train.csv row."""
    import soundfile as sf

    path = external / "audio" / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, tone(700, 2.0, 48000), 48000, format=path.suffix[1:].upper())
    table = pd.read_csv(raw / "train.csv", dtype=str, keep_default_na=False).head(1)
    table.assign(filename=filename).to_csv(external / "train.csv", index=False)
    return external / "train.csv"


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
    with pytest.raises(PrecomputeError, match=r"(?s)XC1000.wav: cannot decode.*`dvc exp run -S precompute.on_error=skip precompute`"):
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


@pytest.mark.parametrize("on_error", ["fail", "skip"])
def test_recording_that_resamples_to_nothing_is_not_stored(raw_dataset, tmp_path, params, on_error):
    """One sample at 96 kHz is none at 32 kHz: stored, it would train its label on silence."""
    import soundfile as sf

    external = tmp_path / "external"
    write_external(raw_dataset, external, "amerob/blip.wav")
    sf.write(external / "audio" / "amerob" / "blip.wav", np.array([0.5], dtype=np.float32), 96000)
    reason = r"blip.wav: 0 samples after resampling from 96000 Hz to 32000 Hz, too short to train on"
    if on_error == "fail":
        with pytest.raises(PrecomputeError, match=reason):
            run_precompute(raw_dataset, tmp_path / "store", params, external, on_error=on_error)
        assert not (tmp_path / "store" / "index.csv").exists()
        return
    run_precompute(raw_dataset, tmp_path / "store", params, external, on_error=on_error)
    skipped = pd.read_csv(tmp_path / "store" / "skipped.csv")
    assert skipped["key"].tolist() == ["external/audio/amerob/blip.wav"]
    assert re.search(reason, skipped["reason"][0])
    assert "external/audio/amerob/blip.wav" not in AudioStore(tmp_path / "store")


@pytest.mark.parametrize("dtype, on_error", [("float16", "fail"), ("float16", "skip"), ("float32", "fail")])
def test_samples_beyond_float16_are_not_stored_as_infinity(raw_dataset, tmp_path, params, dtype, on_error):
    import soundfile as sf

    loud = raw_dataset / "train_audio" / "amerob" / "XC1000.wav"
    sf.write(loud, tone(500, 1.0, 32000, level=70000.0).astype(np.float32), 32000, subtype="FLOAT")
    key, out = "train_audio/amerob/XC1000.wav", tmp_path / "store"
    reason = (r"XC1000.wav: peak 70000 is beyond float16's range \(±65504\) and would be stored as infinity; "
              r"normalise the file \(e.g. to \[-1, 1\]\) or set precompute.dtype: float32")
    if dtype == "float32":
        run_precompute(raw_dataset, out, params, dtype=dtype, on_error=on_error)
        assert np.abs(AudioStore(out).read(key)).max() == pytest.approx(70000.0)
    elif on_error == "fail":
        with pytest.raises(PrecomputeError, match=reason):
            run_precompute(raw_dataset, out, params, dtype=dtype, on_error=on_error)
        assert not (out / "index.csv").exists()
    else:
        run_precompute(raw_dataset, out, params, dtype=dtype, on_error=on_error)
        skipped = pd.read_csv(out / "skipped.csv")
        assert skipped["key"].tolist() == [key] and re.search(reason, skipped["reason"][0])
        store = AudioStore(out)
        assert key not in store
        assert all(np.isfinite(store.read(other)).all() for other in store.keys())


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


@pytest.mark.parametrize("change", ["decoding code", "libsndfile"])
def test_shards_of_another_decoder_are_decoded_again(raw_dataset, tmp_path, params, monkeypatch, change):
    """data/store persists across `dvc repro`: after an edit to the decoder or a library
    upgrade, no shard it decoded before may pass for finished."""
    import soundfile

    from birdclef import audio

    out = tmp_path / "store"
    run_precompute(raw_dataset, out, params, files_per_shard=2)
    shards = len(list(out.glob("*.h5")))
    assert run_precompute(raw_dataset, out, params, files_per_shard=2).shards_reused == shards
    if change == "decoding code":
        edited = tmp_path / "audio.py"
        edited.write_text(Path(audio.__file__).read_text() + "\n# a change to the decoder\n")
        monkeypatch.setattr(audio, "__file__", str(edited))
    else:
        monkeypatch.setattr(soundfile, "__libsndfile_version__", "99.0.0")
    summary = run_precompute(raw_dataset, out, params, files_per_shard=2)
    assert (summary.shards_written, summary.shards_reused) == (shards, 0)


def test_stale_shards_of_an_old_plan_are_removed(raw_dataset, tmp_path, params):
    out = tmp_path / "store"
    run_precompute(raw_dataset, out, params, files_per_shard=1)
    run_precompute(raw_dataset, out, params, files_per_shard=100)
    assert sorted(p.name for p in out.glob("*.h5")) == ["train_audio-000.h5", "train_soundscapes-000.h5"]


def write_files(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_text(name)
    return {name: name for name in names}


def test_folder_of_other_h5_files_is_refused_untouched(raw_dataset, tmp_path, params):
    """Someone's weights.h5 is no sign of an earlier store: precompute must not clean the folder out."""
    files = write_files(tmp_path / "mymodels", ["weights.h5", "report.tmp", "notes.txt", "model-001.h5"])
    message = r"mymodels holds files this command did not write \(no <collection>-NNN.h5\)"
    with pytest.raises(OutputError, match=message):
        run_precompute(raw_dataset, tmp_path / "mymodels", params)
    assert {p.name: p.read_text() for p in (tmp_path / "mymodels").iterdir()} == files


def test_only_the_stores_own_files_are_removed_from_it(raw_dataset, tmp_path, params):
    out = tmp_path / "store"
    run_precompute(raw_dataset, out, params)
    store = {p.name for p in out.iterdir()}
    others = write_files(out, ["weights.h5", "report.tmp", "notes.txt", "model-001.h5", "train_audio-000.h5x"])
    write_files(out, ["extra-000.h5", "background-1000.h5", "train_audio-000.h5.tmp", "index.csv.tmp",
                      "skipped.csv.tmp"])  # an earlier plan's shards, an interrupted run's leftovers
    run_precompute(raw_dataset, out, params)
    assert {p.name for p in out.iterdir()} == store | set(others)
    assert all((out / name).read_text() == name for name in others)


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.assign(primary_label=["zzzzz"] + t["primary_label"].tolist()[1:]),
     r"train.csv:2: unknown primary_label 'zzzzz'; use a species of taxonomy.csv .*the download "
     r"stage writes that file, so a new species cannot be added"),
    (lambda t: t.drop(columns=["author"]), r"missing column\(s\) \['author'\]"),
    (lambda t: t.assign(filename=["amerob/gone.ogg"] + t["filename"].tolist()[1:]),
     r"train.csv:2: .*gone.ogg does not exist"),
    (lambda t: t.assign(secondary_labels=["['oops"] + t["secondary_labels"].tolist()[1:]),
     r"train.csv:2: .*oops.*; write them as a list of species codes, e\.g\. \['barswa', 'comsan'\], or \[\] for none"),
    (lambda t: t.assign(filename=[f"/tmp/{t['filename'][0]}"] + t["filename"].tolist()[1:]),
     r"train.csv:2: /tmp/.*'filename' must be a path inside .*train_audio, relative to it"),
    (lambda t: t.assign(filename=[f"../train_audio/{t['filename'][0]}"] + t["filename"].tolist()[1:]),
     r"train.csv:2: \.\./train_audio/.*'filename' must be a path inside"),
    (lambda t: t.assign(filename=t["filename"].tolist()[:2] + [t["filename"][0]] + t["filename"].tolist()[3:]),
     r"train.csv:4: .* is listed on line 2 too; remove one of the rows"),
    (lambda t: t.assign(filename=[""] + t["filename"].tolist()[1:]),
     r"train.csv:2: 'filename' is empty; name the recording \(<label>/<file>, relative to .*train_audio\) or "
     r"remove the row"),
])
def test_bad_tables_are_refused_before_decoding(raw_dataset, tmp_path, params, edit, message):
    table = pd.read_csv(raw_dataset / "train.csv", dtype=str, keep_default_na=False)
    edit(table).to_csv(raw_dataset / "train.csv", index=False)
    with pytest.raises(TableError, match=message):
        run_precompute(raw_dataset, tmp_path / "store", params)
    assert not (tmp_path / "store").exists()


def test_a_listed_broken_link_is_called_one(raw_dataset, tmp_path, params):
    table = pd.read_csv(raw_dataset / "train.csv", dtype=str, keep_default_na=False)
    (raw_dataset / "train_audio" / "amerob" / "linked.ogg").symlink_to(tmp_path / "gone.ogg")
    table.assign(filename=["amerob/linked.ogg"] + table["filename"].tolist()[1:]).to_csv(raw_dataset / "train.csv",
                                                                                         index=False)
    with pytest.raises(TableError, match=r"train.csv:2: .*linked.ogg is a broken link; fix 'filename'"):
        run_precompute(raw_dataset, tmp_path / "store", params)


def test_missing_train_table_is_named_with_the_fix(raw_dataset, tmp_path, params):
    (raw_dataset / "train.csv").unlink()
    with pytest.raises(PrecomputeError, match=rf"^{re.escape(str(raw_dataset / 'train.csv'))}: not found; "
                                              r"run the download stage first \(`dvc repro download`\)"):
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


def test_table_errors_name_the_line_of_the_file(raw_dataset):
    """Blank lines and multi-line cells make a row's number differ from its line: name the line."""
    from birdclef.tables import read_train_table

    path = raw_dataset / "train.csv"
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    table.loc[1, "author"] = "two\nlines"
    table.loc[2, "filename"] = table.loc[0, "filename"]
    header, rows = table.to_csv(index=False).split("\n", 1)
    path.write_text(f"{header}\n\n{rows}")  # row 0 on line 3, row 1 on lines 4-5, row 2 on line 6
    with pytest.raises(TableError, match=rf"train.csv:6: {table.loc[0, 'filename']} is listed on line 3 too"):
        read_train_table(path, raw_dataset / "train_audio", None)


def test_filenames_are_normalised_so_a_recording_is_listed_once(raw_dataset):
    from birdclef.tables import read_train_table

    path = raw_dataset / "train.csv"
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    filename = table.loc[0, "filename"]
    table.loc[0, "filename"] = f"./{filename}"
    table.to_csv(path, index=False)
    assert read_train_table(path, raw_dataset / "train_audio", None).loc[0, "filename"] == filename
    pd.concat([table, table.head(1).assign(filename=filename)]).to_csv(path, index=False)
    with pytest.raises(TableError, match=rf"train.csv:{len(table) + 2}: {filename} is listed on line 2 too"):
        read_train_table(path, raw_dataset / "train_audio", None)


def test_user_recordings_in_external_are_merged(raw_dataset, tmp_path, params):
    write_external(raw_dataset, tmp_path / "external")
    run_precompute(raw_dataset, tmp_path / "store", params, tmp_path / "external")
    assert AudioStore(tmp_path / "store").duration("external/audio/amerob/mine.flac") == 2.0


def append_line(table, line: str) -> None:
    with open(table, "a") as handle:
        handle.write(line + "\n")


@pytest.mark.parametrize("damage, message", [
    (lambda t: t.write_bytes(t.read_text().replace("author0", "José").encode("latin-1")),
     r"train.csv:2: not UTF-8 text; save the file as UTF-8"),
    (lambda t: append_line(t, ",".join(["x"] * 14)),
     r"train.csv: malformed CSV \(Expected 13 fields in line 3, saw 14\); fix that line"),
    (lambda t: t.write_bytes(b""), r"train.csv: empty; it needs a header row with the columns"),
])
def test_unreadable_external_table_is_refused_naming_it(raw_dataset, tmp_path, params, damage, message):
    """Both stages that read the table say which file is broken and how, not a pandas traceback."""
    table = write_external(raw_dataset, tmp_path / "external")
    run_precompute(raw_dataset, tmp_path / "store", params, tmp_path / "external")
    damage(table)
    pattern = f"^{re.escape(str(tmp_path / 'external'))}/{message}"
    with pytest.raises(TableError, match=pattern):
        run_precompute(raw_dataset, tmp_path / "store", params, tmp_path / "external")
    with pytest.raises(TableError, match=pattern):
        prepare(raw_dataset, tmp_path / "external", tmp_path / "store", tmp_path / "tables", params)
    assert not (tmp_path / "tables").exists()


def test_listed_file_in_a_format_precompute_skips_is_refused(raw_dataset, tmp_path, params):
    write_external(raw_dataset, tmp_path / "external", "amerob/mine.aiff")
    with pytest.raises(TableError, match=r"train.csv:2: amerob/mine.aiff: precompute decodes only "
                                         r"\.ogg, \.wav, \.flac, \.mp3, \.opus files"):
        run_precompute(raw_dataset, tmp_path / "store", params, tmp_path / "external")
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("table_content, message", [
    (None, r"train.csv: not found, but .*audio holds 1 recording\(s\): amerob/mine.flac; write it with a row for each"),
    ("header", r"train.csv: does not list 1 recording\(s\) under .*audio: amerob/mine.flac; add a row for each")])
def test_external_audio_not_listed_in_its_table_is_refused(raw_dataset, tmp_path, params, table_content, message):
    """Without a row, prepare could never use the recording: say so instead of storing it."""
    table = write_external(raw_dataset, tmp_path / "external")
    if table_content is None:
        table.unlink()
    else:
        table.write_text(table.read_text().splitlines()[0] + "\n")
    with pytest.raises(TableError, match=message):
        run_precompute(raw_dataset, tmp_path / "store", params, tmp_path / "external")
    assert not (tmp_path / "store").exists()


def test_skip_reuses_the_shards_written_under_fail(raw_dataset, tmp_path, params):
    """Following the failure message's advice (on_error: skip) must not re-decode everything."""
    first = run_precompute(raw_dataset, tmp_path / "store", params, on_error="fail")
    summary = run_precompute(raw_dataset, tmp_path / "store", params, on_error="skip")
    assert (summary.shards_written, summary.shards_reused) == (0, first.shards_written)
    summary = run_precompute(raw_dataset, tmp_path / "store", params, on_error="fail")
    assert (summary.shards_written, summary.shards_reused) == (0, first.shards_written)
    # not the other way round: a shard written under skip may lack skipped files
    run_precompute(raw_dataset, tmp_path / "other", params, on_error="skip")
    summary = run_precompute(raw_dataset, tmp_path / "other", params, on_error="fail")
    assert (summary.shards_written, summary.shards_reused) == (first.shards_written, 0)


def test_failed_run_leaves_no_index_pointing_at_deleted_shards(raw_dataset, tmp_path, params):
    out, external = tmp_path / "store", tmp_path / "external"
    write_external(raw_dataset, external)
    run_precompute(raw_dataset, out, params, external)
    assert (out / "external-000.h5").exists()
    for path in (external / "audio" / "amerob" / "mine.flac", external / "train.csv"):
        path.unlink()  # the external shard is now stale
    (raw_dataset / "train_audio" / "amerob" / "XC1000.wav").write_bytes(b"RIFF....not really audio")
    with pytest.raises(PrecomputeError):
        run_precompute(raw_dataset, out, params, external)
    with pytest.raises(StoreError, match=r"no store index; run `dvc repro precompute`"):
        AudioStore(out)
