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

:func:`evaluate_popularity` is the most-popular baseline, scored by the same
:func:`ranking_metrics` on the same users: every user gets the items with the most training
users, best first, their own training items left out (:func:`item_popularity`,
:func:`popularity_top_k`). :func:`lift` divides the model's metrics by the baseline's.

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
    return _metrics_and_coverage(ids, test_user_items.take_rows(rows), k)


def _metrics_and_coverage(ids: np.ndarray, test_rows: CSR, k: int) -> dict:
    """:func:`ranking_metrics` of the lists ``ids`` (one row per row of ``test_rows``) plus
    ``coverage@k`` = distinct recommended items / nitems."""
    out = ranking_metrics(ids, test_rows, k)
    out[metric_key("coverage", k)] = np.unique(ids[ids >= 0]).size / max(test_rows.shape[1], 1)
    return out


def _check_same_shape(train_user_items: CSR, test_user_items: CSR) -> None:
    if train_user_items.shape != test_user_items.shape:
        raise TrainerInputError(
            f"train {train_user_items.shape} and test {test_user_items.shape} matrices must be "
            "users x items of the same shape"
        )


# --------------------------------------------------------------------------- popularity baseline
def item_popularity(train_user_items: CSR) -> np.ndarray:
    """``n_j`` = the number of users with item ``j`` among their training items (int64,
    length nitems; an item nobody has scores 0).

    Users are counted, not ratings summed: the ratings are engagement scores (time on page),
    so a sum would rank an item read at length by a few visitors above one that many visitors
    opened, and "most popular" is the number of people who chose it (the usual baseline).
    Every stored entry counts, whatever its rating (the same entries the model's lists skip).
    """
    # entries are unique within a row (CSR invariant), so a bincount of the column IDs counts users
    nitems = train_user_items.shape[1]
    return np.bincount(train_user_items.indices, minlength=nitems).astype(np.int64)


def popularity_top_k(scores: np.ndarray, exclude: CSR, k: int) -> np.ndarray:
    """The first ``k`` items of one global ranking that each row has not seen.

    The ranking sorts the items by ``scores`` descending, ties to the lower item ID (so it is
    deterministic); row ``u`` gets the first ``k`` items of it not in row ``u`` of
    ``exclude``, −1 where fewer than ``k`` are left. Returns int64 ``[exclude.shape[0], k]``.

    Cost O(nnz(exclude) log + nrows·k), without scoring every (row, item) pair: with
    ``s_0 < s_1 < …`` the ranking positions of row ``u``'s excluded items, ``s_i − i`` is the
    number of allowed items ranked above ``s_i`` (non-decreasing in ``i``), so the ``j``-th
    allowed position (0-based) is::

        p_j = j + #{i : s_i − i ≤ j}
    """
    k = _check_k(k)
    sc = np.asarray(scores)
    nrows, n = exclude.shape
    if sc.shape != (n,) or not np.all(np.isfinite(sc)):
        raise TrainerInputError(
            f"scores must be {n} finite numbers (one per item), got shape {sc.shape}"
        )
    out = np.full((nrows, k), -1, np.int64)
    if n == 0 or nrows == 0:
        return out
    order = np.lexsort((np.arange(n), -sc))  # by score desc, then item ID asc
    position = np.empty(n, np.int64)
    position[order] = np.arange(n)
    rows = exclude.row_ids()
    # each row's excluded positions in ascending order (rows stay grouped: row-major keys)
    keys = np.sort(rows * n + position[exclude.indices])
    s = keys - rows * n
    d = s - (np.arange(rows.size) - exclude.indptr[rows])  # s_i − i
    near = d < k  # only these can shift one of the first k allowed positions
    shifts = np.bincount(rows[near] * k + d[near], minlength=nrows * k).reshape(nrows, k)
    p = np.arange(k) + np.cumsum(shifts, axis=1)
    found = p < n
    out[found] = order[p[found]]
    return out


def evaluate_popularity(train_user_items: CSR, test_user_items: CSR, k: int = 10) -> dict:
    """The most-popular baseline, with the keys of :func:`evaluate`.

    Every evaluated user (at least one test item, as in :func:`evaluate`) is shown the items
    with the highest :func:`item_popularity` ``n_j`` on the training matrix (ties: lower item
    ID), their own training items left out (the filtering the model's lists get), and the
    lists go through the same :func:`ranking_metrics` and ``coverage@k``. Unlike the factor
    model, it also recommends to a user without training items (the model's zero factor gives
    such a user no list); the preprocessing keeps a training item for every held-out user.
    """
    k = _check_k(k)
    _check_same_shape(train_user_items, test_user_items)
    rows = np.flatnonzero(test_user_items.row_lengths() > 0)
    ids = popularity_top_k(item_popularity(train_user_items), train_user_items.take_rows(rows), k)
    return _metrics_and_coverage(ids, test_user_items.take_rows(rows), k)


def lift(model: dict, baseline: dict, k: int) -> dict:
    """``{"<metric>@k": model / baseline}`` for precision, recall, NDCG and MAP; ``None``
    where the ratio is undefined (baseline 0, or either value NaN / missing)."""
    out: dict = {}
    for name in METRICS:
        key = metric_key(name, k)
        a, b = model.get(key), baseline.get(key)
        ok = a is not None and b is not None and np.isfinite(a) and np.isfinite(b) and b > 0
        out[key] = float(a) / float(b) if ok else None
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
