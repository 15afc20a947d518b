"""The one exception type the trainer raises for bad input (data, metadata, flags, files)."""
from __future__ import annotations

import argparse
import logging
import re
import sys
from typing import Any, Callable, Sequence


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


def run_command(
    parse_args: Callable[[Sequence[str] | None], argparse.Namespace],
    run: Callable[[argparse.Namespace], Any],
    argv: Sequence[str] | None = None,
) -> int:
    """The exit status of a trainer command line: parse, set up logging, run.

    A :class:`TrainerInputError` becomes one ``error:`` line on stderr and status 2 (not also
    a log record: the log goes to stderr too); flag errors exit 2 from ``parse_args`` itself.
    Shared by ``python -m trainer.task``, ``trainer.tune`` and ``trainer.hypertune``.
    """
    args = parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run(args)
    except TrainerInputError as e:
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        return 2
    return 0
