"""Top-k, seen-item filtering and fold-in against NumPy references."""
from __future__ import annotations

import numpy as np
import pytest

import pathlib as _pathlib
import sys as _sys

# trainer_fixtures sits beside this file (importable with or without tests/__init__.py)
_sys.path.insert(0, str(_pathlib.Path(__file__).resolve().parent))

from trainer_fixtures import dense_weights, numpy_solve_rows, numpy_topk, random_ratings

from trainer.errors import TrainerInputError
from trainer.recommend import read_batch_predictions, top_k, write_batch_predictions
from trainer.sparse import CSR
from trainer.wals import WALSModel
from trainer.weights import Weighting


def _check(ids, scores, ref, q, t):
    for i, want in enumerate(ref):
        got = [int(j) for j in ids[i] if j >= 0]
        assert got == want, (i, got, want)
        assert np.all(ids[i, len(want):] == -1)
        assert np.all(np.isneginf(scores[i, len(want):]))
        np.testing.assert_allclose(scores[i, : len(want)], (q[i] @ t.T)[want], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n,batch_size", [(4, 3), (20, 1000)])  # several blocks; N > ntargets
def test_top_k_with_filter_equals_argsort(n, batch_size):
    rng = np.random.default_rng(0)
    q = rng.standard_normal((9, 5)).astype(np.float32)
    t = rng.standard_normal((13, 5)).astype(np.float32)
    seen = rng.random((9, 13)) < 0.3
    seen[2, :11] = True  # only 2 candidates left
    seen[3, :] = True  # nothing left
    q[5] = 0.0  # zero factor (no training interactions): no recommendations
    ids, scores = top_k(q, t, n, exclude=CSR.from_dense(seen.astype(float)), batch_size=batch_size)
    assert ids.shape == (9, n) and scores.shape == (9, n)
    ref = numpy_topk(q @ t.T, seen, n)
    ref[5] = []
    _check(ids, scores, ref, q, t)
    # and without filtering
    ids, scores = top_k(q, t, n, batch_size=batch_size)
    ref = numpy_topk(q @ t.T, np.zeros_like(seen), n)
    ref[5] = []
    _check(ids, scores, ref, q, t)


def test_write_batch_predictions_tab_format_and_n_above_the_targets(tmp_path):
    """N larger than the catalogue is clamped (the whole ranking, no N-sized buffers); fields
    are tab-separated, so IDs with commas and spaces come back whole."""
    rng = np.random.default_rng(3)
    q = rng.standard_normal((4, 3)).astype(np.float32)
    t = rng.standard_normal((5, 3)).astype(np.float32)
    q[2] = 0.0
    seen = np.zeros((4, 5), bool)
    seen[1, [0, 3]] = True
    qn = ["u,0", "u 1", "ü,2", "u3"]
    tn = ["a,b", " c ", "d,e,f", "g", "h i"]
    path = tmp_path / "bp.txt"
    assert write_batch_predictions(str(path), q, t, qn, tn, 10**9, exclude=CSR.from_dense(seen.astype(float))) == 4
    ref = numpy_topk(q @ t.T, seen, 5)
    ref[2] = []
    want = ["\t".join([qn[i], *[tn[j] for j in ref[i]]]) for i in range(4)]
    assert path.read_text(encoding="utf-8").split("\n") == [*want, ""]
    assert read_batch_predictions(str(path)) == {qn[i]: [tn[j] for j in ref[i]] for i in range(4)}
    with pytest.raises(TrainerInputError, match="topk"):
        write_batch_predictions(str(path), q, t, qn, tn, 0)


def test_top_k_bad_input():
    with pytest.raises(TrainerInputError, match="topk"):
        top_k(np.ones((2, 3)), np.ones((4, 3)), 0)
    with pytest.raises(TrainerInputError, match="factors"):
        top_k(np.ones((2, 3)), np.ones((4, 2)), 1)
    with pytest.raises(TrainerInputError, match="exclude"):
        top_k(np.ones((2, 3)), np.ones((4, 3)), 1, exclude=CSR.from_dense(np.eye(3)))


@pytest.fixture(scope="module")
def fitted():
    d = random_ratings(30, 19, 0.25, 1)
    d[7, :] = 0.0
    model = WALSModel(factors=4, regularization=0.3, weighting=Weighting(unobserved_weight=0.2))
    model.fit(CSR.from_dense(d), epochs=3)
    return d, model


def test_model_recommend_and_recommend_users(fitted):
    d, model = fitted
    u, v = model.user_factors, model.item_factors
    users = np.array([0, 7, 12, 29, 12])
    ids, _ = model.recommend(users, N=5)
    ref = numpy_topk(u[users] @ v.T, d[users] != 0, 5)
    ref[1] = []  # user 7 has no interactions → zero factor → nothing
    assert [[int(j) for j in r if j >= 0] for r in ids] == ref
    ids, _ = model.recommend(users, N=5, filter_already_liked_items=False)
    ref = numpy_topk(u[users] @ v.T, np.zeros((5, 19), bool), 5)
    ref[1] = []
    assert [[int(j) for j in r if j >= 0] for r in ids] == ref
    one, _ = model.recommend(12, N=3)
    assert one.shape == (3,)
    items = np.array([0, 5, 18])
    ids, _ = model.recommend_users(items, N=6)
    ref = numpy_topk(v[items] @ u.T, d.T[items] != 0, 6)
    assert [[int(j) for j in r if j >= 0] for r in ids] == ref
    with pytest.raises(TrainerInputError, match="out of range"):
        model.recommend([30])


def test_recalculate_user_equals_numpy_solve(fitted):
    d, model = fitted
    v = model.item_factors.astype(np.float64)
    items = np.array([3, 11, 0, 11])
    ratings = np.array([0.5, 0.25, 1.0, 0.5])  # item 11 twice: ratings summed
    row = np.zeros((1, 19))
    row[0, [3, 11, 0]] = [0.5, 0.75, 1.0]
    w = dense_weights(row, 0.2, np.ones(1), np.ones(19))
    want = numpy_solve_rows(v, row, w, 0.3)[0]
    np.testing.assert_allclose(model.recalculate_user(items, ratings), want, atol=1e-5, rtol=1e-4)
    # a user with the same data as training user 4 gets (close to) user 4's factor after the
    # last sweep's item factors: i.e. the fold-in is the row half-sweep
    j = np.flatnonzero(d[4])
    w4 = dense_weights(d[4:5], 0.2, np.ones(1), np.ones(19))
    np.testing.assert_allclose(
        model.recalculate_user(j, d[4, j]), numpy_solve_rows(v, d[4:5], w4, 0.3)[0], atol=1e-5
    )
    np.testing.assert_array_equal(model.recalculate_user([], []), np.zeros(4, np.float32))
    with pytest.raises(TrainerInputError, match="out of range"):
        model.recalculate_user([19], [1.0])
    with pytest.raises(TrainerInputError, match="NaN"):
        model.recalculate_user([1], [np.nan])
