"""Shared test helpers: real audio files and small raw datasets written by the tests."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

FORMATS = {  # suffix -> (soundfile format, subtype)
    ".wav": ("WAV", "PCM_16"),
    ".flac": ("FLAC", "PCM_16"),
    ".ogg": ("OGG", "VORBIS"),
    ".mp3": ("MP3", "MPEG_LAYER_III"),
}


def tone(frequency: float, seconds: float, rate: int, level: float = 0.5, channels: int = 1):
    """A pure tone (stereo: the same tone, the right channel slightly quieter)."""
    t = np.arange(int(round(seconds * rate))) / rate
    wave = (level * np.sin(2 * np.pi * frequency * t)).astype(np.float32)
    if channels == 1:
        return wave
    return np.stack([wave, 0.8 * wave], axis=1)


def write_audio(path: Path, wave: np.ndarray, rate: int) -> Path:
    import soundfile as sf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    file_format, subtype = FORMATS[path.suffix]
    sf.write(path, wave, rate, format=file_format, subtype=subtype)
    return path


def write_raw_dataset(root: Path, files_per_label: int = 2) -> Path:
    """A minimal data/raw: taxonomy, train.csv, focal recordings in every format, soundscapes."""
    import pandas as pd

    root.mkdir(parents=True, exist_ok=True)
    labels = ["amerob", "bkcchi", "41778"]
    pd.DataFrame({"primary_label": labels, "inat_taxon_id": ["1", "2", "41778"],
                  "scientific_name": labels, "common_name": labels,
                  "class_name": ["Aves", "Aves", "Amphibia"]}).to_csv(root / "taxonomy.csv", index=False)
    rows = []
    suffixes = list(FORMATS)
    for number in range(files_per_label * len(labels)):
        label = labels[number % len(labels)]
        suffix = suffixes[number % len(suffixes)]
        rate = (32000, 44100, 48000, 22050)[number % 4]
        name = f"{label}/XC{1000 + number}{suffix}"
        write_audio(root / "train_audio" / name,
                    tone(500 + 300 * number, 2.0 + number, rate, channels=1 + number % 2), rate)
        rows.append({"primary_label": label, "secondary_labels": "[]", "type": "['song']",
                     "filename": name, "collection": "XC", "rating": "4.0", "url": "",
                     "latitude": "0", "longitude": "0", "scientific_name": label,
                     "common_name": label, "author": f"author{number % 3}", "license": "cc"})
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
    for number in range(2):
        write_audio(root / "train_soundscapes" / f"H02_2023042{number}.ogg",
                    tone(2000 + 100 * number, 12.0, 32000, level=0.2), 32000)
    return root


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` as a module, so a test runs the benchmark's own code (and a
    benchmark cannot rot unnoticed when the code it measures changes)."""
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def run(args, cwd: Path, env: dict | None = None, check: bool = True, **options) -> subprocess.CompletedProcess:
    """Run a command (``options``: more of ``subprocess.run``'s), failing the test with its output
    when it fails."""
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, **options)
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(map(str, args))} exited {result.returncode}\n"
                    f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def python() -> str:
    return sys.executable


# -S overrides that shrink the sample and the training budget so the pipeline runs in minutes.
TINY = [
    "data.sample.species=3", "data.sample.min_recordings=8", "data.sample.max_recordings=12",
    "data.sample.max_recording_seconds=8", "data.sample.extra_recordings_per_species=1",
    "data.sample.train_soundscapes=2", "data.sample.test_soundscapes=2",
    "data.sample.background_clips=2", "data.sample.pretrain_extra_species=1",
    "data.sample.pretrain_recordings_per_species=3",
    "prepare.n_folds=2", "folds=[0,1]", "train.epochs=1", "train.validate_every=1", "pretrain.epochs=1",
    "train.num_workers=0",
]


def tool_env(**extra: str) -> dict:
    """The environment of the venv's command-line tools: its bin/ first on PATH, no DVC
    analytics, a git identity; `extra` adds or replaces variables."""
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "DVC_NO_ANALYTICS": "1",
            "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com",
            "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.com", **extra}


def dvc(args, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """The venv's `dvc` with `args` in `cwd` (env: tool_env() unless given)."""
    return run([str(Path(sys.executable).parent / "dvc"), *args], cwd, env or tool_env())


def compose_params(out: Path, overrides: list[str], project: Path = REPO) -> Path:
    """Write ``out``: ``project``'s conf/ composed with ``overrides`` the way `dvc exp run -S`
    composes params.yaml (DVC's own Hydra call)."""
    from dvc.utils.hydra import compose_and_dump

    compose_and_dump(out, str(project / "conf"), None, "config", str(project), overrides)
    return out


def project_copy(target: Path) -> Path:
    """The tracked project files in a new git repository: what a fresh clone has, with the
    working tree's edits. A new file that was never `git add`-ed is left out, as CI's clean
    checkout would lack it."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached"],
                           cwd=REPO, capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, files):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    run(["git", "init", "-q"], target)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A"], target)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "copy"], target)
    return target


def pytest_configure():
    """Under xdist, share the cores out between the workers: torch, and the DVC stages that the
    tests start, would each run one thread per core, and oversubscribed threads spin."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers:
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))


def pytest_collection_modifyitems(items):
    """The slow end-to-end tests first (stable, the rest keep their order): under xdist each
    starts at once on a worker of its own instead of ending the run alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture
def raw_dataset(tmp_path: Path) -> Path:
    return write_raw_dataset(tmp_path / "raw")


@pytest.fixture
def params():
    """The committed params.yaml (the sample composition), to adjust per test."""
    from birdclef.params import load_params

    return load_params(REPO / "params.yaml")


def tiny_params():
    """The committed params shrunk for training tests: 3 species, 2 folds, one short epoch."""
    from dataclasses import replace

    from birdclef.params import load_params

    params = load_params(REPO / "params.yaml")
    params.data.sample = replace(params.data.sample, species=3, min_recordings=8, max_recordings=10,
                                 max_recording_seconds=8.0, extra_recordings_per_species=1,
                                 train_soundscapes=1, test_soundscapes=1, soundscape_seconds=20,
                                 background_clips=1, pretrain_extra_species=1, pretrain_recordings_per_species=2)
    params.prepare.n_folds = 2
    params.folds = [0, 1]
    params.train.epochs = 1
    params.train.validate_every = 1
    params.pretrain.epochs = 1
    params.train.num_workers = 0
    params.train.batch_size = 4
    return params


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """(root, tiny_params()): the generated sample under root/raw, precomputed into
    root/store and prepared into root/tables, once per test module."""
    from birdclef.precompute import precompute
    from birdclef.prepare import prepare
    from birdclef.sample import generate

    root = tmp_path_factory.mktemp("work")
    params = tiny_params()
    generate(root / "raw", params.data.sample)
    precompute(root / "raw", root / "external", root / "store", params, progress=False)
    prepare(root / "raw", root / "external", root / "store", root / "tables", params)
    return root, params
