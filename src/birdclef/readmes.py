"""The READMEs of ``data/raw`` folders that may hold no data file.

Later stages read these folders even when they are empty, and DVC keeps no empty folder (it
tracks files): a README keeps each one, and tells a user what belongs there.
"""

from __future__ import annotations

from pathlib import Path

README = "README.md"
PSEUDO = ("Published pseudo-label CSVs (row_id, one column per class), in priority order by file\n"
          "name. Round 0 trains with them; the sample has none.\n")
TEST_SOUNDSCAPES = (
    "Kaggle hides the test soundscapes until a notebook is submitted, so the download holds none\n"
    "and `dvc repro` writes a submission with the template's rows. This folder is a DVC output:\n"
    "to run the ensemble on soundscapes of your own, give their folder to\n"
    "`birdclef infer --soundscapes <folder>` or `birdclef predict <folder>`.\n")


def write_readme(folder: Path, text: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / README).write_text(text)
