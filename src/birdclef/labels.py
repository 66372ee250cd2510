"""Training targets: species codes of a recording to a multi-hot vector, and label smoothing.

The recipe (seed spec §2.6) weights the primary and every secondary label 1, gives "nocall"
an all-zero target, and smooths labelled rows only; pseudo and validation targets stay as
they are. Numpy only, so the dataset workers need no torch import to build targets.
"""

from __future__ import annotations

import ast
import math

import numpy as np

NOCALL = "nocall"


def parse_label_list(text) -> list[str]:
    """Species codes of a ``secondary_labels`` cell such as ``"['a', 'b']"``.

    The CSV stores a Python list literal; an empty cell (``""``, None or NaN from pandas)
    means no secondary labels. ``ast.literal_eval`` parses literals only, never code.
    """
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return []
    if not isinstance(text, str):
        raise ValueError(f"secondary labels must be a list literal string, got {text!r}")
    if not text.strip():
        return []
    try:
        parsed = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError) as error:
        raise ValueError(f"secondary labels are not a list literal: {text!r}") from error
    if not isinstance(parsed, (list, tuple)) or not all(isinstance(code, str) for code in parsed):
        raise ValueError(f"secondary labels must be a list of species codes: {text!r}")
    return list(parsed)


def multi_hot(primary: str, secondary: list[str], class_index: dict[str, int]) -> np.ndarray:
    """Hard target over the vocabulary: primary and secondary species all at 1.

    An unknown code is an error, not a silent drop: the tables prune secondary labels to the
    vocabulary, so a miss here means the table and the label map disagree.
    """
    target = np.zeros(len(class_index), dtype=np.float32)
    for code in [primary, *secondary]:
        if code == NOCALL:
            continue
        if code not in class_index:
            raise ValueError(
                f"species code {code!r} is not in the label map ({len(class_index)} classes); "
                "prune labels to the vocabulary before building targets"
            )
        target[class_index[code]] = 1.0
    return target


def smooth(target: np.ndarray, factor: float = 0.05) -> np.ndarray:
    """The seed's label smoothing: y' = y·(1 − f) + f·(number of positives)/num_classes.

    Unlike the textbook form (f/num_classes), the added mass grows with the positives, so a
    multi-species row is smoothed more; an all-zero (nocall) row stays all zero. Works on
    one target (C,) or a batch (..., C).
    """
    target = np.asarray(target, dtype=np.float32)
    num_classes = target.shape[-1]
    positives = np.count_nonzero(target > 0, axis=-1)[..., None].astype(np.float32)
    return (target * (1.0 - factor) + factor * positives / num_classes).astype(np.float32)
