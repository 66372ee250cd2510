"""The download stage through the CLI, with the kaggle client replaced at the network edge."""

import os
import shutil
import zipfile
from pathlib import Path

import yaml

from conftest import REPO, python, run, write_raw_dataset

FAKES = Path(__file__).parent / "fakes"


def write_params(folder: Path, source: str) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["source"] = source
    (folder / "params.yaml").write_text(yaml.safe_dump(params))


def zip_folder(folder: Path, archive: Path) -> None:
    with zipfile.ZipFile(archive, "w") as handle:
        for path in sorted(folder.rglob("*")):
            handle.write(path, path.relative_to(folder).as_posix())


def environment(home: Path, **extra) -> dict:
    env = {key: value for key, value in os.environ.items() if not key.startswith("KAGGLE_")}
    env.update(HOME=str(home), PYTHONPATH=os.pathsep.join([str(FAKES), str(REPO / "src")]), **extra)
    return env


def test_missing_credentials_fail_fast_with_instructions(tmp_path):
    write_params(tmp_path, "birdclef2025")
    result = run([python(), "-m", "birdclef", "download"], tmp_path, environment(tmp_path), check=False)
    assert result.returncode == 1
    assert "Kaggle credentials not found" in result.stderr and "KAGGLE_USERNAME" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()


def test_birdclef2025_download_lays_out_the_competition(tmp_path):
    archives = tmp_path / "archives"
    archives.mkdir()
    competition = write_raw_dataset(tmp_path / "competition")
    (competition / "sample_submission.csv").write_text("row_id,amerob,bkcchi,41778\n")
    zip_folder(competition, archives / "birdclef-2025.zip")
    from birdclef.download import DATASETS

    for reference in DATASETS:
        extra = tmp_path / reference.replace("/", "__")
        extra.mkdir()
        (extra / "README.txt").write_text(reference)
        zip_folder(extra, archives / (reference.replace("/", "__") + ".zip"))
    project = tmp_path / "project"
    project.mkdir()
    write_params(project, "birdclef2025")
    env = environment(tmp_path, KAGGLE_USERNAME="someone", KAGGLE_KEY="secret",
                      FAKE_KAGGLE_ARCHIVES=str(archives))

    run([python(), "-m", "birdclef", "download"], project, env)
    raw = project / "data" / "raw"
    for name in ("train.csv", "taxonomy.csv", "sample_submission.csv", "train_audio/amerob",
                 "train_soundscapes/H02_20230420.ogg", "test_soundscapes"):
        assert (raw / name).exists(), name
    assert (raw / "train_audio/amerob/XC1000.wav").read_bytes() == (
        competition / "train_audio/amerob/XC1000.wav").read_bytes()
    calls = (archives / "calls.log").read_text().splitlines()
    assert calls[0] == "birdclef-2025.zip" and len(calls) == 1 + len(DATASETS)

    shutil.rmtree(raw)
    run([python(), "-m", "birdclef", "download"], project, env)
    assert (archives / "calls.log").read_text().splitlines() == calls  # nothing fetched again
    assert (raw / "train.csv").is_file()

    run([python(), "-m", "birdclef", "precompute"], project, env)
    assert (project / "data" / "store" / "index.csv").is_file()


def test_refused_dataset_is_reported(tmp_path):
    archives = tmp_path / "archives"
    archives.mkdir()
    project = tmp_path / "project"
    project.mkdir()
    write_params(project, "birdclef2025")
    env = environment(tmp_path, KAGGLE_USERNAME="someone", KAGGLE_KEY="secret",
                      FAKE_KAGGLE_ARCHIVES=str(archives))
    result = run([python(), "-m", "birdclef", "download"], project, env, check=False)
    assert result.returncode == 1
    assert "birdclef-2025: download failed (404" in result.stderr
    assert "accepted the competition rules" in result.stderr
    assert not (project / "data" / "raw").exists()
