r"""Held-out evaluation: top-k ranking metrics of any factor model (NumPy + TensorFlow only).

For a user ``u`` with held-out (test) items ``T_u`` and a top-``k`` list ``R_u = (r_1..r_k)``
(best first, training items of ``u`` left out, empty slots = −1), binary relevance
``rel_i = [r_i ∈ T_u]`` and ``hits_u = Σ_{i=1..k} rel_i``::

    P@k    = hits_u / k
    R@k    = hits_u / |T_u|
    DCG@k  = Σ_{i=1..k} rel_i / log2(i + 1)
    IDCG@k = Σ_{i=1..min(k, |T_u|)} 1 / log2(i + 1)          (all test items ranked first)
    NDCG@k = DCG@k / IDCG@k
    AP@k   = (1 / min(k, |T_u|)) Σ_{i=1..k} P@i · rel_i,     P@i = (Σ_{j≤i} rel_j) / i

Each is averaged over the users with ``|T_u| ≥ 1`` (MAP@k = mean AP@k). ``coverage@k`` =
|⋃_u R_u| / nitems over the evaluated users (how much of the catalogue the lists reach).

:func:`evaluate` scores ``S = U Vᵀ`` for the test users in blocks on the device with
:func:`trainer.recommend.top_k` (the training items are set to −inf there), then calls
:func:`ranking_metrics`. It takes plain arrays, so it serves any model's factors.

:func:`validation_mask` splits held-out users into a validation half (early stopping) and a
test half (reported) by a fixed hash of the dense user ID, so the split does not depend on the
data order, the number of shards or the machine.
"""
from __future__ import annotations

import logging

import numpy as np

from trainer.errors import TrainerInputError
from trainer.sparse import CSR

log = logging.getLogger(__name__)

METRICS = ("precision", "recall", "ndcg", "map")
VALIDATION_SEED = 0x5EED  # fixed: the validation/test halves must not change between runs

_MASK64 = (1 << 64) - 1


def metric_key(name: str, k: int) -> str:
    """``"ndcg", 10`` → ``"ndcg@10"`` (the key names used in results and in TensorBoard)."""
    return f"{name}@{k}"


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise TrainerInputError(f"k must be an integer >= 1, got {k!r}")
    return int(k)


