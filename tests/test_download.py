"""The download stage through the CLI, with the kaggle client replaced at the network edge."""

import hashlib
import os
import shutil
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import yaml

from birdclef import layout, readmes, unpack
from birdclef.download import DownloadError, _fetch
from conftest import REPO, dvc, python, run, tone, tool_env, write_audio

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
    assert len(list((raw / "train_audio").rglob("*.ogg"))) == 12 and len(list((raw / "test_soundscapes").glob("*.ogg"))) == 1
    assert (raw / "pseudo" / readmes.README).is_file() and (raw / "test_soundscapes" / readmes.README).is_file()
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

    (project / "data" / "external").mkdir()
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


def test_no_test_soundscapes_still_give_a_folder_that_dvc_keeps(tmp_path):
    """Kaggle's download has no test audio, DVC drops empty folders, and infer depends on the folder."""
    from kaggle_archives import SPECIES, competition

    (tmp_path / "download").mkdir()
    download = competition(tmp_path / "download", SPECIES, recordings_per_species=1)
    shutil.rmtree(download / layout.TEST_SOUNDSCAPES)
    project = tmp_path / "project"
    summary = unpack.competition(download, project / "data" / "raw")
    assert summary["test_soundscapes"] == 0
    env = tool_env()
    run(["git", "init", "-q"], project, env)
    dvc(["init", "-q"], project, env)
    dvc(["add", "-q", "data/raw"], project, env)
    shutil.rmtree(project / "data" / "raw")
    dvc(["checkout", "-q", "data/raw"], project, env)
    assert (project / "data/raw" / layout.TEST_SOUNDSCAPES).is_dir()


