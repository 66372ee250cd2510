"""``birdclef``: one command per pipeline stage (dvc.yaml calls them) plus ``predict``.

Each command parses its options and calls one function of the module that owns the work.
Nothing heavy is imported at module level, so ``birdclef --help`` is instant, and a command
imports the module that does its work only after checking its options and paths, so a slip
is named in a fraction of a second rather than after torch and Lightning load. Settings are
read from ``params.yaml`` (``--params``), paths come as options with the pipeline's defaults.
"""

from __future__ import annotations

import inspect
import json
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(
    name="birdclef",
    help="Bird-sound classification pipeline (BirdCLEF+ 2025 2nd-place recipe). "
    "Run the whole pipeline with `dvc repro`; each stage is one command here.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def command(function):
    """Register ``function`` as a command. Its docstring's first paragraph, on one line, is
    its entry in ``birdclef --help`` (typer keeps the source's line breaks there)."""
    summary = " ".join(inspect.cleandoc(function.__doc__).split("\n\n")[0].split())
    return app.command(short_help=summary)(function)


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


def _version(value: bool) -> None:
    if value:
        from birdclef import __version__

        typer.echo(f"birdclef {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Bird-sound classification pipeline (BirdCLEF+ 2025 2nd-place recipe)."""
    import signal
    import sys

    # `kill` and `timeout` send SIGTERM, which ends Python without unwinding: an output being
    # written would leave its temporary sibling behind. As SystemExit it unwinds like Ctrl-C.
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(128 + number))
    warnings.showwarning = _show_warning


def _show_warning(message, category, filename, lineno, file=None, line=None, shown=warnings.showwarning):
    """This package's warnings are messages to the user: one line, without the source line that
    Python prints; other packages' keep their file and line, which is what a report needs."""
    if Path(filename).resolve().is_relative_to(Path(__file__).resolve().parent):
        typer.secho(f"warning: {message}", err=True, fg=typer.colors.YELLOW)
    else:
        shown(message, category, filename, lineno, file, line)


@command
def download(
    out: Annotated[Path, typer.Option(help="Where to write the raw dataset (a folder it replaces whole: new, "
                                            "empty, or an earlier download).")] = Path("data/raw"),
    params_path: ParamsOption = Path("params.yaml"),
) -> None:
    """Write the raw dataset: the generated sample (`data.source: sample`, offline) or the
    Kaggle competition plus the authors' datasets (`data.source: birdclef2025`, needs
    Kaggle credentials)."""
    params = _load(params_path)
    _check_outputs(folders={"--out": out})
    from birdclef.download import DownloadError, download as run
    from birdclef.outputs import OutputError
    from birdclef.sample import SampleError

    try:
        summary = run(out, params)
    except (DownloadError, OutputError) as error:
        raise _fail(error) from None
    except SampleError as error:
        raise _fail(ValueError(f"{params_path}: {error}")) from None
    typer.echo(f"download: {summary}")


@command
def precompute(
    raw: Annotated[Path, typer.Option(help="The raw dataset (download's output).")] = Path("data/raw"),
    external: Annotated[Path, typer.Option(help="User-added recordings (tracked by data.dvc).")] = Path(
        "data/external"),
    out: Annotated[Path, typer.Option(help="The HDF5 store to write.")] = Path("data/store"),
    params_path: ParamsOption = Path("params.yaml"),
) -> None:
    """Decode every recording and soundscape to mono at audio.sample_rate and write the HDF5 store.

    Resumable: finished shards are kept while their files, settings and decoder (code and
    library versions) are unchanged."""
    params = _load(params_path)
    _check_external(external)
    _check_outputs(folders={"--out": out})
    from birdclef.audio import AudioError
    from birdclef.outputs import OutputError
    from birdclef.precompute import PrecomputeError, precompute as run
    from birdclef.tables import TableError

    try:
        summary = run(raw, external, out, params)
    except (PrecomputeError, TableError, AudioError, OutputError) as error:
        raise _fail(error) from None
    typer.echo(
        f"precompute: {summary.recordings} recordings, {summary.seconds / 3600:.2f} h of audio, "
        f"{summary.shards_written} shard(s) written, {summary.shards_reused} reused, "
        f"{len(summary.skipped)} skipped"
    )


@command
def prepare(
    raw: Annotated[Path, typer.Option(help="The raw dataset.")] = Path("data/raw"),
    external: Annotated[Path, typer.Option(help="User-added recordings.")] = Path("data/external"),
    store: Annotated[Path, typer.Option(help="The HDF5 store (durations).")] = Path("data/store"),
    out: Annotated[Path, typer.Option(help="Where to write the tables.")] = Path("data/tables"),
    params_path: ParamsOption = Path("params.yaml"),
) -> None:
    """Build the training table, the class list, both split variants (prepare.n_folds folds) and the
    per-class oversampling rows."""
    params = _load(params_path)
    _check_external(external)
    _check_outputs(folders={"--out": out})
    from birdclef.outputs import OutputError
    from birdclef.prepare import PrepareError, prepare as run
    from birdclef.store import StoreError
    from birdclef.tables import TableError

    try:
        summary = run(raw, external, store, out, params)
    except (PrepareError, TableError, StoreError, OutputError) as error:
        raise _fail(error) from None
    typer.echo(f"prepare: {summary}")


def _check_external(external: Path) -> None:
    """A mistyped --external would otherwise leave the user's recordings out without a word."""
    _check_folder(external, "--external", "your recordings; `dvc pull data.dvc` fetches the default, "
                  "or create an empty folder")


@command
def pretrain(
    family: Annotated[str, typer.Option(help="The model family (a key of `family` in params).")],
    raw: Annotated[Path, typer.Option(help="The raw dataset (pretrain/ corpus, pretrained/ backbones).")] = Path(
        "data/raw"),
    store: Annotated[Path, typer.Option(help="The HDF5 store.")] = Path("data/store"),
    out: Annotated[Optional[Path], typer.Option(help="Backbone weights to write "
                                                "(default: models/pretrained/<family>.pt).")] = None,
    logs: Annotated[Optional[Path], typer.Option(help="DVCLive folder "
                                                 "(default: metrics/pretrain/<family>).")] = None,
    params_path: ParamsOption = Path("params.yaml"),
) -> None:
    """The backbone weights a family starts from (pretrain.source: corpus pretraining, the
    authors' published backbones, or none), saved as a backbone-only state dict."""
    params = _load(params_path)
    _check_family(params, family, params_path)
    _check_folder(raw, "--raw", "the download stage's output")
    out = out or Path("models/pretrained") / f"{family}.pt"
    logs = logs or Path("metrics/pretrain") / family
    _check_outputs(files={"--out": out}, folders={"--logs": logs})
    from birdclef.outputs import OutputError
    from birdclef.pretrain import prepare_backbone
    from birdclef.store import StoreError
    from birdclef.train import TrainError

    try:
        summary = prepare_backbone(params, family, raw, store, out, logs)
    except (TrainError, StoreError, OutputError) as error:
        raise _fail(error) from None
    typer.echo(f"pretrain: {summary}")


@command
def train(
    family: Annotated[str, typer.Option(help="The model family (a key of `family` in params).")],
    fold: Annotated[int, typer.Option(help="The validation fold.")],
    round: Annotated[str, typer.Option(help="The self-training round (a name in `rounds`).")] = "round0",
    store: Annotated[Path, typer.Option(help="The HDF5 store.")] = Path("data/store"),
    tables: Annotated[Path, typer.Option(help="The prepare stage's tables.")] = Path("data/tables"),
    raw: Annotated[Path, typer.Option(help="The raw dataset (background clips).")] = Path("data/raw"),
    pretrained: Annotated[Optional[Path], typer.Option(
        help="Backbone weights to start from (default: models/pretrained/<family>.pt if it exists, else "
             "random weights; a file named here must exist).")] = None,
    out: Annotated[Optional[Path], typer.Option(
        help="The run's model folder, replaced whole (default: models/<round>/<family>/fold<fold>).")] = None,
    logs: Annotated[Optional[Path], typer.Option(
        help="The run's DVCLive folder (default: metrics/train/<round>/<family>/fold<fold>).")] = None,
    params_path: ParamsOption = Path("params.yaml"),
) -> None:
    """Train one fold of one family in one self-training round (best epoch by validation
    ROC-AUC)."""
    params = _load(params_path)
    _check_family(params, family, params_path)
    pseudo = _round_pseudo(params, round, params_path)
    if fold not in range(params.prepare.n_folds):
        raise _fail(ValueError(f"fold {fold} does not exist; prepare.n_folds is {params.prepare.n_folds} "
                               f"(folds 0..{params.prepare.n_folds - 1})"))
    _check_folder(raw, "--raw", "the download stage's output")
    _check_folder(tables, "--tables", "the prepare stage's output")
    _check_teacher_labels(round, pseudo)
    if pretrained is not None and not pretrained.is_file():
        raise _fail(FileNotFoundError(f"--pretrained {pretrained}: no such file; leave it out to start from "
                                      "models/pretrained/<family>.pt or random weights"))
    run_name = Path(round) / family / f"fold{fold}"
    out = out or Path("models") / run_name
    logs = logs or Path("metrics/train") / run_name
    _check_outputs(folders={"--out": out, "--logs": logs})
    from birdclef.outputs import OutputError
    from birdclef.pseudo import PseudoError
    from birdclef.store import StoreError
    from birdclef.tables import TableError
    from birdclef.train import RunPaths, TrainError, train_fold

    paths = RunPaths(store=store, tables=tables, raw=raw, pseudo=pseudo if pseudo.is_dir() else None,
                     pretrained=pretrained or Path("models/pretrained") / f"{family}.pt", out=out, logs=logs)
    try:
        meta = train_fold(params, family, fold, paths)
    except (TrainError, PseudoError, StoreError, OutputError, TableError) as error:
        raise _fail(error) from None
    if meta:
        typer.echo(f"train {run_name}: validation ROC-AUC {meta['val_auc']:.4f} "
                   f"(epoch {meta['best_epoch']}), {meta['pseudo_chunks']} pseudo chunks")


def _round_pseudo(params, round: str, params_path: Path) -> Path:
    """The pseudo-label folder ``round`` trains with (its ``rounds`` entry)."""
    pseudo_of = {item.name: item.pseudo for item in params.rounds}
    if round not in pseudo_of:
        raise _fail(ValueError(f"unknown round {round!r}; {params_path} has {', '.join(pseudo_of)}"))
    return Path(pseudo_of[round])


def _check_teacher_labels(round: str, pseudo: Path) -> None:
    """A teacher round's labels (``data/pseudo/<teacher>``, the round's ``pseudo`` folder) must
    exist, or ``round`` would quietly go without them; the published ones may be absent (none)."""
    from birdclef.params import PSEUDO_ROOT

    if pseudo.parent == Path(PSEUDO_ROOT):
        _check_folder(pseudo, f"{round}'s pseudo labels", f"`dvc repro pseudo@{pseudo.name}` writes them")


def _check_folder(folder: Path, name: str, what: str) -> None:
    """A folder a command reads must exist: a wrong path would otherwise silently train
    without background mixing or pseudo labels."""
    if not folder.is_dir():
        raise _fail(FileNotFoundError(f"{name} {folder}: no such folder ({what})"))


def _check_file(path: Path, name: str, what: str) -> None:
    if not path.is_file():
        raise _fail(FileNotFoundError(f"{name} {path}: no such file ({what})"))


def _check_outputs(files: dict[str, Path] | None = None, folders: dict[str, Path] | None = None) -> None:
    """Refuse an output path that cannot be written (option -> path) before the work, not after it."""
    from birdclef.outputs import OutputError, check_output_path

    for options, folder in ((files or {}, False), (folders or {}, True)):
        for option, path in options.items():
            try:
                check_output_path(path, folder)
            except OutputError as error:
                raise _fail(OutputError(f"{option} {error}")) from None


def _check_family(params, family: str, params_path: Path) -> None:
    if family not in params.family:
        raise _fail(ValueError(f"unknown family {family!r}; {params_path} has {', '.join(params.family)}"))


@command
def pseudo(
    round: Annotated[str, typer.Option(help="The round whose ensemble labels the soundscapes.")] = "round0",
    inherit: Annotated[Optional[Path], typer.Option(
        help="Pseudo files this round trained with; they keep priority (default: the round's `rounds` entry).")] = None,
    models: Annotated[Path, typer.Option(help="The trained models, one folder per round.")] = Path("models"),
    store: Annotated[Path, typer.Option(help="The HDF5 store.")] = Path("data/store"),
    out: Annotated[Optional[Path], typer.Option(
        help="Output folder, replaced whole (default: data/pseudo/<round>).")] = None,
    params_path: ParamsOption = Path("params.yaml"),
) -> None:
    """Pseudo-label every unlabelled soundscape (12 windows of 5 s) with a round's ensemble."""
    from birdclef.params import PSEUDO_ROOT

    params = _load(params_path)
    trained_with = _round_pseudo(params, round, params_path)
    if inherit is None:
        _check_teacher_labels(round, trained_with)
    else:
        _check_folder(inherit, "--inherit", "the pseudo labels the round trained with")
    out = out or Path(PSEUDO_ROOT) / round
    _check_outputs(folders={"--out": out})
    from birdclef.export import ExportError
    from birdclef.outputs import OutputError
    from birdclef.pseudo import PseudoError, pseudo_label_round
    from birdclef.store import StoreError

    try:
        summary = pseudo_label_round(params, round, models, inherit or trained_with, store, out)
    except (PseudoError, ExportError, StoreError, OutputError, FileNotFoundError) as error:
        raise _fail(error) from None
    typer.echo(f"pseudo {round}: {summary}")


@command
def export(
    family: Annotated[str, typer.Option(help="The model family to export.")],
    models: Annotated[Optional[Path], typer.Option(help="The models to export (default: models/<export.round>).")] = None,
    out: Annotated[Optional[Path], typer.Option(
        help="Output folder, replaced whole (default: models/export/<family>).")] = None,
    params_path: ParamsOption = Path("params.yaml"),
) -> None:
    """Export a family's folds as ONE graph (mel once, folds averaged, dynamic batch) to ONNX
    and an fp16 OpenVINO IR, with a parity check against PyTorch."""
    params = _load(params_path)
    _check_family(params, family, params_path)
    models = models or Path("models") / params.export.round
    out = out or Path("models/export") / family
    _check_outputs(folders={"--out": out})
    from birdclef.export import ExportError, export_family
    from birdclef.outputs import OutputError

    try:
        summary = export_family(models, family, params.folds, out, params.audio.window_samples)
    except (ExportError, OutputError) as error:
        raise _fail(error) from None
    typer.echo(f"export {family}: parity {summary['parity']}")


@command
def infer(
    exports: Annotated[Path, typer.Option(help="The exported families.")] = Path("models/export"),
    soundscapes: Annotated[Path, typer.Option(help="Soundscapes to submit for.")] = Path("data/raw/test_soundscapes"),
    sample_submission: Annotated[Path, typer.Option(help="Kaggle's template (column order).")] = Path(
        "data/raw/sample_submission.csv"),
    out: Annotated[Path, typer.Option(help="The submission to write.")] = Path("submission.csv"),
    metrics: Annotated[Path, typer.Option(help="Throughput metrics to write.")] = Path("metrics/infer.json"),
    params_path: ParamsOption = Path("params.yaml"),
) -> None:
    """Write submission.csv: the OpenVINO ensemble on every test soundscape, TopN rescaled."""
    params = _load(params_path)
    _check_folder(soundscapes, "--soundscapes", "the soundscapes to submit for; the download stage writes "
                  "data/raw/test_soundscapes")
    _check_file(sample_submission, "--sample-submission", "Kaggle's template; the download stage writes it")
    _check_outputs(files={"--out": out, "--metrics": metrics})
    from birdclef.export import ExportError
    from birdclef.infer import InferError, infer as run
    from birdclef.outputs import OutputError
    from birdclef.tables import TableError

    try:
        summary = run(params, exports, soundscapes, sample_submission, out, metrics)
    except (InferError, ExportError, FileNotFoundError, TableError, OutputError) as error:
        raise _fail(error) from None
    if not summary["soundscapes"]:  # right on Kaggle, which hides its test audio; a slip anywhere else
        typer.secho(f"note: no soundscapes in {soundscapes}: {out} holds {sample_submission}'s rows as they are.",
                    err=True, fg=typer.colors.YELLOW)
    typer.echo(f"infer: {summary}")


@command
def evaluate(
    models: Annotated[Path, typer.Option(help="The trained models, one folder per round.")] = Path("models"),
    tables: Annotated[Path, typer.Option(help="The prepare stage's tables.")] = Path("data/tables"),
    store: Annotated[Path, typer.Option(help="The HDF5 store.")] = Path("data/store"),
    raw: Annotated[Path, typer.Option(help="The raw dataset (test soundscape labels).")] = Path("data/raw"),
    submission: Annotated[Path, typer.Option(help="The submission to score.")] = Path("submission.csv"),
    out: Annotated[Path, typer.Option(help="The metrics file.")] = Path("metrics/evaluate.json"),
    plots: Annotated[Path, typer.Option(help="Plot data folder.")] = Path("metrics/plots"),
    params_path: ParamsOption = Path("params.yaml"),
) -> None:
    """CV and OOF ROC-AUC per round and family, soundscape ROC-AUC per round, per family and
    of the submission (where labels exist), per-class AUC for `dvc plots`."""
    params = _load(params_path)
    _check_folder(tables, "--tables", "the prepare stage's output")
    _check_folder(raw, "--raw", "the download stage's output")
    _check_file(submission, "--submission", "the infer stage writes it")
    _check_outputs(files={"--out": out}, folders={"--plots": plots})
    from birdclef.evaluate import evaluate as run
    from birdclef.export import ExportError
    from birdclef.outputs import OutputError
    from birdclef.pseudo import PseudoError
    from birdclef.store import StoreError
    from birdclef.tables import TableError

    try:
        metrics_summary = run(params, models, tables, store, raw, submission, out, plots)
    except (ExportError, PseudoError, StoreError, FileNotFoundError, OutputError, TableError) as error:
        raise _fail(error) from None
    typer.echo(json.dumps(metrics_summary, indent=2))


@command
def predict(
    inputs: Annotated[list[Path], typer.Argument(
        metavar="RECORDINGS",
        help="Audio files, or folders searched recursively for .ogg .wav .flac .mp3 (.opus: convert first).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="CSV of per-window scores.")] = Path("predictions.csv"),
    exports: Annotated[Path, typer.Option(help="The exported families.")] = Path("models/export"),
    raven: Annotated[Optional[Path], typer.Option(help="Also write Raven selection tables here.")] = None,
    threshold: Annotated[float, typer.Option(min=0, max=1, help="Raven tables list scores at or above this.")] = 0.5,
    top_n: Annotated[int, typer.Option(min=0, help="TopN rescaling per file (0 = off: raw window scores; "
                                                     "the submission uses infer.top_n on 60-s soundscapes).")] = 0,
    threads: Annotated[int, typer.Option(min=0, help="OpenVINO threads (0 = all cores).")] = 0,
    params_path: ParamsOption = Path("params.yaml"),
) -> None:
    """Score your own recordings, per 5-s window, with the exported ensemble (any sample rate,
    any length, resampled and downmixed). Unreadable files are skipped and listed with the reason."""
    params = _load(params_path)
    _check_outputs(files={"--out": out}, folders={"--raven": raven} if raven else None)
    from birdclef.export import ExportError
    from birdclef.infer import InferError, load_ensemble, predict as run
    from birdclef.outputs import OutputError

    try:
        ensemble = load_ensemble(exports, params.families, params.infer.family_weights, threads or None,
                                 params.infer.precision, audio=params.audio)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            summary = run(inputs, ensemble, out, params.audio.window_seconds, params.audio.sample_rate,
                          top_n, raven, threshold)
    except (InferError, ExportError, FileNotFoundError, OutputError) as error:
        raise _fail(error) from None
    for label, kind in (("skipped", "skipped"), ("note", "notes")):
        for reason in summary[kind].values():
            typer.secho(f"{label}: {reason}", err=True, fg=typer.colors.YELLOW)
    typer.echo(f"predict: {_count(summary['files'], 'file')}, {_count(summary['windows'], 'window')} -> {out}"
               + (f"; {len(summary['skipped'])} skipped" if summary["skipped"] else ""))


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"