def ranking_metrics(recommended: np.ndarray, test: CSR, k: int) -> dict:
    """Per-user-averaged ``precision@k``, ``recall@k``, ``ndcg@k``, ``map@k`` (module doc) over
    the rows of ``test`` with at least one item, and ``users`` (their number).

    ``recommended``: int array ``[test.shape[0], ≥ k]`` of dense item IDs, best first, −1 for
    an empty slot; row ``r`` belongs to row ``r`` of ``test``. Only the first ``k`` columns
    count; an ID may appear at most once per row. With no evaluable user the metrics are NaN.
    """
    k = _check_k(k)
    rec = np.asarray(recommended)
    if rec.ndim != 2 or not np.issubdtype(rec.dtype, np.integer):
        raise TrainerInputError(f"recommended must be a 2-D integer array, got {rec.dtype} {rec.shape}")
    nrows, nitems = test.shape
    if rec.shape[0] != nrows or rec.shape[1] < k:
        raise TrainerInputError(
            f"recommended has shape {rec.shape}, expected ({nrows}, >= {k}) to match test"
        )
    rec = rec[:, :k].astype(np.int64)
    if rec.size and (rec.min() < -1 or rec.max() >= nitems):
        raise TrainerInputError(f"recommended item IDs must be -1 or in [0, {nitems})")
    srt = np.sort(rec, axis=1)
    if np.any((srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0)):
        raise TrainerInputError("recommended repeats an item within a row (hits would count twice)")

    # (row, item) pairs as one sorted int64 key each, so membership is one searchsorted
    width = max(nitems, 1)
    test_keys = np.unique(test.row_ids() * width + test.indices)  # unique: |T_u| counts sets
    n_test = np.bincount(test_keys // width, minlength=nrows)
    cand = np.arange(nrows, dtype=np.int64)[:, None] * width + rec
    pos = np.minimum(np.searchsorted(test_keys, cand), max(test_keys.size - 1, 0))
    rel = (rec >= 0) & (test_keys[pos] == cand) if test_keys.size else np.zeros(rec.shape, bool)

    keep = n_test > 0
    users = int(keep.sum())
    out: dict = {metric_key(m, k): float("nan") for m in METRICS}
    out["users"] = users
    if users == 0:
        return out
    rel = rel[keep].astype(np.float64)
    n_t = n_test[keep].astype(np.float64)
    ranks = np.arange(1, k + 1, dtype=np.float64)
    discount = 1.0 / np.log2(ranks + 1.0)  # 1/log2(i+1), i = 1..k
    hits = rel.sum(axis=1)
    ideal = np.minimum(n_t, k).astype(np.int64)  # min(k, |T_u|) ≥ 1
    idcg = np.cumsum(discount)[ideal - 1]
    prec_at_i = np.cumsum(rel, axis=1) / ranks
    out[metric_key("precision", k)] = float(np.mean(hits / k))
    out[metric_key("recall", k)] = float(np.mean(hits / n_t))
    out[metric_key("ndcg", k)] = float(np.mean((rel @ discount) / idcg))
    out[metric_key("map", k)] = float(np.mean((prec_at_i * rel).sum(axis=1) / ideal))
    return out


def evaluate(
    user_factors: np.ndarray,
    item_factors: np.ndarray,
    train_user_items: CSR,
    test_user_items: CSR,
    k: int = 10,
    batch_size: int = 4096,
) -> dict:
    """Top-``k`` metrics of the scores ``u_i · v_j`` on the held-out items (module doc).

    ``train_user_items`` / ``test_user_items``: nusers × nitems CSRs with the same dense IDs as
    the factors. Only users with at least one test item are evaluated; their training items
    are never recommended. Returns :func:`ranking_metrics` plus ``coverage@k``.
    """
    from trainer.recommend import top_k

    k = _check_k(k)
    u = np.asarray(user_factors)
    v = np.asarray(item_factors)
    if u.ndim != 2 or v.ndim != 2 or u.shape[1] != v.shape[1]:
        raise TrainerInputError(
            f"factors must be 2-D with the same width, got {u.shape} and {v.shape}"
        )
    shape = (u.shape[0], v.shape[0])
    if train_user_items.shape != shape or test_user_items.shape != shape:
        raise TrainerInputError(
            f"train {train_user_items.shape} and test {test_user_items.shape} matrices must be "
            f"users x items = {shape}"
        )
    rows = np.flatnonzero(test_user_items.row_lengths() > 0)
    if rows.size:
        ids, _ = top_k(
            u[rows], v, k, exclude=train_user_items.take_rows(rows), batch_size=batch_size
        )
    else:
        ids = np.zeros((0, k), np.int64)
    out = ranking_metrics(ids, test_user_items.take_rows(rows), k)
    out[metric_key("coverage", k)] = np.unique(ids[ids >= 0]).size / max(shape[1], 1)
    return out


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's output function on uint64 (wrapping arithmetic)::

        z = x + 0x9E3779B97F4A7C15
        z = (z ^ (z >> 30)) · 0xBF58476D1CE4E5B9
        z = (z ^ (z >> 27)) · 0x94D049BB133111EB
        z =  z ^ (z >> 31)
    """
    z = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def validation_mask(user_ids: np.ndarray, seed: int = VALIDATION_SEED) -> np.ndarray:
    """``True`` for the users of the validation half, ``False`` for the test half::

        validation(u) = top bit of splitmix64(seed · 2³² + u)

    (dense IDs are < 2³¹, so distinct users give distinct hash inputs; about half each).
    """
    ids = np.asarray(user_ids, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= 1 << 32):
        raise TrainerInputError("user IDs must be in [0, 2^32)")
    with np.errstate(over="ignore"):
        x = ids.astype(np.uint64) + np.uint64((int(seed) << 32) & _MASK64)
    return (splitmix64(x) >> np.uint64(63)).astype(bool)


def keep_rows(m: CSR, mask: np.ndarray) -> CSR:
    """``m`` with the rows where ``mask`` is ``False`` emptied (same shape, same IDs)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != (m.shape[0],):
        raise TrainerInputError(f"mask has shape {mask.shape}, expected ({m.shape[0]},)")
    sel = np.repeat(mask, m.row_lengths())
    indptr = np.zeros(m.shape[0] + 1, np.int64)
    np.cumsum(np.where(mask, m.row_lengths(), 0), out=indptr[1:])
    return CSR(indptr, m.indices[sel], m.values[sel], m.shape)


def best_index(evaluations: list[dict], key: str) -> int | None:
    """Index of the first evaluation with the highest ``key`` (a later tie is no improvement);
    ``None`` for an empty list."""
    best, best_value = None, -np.inf
    for i, e in enumerate(evaluations):
        value = e[key] if np.isfinite(e[key]) else -np.inf  # NaN (no users) never wins
        if best is None or value > best_value:
            best, best_value = i, value
    return best


def evaluations_since_best(evaluations: list[dict], key: str) -> int:
    """Evaluations after the best one: early stopping stops when this reaches the patience."""
    b = best_index(evaluations, key)
    return 0 if b is None else len(evaluations) - 1 - b
