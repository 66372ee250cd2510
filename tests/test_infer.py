"""Inference: TopN, the submission format, and `birdclef predict` on every kind of input."""

import os

import numpy as np
import pandas as pd
import pytest

from birdclef.export import export_family
from birdclef.infer import InferError, infer, load_ensemble, predict, raven_tables, top_n_rescale
from conftest import REPO, python, run, tone, write_audio
from trained_models import CLASSES, realistic_random_model, save_trained

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec:FutureWarning")


def test_top_n_rescaling_by_hand():
    probs = np.array([[0.1, 0.8], [0.4, 0.2], [0.2, 0.6]])
    np.testing.assert_allclose(top_n_rescale(probs, 1), probs * np.array([[0.4, 0.8]]))
    np.testing.assert_allclose(top_n_rescale(probs, 2), probs * np.array([[0.3, 0.7]]))
    np.testing.assert_allclose(top_n_rescale(probs, 5), probs * probs.mean(0))  # N > windows: all
    np.testing.assert_array_equal(top_n_rescale(probs, 0), probs)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    for fold in range(2):
        save_trained(realistic_random_model(fold), root / "eca" / f"fold{fold}", fold)
    out = tmp_path_factory.mktemp("export")
    export_family(root, "eca", [0, 1], out / "eca", 160_000)
    return out


@pytest.fixture
def params():
    from birdclef.params import load_params

    loaded = load_params(REPO / "params.yaml")
    loaded.families = ["eca"]
    loaded.infer.family_weights = {"eca": 1.0}
    return loaded


def test_submission_format(exports, params, tmp_path):
    from birdclef.audio import decode
    from birdclef.data import split_windows

    params.infer.precision = "f32"  # compared with a direct f32 run below
    soundscapes = tmp_path / "test_soundscapes"
    for number in range(2):
        write_audio(soundscapes / f"H02_2023060{number}_070000.ogg", tone(2000 + 500 * number, 60.0, 32000), 32000)
    template = tmp_path / "sample_submission.csv"
    shuffled = CLASSES[::-1]
    pd.DataFrame(columns=["row_id", *shuffled]).to_csv(template, index=False)
    summary = infer(params, exports, soundscapes, template, tmp_path / "submission.csv", tmp_path / "infer.json")
    submission = pd.read_csv(tmp_path / "submission.csv")
    assert list(submission.columns) == ["row_id", *shuffled]
    assert len(submission) == 24 and summary["windows"] == 24  # 12 windows per minute
    assert submission["row_id"].tolist()[:3] == ["H02_20230600_070000_5", "H02_20230600_070000_10",
                                                 "H02_20230600_070000_15"]
    assert submission["row_id"].iloc[-1] == "H02_20230601_070000_60"
    # each column holds its own class's scores, TopN-rescaled within each soundscape
    ensemble = load_ensemble(exports, ["eca"], {"eca": 1.0}, precision="f32")
    assert ensemble.classes == CLASSES != shuffled
    expected = np.concatenate([
        top_n_rescale(ensemble(split_windows(decode(path, 32000).wave, 160_000)), params.infer.top_n)
        for path in sorted(soundscapes.iterdir())])
    for index, name in enumerate(CLASSES):
        np.testing.assert_allclose(submission[name].to_numpy(), expected[:, index], rtol=1e-4, atol=1e-7)
    across_files = top_n_rescale(np.concatenate([
        ensemble(split_windows(decode(path, 32000).wave, 160_000)) for path in sorted(soundscapes.iterdir())]), 1)
    assert not np.allclose(across_files, expected, rtol=1e-3)  # the per-file check above can tell them apart


def test_no_soundscapes_keeps_the_templates_rows(exports, params, tmp_path):
    # Kaggle hides the test soundscapes until a submission runs: the template passes through
    template = tmp_path / "sample_submission.csv"
    pd.DataFrame({"row_id": ["H02_x_5", "H02_x_10"], **{name: [0.5, 0.25] for name in CLASSES}}).to_csv(
        template, index=False)
    (tmp_path / "test_soundscapes").mkdir()
    summary = infer(params, exports, tmp_path / "test_soundscapes", template, tmp_path / "submission.csv",
                    tmp_path / "infer.json")
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "submission.csv"), pd.read_csv(template))
    assert summary["soundscapes"] == 0 and summary["seconds_per_minute_of_audio"] is None


