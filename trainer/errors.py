"""The one exception type the trainer raises for bad input (data, metadata or flags)."""
from __future__ import annotations


class TrainerInputError(ValueError):
    """Input the trainer refuses: missing or inconsistent files, out-of-range IDs, NaN ratings,
    impossible hyperparameters. The message says what is wrong and where."""
