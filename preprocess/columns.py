"""Visitor batches as columns: the element of every step between the readers and tf.Transform.

One element holds many visitors' interactions, visitor by visitor, as a few arrays instead of
one Python tuple per interaction, so Beam encodes a batch in one go and the median, the
ratings, the held-out split and the record batch are NumPy expressions over the batch:

* ``VisitorColumns``: ``visitors`` (one per visitor), ``counts`` (interactions per visitor),
  ``items`` (one per interaction, each visitor's sorted by item, as the per-visitor steps give
  them), ``values`` (time on item, then rating), ``held_out`` (after ``MarkHeldOut``);
* ``SeenColumns``: the same visitors and items with their first and last day (``NO_DAY``
  where none), the readers' ``freshness.SEEN`` output.

A visitor is in one batch only, with all its interactions (``records`` relies on it).
Values stay exact: int64 when every duration is an integer in int64 range, float64 when
every one is a float, else a NumPy object array of the Python numbers themselves (only
hostile inputs get there), so sums, the median and ``min(scale * d / median, cap)`` give
the values the per-visitor steps give.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import numpy as np

NO_DAY = np.iinfo(np.int64).min  # an item without a (valid) date
_INT64 = (-(2**63), 2**63 - 1)


class VisitorColumns(NamedTuple):
    visitors: list
    counts: np.ndarray
    items: list
    values: np.ndarray
    held_out: Optional[np.ndarray] = None


class SeenColumns(NamedTuple):
    visitors: list
    counts: np.ndarray
    items: list
    firsts: np.ndarray
    lasts: np.ndarray


def exact_array(values: Sequence) -> np.ndarray:
    """``values`` as int64 or float64 when that holds every one exactly, else as objects."""
    if all(type(v) is int for v in values):
        if not values or (_INT64[0] <= min(values) and max(values) <= _INT64[1]):
            return np.asarray(values, dtype=np.int64)
    elif all(type(v) is float for v in values):
        return np.asarray(values, dtype=np.float64)
    array = np.empty(len(values), dtype=object)
    array[:] = list(values)
    return array


def from_visitors(batch: Sequence[tuple]) -> VisitorColumns:
    """``[(visitor, ((item, duration), ...)), ...]`` -> ``VisitorColumns``."""
    return VisitorColumns(
        [visitor for visitor, _ in batch],
        np.fromiter((len(rows) for _, rows in batch), np.int64, len(batch)),
        [item for _, rows in batch for item, _ in rows],
        exact_array([value for _, rows in batch for _, value in rows]),
    )


def from_seen(batch: Sequence[tuple]) -> SeenColumns:
    """``[(visitor, ((item, first_day, last_day), ...)), ...]`` -> ``SeenColumns``."""
    def days(position: int) -> np.ndarray:
        return np.fromiter((NO_DAY if row[position] is None else row[position]
                            for _, rows in batch for row in rows), np.int64)

    return SeenColumns(
        [visitor for visitor, _ in batch],
        np.fromiter((len(rows) for _, rows in batch), np.int64, len(batch)),
        [row[0] for _, rows in batch for row in rows],
        days(1),
        days(2),
    )


def starts(counts: np.ndarray) -> list:
    """Start offset of each visitor's interactions."""
    return np.r_[0, np.cumsum(counts)[:-1]].astype(np.int64).tolist() if len(counts) else []


def histogram(values: np.ndarray) -> tuple[list, list]:
    """``(distinct values, their counts)`` as Python numbers, for ``rating.HistogramMedianFn``."""
    distinct, counts = np.unique(values, return_counts=True)
    return distinct.tolist(), counts.tolist()


def to_visitors(batch: VisitorColumns) -> list:
    """``from_visitors`` undone: ``[(visitor, ((item, value), ...)), ...]``."""
    values = batch.values.tolist()
    return [(visitor, tuple(zip(batch.items[start:start + count], values[start:start + count])))
            for visitor, start, count in zip(batch.visitors, starts(batch.counts), batch.counts.tolist())]


def seen_to_visitors(batch: SeenColumns) -> list:
    """``from_seen`` undone: ``[(visitor, ((item, first_day, last_day), ...)), ...]``."""
    firsts = [None if d == NO_DAY else d for d in batch.firsts.tolist()]
    lasts = [None if d == NO_DAY else d for d in batch.lasts.tolist()]
    return [(visitor, tuple(zip(batch.items[start:start + count], firsts[start:start + count],
                                lasts[start:start + count])))
            for visitor, start, count in zip(batch.visitors, starts(batch.counts), batch.counts.tolist())]
