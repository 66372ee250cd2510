"""``birdclef``: one command per pipeline stage (dvc.yaml calls them) plus ``predict``.

Each command parses its options and calls one function of the module that owns the work.
Nothing heavy is imported at module level, so ``birdclef --help`` is instant; settings are
read from ``params.yaml`` (``--params``), paths come as options with the pipeline's defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="birdclef",
    help="Bird-sound classification pipeline (BirdCLEF+ 2025 2nd-place recipe). "
    "Run the whole pipeline with `dvc repro`; each stage is one command here.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ParamsOption = Annotated[Path, typer.Option("--params", help="The params file to read.")]


def _fail(error: Exception) -> typer.Exit:
    """Print a user error (no traceback) and exit with status 1."""
    typer.secho(f"error: {error}", err=True, fg=typer.colors.RED)
    return typer.Exit(1)


def _load(params_path: Path):
    from birdclef.params import ParamsError, load_params

    try:
        return load_params(params_path)
    except ParamsError as error:
        raise _fail(error) from None


@app.callback()
def main() -> None:
    """Bird-sound classification pipeline (BirdCLEF+ 2025 2nd-place recipe)."""


@app.command()
def download(
    out: Annotated[Path, typer.Option(help="Where to write the raw dataset.")] = Path("data/raw"),
    params_path: ParamsOption = Path("params.yaml"),
) -> None:
    """Write the raw dataset: the generated sample (`data.source: sample`, offline) or the
    Kaggle competition plus the authors' datasets (`data.source: birdclef2025`, needs
    Kaggle credentials)."""
    from birdclef.download import DownloadError, download as run

    params = _load(params_path)
    try:
        summary = run(out, params)
    except DownloadError as error:
        raise _fail(error) from None
    typer.echo(f"download: {summary}")


@app.command()
def precompute(
    raw: Annotated[Path, typer.Option(help="The raw dataset (download's output).")] = Path("data/raw"),
    external: Annotated[Path, typer.Option(help="User-added recordings (tracked by data.dvc).")] = Path(
        "data/external"),
    out: Annotated[Path, typer.Option(help="The HDF5 store to write.")] = Path("data/store"),
    params_path: ParamsOption = Path("params.yaml"),
) -> None:
    """Decode every recording and soundscape to mono 32 kHz and write the HDF5 store.

    Resumable: finished shards whose inputs did not change are kept."""
    from birdclef.audio import AudioError
    from birdclef.precompute import PrecomputeError, precompute as run
    from birdclef.tables import TableError

    params = _load(params_path)
    try:
        summary = run(raw, external, out, params)
    except (PrecomputeError, TableError, AudioError) as error:
        raise _fail(error) from None
    typer.echo(
        f"precompute: {summary.recordings} recordings, {summary.seconds / 3600:.2f} h of audio, "
        f"{summary.shards_written} shard(s) written, {summary.shards_reused} reused, "
        f"{len(summary.skipped)} skipped"
    )