def test_the_command_says_when_it_passes_the_template_through(exports, tmp_path):
    pd.DataFrame({"row_id": ["H02_x_5"], **{name: [0.5] for name in CLASSES}}).to_csv(
        tmp_path / "sample_submission.csv", index=False)
    (tmp_path / "empty").mkdir()
    result = birdclef_command("infer", tmp_path, "--exports", exports, "--soundscapes", "empty",
                              "--sample-submission", "sample_submission.csv", "--metrics", "infer.json")
    assert "note: no soundscapes in empty: submission.csv holds sample_submission.csv's rows" in result.stderr
    assert (tmp_path / "submission.csv").read_text() == (tmp_path / "sample_submission.csv").read_text()


def test_two_soundscapes_of_one_name_are_refused_before_the_scoring(exports, params, tmp_path):
    template = tmp_path / "sample_submission.csv"
    pd.DataFrame(columns=["row_id", *CLASSES]).to_csv(template, index=False)
    for suffix in (".ogg", ".wav"):
        write_audio(tmp_path / "soundscapes" / f"H02_x{suffix}", tone(1000, 10.0, 32000), 32000)
    with pytest.raises(InferError, match=r"H02_x.ogg and H02_x.wav share the name 'H02_x'.*keep one of them"):
        infer(params, exports, tmp_path / "soundscapes", template, tmp_path / "s.csv", tmp_path / "m.json")
    assert not (tmp_path / "s.csv").exists() and not (tmp_path / "m.json").exists()


def test_a_folder_named_like_audio_is_no_soundscape(exports, params, tmp_path):
    template = tmp_path / "sample_submission.csv"
    pd.DataFrame(columns=["row_id", *CLASSES]).to_csv(template, index=False)
    write_audio(tmp_path / "soundscapes" / "H02_x.ogg", tone(1000, 10.0, 32000), 32000)
    (tmp_path / "soundscapes" / "sub.ogg").mkdir()
    summary = infer(params, exports, tmp_path / "soundscapes", template, tmp_path / "s.csv", tmp_path / "m.json")
    assert summary["soundscapes"] == 1
    assert pd.read_csv(tmp_path / "s.csv")["row_id"].tolist() == ["H02_x_5", "H02_x_10"]


def test_unknown_template_column_is_refused(exports, params, tmp_path):
    from birdclef.infer import InferError

    template = tmp_path / "sample_submission.csv"
    pd.DataFrame(columns=["row_id", *CLASSES, "notabird"]).to_csv(template, index=False)
    with pytest.raises(InferError, match="notabird"):
        infer(params, exports, tmp_path, template, tmp_path / "s.csv", tmp_path / "m.json")


def test_a_template_without_class_columns_is_refused(exports, params, tmp_path):
    template = tmp_path / "sample_submission.csv"
    template.write_text("row_id\n")
    with pytest.raises(InferError, match="sample_submission.csv: no class columns"):
        infer(params, exports, tmp_path, template, tmp_path / "s.csv", tmp_path / "m.json")
    assert not (tmp_path / "s.csv").exists()


# 1 ms windows: checked before OpenVINO compiles the graph for a minute of them (60,000 windows)
@pytest.mark.parametrize("audio", [{"sample_rate": 16000}, {"window_seconds": 3.0}, {"window_seconds": 0.001}])
def test_params_that_no_longer_match_the_export_are_refused(exports, params, tmp_path, audio):
    from dataclasses import replace

    params.audio = replace(params.audio, **audio)
    template = tmp_path / "sample_submission.csv"
    pd.DataFrame(columns=["row_id", *CLASSES]).to_csv(template, index=False)
    with pytest.raises(InferError, match=r"the models take 160000-sample windows at 32000 Hz, but params' audio "
                                         r"gives \d+ at \d+ Hz; restore audio.\* or export again"):
        infer(params, exports, tmp_path, template, tmp_path / "s.csv", tmp_path / "m.json")


