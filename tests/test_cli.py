import os

import pytest
import yaml

from conftest import REPO, compose_params, python, run


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO / "src")}


def test_help_is_instant_because_nothing_heavy_is_imported(tmp_path):
    code = ("import sys, birdclef.cli; "
            "heavy = {'torch', 'lightning', 'timm', 'h5py', 'pandas', 'numpy', 'dvc', 'omegaconf'}; "
            "print(sorted(heavy & set(sys.modules)))")
    assert run([python(), "-c", code], tmp_path, env()).stdout.strip() == "[]"
    result = run([python(), "-m", "birdclef", "--help"], tmp_path, env())
    for command in ("download", "precompute"):
        assert command in result.stdout


COMMANDS = ["download", "precompute", "prepare", "pretrain", "train", "pseudo", "export", "infer", "evaluate",
            "predict"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(tmp_path, command):
    result = run([python(), "-m", "birdclef", command, "--help"], tmp_path, env())
    assert "--params" in result.stdout


def test_help_lists_each_command_with_its_whole_summary_on_one_line(tmp_path):
    wide = {**env(), "COLUMNS": "400", "TERMINAL_WIDTH": "400"}
    lines = run([python(), "-m", "birdclef", "--help"], tmp_path, wide).stdout.splitlines()
    for command in COMMANDS:
        row = next(line.strip("│ ") for line in lines if line.strip("│ ").startswith(f"{command} "))
        assert row.endswith("."), row  # not cut at the docstring's first line break


@pytest.mark.parametrize("edit, message", [
    (lambda p: p["precompute"].update(dtype="int8"), "'precompute.dtype' is 'int8'; use one of float16, float32"),
    (lambda p: p["audio"].update(sample_rat=1), "unknown key 'audio.sample_rat'; check its spelling"),
    (lambda p: p["precompute"].pop("workers"), "'precompute.workers' is missing; regenerate the file"),
    (lambda p: p.clear(), "'seed' is missing"),
    (lambda p: p.update(seed="x"), "bad value at 'seed'"),
    (lambda p: p["train"].update(compile="cudagraphs"), "'train.compile' is 'cudagraphs'; use one of none, default, "
                                                        "reduce-overhead, max-autotune"),
    (lambda p: p["infer"].update(precision="fp8"), "'infer.precision' is 'fp8'; use f32, bf16 or null"),
    (lambda p: p["train"].update(precision="16-mixedx"), "'train.precision' is '16-mixedx'; use one of 32-true, "
                                                         "16-mixed, bf16-mixed"),
    (lambda p: p["infer"].update(streams=0), "'infer.streams' is 0; it must be more than 0"),
    (lambda p: p["audio"].update(sample_rate=0), "'audio.sample_rate' is 0; it must be more than 0"),
    (lambda p: p["audio"].update(window_seconds=4.0), "'audio.window_seconds' is 4.0; it must be 5.0: the "
                                                       "competition scores 5-s windows"),
    (lambda p: p["train"].update(epochs=0), "'train.epochs' is 0; it must be more than 0"),
    (lambda p: p["train"].update(batch_size=0), "'train.batch_size' is 0; it must be more than 0"),
    (lambda p: p["precompute"].update(workers=-2), "'precompute.workers' is -2; it must be 0 or more (0: all cores)"),
    (lambda p: p["prepare"].update(rare_max_recordings=-5),
     "'prepare.rare_max_recordings' is -5; it must be 0 or more (0: no rare species)"),
    (lambda p: p["prepare"].update(oversample_to=-3), "'prepare.oversample_to' is -3; it must be 0 or more (0: off)"),
    (lambda p: p["prepare"].update(split_seed=-1), "'prepare.split_seed' is -1; it must lie in 0..4294967295"),
    (lambda p: p["prepare"].update(split_seed=2**32), "'prepare.split_seed' is 4294967296; it must lie in 0..4294967295"),
    (lambda p: p["train"].update(epochs=5, validate_every=2), "train.epochs (5) must be a multiple of train.validate_every"),
    (lambda p: p.update(teachers={}), "round round1 trains with data/pseudo/round0, which no stage writes; "
                                      "add 'teachers.round0: data/raw/pseudo'"),
    (lambda p: p["teachers"].update(round0="data/pseudo/x"), "'teachers.round0' is 'data/pseudo/x', but round "
                                                             "round0 trains with 'data/raw/pseudo'"),
    (lambda p: p["teachers"].update(round9="data/raw/pseudo"), "'teachers.round9' is not a round"),
    (lambda p: p["infer"]["family_weights"].pop("ebs"), "'infer.family_weights' has no weight for ebs"),
    (lambda p: p["infer"]["family_weights"].update(ecca=1.0), "'infer.family_weights' names ecca, which is no family"),
])
def test_wrong_params_are_named(tmp_path, edit, message):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    edit(params)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = run([python(), "-m", "birdclef", "precompute"], tmp_path, env(), check=False)
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr


def test_missing_params_file_is_explained(tmp_path):
    result = run([python(), "-m", "birdclef", "precompute"], tmp_path, env(), check=False)
    assert result.returncode == 1 and "params.yaml: not found" in result.stderr
    (tmp_path / "conf").mkdir()
    result = run([python(), "-m", "birdclef", "precompute", "--params", "conf"], tmp_path, env(), check=False)
    assert result.returncode == 1 and "conf is a folder; name the params file" in result.stderr


def test_params_that_are_not_yaml_are_explained(tmp_path):
    (tmp_path / "params.yaml").write_text("seed: [42\n")
    result = run([python(), "-m", "birdclef", "precompute"], tmp_path, env(), check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "params.yaml: not valid YAML (line 2, column 1)" in result.stderr


def test_committed_params_are_the_default_composition(tmp_path):
    """`dvc exp run` composes params.yaml from conf/; a plain `dvc repro` must run the same."""
    composed = compose_params(tmp_path / "params.yaml", [])
    assert yaml.safe_load(composed.read_text()) == yaml.safe_load((REPO / "params.yaml").read_text())


@pytest.mark.parametrize("args, message", [
    (["train", "--family", "eca", "--fold", "7"],
     f"fold 7 does not exist; prepare.n_folds is {yaml.safe_load((REPO / 'params.yaml').read_text())['prepare']['n_folds']}"),
    (["pseudo"], "models/round0/eca/fold0: no trained model"),
    (["pseudo", "--round", "round7"], "unknown round 'round7'; params.yaml has round0, round1"),
    (["export", "--family", "foo", "--params", "recipe.yaml"], "unknown family 'foo'; recipe.yaml has eca, ebs"),
    (["train", "--family", "eca", "--fold", "0", "--round", "round7"], "unknown round 'round7'"),
    (["evaluate", "--tables", ".", "--raw", ".", "--submission", "train.csv"],
     "data/store/index.csv: no store index; run `dvc repro precompute`"),
    (["evaluate", "--tables", "nope"], "--tables nope: no such folder (the prepare stage's output)"),
    (["evaluate", "--tables", ".", "--raw", "nope"], "--raw nope: no such folder"),
    (["evaluate", "--tables", ".", "--raw", ".", "--submission", "nope.csv"], "--submission nope.csv: no such file"),
    (["evaluate", "--tables", ".", "--raw", ".", "--submission", "train.csv", "--out", "."],
     "--out . is a folder; name a file"),
    (["pseudo", "--inherit", "nope"], "--inherit nope: no such folder"),
    (["pseudo", "--round", "round1"],
     "round1's pseudo labels data/pseudo/round0: no such folder (`dvc repro pseudo@round0` writes them)"),
    (["infer", "--soundscapes", ".", "--sample-submission", "nope.csv"], "--sample-submission nope.csv: no such file"),
    (["infer", "--soundscapes", ".", "--sample-submission", "train.csv", "--metrics", "train.csv/m.json"],
     "--metrics train.csv/m.json: train.csv is a file, so no folder can hold m.json"),
    # output paths that cannot be written are refused before the work, not after it
    (["pretrain", "--family", "eca", "--raw", ".", "--out", "."], "--out . is a folder; name a file"),
    (["train", "--family", "eca", "--fold", "0", "--raw", ".", "--tables", ".", "--logs", "train.csv"],
     "--logs train.csv is a file; name a folder"),
    (["predict", "x.wav", "-o", "train.csv/p.csv"], "--out train.csv/p.csv: train.csv is a file, so no folder can hold p.csv"),
    # a mistyped path must not quietly train without background clips, pseudo labels or weights
    (["train", "--family", "eca", "--fold", "0", "--raw", "nope"], "--raw nope: no such folder"),
    (["train", "--family", "eca", "--fold", "0", "--raw", ".", "--tables", ".", "--round", "round1"],
     "round1's pseudo labels data/pseudo/round0: no such folder (`dvc repro pseudo@round0` writes them)"),
    (["train", "--family", "eca", "--fold", "0", "--raw", ".", "--tables", ".", "--pretrained", "eca.pt"],
     "--pretrained eca.pt: no such file"),
    (["pretrain", "--family", "eca", "--raw", "nope"], "--raw nope: no such folder"),
    (["download", "--out", "."], "holds files this command did not write (no taxonomy.csv)"),
    # a mistyped --external must not quietly leave the user's recordings out
    (["precompute", "--external", "data/extrenal"], "--external data/extrenal: no such folder"),
    (["prepare", "--external", "data/extrenal"], "--external data/extrenal: no such folder"),
    (["infer", "--soundscapes", "nope"], "--soundscapes nope: no such folder"),
    # stage outputs are folders replaced whole: one that cannot be made is refused before the work
    (["download", "--out", "train.csv/raw"], "--out train.csv/raw: train.csv is a file, so no folder can hold raw"),
    (["precompute", "--external", ".", "--out", "train.csv"], "--out train.csv is a file; name a folder"),
    (["prepare", "--external", ".", "--out", "train.csv/tables"], "--out train.csv/tables: train.csv is a file"),
    (["train", "--family", "eca", "--fold", "0", "--raw", ".", "--tables", ".", "--out", "train.csv"],
     "--out train.csv is a file; name a folder"),
    (["pseudo", "--out", "train.csv"], "--out train.csv is a file; name a folder"),
    (["train", "--family", "eca", "--fold", "0", "--raw", ".", "--tables", ".", "--logs", "."],
     "holds files this command did not write (no metrics.json)"),
    (["export", "--family", "eca", "--out", "train.csv"], "--out train.csv is a file; name a folder"),
])
def test_stage_commands_name_what_is_missing(tmp_path, args, message):
    for name in ("params.yaml", "recipe.yaml"):
        (tmp_path / name).write_text((REPO / "params.yaml").read_text())
    # the prepare stage's (empty) tables, so that evaluate stops at the next missing input
    (tmp_path / "train.csv").write_text("key,primary_label,secondary_labels\n")
    (tmp_path / "classes.json").write_text("[]")
    (tmp_path / "folds.csv").write_text("variant,fold,subset,row\n")
    result = run([python(), "-m", "birdclef", *args], tmp_path, env(), check=False)
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("args", [
    ["pretrain", "--family", "eca", "--raw", "nope"],
    ["train", "--family", "eca", "--fold", "7"],
    ["pseudo", "--inherit", "nope"],
    ["export", "--family", "eca", "--out", "params.yaml"],
    ["infer", "--soundscapes", "nope"],
    ["evaluate", "--tables", "nope"],
    ["predict", "x.wav", "-o", "params.yaml/p.csv"],
])
def test_a_slip_in_the_options_is_named_before_torch_loads(tmp_path, args):
    """A mistyped option fails in a fraction of a second, not after torch, Lightning and OpenVINO load."""
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    code = ("import atexit, sys; from birdclef.cli import app; "
            "atexit.register(lambda: print('loaded:', sorted({'torch', 'lightning', 'timm', 'openvino'} "
            "& set(sys.modules)), file=sys.stderr)); app(prog_name='birdclef')")
    result = run([python(), "-c", code, *args], tmp_path, env(), check=False)
    assert result.returncode == 1 and "error: " in result.stderr
    assert "loaded: []" in result.stderr


@pytest.mark.parametrize("command, marker", [("precompute", "<collection>-NNN.h5"), ("prepare", "classes.json")])
def test_data_stages_refuse_to_write_into_a_foreign_folder(tmp_path, command, marker):
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    result = run([python(), "-m", "birdclef", command, "--external", ".", "--out", "mine"], tmp_path, env(),
                 check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"holds files this command did not write (no {marker})" in result.stderr
    assert [path.name for path in (tmp_path / "mine").iterdir()] == ["notes.txt"]


def test_a_raven_threshold_must_be_a_probability(tmp_path):
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    result = run([python(), "-m", "birdclef", "predict", "x.wav", "--threshold", "50"], tmp_path, env(), check=False)
    assert result.returncode == 2 and "Invalid value for '--threshold'" in result.stderr


@pytest.mark.parametrize("edit, message", [
    (lambda p: p["data"]["sample"].update(species=0), "params.yaml: data.sample: need species >= 1"),
    (lambda p: p["audio"].update(sample_rate=16000), "params.yaml: audio.sample_rate 16000 is too low for the sample"),
])
def test_sample_settings_it_cannot_generate_are_named_before_any_file(tmp_path, edit, message):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    edit(params)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = run([python(), "-m", "birdclef", "download", "--out", "raw"], tmp_path, env(), check=False)
    assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["params.yaml"]


@pytest.mark.parametrize("interrupt", ["SIGTERM", "Ctrl-C"])
def test_an_interrupted_download_keeps_the_earlier_output_and_no_temporary(tmp_path, interrupt):
    """`kill` and `timeout` send SIGTERM to the command; Ctrl-C sends SIGINT to its whole process
    group, the sample's worker processes included. Either way the earlier dataset stays as it
    was, the half-written folder beside it goes, and the command ends promptly."""
    import signal
    import subprocess
    import time

    from birdclef import layout

    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / layout.TAXONOMY_CSV).write_text("an earlier download")
    # As from a terminal: its own process group, and SIGINT not ignored (as a shell's background job has it).
    command = subprocess.Popen([python(), "-m", "birdclef", "download", "--out", "raw"], cwd=tmp_path, env=env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not any((tmp_path / "raw.tmp").rglob("*.ogg")) and command.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert command.poll() is None, "the download ended before it could be interrupted"
    if interrupt == "SIGTERM":
        command.send_signal(signal.SIGTERM)
    else:
        os.killpg(command.pid, signal.SIGINT)
    status = command.wait(timeout=60)
    assert status == 128 + (signal.SIGTERM if interrupt == "SIGTERM" else signal.SIGINT)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["params.yaml", "raw"]
    assert [path.name for path in (tmp_path / "raw").iterdir()] == [layout.TAXONOMY_CSV]
    assert (tmp_path / "raw" / layout.TAXONOMY_CSV).read_text() == "an earlier download"
    assert "Traceback" not in command.stderr.read()


def test_the_packages_own_warnings_are_one_line_and_others_keep_their_place(capsys):
    import warnings

    from birdclef import cli

    cli._show_warning(UserWarning("3 labelled recording(s) are not in the store"), UserWarning,
                      cli.__file__, 10)
    assert capsys.readouterr().err == "warning: 3 labelled recording(s) are not in the store\n"
    shown = []
    cli._show_warning(UserWarning("deprecated"), UserWarning, warnings.__file__, 7, shown=lambda *args: shown.append(args))
    assert capsys.readouterr().err == "" and shown[0][1:4] == (UserWarning, warnings.__file__, 7)


def test_version(tmp_path):
    from birdclef import __version__

    assert run([python(), "-m", "birdclef", "--version"], tmp_path, env()).stdout == f"birdclef {__version__}\n"
