"""Lay out ``data/raw`` (see ``layout``) from the downloaded competition and author datasets.

What each download holds (seed README, reference/seed-spec.md §1.1, §3) and where it goes:

====================================  ===============================================  =====================
download folder                       content                                          data/raw
====================================  ===============================================  =====================
birdclef-2025                         train.csv, taxonomy.csv, sample_submission.csv,  the same names
                                      train_audio/, train_soundscapes/,                (+ a README in
                                      test_soundscapes/ (empty until a notebook runs)  test_soundscapes/:
                                                                                       DVC keeps no
                                                                                       empty folder)
bird-clef-2025-add-data               add_train_audio_from_prev_comps/<label>/<file>,  extra/audio/<folder>/
                                      add_train_audio_from_xeno_canto_28032025/...     + extra/train.csv
bird-clef-2025-all-pretrained-models  models_2024/*.pth, models_2025/*.ckpt            pretrained/
bird-clef-2025-pseudo                 <experiment>/v0*.csv                             pseudo/NN-<...>.csv
birdclef-2023-data-part2, -part3      soundscapes_nocall.zip.part-* (one zip split     background/audio/nocall,
                                      over both), esc50/**/*.wav                       background/audio/esc50
bird-clef-2025-pretrained-metadata    the pretraining corpus tables                    pretrain/metadata/
====================================  ===============================================  =====================

The authors' 36,030-row training table is not published, so ``extra/train.csv`` is rebuilt from
the folders (label = folder name), enriched from any CSV in the dataset that describes the same
files; without one, a row has no secondary labels and an unknown author (the split then groups
it by file name). Files are hard-linked from the downloads (no second copy of ~100 GB), or
copied across devices.
"""

from __future__ import annotations

import filecmp
import os
import re
import shutil
import zipfile
import zlib
from pathlib import Path

import pandas as pd

from birdclef import layout, readmes, tables
from birdclef.download import DownloadError

EXTRA_FOLDERS = ("add_train_audio_from_prev_comps", "add_train_audio_from_xeno_canto_28032025")
NOCALL_ARCHIVE = "soundscapes_nocall.zip"
# ESC-50's 50 classes in the order of its ``target`` number (the last field of a clip's name,
# e.g. 1-100032-A-0.wav), used when the dataset carries no meta CSV.
ESC50_CLASSES = (
    "dog", "rooster", "pig", "cow", "frog", "cat", "hen", "insects", "sheep", "crow",
    "rain", "sea_waves", "crackling_fire", "crickets", "chirping_birds", "water_drops", "wind",
    "pouring_water", "toilet_flush", "thunderstorm", "crying_baby", "sneezing", "clapping",
    "breathing", "coughing", "footsteps", "laughing", "brushing_teeth", "snoring",
    "drinking_sipping", "door_wood_knock", "mouse_click", "keyboard_typing", "door_wood_creaks",
    "can_opening", "washing_machine", "vacuum_cleaner", "clock_alarm", "clock_tick",
    "glass_breaking", "helicopter", "chainsaw", "siren", "car_horn", "engine", "train",
    "church_bells", "airplane", "fireworks", "hand_saw",
)
COMPETITION_FILES = (
    layout.TRAIN_CSV, layout.TAXONOMY_CSV, layout.SAMPLE_SUBMISSION_CSV,
    layout.TRAIN_AUDIO, layout.TRAIN_SOUNDSCAPES,
)


class LayoutError(RuntimeError):
    """A download does not hold what the seed README says it holds."""


def competition(folder: Path, out: Path) -> dict:
    """The competition files, unchanged. Test soundscapes are hidden until a notebook runs."""
    for name in COMPETITION_FILES:
        if not (folder / name).exists():
            raise LayoutError(f"{folder}: the competition download has no {name!r}; delete the folder "
                              "and download again.")
        link_tree(folder / name, out / name)
    readmes.write_readme(out / layout.TEST_SOUNDSCAPES, readmes.TEST_SOUNDSCAPES)
    tests = [path for path in sorted((folder / layout.TEST_SOUNDSCAPES).glob("*"))
             if path.suffix.lower() in layout.AUDIO_SUFFIXES]  # infer reads the folder's files, not subfolders
    for path in tests:
        link_tree(path, out / layout.TEST_SOUNDSCAPES / path.name)
    return {"train_audio": sum(1 for _ in audio_files(out / layout.TRAIN_AUDIO)),
            "test_soundscapes": len(tests)}