def test_a_file_named_twice_is_scored_once(tmp_path):
    from birdclef.infer import find_audio

    write_audio(tmp_path / "in" / "a.wav", tone(1000, 6.0, 32000), 32000)
    found = find_audio([tmp_path / "in" / "a.wav", tmp_path / "in", tmp_path / "in" / ".." / "in" / "a.wav"])
    assert found == [tmp_path / "in" / "a.wav"]


def test_predict_rescales_each_file_on_its_own(exports, tmp_path):
    ensemble = load_ensemble(exports, ["eca"], {"eca": 1.0}, precision="f32")
    for name, hz in (("a.wav", 1500), ("b.wav", 4000)):
        write_audio(tmp_path / "in" / name, tone(hz, 20.0, 32000) * np.linspace(0.1, 1, 640_000), 32000)
    predict([tmp_path / "in"], ensemble, tmp_path / "raw.csv", 5.0, 32000, top_n=0)
    predict([tmp_path / "in"], ensemble, tmp_path / "top2.csv", 5.0, 32000, top_n=2)
    raw, rescaled = pd.read_csv(tmp_path / "raw.csv"), pd.read_csv(tmp_path / "top2.csv")
    for file, windows in raw.groupby("file", sort=False):
        expected = top_n_rescale(windows[CLASSES].to_numpy(), 2)
        np.testing.assert_allclose(rescaled.loc[windows.index, CLASSES].to_numpy(), expected, rtol=1e-4, atol=1e-7)
    assert not np.allclose(rescaled[CLASSES].to_numpy(), raw[CLASSES].to_numpy(), rtol=1e-3)


def test_predict_reads_every_format_rate_and_length(exports, tmp_path):
    recordings = tmp_path / "recordings"
    cases = {"a.wav": (22050, 1, 7.0), "b.ogg": (44100, 2, 12.0), "c.mp3": (48000, 1, 5.0),
             "sub/d.flac": (32000, 2, 3.0), "e.wav": (8000, 1, 5.0)}
    for name, (rate, channels, seconds) in cases.items():
        write_audio(recordings / name, tone(3000, seconds, rate, channels=channels), rate)
    (recordings / "broken.ogg").write_bytes(b"OggS not really")
    (recordings / "folder.wav").mkdir()  # not audio, whatever its name: neither scored nor skipped
    ensemble = load_ensemble(exports, ["eca"], {"eca": 1.0}, threads=1)
    with pytest.warns(UserWarning, match="broken.ogg"):
        summary = predict([recordings], ensemble, tmp_path / "out.csv", 5.0, 32000,
                          raven=tmp_path / "raven", threshold=0.0)
    assert list(summary["skipped"]) == [str(recordings / "broken.ogg")]
    assert "cannot decode" in summary["skipped"][str(recordings / "broken.ogg")]
    assert summary["notes"] == {str(recordings / "e.wav"): f"{recordings / 'e.wav'}: recorded at 8000 Hz, so nothing "
                                "above 4000 Hz reaches the models, which learned from 16000 Hz of bandwidth; read its "
                                "scores with care."}
    table = pd.read_csv(tmp_path / "out.csv")
    windows = table.groupby("file").size()
    assert windows[str(recordings / "a.wav")] == 2 and windows[str(recordings / "b.ogg")] == 3
    assert windows[str(recordings / "c.mp3")] == 1 and windows[str(recordings / "sub/d.flac")] == 1
    assert table.loc[table["file"] == str(recordings / "sub/d.flac"), "end_s"].item() == 3.0
    selections = pd.read_csv(tmp_path / "raven" / "a.selections.txt", sep="\t")
    assert list(selections.columns[:3]) == ["Selection", "View", "Channel"]
    assert len(selections) == 2 * len(CLASSES)  # threshold 0: every window and species
    assert (selections["High Freq (Hz)"] == 11025).all()  # the recording's Nyquist, below the models' 16 kHz
    selections = pd.read_csv(tmp_path / "raven" / "sub__d.selections.txt", sep="\t")
    assert len(selections) == len(CLASSES) and (selections["High Freq (Hz)"] == 16000).all()