def test_an_unreachable_kaggle_is_named(tmp_path):
    """An access token is checked online: no network must not end in a traceback."""
    write_params(tmp_path, "birdclef2025")
    env = environment(tmp_path, KAGGLE_API_TOKEN="token", FAKE_KAGGLE_OFFLINE="1")
    result = run([python(), "-m", "birdclef", "download"], tmp_path, env, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "could not check the credentials with Kaggle" in result.stderr
    assert "check the network connection and the token" in result.stderr


def test_a_competition_taxonomy_without_labels_is_named(tmp_path):
    from kaggle_archives import SPECIES, write_archives

    archives = write_archives(tmp_path / "archives", SPECIES, {"eca": "lcnet_050", "ebs": "lcnet_050"})
    project = tmp_path / "project"
    project.mkdir()
    with zipfile.ZipFile(archives / "birdclef-2025.zip") as archive:
        archive.extractall(project / "data/downloads/birdclef-2025")
    (project / "data/downloads/birdclef-2025/.complete").touch()  # fetched earlier, then damaged
    (project / "data/downloads/birdclef-2025/taxonomy.csv").write_text("species,class_name\nx,Aves\n")
    write_params(project, "birdclef2025")
    env = environment(tmp_path, KAGGLE_USERNAME="someone", KAGGLE_KEY="secret", FAKE_KAGGLE_ARCHIVES=str(archives))
    result = run([python(), "-m", "birdclef", "download"], project, env, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "taxonomy.csv" in result.stderr and "primary_label" in result.stderr
    assert not (project / "data/raw").exists() and not (project / "data/raw.tmp").exists()


def test_several_metadata_csvs_fill_each_others_blanks(tmp_path):
    """In name order, a row's value wins over a later one's; a blank cell is left to a later row or CSV."""
    from kaggle_archives import SPECIES, add_data

    folder = add_data(tmp_path / "add-data")  # prev_comps_metadata.csv: XC7000 by Jane Doe, one secondary
    xc7000, xc7001, xc7002 = (f"{SPECIES[number]}/XC{7000 + number}.mp3" for number in range(3))
    pd.DataFrame({"filename": [xc7000, xc7001, xc7001], "author": ["", "", "John Roe"],
                  "rating": ["4.5", "", "3"]}).to_csv(folder / "a_first.csv", index=False)
    pd.DataFrame({"filename": [xc7001, xc7002], "author": ["Someone Else", "Ann Poe"]}).to_csv(
        folder / "xc_metadata.csv", index=False)
    unpack.extra_audio(folder, tmp_path / "raw", set(SPECIES))
    extra = pd.read_csv(tmp_path / "raw" / layout.EXTRA_CSV, dtype=str, keep_default_na=False)
    extra = extra.set_index("filename")
    first, second, third = (extra.loc[f"add_train_audio_from_xeno_canto_28032025/{name}"]
                            for name in (xc7000, xc7001, xc7002))
    assert (first["author"], first["rating"], first["secondary_labels"]) == ("Jane Doe", "4.5", f"['{SPECIES[1]}']")
    assert (second["author"], second["rating"], second["secondary_labels"]) == ("John Roe", "3", "[]")
    assert (third["author"], third["rating"]) == ("Ann Poe", "")


def test_background_clips_with_one_name_are_refused_not_overwritten(tmp_path):
    from kaggle_archives import parts_2023

    part2, part3 = tmp_path / "part2", tmp_path / "part3"
    parts_2023(part2, part3, tmp_path / "scratch")
    clips = part2 / "esc50" / "esc50" / "audio"
    shutil.copytree(clips, part2 / "esc50" / "copy")  # one clip published twice: used once
    summary = unpack.background([part2, part3], tmp_path / "once", tmp_path / "scratch")
    assert summary["esc50_clips"] == len(list(clips.iterdir()))
    write_audio(part2 / "esc50" / "copy" / "1-100032-A-0.wav", 0.1 * tone(300, 5, 44100), 44100)
    with pytest.raises(unpack.LayoutError, match=r"1-100032-A-0.wav and .*1-100032-A-0.wav differ but would "
                                                 r"both be background/audio/esc50/1-100032-A-0.wav"):
        unpack.background([part2, part3], tmp_path / "raw", tmp_path / "scratch")


def test_a_rerun_over_complete_downloads_needs_no_credentials_nor_network(tmp_path):
    """Credentials are checked (online, for a token) only when a download is missing."""
    from kaggle_archives import PSEUDO_FILES, SPECIES, write_archives

    archives = write_archives(tmp_path / "archives", SPECIES, {"eca": "lcnet_050", "ebs": "lcnet_050"})
    project = tmp_path / "project"
    project.mkdir()
    write_params(project, "birdclef2025", pseudo={"published": PSEUDO_FILES})
    run([python(), "-m", "birdclef", "download"], project, environment(
        tmp_path, KAGGLE_USERNAME="someone", KAGGLE_KEY="secret", FAKE_KAGGLE_ARCHIVES=str(archives)))
    calls = (archives / "calls.log").read_text()
    shutil.rmtree(project / "data/raw")
    offline = environment(tmp_path, FAKE_KAGGLE_OFFLINE="1", FAKE_KAGGLE_ARCHIVES=str(archives))
    run([python(), "-m", "birdclef", "download"], project, offline)
    assert (project / "data/raw/train.csv").is_file() and (archives / "calls.log").read_text() == calls
    (project / "data/downloads/bird-clef-2025-pseudo/.complete").unlink()
    result = run([python(), "-m", "birdclef", "download"], project, offline, check=False)
    assert result.returncode == 1 and "Kaggle credentials not found" in result.stderr


@pytest.mark.parametrize(("files", "env", "found"), [
    ({"cfg/access_token": "token"}, {"KAGGLE_CONFIG_DIR": "~/cfg"}, False),  # the client reads ~/.kaggle only
    ({".kaggle/access_token": "token"}, {"KAGGLE_CONFIG_DIR": "~/cfg"}, True),
    ({".kaggle/access_token.txt": "token"}, {}, True),
    ({".kaggle/access_token": "\n"}, {}, False),
    ({"token": "token"}, {"KAGGLE_API_TOKEN": "~/token"}, True),  # a path to the token
    ({"token": ""}, {"KAGGLE_API_TOKEN": "~/token"}, False),
    ({}, {"KAGGLE_API_TOKEN": "KGAT_0123"}, True),
    ({"cfg/kaggle.json": '{"username": "u", "key": "k"}'}, {"KAGGLE_CONFIG_DIR": "~/cfg"}, True),
    ({".config/kaggle/kaggle.json": '{"username": "u", "key": "k"}'}, {}, True),  # XDG, no ~/.kaggle
    ({"xdg/kaggle/kaggle.json": '{"username": "u", "key": "k"}'}, {"XDG_CONFIG_HOME": "~/xdg"}, True),
    ({"xdg/kaggle/kaggle.json": '{"username": "u", "key": "k"}', ".kaggle/other": ""},
     {"XDG_CONFIG_HOME": "~/xdg"}, False),  # ~/.kaggle exists: the client reads kaggle.json there only
    ({".kaggle/kaggle.json": '{"key": "k"}'}, {"KAGGLE_USERNAME": "u"}, True),
    ({".kaggle/kaggle.json": '{"username": "u", "key":'}, {}, False),  # unparsable: ignored
    ({".kaggle/credentials.json": '{"refresh_token": "r"}'}, {}, True),  # `kaggle auth login`
    ({".kaggle/credentials.json": '{"refresh_token": ""}'}, {}, False),
])
def test_the_credential_check_looks_where_the_kaggle_client_looks(tmp_path, monkeypatch, files, env, found):
    """The places and order of kaggle 2.x (``KaggleApi.authenticate``, ``kagglesdk.kaggle_env``)."""
    from birdclef.download import kaggle_credentials_found

    for name in [name for name in os.environ if name.startswith("KAGGLE_")] + ["XDG_CONFIG_HOME"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    for name, value in env.items():  # ~ is the home folder
        monkeypatch.setenv(name, value.replace("~", str(tmp_path), 1) if value.startswith("~/") else value)
    assert kaggle_credentials_found() is found


@pytest.mark.parametrize("text", ["", "filename,author\na.mp3,x\n\"b.mp3,y,z\n", "filename,author\na,b\nc,d,e\n"])
def test_an_empty_or_malformed_csv_in_the_extra_data_is_named(tmp_path, text):
    from kaggle_archives import SPECIES, add_data

    folder = add_data(tmp_path / "add-data")
    (folder / "broken.csv").write_text(text)
    with pytest.raises(unpack.LayoutError, match=rf"{folder / 'broken.csv'}: (empty|malformed CSV .*); "
                                                 rf"delete {folder} and download again\.$"):
        unpack.extra_audio(folder, tmp_path / "raw", set(SPECIES))


def test_an_empty_esc50_meta_csv_is_named(tmp_path):
    from kaggle_archives import parts_2023

    part2, part3 = tmp_path / "part2", tmp_path / "part3"
    parts_2023(part2, part3, tmp_path / "scratch")
    (part2 / "esc50" / "meta").mkdir()
    (part2 / "esc50" / "meta" / "esc50.csv").write_text("")
    with pytest.raises(unpack.LayoutError, match=rf"esc50/meta/esc50.csv: empty; delete {part2} and"):
        unpack.background([part2, part3], tmp_path / "raw", tmp_path / "scratch")


def test_extra_data_without_audio_is_named(tmp_path):
    from kaggle_archives import SPECIES, add_data

    folder = add_data(tmp_path / "add-data")
    for source in unpack.EXTRA_FOLDERS:
        shutil.rmtree(folder / source)
        (folder / source / SPECIES[0]).mkdir(parents=True)
    with pytest.raises(unpack.LayoutError, match=rf"{folder / unpack.EXTRA_FOLDERS[0]}: no audio files; "
                                                 rf"delete {folder} and download again"):
        unpack.extra_audio(folder, tmp_path / "raw", set(SPECIES))


@pytest.mark.parametrize("damage", ["truncate", "remove"])
def test_a_damaged_nocall_part_is_fetched_anew_on_the_next_run(tmp_path, damage):
    """The parts keep their .complete markers otherwise: "download again" would never happen."""
    from kaggle_archives import parts_2023

    part2, part3 = tmp_path / "part2", tmp_path / "part3"
    parts_2023(part2, part3, tmp_path / "scratch")
    for part in (part2, part3):
        (part / ".complete").touch()
    piece = part3 / "soundscapes_nocall.zip.part-ab"
    if damage == "truncate":
        piece.write_bytes(piece.read_bytes()[:100])
    else:
        for part in (part2, part3):
            next(part.glob("soundscapes_nocall.zip.part-*")).unlink()
    with pytest.raises(unpack.LayoutError, match=rf"removed the .complete marker of {part2}, {part3}: "
                                                 "run the stage again to fetch them anew"):
        unpack.background([part2, part3], tmp_path / "raw", tmp_path / "downloads")
    assert not (part2 / ".complete").exists() and not (part3 / ".complete").exists()
    assert not (tmp_path / "downloads" / unpack.NOCALL_ARCHIVE).exists()


FULL_DISK = """
import resource, signal, sys
from pathlib import Path
from birdclef import unpack
from birdclef.download import DownloadError, _fetch

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), resource.RLIM_INFINITY))
root = Path(sys.argv[3])
try:
    if sys.argv[1] == "join":
        unpack.background([root / "part2", root / "part3"], root / "raw", root / "downloads")
    else:
        _fetch(root / "dataset", lambda folder: None)  # the archive is already there
except DownloadError as error:
    sys.exit(str(error))
"""


def test_a_full_disk_while_joining_the_nocall_parts_is_named_and_leaves_no_partial_zip(tmp_path):
    from kaggle_archives import parts_2023

    parts_2023(tmp_path / "part2", tmp_path / "part3", tmp_path / "scratch")
    limit = (tmp_path / "scratch" / unpack.NOCALL_ARCHIVE).stat().st_size // 4
    result = run([python(), "-c", FULL_DISK, "join", str(limit), str(tmp_path)], tmp_path,
                 environment(tmp_path), check=False)
    joined = tmp_path / "downloads" / unpack.NOCALL_ARCHIVE
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"{joined}: joining or unzipping the no-call parts failed ([Errno 27] File too large)" in result.stderr
    assert "free disk space and run the stage again" in result.stderr
    assert not joined.exists() and not (tmp_path / "downloads/soundscapes_nocall/.complete").exists()


def test_a_full_disk_while_unpacking_a_download_is_named(tmp_path):
    (tmp_path / "dataset").mkdir()
    with zipfile.ZipFile(tmp_path / "dataset" / "x.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("big.bin", bytes(1 << 20))  # 1 MiB of zeros in about 1 kB
    result = run([python(), "-c", FULL_DISK, "fetch", str(1 << 16), str(tmp_path)], tmp_path,
                 environment(tmp_path), check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"{tmp_path / 'dataset' / 'x.zip'}: unpacking failed ([Errno 27] File too large)" in result.stderr
    assert "free disk space and run the stage again" in result.stderr
    assert not (tmp_path / "dataset" / ".complete").exists()
