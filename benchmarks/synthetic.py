r"""Seeded synthetic rating matrices shaped like MovieLens, for benchmarks (NumPy only).

Two generators of one model return a :class:`trainer.sparse.CSR` (users × items, float32
ratings in ``{0.5, 1.0, …, 5.0}``, column indices sorted and unique per row):

* :func:`movielens_20m_like` — 138,493 × 26,744, 8.63 M interactions (about the size of
  MovieLens-20M's positive ratings), for speed benchmarks;
* :func:`movielens_100k_like` — 943 × 1,682, exactly 100,000 interactions, with a per-user
  low-rank taste so that recommendation quality is measurable.

:func:`zipf_matrix` is the plainer matrix ``benchmarks.trainer_speed`` times sweeps on: Zipf-like
users and items, uniform ratings, no taste.

The model (same for both; the parameters differ)
-------------------------------------------------
Items have a popularity weight and a latent vector, users an activity and a taste::

    π_j  ∝ (ρ_j + s)^(−a)                 ρ_j = a random permutation of 0..nitems−1 (Zipf-like)
    y_j  ~ N(0, I_r / r),   z_g ~ N(0, I_r)   (r = rank, g = taste group)
    P(item j | user u) = π_j exp(β z_{g(u)}·y_j) / Σ_l π_l exp(β z_{g(u)}·y_l)
    d_u  = clip(round(exp(μ + σ ε_u)), d_min, d_max),   ε_u ~ N(0, 1)   (long-tailed activity)

Each user ``u`` belongs to taste group ``g(u)`` (uniform over ``groups`` groups; with
``groups = nusers`` every user has an own taste). A user's items are ``d_u`` distinct draws
from ``P(· | u)`` without replacement (successive sampling: drawn with replacement, repeats
discarded, the shortfall drawn again for a few rounds, a surplus dropped at random; users still
short after those rounds — the heaviest ones — get the same law exactly as the ``d_u`` largest
``log P(j | u) + Gumbel noise``), so popular items are popular for everyone and the
log-odds ``β z_g·y_j`` add rank-``r`` structure. The rating of an observed pair is::

    rating = clip(round_half(3.5 + τ · ζ_{uj} + η_{uj}), 0.5, 5),   η ~ N(0, ν²)

where ``ζ_{uj}`` is ``z_{g(u)}·y_j`` standardized over the drawn pairs and ``round_half``
rounds to the nearest half star. Sampling uses one ``searchsorted`` into the concatenated
per-group cumulative distributions (``groups × nitems`` floats), so there is no Python loop
over users. The parameters were chosen by judgment to give MovieLens-like skew; they are not
fitted to the real data sets. What they give (seed 0, :func:`describe`): 20M-like 8.63 M
interactions, 5 … 4,246 items per user (median 34), the top 1 % of items hold 26 % of the
interactions and the top 10 % hold 64 %; 100K-like 20 … 700 items per user (median 74), top
1 % of items 7 %, top 10 % 43 %.

Command line (writes the pipeline's ``--input_format interactions_csv``,
header ``visitorId,contentId,session_duration``; ``session_duration = 60 · rating`` seconds,
so every row is positive and the pipeline's rating is a monotone function of this rating)::

    python -m benchmarks.synthetic --dataset 20m --out data/ml20m_like.csv [--seed 0] [--scale 1]
    python -m benchmarks.synthetic --dataset 100k --out data/ml100k_like.csv
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np

from schemas.contract import INTERACTION_COLUMNS
from trainer.sparse import CSR


@dataclass(frozen=True)
class Spec:
    """Parameters of the generative model in the module docstring."""

    nusers: int
    nitems: int
    activity_median: float  # exp(μ)
    activity_sigma: float  # σ
    activity_min: int  # d_min
    activity_max: int  # d_max
    zipf_exponent: float  # a
    zipf_offset: float  # s
    rank: int  # r
    groups: int  # taste groups (nusers: one per user)
    taste_strength: float  # β
    rating_slope: float  # τ
    rating_noise: float  # ν
    target_nnz: int | None = None  # rescale activity so that Σ d_u equals this (None: as drawn)


MOVIELENS_20M = Spec(
    nusers=138_493, nitems=26_744, activity_median=34.0, activity_sigma=1.1,
    activity_min=5, activity_max=6_000, zipf_exponent=1.1, zipf_offset=60.0,
    rank=16, groups=256, taste_strength=1.5, rating_slope=0.7, rating_noise=0.6,
)

MOVIELENS_100K = Spec(
    nusers=943, nitems=1_682, activity_median=65.0, activity_sigma=0.9,
    activity_min=20, activity_max=700, zipf_exponent=1.4, zipf_offset=30.0,
    rank=8, groups=943, taste_strength=1.5, rating_slope=0.7, rating_noise=0.5,
    target_nnz=100_000,
)


def generate(spec: Spec, seed: int = 0, rounds: int = 6) -> CSR:
    """A users × items CSR drawn from the model in the module docstring (deterministic in
    ``seed``)."""
    rng = np.random.default_rng(seed)
    nu, ni = spec.nusers, spec.nitems

    # items: Zipf-like popularity in random order, latent vectors
    rank_of = rng.permutation(ni)
    log_pop = -spec.zipf_exponent * np.log(rank_of + spec.zipf_offset)
    y = rng.standard_normal((ni, spec.rank)) / np.sqrt(spec.rank)
    # taste groups and users
    z = rng.standard_normal((spec.groups, spec.rank))
    group = rng.permutation(nu) if spec.groups == nu else rng.integers(0, spec.groups, nu)
    d = np.exp(np.log(spec.activity_median) + spec.activity_sigma * rng.standard_normal(nu))
    cap = min(spec.activity_max, ni)
    if spec.target_nnz is not None:  # scale activity so that the clipped total hits the target
        lo, hi = 1e-3, 1e3
        for _ in range(60):
            mid = np.sqrt(lo * hi)
            total = np.clip(np.rint(d * mid), spec.activity_min, cap).sum()
            lo, hi = (mid, hi) if total < spec.target_nnz else (lo, mid)
        d = d * np.sqrt(lo * hi)
    want = np.clip(np.rint(d), spec.activity_min, cap).astype(np.int64)
    if spec.target_nnz is not None:  # fix the last few by ±1 on random users
        diff = int(spec.target_nnz - want.sum())
        step = 1 if diff > 0 else -1
        ok = np.flatnonzero((want + step >= spec.activity_min) & (want + step <= cap))
        want[rng.choice(ok, abs(diff), replace=False)] += step

    # per-group cumulative distributions, concatenated: group g's CDF lives in [g, g + 1)
    affinity = (z @ y.T).astype(np.float32)  # (groups, nitems)
    logits = log_pop[None, :] + spec.taste_strength * affinity
    logits -= logits.max(axis=1, keepdims=True)
    cdf = np.cumsum(np.exp(logits), axis=1)
    cdf /= cdf[:, -1:]
    cdf += np.arange(spec.groups)[:, None]
    flat_cdf = cdf.ravel()
    del cdf, logits

    gbits = max(1, int(spec.groups - 1).bit_length())
    keys = np.zeros(0, np.int64)  # u · nitems + j, sorted and unique
    for _ in range(rounds):  # draw the shortfall (with a margin), deduplicate, repeat
        short = want - np.bincount(keys // ni, minlength=nu)
        users = np.flatnonzero(short > 0)
        if users.size == 0:
            break
        u = np.repeat(users, np.ceil(short[users] * 1.15 + 2).astype(np.int64))
        # query q = g(u) + uniform, as an integer on a 2^-qbits grid, visited in sorted order
        # (sorted queries make searchsorted cache-friendly)
        qbits = 62 - _index_bits(u.size) - gbits
        qint = (group[u].astype(np.int64) << qbits) | rng.integers(0, 1 << qbits, u.size)
        order = _order_by(qint, gbits + qbits)
        q = (qint[order] + 0.5) * 2.0**-qbits
        pos = np.empty(u.size, np.int64)
        pos[order] = np.searchsorted(flat_cdf, q, side="right")
        items = np.minimum(pos - group[u].astype(np.int64) * ni, ni - 1)
        keys = _sorted_unique(np.concatenate([keys, np.sort(u * ni + items)]))
    have = np.bincount(keys // ni, minlength=nu)
    # users still short (heavy users of a skewed distribution): exact Gumbel-top-d_u draws,
    # the same law as "draw with replacement, discard repeats" (successive sampling)
    short_users = np.flatnonzero(have < want)
    if short_users.size:
        keys = keys[~np.isin(keys // ni, short_users)]
        extra = _gumbel_top(rng, flat_cdf, group, short_users, want, ni)
        keys = _sorted_unique(np.concatenate([keys, np.sort(extra)]))
        have = np.bincount(keys // ni, minlength=nu)
    # drop the surplus of users who got more than d_u, at random
    rows = keys // ni
    rbits = max(1, int(nu - 1).bit_length())
    tbits = 62 - _index_bits(keys.size) - rbits
    order = _order_by((rows << tbits) | rng.integers(0, 1 << tbits, keys.size), rbits + tbits)
    start = np.zeros(nu + 1, np.int64)
    np.cumsum(have, out=start[1:])
    rank_in_row = np.empty(keys.size, np.int64)
    rank_in_row[order] = np.arange(keys.size) - np.repeat(start[:-1], have)
    keys = keys[rank_in_row < want[rows]]  # still sorted by (user, item)
    rows, cols = keys // ni, keys % ni

    zeta = affinity[group[rows], cols].astype(np.float64)
    zeta = (zeta - zeta.mean()) / max(zeta.std(), 1e-12)
    raw = 3.5 + spec.rating_slope * zeta + spec.rating_noise * rng.standard_normal(keys.size)
    ratings = np.clip(np.rint(raw * 2.0) / 2.0, 0.5, 5.0).astype(np.float32)
    indptr = np.zeros(nu + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=nu), out=indptr[1:])
    return CSR(indptr, cols.astype(np.int32), ratings, (nu, ni))


def _index_bits(n: int) -> int:
    return max(1, int(n - 1).bit_length())


def _order_by(key: np.ndarray, key_bits: int) -> np.ndarray:
    """``argsort`` of non-negative int64 keys below ``2**key_bits`` (ties by position), done as
    one ``np.sort`` of ``key << b | position``: several times faster than ``np.argsort``."""
    ib = _index_bits(key.size)
    if key_bits + ib > 63:
        raise ValueError("keys too wide to pack")
    packed = (key << ib) | np.arange(key.size, dtype=np.int64)
    packed.sort()
    return packed & ((1 << ib) - 1)


def _sorted_unique(a: np.ndarray) -> np.ndarray:
    """Unique values of an int64 array (sort-based; numpy 2.4's ``np.unique`` is far slower
    here). A stable sort of two concatenated sorted runs is a linear merge."""
    a = np.sort(a, kind="stable")
    return a[np.concatenate([[True], a[1:] != a[:-1]])] if a.size else a


def _gumbel_top(
    rng: np.random.Generator, flat_cdf: np.ndarray, group: np.ndarray, users: np.ndarray,
    want: np.ndarray, ni: int, chunk_floats: int = 1 << 23,
) -> np.ndarray:
    """Keys ``u · ni + j`` of ``want[u]`` distinct items per user in ``users``, drawn without
    replacement with probabilities ``P(j | u)``: the ``want[u]`` largest ``log P + Gumbel``."""
    out = []
    users = users[np.argsort(want[users], kind="stable")]  # similar d_u in one chunk
    per = max(1, chunk_floats // ni)
    for s in range(0, users.size, per):
        us = users[s : s + per]
        g = group[us]
        prob = np.diff(flat_cdf.reshape(-1, ni)[g] - g[:, None], axis=1, prepend=0.0)
        with np.errstate(divide="ignore"):
            score = np.log(prob) - np.log(-np.log(rng.random(prob.shape)))
        w = want[us]
        top = np.argpartition(-score, int(w.max()) - 1, axis=1)[:, : int(w.max())]
        top_score = np.take_along_axis(score, top, axis=1)
        top = np.take_along_axis(top, np.argsort(-top_score, axis=1, kind="stable"), axis=1)
        keep = np.arange(top.shape[1])[None, :] < w[:, None]
        out.append(np.repeat(us, w).astype(np.int64) * ni + top[keep])
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def scaled(spec: Spec, scale: float) -> Spec:
    """``spec`` with ``scale ×`` the users and items (per-user activity unchanged, capped at a
    third of the items), so the interactions scale by about ``scale`` too."""
    if scale == 1.0:
        return spec
    nitems = max(50, int(round(spec.nitems * scale)))
    nusers = max(50, int(round(spec.nusers * scale)))
    return Spec(
        **{
            **spec.__dict__,
            "nusers": nusers,
            "nitems": nitems,
            "activity_max": max(spec.activity_min, min(spec.activity_max, nitems // 3)),
            "groups": nusers if spec.groups == spec.nusers else min(spec.groups, nusers),
            "target_nnz": None if spec.target_nnz is None else int(spec.target_nnz * scale),
        }
    )


def movielens_20m_like(seed: int = 0, scale: float = 1.0) -> CSR:
    """138,493 users × 26,744 items, 8.63 M ratings (seed 0, ``scale = 1``), Zipf-like item
    popularity and log-normal user activity (5 … 6,000 items per user)."""
    return generate(scaled(MOVIELENS_20M, scale), seed)


def movielens_100k_like(seed: int = 0) -> CSR:
    """943 users × 1,682 items, exactly 100,000 ratings (20 … 700 per user, like
    MovieLens-100K's minimum of 20), per-user rank-8 taste."""
    return generate(MOVIELENS_100K, seed)


def zipf_matrix(users: int, items: int, nnz: int, skew: float, seed: int) -> CSR:
    """``users × items`` with exactly ``nnz`` distinct cells (``nnz ≤ users · items``), user
    activity and item popularity both Zipf-like (``P ∝ rank^(−skew)``, ranks shuffled), ratings
    uniform in [0.05, 1): the sweep-timing matrix of ``benchmarks.trainer_speed`` (no taste
    structure, unlike :func:`generate`)."""
    rng = np.random.default_rng(seed)
    pu = 1.0 / np.arange(1, users + 1) ** skew
    pi = 1.0 / np.arange(1, items + 1) ** skew
    pu, pi = pu / pu.sum(), pi / pi.sum()
    keys = np.zeros(0, np.int64)
    while keys.size < nnz:  # draw, deduplicate, top up
        need = int((nnz - keys.size) * 1.3) + 1000
        u = rng.choice(users, need, p=pu)
        i = rng.choice(items, need, p=pi)
        keys = _sorted_unique(np.concatenate([keys, u.astype(np.int64) * items + i]))
    keys = rng.permutation(keys)[:nnz]
    perm_u, perm_i = rng.permutation(users), rng.permutation(items)
    rows, cols = perm_u[keys // items], perm_i[keys % items]
    vals = rng.uniform(0.05, 1.0, nnz).astype(np.float32)
    return CSR.from_coo(rows, cols, vals, (users, items))


def describe(m: CSR) -> dict:
    """Shape and skew statistics of a users × items matrix."""
    lens = m.row_lengths()
    pop = np.sort(np.bincount(m.indices, minlength=m.shape[1]))[::-1]
    top1 = max(1, m.shape[1] // 100)
    return {
        "shape": list(m.shape),
        "nnz": m.nnz,
        "density": m.nnz / (m.shape[0] * m.shape[1]),
        "user_activity": {
            "min": int(lens.min()), "median": float(np.median(lens)), "mean": float(lens.mean()),
            "max": int(lens.max()),
        },
        "item_popularity": {
            "max": int(pop[0]), "median": float(np.median(pop)), "zero": int((pop == 0).sum()),
            "top_1pct_share": float(pop[:top1].sum() / max(m.nnz, 1)),
            "top_10pct_share": float(pop[: max(1, m.shape[1] // 10)].sum() / max(m.nnz, 1)),
        },
        "rating_mean": float(m.values.mean()) if m.nnz else float("nan"),
    }


def write_interactions_csv(m: CSR, path: str, chunk: int = 1_000_000) -> None:
    """Writes ``visitorId,contentId,session_duration`` rows (``60 · rating`` seconds), the
    header the pipeline's ``ReadInteractionsCsv`` expects (``schemas.contract.INTERACTION_COLUMNS``);
    IDs are the dense indices as text."""
    rows = m.row_ids()
    with open(path, "w", encoding="utf-8") as f:
        f.write(",".join(INTERACTION_COLUMNS) + "\n")
        for s in range(0, m.nnz, chunk):
            e = min(s + chunk, m.nnz)
            block = np.column_stack([rows[s:e], m.indices[s:e], np.rint(60.0 * m.values[s:e])])
            np.savetxt(f, block.astype(np.int64), fmt="%d", delimiter=",")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=["20m", "100k"], default="20m")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", type=float, default=1.0, help="20m only: users and items × this")
    p.add_argument("--out", default=None, help="write an interactions CSV here")
    args = p.parse_args(argv)
    t = time.perf_counter()
    m = movielens_20m_like(args.seed, args.scale) if args.dataset == "20m" else movielens_100k_like(args.seed)
    print(f"generated in {time.perf_counter() - t:.1f} s: {describe(m)}", flush=True)
    if args.out:
        t = time.perf_counter()
        write_interactions_csv(m, args.out)
        print(f"wrote {args.out} in {time.perf_counter() - t:.1f} s", flush=True)


if __name__ == "__main__":
    main()