def test_an_interrupted_predict_leaves_the_previous_csv_and_no_tables(exports, tmp_path):
    for name in ("a.wav", "b.wav", "c.wav"):
        write_audio(tmp_path / "in" / name, tone(2000, 6.0, 32000), 32000)
    out = tmp_path / "p.csv"
    out.write_text("an earlier run\n")
    ensemble = load_ensemble(exports, ["eca"], {"eca": 1.0}, threads=1)

    class InterruptedOnTheLastFile:  # Ctrl-C while the third recording is scored
        classes = ensemble.classes

        def __init__(self):
            self.calls = 0

        def __call__(self, windows):
            self.calls += 1
            if self.calls == 3:
                raise KeyboardInterrupt
            return ensemble(windows)

    with pytest.raises(KeyboardInterrupt):
        predict([tmp_path / "in"], InterruptedOnTheLastFile(), out, 5.0, 32000, raven=tmp_path / "raven", threshold=0)
    assert out.read_text() == "an earlier run\n" and not (tmp_path / "raven").exists()
    predict([tmp_path / "in"], ensemble, out, 5.0, 32000, raven=tmp_path / "raven", threshold=0)
    assert sorted(path.name for path in (tmp_path / "raven").iterdir()) == [
        f"{name}.selections.txt" for name in "abc"]


def test_a_folder_where_a_raven_table_goes_is_refused_before_the_scoring(tmp_path):
    write_audio(tmp_path / "in" / "a.wav", tone(1000, 6.0, 32000), 32000)
    (tmp_path / "raven" / "a.selections.txt").mkdir(parents=True)
    no_ensemble = None  # scoring would fail on it with a TypeError, not the InferError expected
    with pytest.raises(InferError, match=r"raven/a.selections.txt is a folder, where the Raven table of .*in/a.wav"):
        predict([tmp_path / "in"], no_ensemble, tmp_path / "p.csv", 5.0, 32000, raven=tmp_path / "raven")
    assert not (tmp_path / "p.csv").exists()


def test_raven_tables_are_one_per_recording_or_refused(tmp_path):
    for name in ("site1/x.wav", "site2/x.wav", "x.wav", "other/x.wav"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).touch()
    under_root = [tmp_path / "site1/x.wav", tmp_path / "site2/x.wav", tmp_path / "x.wav"]
    assert list(raven_tables(under_root, [tmp_path]).values()) == [
        "site1__x.selections.txt", "site2__x.selections.txt", "x.selections.txt"]
    with pytest.raises(InferError, match="site1/x.wav and .*site2/x.wav would both write the Raven table x.*; "
                                         "give their common parent folder instead, or rename one"):
        raven_tables([tmp_path / "site1/x.wav", tmp_path / "site2/x.wav"], [tmp_path / "site1", tmp_path / "site2"])
    (tmp_path / "site1/x.ogg").touch()  # one folder, one stem: only a new name tells the tables apart
    with pytest.raises(InferError, match=r"x.wav and .*site1/x.ogg would both write the Raven table "
                                         r"site1__x.selections.txt; rename one\.$"):
        raven_tables([tmp_path / "site1/x.wav", tmp_path / "site1/x.ogg"], [tmp_path])


def test_predict_writes_nothing_when_no_file_can_be_scored(exports, tmp_path):
    (tmp_path / "corrupt.ogg").write_bytes(b"OggS not really")
    write_audio(tmp_path / "empty.wav", tone(1000, 0.0, 32000), 32000)
    (tmp_path / "notes.txt").write_text("field notes")
    out = tmp_path / "p.csv"
    out.write_text("an earlier run\n")
    ensemble = load_ensemble(exports, ["eca"], {"eca": 1.0}, threads=1)
    (tmp_path / "no_audio").mkdir()
    with pytest.raises(InferError, match=r"no audio files \(\.ogg, \.wav.*\) in .*no_audio"):
        predict([tmp_path / "no_audio"], ensemble, out, 5.0, 32000)
    with pytest.warns(UserWarning), pytest.raises(InferError) as error:
        predict([tmp_path / name for name in ("notes.txt", "corrupt.ogg", "empty.wav")], ensemble, out, 5.0, 32000,
                raven=tmp_path / "raven")
    reasons = str(error.value).splitlines()
    assert reasons[0] == f"no file could be scored, {out} not written:"
    assert "notes.txt: cannot decode (Format not recognised.); the file is corrupt or not audio" in reasons[1]
    assert "corrupt.ogg: cannot decode" in reasons[2] and "empty.wav: contains no samples" in reasons[3]
    assert out.read_text() == "an earlier run\n" and not (tmp_path / "raven").exists()


