"""The download stage: fill ``data/raw`` in the competition layout (see ``layout``).

``data.source: sample`` generates the embedded dataset offline. ``birdclef2025`` fetches the
competition and the authors' Kaggle datasets with the official ``kaggle`` client, the only
network access of the whole pipeline. Each download is unpacked in ``data/downloads/`` once
(a ``.complete`` marker lists its archives' SHA-256), so a re-run fetches only what is
missing; ``data/raw`` is assembled in a temporary folder (``unpack``) and renamed.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import zipfile
import zlib
from pathlib import Path

from birdclef import layout
from birdclef.outputs import check_replaceable, folder_written_atomically
from birdclef.params import Params
from birdclef.progress import progress_bar

COMPETITION = "birdclef-2025"
# The authors' datasets named in the seed README (what each holds: ``unpack``).
ADD_DATA = "vladimirsydor/bird-clef-2025-add-data"
BACKBONES = "vladimirsydor/bird-clef-2025-all-pretrained-models"
PSEUDO = "vladimirsydor/bird-clef-2025-pseudo"
PARTS_2023 = ("vladimirsydor/birdclef-2023-data-part2", "vladimirsydor/birdclef-2023-data-part3")
PRETRAIN_METADATA = "vladimirsydor/bird-clef-2025-pretrained-metadata"
DATASETS = (ADD_DATA, BACKBONES, PSEUDO, *PARTS_2023, PRETRAIN_METADATA)
DOWNLOADS = Path("data/downloads")


class DownloadError(RuntimeError):
    """Missing credentials, a refused dataset or an archive in an unexpected layout."""


def download(out: Path, params: Params) -> str:
    """Write ``out`` for ``params.data.source``; return a one-line summary."""
    out = check_replaceable(out, layout.TAXONOMY_CSV)  # before a long Kaggle download
    if params.data.source == "sample":
        from birdclef.sample import generate

        summary = generate(out, params.data.sample, params.audio.sample_rate)
        return ", ".join(f"{value} {name}" for name, value in summary.items())
    return download_birdclef2025(out, DOWNLOADS, params.pseudo.published)


def kaggle_credentials_found() -> bool:
    """Whether the kaggle client (2.x, ``KaggleApi.authenticate``) will find credentials.

    It looks in this order, and only here: a file anywhere else must not pass, or the stage
    would fail later with the client's own message.
    """
    dot_kaggle = Path.home() / ".kaggle"
    notebook = None not in (os.environ.get("KAGGLE_KERNEL_RUN_TYPE"), os.environ.get("KAGGLE_DATA_PROXY_URL"))
    if notebook and _holds_text(os.environ.get("KAGGLE_API_V1_TOKEN")):
        return True
    token = os.environ.get("KAGGLE_API_TOKEN")  # the token itself, or the path of a file holding it
    if token:
        if not Path(token).exists() or _holds_text(token):
            return True
    elif _holds_text(dot_kaggle / "access_token") or _holds_text(dot_kaggle / "access_token.txt"):
        return True
    # A legacy key: username and key from kaggle.json, each overridden by KAGGLE_USERNAME/KAGGLE_KEY.
    folder = os.environ.get("KAGGLE_CONFIG_DIR") or dot_kaggle
    if not os.environ.get("KAGGLE_CONFIG_DIR") and sys.platform.startswith("linux") and not dot_kaggle.exists():
        folder = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "kaggle"
    names = set(_json_object(Path(folder) / "kaggle.json"))
    names |= {name.removeprefix("KAGGLE_").lower() for name in os.environ if name.startswith("KAGGLE_")}
    if {"username", "key"} <= names:
        return True
    return bool(_json_object(dot_kaggle / "credentials.json").get("refresh_token"))  # `kaggle auth login`


def _holds_text(path) -> bool:
    return bool(path) and Path(path).is_file() and bool(Path(path).read_text().strip())


def _json_object(path: Path) -> dict:
    """The client ignores a file it cannot parse."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _kaggle_api():
    if not kaggle_credentials_found():
        raise DownloadError(
            "Kaggle credentials not found. Create a token at kaggle.com → Settings → API, then "
            "either `export KAGGLE_API_TOKEN=...` or save it in ~/.kaggle/access_token (a legacy key: "
            "`export KAGGLE_USERNAME=... KAGGLE_KEY=...` or kaggle.json in ~/.kaggle, chmod 600). "
            "Also accept the birdclef-2025 competition rules on its Kaggle page. "
            "To run offline instead, set `data.source: sample`."
        )
    import kaggle  # tries to authenticate on import, and keeps quiet if that fails

    try:
        kaggle.api.authenticate()  # an access token is checked online
    except SystemExit:
        raise DownloadError("Kaggle rejected the credentials; create a new API token.") from None
    except OSError as error:  # requests' connection and HTTP errors are OSErrors
        raise DownloadError(f"could not check the credentials with Kaggle ({error}); check the network "
                            "connection and the token, then run the stage again.") from None
    return kaggle.api


