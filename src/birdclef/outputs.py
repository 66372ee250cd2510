"""How stages write their files: whole or not at all, and scores at float32 precision."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from functools import partial
from pathlib import Path

# Nine significant digits read every float32 score back exactly. Fixed decimals would not:
# TopN rescaling multiplies a window's score by its class's maximum in the soundscape, so
# faint classes score 1e-7 and below, and "%.6f" wrote them all as 0.000000, ties that
# ROC-AUC cannot rank.
SCORE_FORMAT = "%.9g"


class OutputError(ValueError):
    """An output path that a stage must not replace (a file, or a folder it did not write)."""


def check_output_path(path: Path, folder: bool = False) -> Path:
    """``path``, if a file (or with ``folder``, a folder) can be written there: not the other
    kind already, no file where a parent folder must be, and a folder that takes new files.

    Commands call it on their output options before the work, so a wrong path costs nothing.
    """
    path = _check_kind(path, folder)
    nearest = next(parent for parent in ((path, *path.parents) if folder else path.parents) if parent.exists())
    try:  # a real file, not os.access: root passes access() where the file system still refuses
        tempfile.TemporaryFile(dir=nearest).close()
    except OSError as error:
        raise OutputError(f"{path}: cannot write in {nearest} ({error.strerror}); "
                          "name a path you can write to.") from None
    return path


def _check_kind(path: Path, folder: bool = False) -> Path:
    """``path``, if it is not the other kind already and no file stands where a parent folder must be."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        raise OutputError(f"{path} is a {'file' if folder else 'folder'}; name a {'folder' if folder else 'file'}.")
    blocking = next((parent for parent in path.parents if parent.exists() and not parent.is_dir()), None)
    if blocking is not None:
        raise OutputError(f"{path}: {blocking} is a file, so no folder can hold {path.name}; name another path.")
    return path


def write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write`` on a temporary sibling of ``path``, then rename it over ``path``: a
    failed or killed run leaves the old file or none, never half of one."""
    write_together({path: write})


def write_together(writes: dict[Path, Callable[[Path], object]]) -> None:
    """Call each ``write`` on a temporary sibling of its path, then rename them all in: a write
    that fails (a full disk, Ctrl-C) replaces none of the files, and the folders made for them
    go again; the renames need no space.

    An ``OSError`` that names no file (a full disk) is given the path being written. A folder
    that takes no new file fails at its first write: commands call ``check_output_path`` on
    their outputs before the work, and a stage's own files need not be probed twice."""
    paths = [_check_kind(path) for path in writes]
    started, made = [], []
    try:
        for path, write in zip(paths, writes.values()):
            made += reversed([folder for folder in (path.parent, *path.parent.parents) if not folder.exists()])
            path.parent.mkdir(parents=True, exist_ok=True)
            started.append(path.with_name(path.name + ".tmp"))
            try:
                write(started[-1])
            except OSError as error:  # name the user's path, not the temporary one
                if error.filename in (None, str(started[-1])):
                    error.filename = str(path)
                raise
        for path, tmp in zip(paths, started):
            os.replace(tmp, path)
    except BaseException:
        for tmp in started:
            with suppress(OSError):  # e.g. a folder in its place: the error to show is the first one
                tmp.unlink(missing_ok=True)
        for folder in reversed(made):  # deepest first; one that something else wrote into stays
            with suppress(OSError):
                folder.rmdir()
        raise


def check_replaceable(out: Path, marker: str | re.Pattern, shown_as: str | None = None) -> Path:
    """``out`` as an absolute path, if writing it loses nothing but an earlier output.

    Stage outputs are replaced whole, so ``--out`` must be new, empty, or hold ``marker``: a
    glob every earlier output of the stage matches, or a pattern that the name of a file in it
    matches whole (shown as ``shown_as`` in the error). Anything else (``--out data``,
    ``--out .``, a file) is refused before any work is done.
    """
    out = Path(out).absolute()
    if out.is_file():
        raise OutputError(f"{out} is a file; the output is a folder: name a new one.")
    if out.is_dir() and any(out.iterdir()) and not _holds(out, marker):
        raise OutputError(f"{out} holds files this command did not write (no {shown_as or marker}), and its "
                          "output replaces the folder whole: name a new or empty folder.")
    return out


def _holds(folder: Path, marker: str | re.Pattern) -> bool:
    if isinstance(marker, str):
        return any(folder.glob(marker))
    return any(marker.fullmatch(path.name) for path in folder.iterdir())


@contextmanager
def folder_written_atomically(out: Path, marker: str) -> Iterator[Path]:
    """Yield an empty folder beside ``out`` to fill; when the block ends it replaces ``out``
    (``check_replaceable(out, marker)`` first).

    The old ``out`` is renamed aside before the new one is renamed in, and removed last, so a
    failed or killed run leaves the old folder (or none), never a mix of old and new files.
    A run killed between the two renames leaves ``<out>.old``, which the next run puts back.
    """
    out = check_replaceable(out, marker)
    tmp = out.with_name(out.name + ".tmp")
    old = out.with_name(out.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    if old.exists():
        if out.exists():
            shutil.rmtree(old)
        else:
            old.rename(out)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if out.exists():
            out.rename(old)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not out.exists():
            old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def write_json(path: Path, data: dict) -> None:
    write_atomically(path, partial(json_to_file, data))


def json_to_file(data: dict, path: Path) -> None:
    """``write_json``'s file, written straight to ``path`` (for ``write_together``)."""
    path.write_text(json.dumps(data, indent=2) + "\n")


def write_scores(frame, path: Path) -> None:
    """A table of scores (pandas), as CSV, at ``SCORE_FORMAT``."""
    write_atomically(path, partial(scores_to_csv, frame))


def scores_to_csv(frame, path: Path) -> None:
    """``write_scores``'s CSV, written straight to ``path`` (for ``write_together``)."""
    frame.to_csv(path, index=False, float_format=SCORE_FORMAT)