def birdclef_command(name, tmp_path, *args, check=True, **options):
    """``python -m birdclef <name> ...`` in ``tmp_path``, with params for the one family exported here."""
    import yaml

    params = tmp_path / "params.yaml"
    values = yaml.safe_load((REPO / "params.yaml").read_text())
    values["families"] = ["eca"]
    params.write_text(yaml.safe_dump(values))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return run([python(), "-m", "birdclef", name, *map(str, args), "--params", str(params)], tmp_path, env, check,
               **options)


def predict_command(exports, tmp_path, *args, check=True, **options):
    return birdclef_command("predict", tmp_path, *args, "--exports", exports, check=check, **options)


def test_a_full_disk_leaves_the_previous_csv_and_tables(exports, tmp_path):
    import resource

    write_audio(tmp_path / "in" / "a.wav", tone(1000, 6.0, 32000), 32000)
    write_audio(tmp_path / "in" / "b.wav", tone(2000, 120.0, 32000), 32000)
    write_audio(tmp_path / "in" / "c.wav", tone(3000, 6.0, 32000), 32000)
    predict_command(exports, tmp_path, "in", "-o", "full.csv", "--raven", "full", "--threshold", "0")
    sizes = {path.name: path.stat().st_size for path in [tmp_path / "full.csv", *(tmp_path / "full").iterdir()]}
    largest = sizes.pop("b.selections.txt")  # a file limit below it: the disk fills up at b's table
    assert max(sizes.values()) < largest - 1
    (tmp_path / "raven").mkdir()
    (tmp_path / "raven" / "a.selections.txt").write_text("an earlier table\n")
    (tmp_path / "p.csv").write_text("an earlier run\n")

    def fill_up_at_b():
        resource.setrlimit(resource.RLIMIT_FSIZE, (largest - 1, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    result = predict_command(exports, tmp_path, "in", "-o", "p.csv", "--raven", "raven", "--threshold", "0",
                             check=False, preexec_fn=fill_up_at_b)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "cannot write raven/b.selections.txt: File too large; none of the 4 output files" in result.stderr
    assert (tmp_path / "p.csv").read_text() == "an earlier run\n"
    assert [path.name for path in (tmp_path / "raven").iterdir()] == ["a.selections.txt"]
    assert (tmp_path / "raven" / "a.selections.txt").read_text() == "an earlier table\n"
    result = predict_command(exports, tmp_path, "in", "-o", "p.csv", "--raven", "new/raven", "--threshold", "0",
                             check=False, preexec_fn=fill_up_at_b)
    assert "cannot write new/raven/b.selections.txt: File too large" in result.stderr
    assert not (tmp_path / "new").exists()  # the folders made for the tables go with them


def test_the_submission_and_the_metrics_must_be_two_files(exports, tmp_path):
    pd.DataFrame(columns=["row_id", *CLASSES]).to_csv(tmp_path / "sample_submission.csv", index=False)
    (tmp_path / "empty").mkdir()
    result = birdclef_command("infer", tmp_path, "--exports", exports, "--soundscapes", "empty",
                              "--sample-submission", "sample_submission.csv", "--out", "s.csv",
                              "--metrics", tmp_path / "s.csv", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "error: the submission and the metrics would both be written to s.csv: name two files" in result.stderr
    assert not (tmp_path / "s.csv").exists()


def test_predict_command_line(exports, tmp_path):
    write_audio(tmp_path / "x.wav", tone(1000, 6.0, 44100), 44100)
    write_audio(tmp_path / "phone.wav", tone(1000, 6.0, 8000), 8000)
    (tmp_path / "bad.mp3").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("field notes")
    result = predict_command(exports, tmp_path, tmp_path / "x.wav", tmp_path / "phone.wav", tmp_path / "bad.mp3",
                             tmp_path / "notes.txt", "-o", tmp_path / "p.csv", "--threads", "1")
    assert "2 files, 4 windows" in result.stdout and "2 skipped" in result.stdout
    assert f"note: {tmp_path / 'phone.wav'}: recorded at 8000 Hz, so nothing above 4000 Hz" in result.stderr
    assert f"skipped: {tmp_path / 'bad.mp3'}: empty file (0 bytes)" in result.stderr
    assert f"skipped: {tmp_path / 'notes.txt'}: cannot decode" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["x.wav", "-o", "folder"], "error: --out folder is a folder; name a file"),
    (["x.wav", "--raven", "x.wav"], "error: --raven x.wav is a file; name a folder"),
    (["x.wav", "-o", "x.wav/p.csv"], "error: --out x.wav/p.csv: x.wav is a file, so no folder can hold p.csv"),
    (["x.wav", "--threads", "-2"], "Invalid value for '--threads'"),
    (["x.wav", "--top-n", "-3"], "Invalid value for '--top-n'"),
    (["bad.mp3"], "error: no file could be scored, p.csv not written:\n  bad.mp3: empty file (0 bytes)"),
    (["x.wav", "-o", "x.wav"], "error: x.wav is one of the recordings to score, and the output would replace it"),
    (["x.wav", "-o", "folder/x.selections.txt", "--raven", "folder"],
     "error: folder/x.selections.txt is where the Raven table of x.wav goes: name another output file"),
    (["x.wav", "-o", "folder/../folder/x.selections.txt", "--raven", "folder"],
     "error: folder/../folder/x.selections.txt is where the Raven table of x.wav goes: name another output file"),
])
def test_predict_command_line_refuses_bad_input(exports, tmp_path, args, message):
    write_audio(tmp_path / "x.wav", tone(1000, 6.0, 44100), 44100)
    (tmp_path / "bad.mp3").write_bytes(b"")
    (tmp_path / "folder").mkdir()
    (tmp_path / "p.csv").write_text("an earlier run\n")
    recording = (tmp_path / "x.wav").read_bytes()
    result = predict_command(exports, tmp_path, *args, *([] if "-o" in args else ["-o", "p.csv"]), check=False)
    assert result.returncode != 0 and message in result.stderr and "Traceback" not in result.stderr
    assert "->" not in result.stdout
    assert (tmp_path / "p.csv").read_text() == "an earlier run\n" and (tmp_path / "x.wav").read_bytes() == recording
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bad.mp3", "folder", "p.csv", "params.yaml", "x.wav"]
    assert not any((tmp_path / "folder").iterdir())


