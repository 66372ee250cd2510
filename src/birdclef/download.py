"""The download stage: fill ``data/raw`` in the competition layout (see ``layout``).

``data.source: sample`` generates the embedded dataset offline. ``birdclef2025`` fetches the
competition and the authors' Kaggle datasets with the official ``kaggle`` client, the only
network access of the whole pipeline. Archives are kept in ``data/downloads/`` so a re-run
only fetches what is missing; ``data/raw`` is assembled in a temporary folder and renamed.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

from birdclef import layout
from birdclef.params import Params

COMPETITION = "birdclef-2025"
# The authors' datasets named in the seed README: extra audio of the 2025 species, the
# pretrained backbones, the pseudo labels and the 2023 parts holding no-call and ESC-50 audio.
DATASETS = (
    "vladimirsydor/bird-clef-2025-add-data",
    "vladimirsydor/bird-clef-2025-all-pretrained-models",
    "vladimirsydor/bird-clef-2025-pseudo",
    "vladimirsydor/birdclef-2023-data-part2",
    "vladimirsydor/birdclef-2023-data-part3",
)
DOWNLOADS = Path("data/downloads")
COMPETITION_FILES = (
    layout.TRAIN_CSV, layout.TAXONOMY_CSV, layout.SAMPLE_SUBMISSION_CSV,
    layout.TRAIN_AUDIO, layout.TRAIN_SOUNDSCAPES,
)


class DownloadError(RuntimeError):
    """Missing credentials, a refused dataset or an archive in an unexpected layout."""


def download(out: Path, params: Params) -> str:
    """Write ``out`` for ``params.data.source``; return a one-line summary."""
    out = Path(out)
    if params.data.source == "sample":
        from birdclef.sample import generate

        summary = generate(out, params.data.sample, params.audio.sample_rate)
        text = ", ".join(f"{value} {name}" for name, value in summary.items())
    else:
        text = download_birdclef2025(out, DOWNLOADS)
    _describe_pseudo_folder(out / layout.PSEUDO)
    return text


def _describe_pseudo_folder(folder: Path) -> None:
    """Round 0 trains with the published pseudo labels here: the folder always exists."""
    folder.mkdir(exist_ok=True)
    (folder / "README.md").write_text(
        "Published pseudo-label CSVs (row_id, one column per class), in priority order by file\n"
        "name. Round 0 trains with them; the sample has none.\n")


def kaggle_credentials_found() -> bool:
    """Whether the kaggle client will find credentials (it looks in these places)."""
    if os.environ.get("KAGGLE_API_TOKEN"):
        return True
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return True
    folder = Path(os.environ.get("KAGGLE_CONFIG_DIR") or Path.home() / ".kaggle")
    return (folder / "kaggle.json").is_file() or (folder / "access_token").is_file()


def _kaggle_api():
    if not kaggle_credentials_found():
        raise DownloadError(
            "Kaggle credentials not found. Create a token at kaggle.com → Settings → API, then "
            "either `export KAGGLE_USERNAME=... KAGGLE_KEY=...` or save kaggle.json in ~/.kaggle "
            "(chmod 600). Also accept the birdclef-2025 competition rules on its Kaggle page. "
            "To run offline instead, set `data.source: sample`."
        )
    import kaggle  # authenticates on import

    try:
        kaggle.api.authenticate()
    except SystemExit:
        raise DownloadError("Kaggle rejected the credentials; create a new API token.") from None
    return kaggle.api


def download_birdclef2025(out: Path, downloads: Path) -> str:
    """Fetch the competition and the authors' datasets, then lay out ``out``."""
    api = _kaggle_api()
    downloads.mkdir(parents=True, exist_ok=True)
    competition = _fetch(downloads / COMPETITION, lambda folder: api.competition_download_files(
        COMPETITION, path=str(folder), quiet=False))
    for reference in DATASETS:
        _fetch(downloads / reference.split("/")[1], lambda folder, ref=reference:
               api.dataset_download_files(ref, path=str(folder), quiet=False, unzip=False))
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in COMPETITION_FILES:
        source = competition / name
        if not source.exists():
            raise DownloadError(f"{competition}: the competition archive has no {name!r}; "
                                "delete the folder and download again.")
        _link_or_copy(source, tmp / name)
    # The test soundscapes are hidden until a notebook is submitted: the folder may be empty.
    (tmp / layout.TEST_SOUNDSCAPES).mkdir()
    if (competition / layout.TEST_SOUNDSCAPES).is_dir():
        for path in (competition / layout.TEST_SOUNDSCAPES).iterdir():
            _link_or_copy(path, tmp / layout.TEST_SOUNDSCAPES / path.name)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return f"competition and {len(DATASETS)} datasets in {downloads}, laid out in {out}"


def _fetch(folder: Path, fetch) -> Path:
    """Download and unpack into ``folder`` once; a ``.complete`` marker makes re-runs free."""
    marker = folder / ".complete"
    if marker.is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    try:
        fetch(folder)
    except Exception as error:  # the client raises its own HTTP error types
        raise DownloadError(f"{folder.name}: download failed ({error}). Check that you accepted "
                            "the competition rules and that the dataset exists.") from None
    for archive in sorted(folder.glob("*.zip")):
        with zipfile.ZipFile(archive) as handle:
            handle.extractall(folder)
        archive.unlink()
    marker.touch()
    return folder


def _link_or_copy(source: Path, target: Path) -> None:
    """Hard-link files into ``data/raw`` (no second copy of ~100 GB); copy across devices."""
    if source.is_dir():
        shutil.copytree(source, target, copy_function=_link_file)
    else:
        _link_file(source, target)


def _link_file(source, target) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
