"""The download stage through the CLI, with the kaggle client replaced at the network edge."""

import hashlib
import os
import shutil
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import yaml

from birdclef import layout
from birdclef.download import DownloadError, _fetch
from conftest import REPO, python, run

FAKES = Path(__file__).parent / "fakes"


def write_params(folder: Path, source: str, **sections) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["source"] = source
    for name, values in sections.items():
        params[name].update(values)
    (folder / "params.yaml").write_text(yaml.safe_dump(params))


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


def test_birdclef2025_download_lays_out_every_dataset(tmp_path):
    from kaggle_archives import BACKBONE_FILES, PSEUDO_FILES, SPECIES, write_archives

    from birdclef.download import DATASETS

    archives = write_archives(tmp_path / "archives", SPECIES, {"eca": "lcnet_050", "ebs": "lcnet_050"})
    project = tmp_path / "project"
    project.mkdir()
    write_params(project, "birdclef2025", pseudo={"published": PSEUDO_FILES})
    env = environment(tmp_path, KAGGLE_USERNAME="someone", KAGGLE_KEY="secret",
                      FAKE_KAGGLE_ARCHIVES=str(archives))
    result = run([python(), "-m", "birdclef", "download"], project, env)
    raw = project / "data" / "raw"
    source = archives / "work"
    # The competition, unchanged (hard links or copies of the downloaded files).
    assert (raw / "train.csv").read_bytes() == (source / "birdclef-2025/train.csv").read_bytes()
    assert len(list((raw / "train_audio").rglob("*.ogg"))) == 12 and len(list((raw / "test_soundscapes").iterdir())) == 1
    # Extra recordings from both folders, rows for the 2025 species only, enriched from the CSV.
    extra = pd.read_csv(raw / "extra/train.csv", keep_default_na=False)
    assert list(extra.columns) == list(layout.TRAIN_COLUMNS) and len(extra) == 6
    assert set(extra["primary_label"]) == set(SPECIES)
    enriched = extra.set_index("filename").loc[f"add_train_audio_from_prev_comps/{SPECIES[0]}/XC7000.mp3"]
    assert enriched["author"] == "Jane Doe" and enriched["secondary_labels"] == f"['{SPECIES[1]}']"
    assert (extra["author"] == "unknown").sum() == 4  # XC7000 is in both folders: one recording
    assert all((raw / "extra/audio" / name).is_file() for name in extra["filename"])
    assert "1 extra_outside_taxonomy" in result.stdout
    # Published backbones and pseudo labels (priority order = name order).
    for name in BACKBONE_FILES.values():
        assert (raw / "pretrained" / name).is_file()
    pseudo = sorted(path.name for path in (raw / "pseudo").glob("*.csv"))
    assert pseudo == [f"{number:02d}-{name.replace('/', '__')}" for number, name in enumerate(PSEUDO_FILES)]
    # Background: the no-call zip joined from both 2023 parts, ESC-50 categories from the names.
    background = pd.read_csv(raw / layout.BACKGROUND_CSV)
    assert sorted(background.loc[background.source == "nocall", "filename"]) == [
        "nocall/nocall_0.ogg", "nocall/nocall_1.ogg"]
    assert dict(zip(background.filename, background.category))["esc50/1-17367-A-10.wav"] == "rain"
    assert set(background.category) == {"nocall", "dog", "rain", "sneezing"}
    assert (raw / "pretrain/metadata/pretrain_meta.csv").is_file()

    calls = (archives / "calls.log").read_text().splitlines()
    assert calls[0] == "birdclef-2025.zip" and len(calls) == 1 + len(DATASETS)
    shutil.rmtree(raw)
    run([python(), "-m", "birdclef", "download"], project, env)
    assert (archives / "calls.log").read_text().splitlines() == calls  # nothing fetched again
    assert (raw / "background/audio/nocall/nocall_0.ogg").is_file()
    marker = (project / "data/downloads/birdclef-2025/.complete").read_text().split()
    assert marker[0] == hashlib.sha256((archives / "birdclef-2025.zip").read_bytes()).hexdigest()
    assert marker[2] == "birdclef-2025.zip"

    run([python(), "-m", "birdclef", "precompute"], project, env)
    index = pd.read_csv(project / "data" / "store" / "index.csv")
    assert index["key"].str.startswith("background/audio/esc50/").sum() == 3


def test_missing_pseudo_file_names_what_the_dataset_holds(tmp_path):
    from kaggle_archives import SPECIES, write_archives

    archives = write_archives(tmp_path / "archives", SPECIES, {"eca": "lcnet_050", "ebs": "lcnet_050"})
    project = tmp_path / "project"
    project.mkdir()
    write_params(project, "birdclef2025", pseudo={"published": ["best_ensem/v9.csv"]})
    env = environment(tmp_path, KAGGLE_USERNAME="someone", KAGGLE_KEY="secret",
                      FAKE_KAGGLE_ARCHIVES=str(archives))
    result = run([python(), "-m", "birdclef", "download"], project, env, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "best_ensem/v9.csv not found (pseudo.published)" in result.stderr
    assert "best_ensem_19052025/v0.csv" in result.stderr
    assert not (project / "data" / "raw").exists() and not (project / "data" / "raw.tmp").exists()


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


def test_a_damaged_archive_is_removed_and_named(tmp_path):
    """A zip whose directory reads but whose deflate data is corrupt: one error, no archive left."""
    def fetch(folder):
        with zipfile.ZipFile(folder / "x.zip", "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("train.csv", "primary_label,filename\n" + "a,b.ogg\n" * 5000)
        data = bytearray((folder / "x.zip").read_bytes())
        data[60:90] = b"\xff" * 30  # inside the compressed stream of the only member
        (folder / "x.zip").write_bytes(bytes(data))

    with pytest.raises(DownloadError, match="x.zip: damaged download"):
        _fetch(tmp_path / "dataset", fetch)
    assert not (tmp_path / "dataset" / "x.zip").exists()
    assert not (tmp_path / "dataset" / ".complete").exists()