def extra_audio(folder: Path, out: Path, vocabulary: set[str]) -> dict:
    """The authors' extra recordings of the 2025 species and a train.csv-like table for them."""
    rows = []
    for source in EXTRA_FOLDERS:
        if not (folder / source).is_dir():
            raise LayoutError(f"{folder}: no {source}/ folder; delete the folder and download again.")
        paths = list(audio_files(folder / source))
        if not paths:  # the authors' folders hold thousands of recordings
            raise LayoutError(f"{folder / source}: no audio files; delete {folder} and download again.")
        for path in paths:
            relative = path.relative_to(folder / source)
            if len(relative.parts) != 2:
                raise LayoutError(f"{path}: expected {source}/<label>/<file>.")
            rows.append({"primary_label": relative.parts[0], "filename": f"{source}/{relative.as_posix()}",
                         "collection": source, "path": path})
    table = pd.DataFrame(rows)
    unknown = table[~table["primary_label"].isin(vocabulary)]
    table = table[table["primary_label"].isin(vocabulary)].copy()
    for row in table.itertuples():
        link_tree(row.path, out / layout.EXTRA_AUDIO / row.filename)
    table = _enrich(table.drop(columns="path"), folder)
    (out / layout.EXTRA_CSV).parent.mkdir(parents=True, exist_ok=True)
    table[list(layout.TRAIN_COLUMNS)].to_csv(out / layout.EXTRA_CSV, index=False)
    return {"extra_recordings": len(table), "extra_outside_taxonomy": len(unknown)}


def _enrich(table: pd.DataFrame, folder: Path) -> pd.DataFrame:
    """Fill the train.csv columns: from a CSV of the dataset naming the same files, else blank."""
    table["key"] = table["filename"].str.split("/", n=1).str[1]
    for path in sorted(folder.glob("*.csv")):  # name order: an earlier CSV's values win
        metadata = _read_csv(path, folder)
        if "filename" not in metadata.columns:
            continue
        # A blank cell leaves the value to a later row or CSV.
        metadata = metadata.where(metadata != "").groupby("filename").first()
        for column in set(layout.TRAIN_COLUMNS) - {"filename", "primary_label", "collection"}:
            if column in metadata.columns:
                values = table["key"].map(metadata[column])
                table[column] = table[column].fillna(values) if column in table else values
    defaults = {"secondary_labels": "[]", "author": "unknown"}
    for column in layout.TRAIN_COLUMNS:
        if column in table:
            table[column] = table[column].fillna(defaults.get(column, ""))
        else:
            table[column] = defaults.get(column, "")
    return table.drop(columns="key")


def _read_csv(path: Path, download: Path) -> pd.DataFrame:
    """A CSV of ``download`` as strings; a damaged one is a LayoutError naming it and the fix."""
    try:
        return tables.read_csv(path, (), fix=f"delete {download} and download again")
    except tables.TableError as error:
        raise LayoutError(str(error)) from None


def published_backbones(folder: Path, out: Path) -> dict:
    """The authors' pretrained backbones, as published (the pretrain stage picks one per family)."""
    weights = [path for path in sorted(folder.rglob("*")) if path.suffix in (".ckpt", ".pth", ".pt")]
    if not weights:
        raise LayoutError(f"{folder}: no .ckpt/.pth files; delete the folder and download again.")
    for path in weights:
        link_tree(path, out / layout.PUBLISHED_BACKBONES / path.relative_to(folder))
    return {"published_backbones": len(weights)}


def published_pseudo(folder: Path, out: Path, files: list[str]) -> dict:
    """``files`` (priority order) as ``pseudo/00-<...>.csv``: the pseudo folder's name order."""
    for number, name in enumerate(files):
        source = folder / name
        if not source.is_file():
            present = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*.csv"))
            raise LayoutError(f"{source} not found (pseudo.published); the download holds: "
                              f"{', '.join(present) or 'nothing'}.")
        link_tree(source, out / layout.PSEUDO / f"{number:02d}-{name.replace('/', '__')}")
    readmes.write_readme(out / layout.PSEUDO, readmes.PSEUDO)
    return {"pseudo_files": len(files)}


