"""How stages write their files: whole or not at all, and scores at float32 precision."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

# Nine significant digits read every float32 score back exactly. Fixed decimals would not:
# TopN rescaling multiplies a window's score by its class's maximum in the soundscape, so
# faint classes score 1e-7 and below, and "%.6f" wrote them all as 0.000000, ties that
# ROC-AUC cannot rank.
SCORE_FORMAT = "%.9g"


def write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write`` on a temporary sibling of ``path``, then rename it over ``path``: a
    failed or killed run leaves the old file or none, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def write_json(path: Path, data: dict) -> None:
    write_atomically(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n"))


def write_scores(frame, path: Path) -> None:
    """A table of scores (pandas), as CSV, at ``SCORE_FORMAT``."""
    write_atomically(path, lambda tmp: frame.to_csv(tmp, index=False, float_format=SCORE_FORMAT))