def download_birdclef2025(out: Path, downloads: Path, pseudo_files: list[str]) -> str:
    """Fetch the competition and the authors' datasets, then lay out ``out`` (see ``unpack``)."""
    from birdclef import unpack
    from birdclef.tables import TableError, read_taxonomy

    folders = {reference: downloads / reference.split("/")[-1] for reference in (COMPETITION, *DATASETS)}
    # Credentials (an access token is checked online) only when something is left to fetch:
    # a re-run over complete downloads works offline.
    api = None if all((folder / ".complete").is_file() for folder in folders.values()) else _kaggle_api()
    downloads.mkdir(parents=True, exist_ok=True)
    _fetch(folders[COMPETITION], lambda folder: api.competition_download_files(
        COMPETITION, path=str(folder), quiet=False))
    for reference in DATASETS:
        _fetch(folders[reference], lambda folder, ref=reference:
               api.dataset_download_files(ref, path=str(folder), quiet=False, unzip=False))
    try:
        with folder_written_atomically(out, layout.TAXONOMY_CSV) as tmp:
            summary = unpack.competition(folders[COMPETITION], tmp)
            vocabulary = set(read_taxonomy(tmp / layout.TAXONOMY_CSV))
            summary.update(unpack.extra_audio(folders[ADD_DATA], tmp, vocabulary))
            summary.update(unpack.published_backbones(folders[BACKBONES], tmp))
            summary.update(unpack.published_pseudo(folders[PSEUDO], tmp, pseudo_files))
            summary.update(unpack.background([folders[part] for part in PARTS_2023], tmp, downloads))
            summary.update(unpack.pretrain_metadata(folders[PRETRAIN_METADATA], tmp))
    except (unpack.LayoutError, TableError) as error:
        raise DownloadError(str(error)) from None
    return ", ".join(f"{value} {name}" for name, value in summary.items())


def _fetch(folder: Path, fetch) -> Path:
    """Download and unpack into ``folder`` once; a ``.complete`` marker makes re-runs free."""
    marker = folder / ".complete"
    if marker.is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    try:
        fetch(folder)
    except Exception as error:  # the client raises its own HTTP error types
        raise DownloadError(f"{folder.name}: download failed ({error}). Check the network connection, "
                            "that you accepted the competition rules and that the dataset exists.") from None
    checksums = []
    for archive in sorted(folder.glob("*.zip")):
        checksums.append(f"{_sha256(archive)}  {archive.stat().st_size}  {archive.name}\n")
        try:
            with zipfile.ZipFile(archive) as handle:
                members = handle.infolist()
                with progress_bar(f"unpack {archive.name}", len(members)) as advance:
                    for member in members:
                        handle.extract(member, folder)
                        advance(1)
        except (zipfile.BadZipFile, zlib.error, EOFError):  # bad directory, bad deflate data, cut short
            archive.unlink()
            raise DownloadError(f"{archive}: damaged download; run the stage again to fetch it anew.") from None
        except OSError as error:  # a full disk: no marker is written, so the next run starts over
            raise DownloadError(f"{archive}: unpacking failed ({error}); free disk space and run the "
                                "stage again.") from None
        archive.unlink()
    marker.write_text("".join(checksums))  # sha256, bytes, name of each archive as fetched
    return folder


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()
