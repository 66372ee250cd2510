"""One progress bar style for every long stage (rich; quiet when there is nothing to do)."""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def progress_bar(label: str, total: int, enabled: bool = True):
    """``with progress_bar("precompute", n) as advance: ... advance(1)``."""
    if not enabled or total <= 0:
        yield lambda n=1: None
        return
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn()) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n=1: bar.advance(task, n)
