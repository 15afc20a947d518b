"""The seeded MovieLens-shaped generators of benchmarks/synthetic.py: determinism, shape, size,
skew, and the interactions CSV the pipeline reads."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from benchmarks.synthetic import (
    describe,
    movielens_100k_like,
    movielens_20m_like,
    write_interactions_csv,
)
from schemas.contract import INTERACTION_COLUMNS
from trainer.sparse import CSR


def _same(a: CSR, b: CSR) -> bool:
    return (
        a.shape == b.shape
        and np.array_equal(a.indptr, b.indptr)
        and np.array_equal(a.indices, b.indices)
        and np.array_equal(a.values, b.values)
    )


def _valid(m: CSR) -> None:
    """Columns sorted and unique within each row, ratings on the half-star grid 0.5 … 5."""
    rows = m.row_ids()
    same_row = rows[1:] == rows[:-1]
    assert np.all(m.indices[1:][same_row] > m.indices[:-1][same_row])
    assert m.indices.min() >= 0 and m.indices.max() < m.shape[1]
    assert m.values.dtype == np.float32
    assert m.values.min() >= 0.5 and m.values.max() <= 5.0
    assert np.all(m.values * 2 == np.round(m.values * 2))


@pytest.fixture(scope="module")
def small_100k() -> CSR:
    return movielens_100k_like(0)


def test_100k_like_shape_size_and_determinism(small_100k):
    m = small_100k
    assert m.shape == (943, 1682)
    assert m.nnz == 100_000
    _valid(m)
    lens = m.row_lengths()
    assert lens.min() >= 20  # MovieLens-100K: every user rated at least 20 movies
    assert _same(m, movielens_100k_like(0))
    assert not _same(m, movielens_100k_like(1))


def test_100k_like_is_skewed_and_has_user_structure(small_100k):
    d = describe(small_100k)
    pop = d["item_popularity"]
    assert pop["top_1pct_share"] > 0.05  # 16 items hold > 5 % (uniform: 1 %)
    assert pop["top_10pct_share"] > 0.35
    assert d["user_activity"]["max"] > 10 * d["user_activity"]["min"]
    # low-rank taste: leave one item out per user; a rank-8 SVD of the rest ranks it in the
    # top 20 far more often than item popularity does
    m = small_100k
    rng = np.random.default_rng(0)
    lens = m.row_lengths()
    held_pos = m.indptr[:-1] + rng.integers(0, lens)  # one stored entry per user
    held = m.indices[held_pos]
    keep = np.ones(m.nnz, bool)
    keep[held_pos] = False
    rows, cols = m.row_ids()[keep], m.indices[keep]
    nu, ni = m.shape

    def a_times(x):  # A x and Aᵀ y for the 0/1 training matrix without BLAS (which is slow
        return np.stack([np.bincount(rows, x[cols, c], nu) for c in range(x.shape[1])], 1)

    def at_times(y):  # to start on a busy machine with its thread pool)
        return np.stack([np.bincount(cols, y[rows, c], ni) for c in range(y.shape[1])], 1)

    top_v = rng.standard_normal((ni, 8))  # top-8 right singular subspace, subspace iteration
    for _ in range(12):  # with Cholesky-QR (einsum: no BLAS thread pool)
        w = at_times(a_times(top_v))
        top_v = np.einsum("ia,ba->ib", w, np.linalg.inv(np.linalg.cholesky(np.einsum("ia,ib->ab", w, w))))
    seen = np.zeros((nu, ni), bool)
    seen[rows, cols] = True
    scores = {"svd": a_times(top_v) @ top_v.T,
              "popularity": np.tile(np.bincount(cols, minlength=ni).astype(float), (nu, 1))}
    hits = {}
    for name, sc in scores.items():
        top = np.argsort(-np.where(seen, -np.inf, sc), axis=1)[:, :20]
        hits[name] = float(np.mean(np.any(top == held[:, None], axis=1)))
    assert hits["svd"] > 1.3 * hits["popularity"], hits


def test_20m_like_small_scale_shape_skew_and_determinism():
    m = movielens_20m_like(0, scale=0.02)
    assert m.shape == (2770, 535)
    _valid(m)
    assert 0.9e5 < m.nnz < 2.5e5  # ~62 per user
    assert _same(m, movielens_20m_like(0, scale=0.02))
    assert not _same(m, movielens_20m_like(1, scale=0.02))
    d = describe(m)
    assert d["item_popularity"]["top_10pct_share"] > 0.2
    assert d["user_activity"]["min"] >= 5
    assert d["user_activity"]["max"] > 20 * d["user_activity"]["min"]


def test_interactions_csv_has_the_pipeline_header(tmp_path):
    m = movielens_20m_like(0, scale=0.005)
    path = tmp_path / "interactions.csv"
    write_interactions_csv(m, str(path))
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    # the pipeline's interactions_csv reader takes its columns from the contract too
    # (tests/test_contract.py checks ParseInteractionFn.COLUMNS is INTERACTION_COLUMNS)
    assert tuple(rows[0]) == INTERACTION_COLUMNS
    body = np.array(rows[1:], dtype=np.int64)
    assert body.shape == (m.nnz, 3)
    np.testing.assert_array_equal(body[:, 0], m.row_ids())
    np.testing.assert_array_equal(body[:, 1], m.indices)
    np.testing.assert_array_equal(body[:, 2], np.rint(60 * m.values))
    assert body[:, 2].min() > 0
