"""The one exception type the trainer raises for bad input (data, metadata, flags, files)."""
from __future__ import annotations

import re


class TrainerInputError(ValueError):
    """Input the trainer refuses: missing or inconsistent files, out-of-range IDs, NaN ratings,
    impossible hyperparameters, a corrupt checkpoint, an output directory it may not use. The
    message says what is wrong and where; ``python -m trainer.task`` prints it as one line and
    exits with status 2."""


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (line breaks included) collapsed to one space.

    TensorFlow's error messages span several lines; the CLI's error is one line.

    Parameters
    ----------
    text : str
        Any message.

    Returns
    -------
    str
        The message on a single line, stripped.
    """
    return re.sub(r"\s+", " ", text).strip()
