"""A stand-in for the `kaggle` client at the network edge: it serves local zip archives.

Tests put this folder first on PYTHONPATH. ``FAKE_KAGGLE_ARCHIVES`` names a folder holding
``<competition>.zip`` and ``<owner>__<dataset>.zip``; everything behind the client (credential
checks, unpacking, layout) is the real code. ``FAKE_KAGGLE_OFFLINE`` makes it fail as with no network.
"""

import os
import shutil
from pathlib import Path

calls = []


class _Api:
    def authenticate(self):
        if os.environ.get("FAKE_KAGGLE_OFFLINE"):  # what the real client raises with no network
            import requests

            raise requests.exceptions.ConnectionError("Failed to resolve the Kaggle API host")
        return None

    def _serve(self, archive_name, path):
        source = Path(os.environ["FAKE_KAGGLE_ARCHIVES"]) / archive_name
        if not source.is_file():
            raise RuntimeError(f"404 Client Error: Not Found for {archive_name}")
        Path(path).mkdir(parents=True, exist_ok=True)
        shutil.copy(source, Path(path) / source.name.split("__")[-1])
        with open(Path(os.environ["FAKE_KAGGLE_ARCHIVES"]) / "calls.log", "a") as log:
            log.write(archive_name + "\n")

    def competition_download_files(self, competition, path=None, force=False, quiet=True, unzip=False):
        self._serve(f"{competition}.zip", path)

    def dataset_download_files(self, dataset, path=None, force=False, quiet=True, unzip=False, licenses=[]):
        self._serve(dataset.replace("/", "__") + ".zip", path)


api = _Api()
