"""The held-out split: which of a user's interactions are kept back for evaluation.

The rule (``held_out_flags``) is plain Python, so benchmarks and tests can apply it too;
``MarkHeldOut`` applies it in the pipeline, one visitor at a time.

Each interaction (visitor v, item i) gets a number in [0, 1) from a keyed hash::

    u(v, i) = BLAKE2b-64(seed ‖ v ‖ i) / 2⁶⁴

and is held out when ``u(v, i) < test_fraction``. The hash, not a random generator, makes
the split the same on every runner, sharding, bundle order and rerun. Two rules keep every
held-out user evaluable against a trained factor:

* a user with a single interaction keeps it in training;
* a user whose every interaction drew ``u < test_fraction`` keeps the one with the largest
  ``u`` in training.

So each user with n ≥ 2 interactions holds out about ``test_fraction · n`` of them (at most
n − 1), and the expected held-out share of all interactions is a little below
``test_fraction`` (users with one interaction hold out nothing).
"""
from __future__ import annotations

import hashlib
from typing import Iterable, Sequence

import apache_beam as beam
import numpy as np

from preprocess import columns, counters

METHOD = (
    "per-user: interaction (visitor, item) held out when BLAKE2b-64(seed, visitor, item) / 2^64 "
    "< test_fraction; users with one interaction, and one interaction of every user, stay in training"
)
_SEPARATOR = b"\x1f"  # cannot occur inside IDs (the pipeline drops IDs with control characters)


def uniform_hash(seed: int, visitor: str, item: str) -> float:
    """``u(v, i)`` in [0, 1): a stable, seeded hash of the pair."""
    key = str(seed).encode() + _SEPARATOR + visitor.encode("utf-8") + _SEPARATOR + item.encode("utf-8")
    digest = hashlib.blake2b(key, digest_size=8).digest()
    return int.from_bytes(digest, "big") / 18446744073709551616.0  # 2**64


def held_out_flags(visitor: str, items: Sequence[str], test_fraction: float, seed: int = 0) -> list:
    """One bool per item of this visitor (its distinct items): True = held out (module doc)."""
    n = len(items)
    if n < 2 or test_fraction <= 0.0:
        return [False] * n
    # uniform_hash with the (seed, visitor) prefix encoded once: the same bytes are hashed
    prefix = str(seed).encode() + _SEPARATOR + visitor.encode("utf-8") + _SEPARATOR
    blake2b = hashlib.blake2b
    draws = [int.from_bytes(blake2b(prefix + item.encode("utf-8"), digest_size=8).digest(), "big")
             / 18446744073709551616.0 for item in items]
    flags = [u < test_fraction for u in draws]
    if all(flags):
        flags[max(range(n), key=draws.__getitem__)] = False
    return flags


class MarkHeldOutFn(beam.DoFn):
    """(visitor, ((item, rating), ...)) -> (visitor, ((item, rating, held_out), ...))."""

    def __init__(self, test_fraction: float, seed: int) -> None:
        self.test_fraction = test_fraction
        self.seed = seed
        self.held_out = counters.counter("held_out_interactions")

    def process(self, element: tuple) -> Iterable[tuple]:
        yield self.mark(element)

    def mark(self, element: tuple) -> tuple:
        visitor, interactions = element
        flags = held_out_flags(visitor, [item for item, _ in interactions], self.test_fraction, self.seed)
        self.held_out.inc(sum(flags))
        return visitor, tuple((item, r, flag) for (item, r), flag in zip(interactions, flags))


def batch_flags(visitors: Sequence[str], counts: np.ndarray, items: Sequence[str], test_fraction: float,
                seed: int) -> np.ndarray:
    """``held_out_flags`` of every visitor of a column batch, one bool per interaction."""
    flags = np.zeros(len(items), dtype=bool)
    if test_fraction <= 0.0:
        return flags
    for visitor, start, count in zip(visitors, columns.starts(counts), counts.tolist()):
        if count >= 2:
            flags[start:start + count] = held_out_flags(visitor, items[start:start + count], test_fraction, seed)
    return flags


class MarkBatchHeldOutFn(MarkHeldOutFn):
    """``MarkHeldOutFn`` over a ``columns.VisitorColumns`` batch: fills ``held_out``."""

    def process(self, batch: columns.VisitorColumns) -> Iterable[columns.VisitorColumns]:
        flags = batch_flags(batch.visitors, batch.counts, batch.items, self.test_fraction, self.seed)
        self.held_out.inc(int(flags.sum()))
        yield batch._replace(held_out=flags)


class MarkHeldOut(beam.PTransform):
    """Marks each interaction as training (False) or held out (True); see the module doc."""

    def __init__(self, test_fraction: float, seed: int = 0, batched: bool = False) -> None:
        super().__init__()
        self.test_fraction = test_fraction
        self.seed = seed
        self.batched = batched  # elements are columns.VisitorColumns

    def expand(self, ratings):
        fn = MarkBatchHeldOutFn if self.batched else MarkHeldOutFn
        return ratings | "MarkHeldOut" >> beam.ParDo(fn(self.test_fraction, self.seed))