def background(parts: list[Path], out: Path, scratch: Path) -> dict:
    """No-call soundscapes (a zip split over the 2023 parts) and ESC-50 clips, with a table."""
    nocall = _unzip_parts(parts, scratch / "soundscapes_nocall")
    esc50 = [folder for part in parts for folder in [part / "esc50"] if folder.is_dir()]
    if not esc50:
        raise LayoutError(f"no esc50/ folder in {', '.join(map(str, parts))}; {_fetch_again(parts)}")
    # The 2023 part2 nests the ESC-50 clips as esc50/esc50/audio/*.wav: search the whole tree.
    sources = (("nocall", nocall, lambda name: "nocall"), ("esc50", esc50[0], _esc50_categories(esc50[0])))
    rows, found = [], {}
    for source, root, category_of in sources:
        clips = list(audio_files(root))
        if not clips:
            stale = [*parts, nocall] if source == "nocall" else parts  # the joined zip is cached too
            raise LayoutError(f"{root} holds no {source} audio; {_fetch_again(stale)}")
        for path in clips:
            name = f"{source}/{path.name}"
            if name in found:
                if filecmp.cmp(found[name], path, shallow=False):
                    continue  # one clip published twice
                raise LayoutError(f"{found[name]} and {path} differ but would both be "
                                  f"{layout.BACKGROUND_AUDIO}/{name}; delete one of them and run the stage again.")
            found[name] = path
            link_tree(path, out / layout.BACKGROUND_AUDIO / name)
            rows.append((name, source, category_of(path.name)))
    table = pd.DataFrame(rows, columns=list(layout.BACKGROUND_COLUMNS))
    table.to_csv(out / layout.BACKGROUND_CSV, index=False)
    return {"nocall_clips": int((table["source"] == "nocall").sum()),
            "esc50_clips": int((table["source"] == "esc50").sum())}


def _unzip_parts(parts: list[Path], target: Path) -> Path:
    """Join ``soundscapes_nocall.zip.part-*`` (name order, across the parts) and unzip once."""
    marker = target / ".complete"
    if marker.is_file():
        return target
    pieces = sorted((path for part in parts for path in part.glob(f"{NOCALL_ARCHIVE}.part-*")),
                    key=lambda path: path.name)
    if not pieces:
        raise LayoutError(f"no {NOCALL_ARCHIVE}.part-* in {', '.join(map(str, parts))}; {_fetch_again(parts)}")
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    joined = target.with_name(NOCALL_ARCHIVE)
    try:
        with open(joined, "wb") as handle:
            for piece in pieces:
                with open(piece, "rb") as source:
                    shutil.copyfileobj(source, handle, 1 << 24)
        with zipfile.ZipFile(joined) as archive:
            archive.extractall(target)
    except (zipfile.BadZipFile, zlib.error, EOFError):
        raise LayoutError(f"{joined}: joining {', '.join(piece.name for piece in pieces)} did not give a "
                          f"valid zip (a part is missing or damaged); {_fetch_again(parts)}") from None
    except OSError as error:  # a full disk; no marker, so the next run joins and unzips again
        raise DownloadError(f"{joined}: joining or unzipping the no-call parts failed ({error}); free disk "
                            "space and run the stage again.") from None
    finally:
        joined.unlink(missing_ok=True)
    marker.touch()
    return target


def _fetch_again(folders: list[Path]) -> str:
    """Drop the downloads' ``.complete`` markers: advice to download again would repeat forever."""
    for folder in folders:
        (folder / ".complete").unlink(missing_ok=True)
    return (f"removed the .complete marker of {', '.join(map(str, folders))}: run the stage again to "
            "fetch them anew.")


def _esc50_categories(folder: Path):
    """File name -> ESC-50 category: from a meta CSV with filename and category, else the name."""
    for path in sorted(folder.rglob("*.csv")):
        meta = _read_csv(path, folder.parent)
        if {"filename", "category"} <= set(meta.columns):
            mapping = dict(zip(meta["filename"], meta["category"]))
            return lambda name: mapping.get(name, _esc50_from_name(name))
    return _esc50_from_name


def _esc50_from_name(name: str) -> str:
    match = re.fullmatch(r"\d+-\w+-[A-Z]-(\d+)\.\w+", name)
    if match is None or int(match.group(1)) >= len(ESC50_CLASSES):
        return "unknown"
    return ESC50_CLASSES[int(match.group(1))]


def pretrain_metadata(folder: Path, out: Path) -> dict:
    """The pretraining corpus tables, for reference: their audio (~1 TB) is not published."""
    tables = sorted(folder.rglob("*.csv"))
    for path in tables:
        link_tree(path, out / "pretrain" / "metadata" / path.relative_to(folder))
    return {"pretrain_metadata_files": len(tables)}


def audio_files(folder: Path):
    return (path for path in sorted(folder.rglob("*")) if path.suffix.lower() in layout.AUDIO_SUFFIXES)


def link_tree(source: Path, target: Path) -> None:
    """Hard-link a file or a folder's files into place; copy where links cannot cross devices."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, target, copy_function=_link_file)
    else:
        _link_file(source, target)


def _link_file(source, target) -> None:
    try:
        os.link(source, target)
    except FileExistsError:  # never overwrite: a copy would silently replace the file
        raise
    except OSError:  # across devices, or a file system without hard links
        shutil.copy2(source, target)
