"""The held-out rule of ``preprocess/split.py``'s docstring, written out again for tests
(hashlib and pandas only, none of the module's code)."""
from __future__ import annotations

import hashlib

import pandas as pd


def reference_draw(seed: int, visitor: str, item: str) -> float:
    """The documented hash, written out again: BLAKE2b-64 of 'seed␟visitor␟item' over 2^64."""
    digest = hashlib.blake2b(f"{seed}\x1f{visitor}\x1f{item}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def reference_split(interactions: pd.DataFrame, fraction: float, seed: int) -> pd.Series:
    """Held-out flag per row, by the rule in preprocess/split.py's docstring, with pandas."""
    draws = pd.Series(
        [reference_draw(seed, v, i) for v, i in zip(interactions["visitorId"], interactions["contentId"])],
        index=interactions.index,
    )
    held = draws < fraction
    size = interactions.groupby("visitorId")["contentId"].transform("size")
    held &= size >= 2
    all_held = held.groupby(interactions["visitorId"]).transform("all")
    keep = all_held & (draws == draws.groupby(interactions["visitorId"]).transform("max"))
    return held & ~keep