def test_a_wrong_or_damaged_export_folder_is_named_with_the_fix(exports, tmp_path):
    import shutil

    write_audio(tmp_path / "x.wav", tone(1000, 6.0, 32000), 32000)
    fix = "the export is damaged or incomplete: run `dvc repro export`"
    cases = {"cut.bin": ("model.bin", lambda data: data[:1000],
                         f"OpenVINO cannot read model.xml + model.bin (Incorrect weights in bin file!); {fix}"),
             "cut.json": ("export.json", lambda data: data[:10], "export.json: unreadable (")}
    for name, (damaged, cut, message) in cases.items():
        copy = tmp_path / name
        shutil.copytree(exports, copy)
        (copy / "eca" / damaged).write_bytes(cut((copy / "eca" / damaged).read_bytes()))
        result = predict_command(copy, tmp_path, "x.wav", check=False)
        assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr
    with pytest.raises(InferError, match=r"eca is one family's export; name the folder above it"):
        load_ensemble(exports / "eca", ["eca"], {"eca": 1.0})
    with pytest.raises(InferError, match=r"x.wav is not a folder; name the folder that holds one export per family"):
        load_ensemble(tmp_path / "x.wav", ["eca"], {"eca": 1.0})
    assert not (tmp_path / "predictions.csv").exists()
