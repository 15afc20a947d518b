"""Top-k, seen-item filtering and fold-in against NumPy references."""
from __future__ import annotations

import numpy as np
import pytest



from tests.tolerances import (
    assert_rows_within,
    assert_topk_consistent,
    dot_tolerance,
    solve_tolerance,
)
from tests.trainer_fixtures import device, numpy_solve_rows, numpy_topk, random_ratings  # noqa: F401

from trainer.errors import TrainerInputError
from trainer.recommend import read_batch_predictions, top_k, write_batch_predictions
from trainer.sparse import CSR
from trainer.wals import WALSModel


def _check(ids, scores, ref, q, t, seen, n):
    """Against the float64 scores: each float32 score within γ_k|q|·|t| (tests/tolerances.py)
    and the lists a correct top-n under that error: only targets whose exact scores are within
    the summed bounds may swap, so wherever the data has no such near-tie the lists are the
    ``np.argsort`` ranking. ``ref`` (NumPy's lists) marks the queries that get none."""
    exact = q.astype(np.float64) @ t.T.astype(np.float64)
    empty = np.array([len(r) == 0 for r in ref])
    assert_topk_consistent(ids, scores, exact, dot_tolerance(q, t, np.float32), seen, n, empty=empty)


@pytest.mark.parametrize("n,batch_size", [(4, 3), (20, 1000)])  # several blocks; N > ntargets
def test_top_k_with_filter_equals_argsort(n, batch_size, device):
    rng = np.random.default_rng(0)
    q = rng.standard_normal((9, 5)).astype(np.float32)
    t = rng.standard_normal((13, 5)).astype(np.float32)
    seen = rng.random((9, 13)) < 0.3
    seen[2, :11] = True  # only 2 candidates left
    seen[3, :] = True  # nothing left
    q[5] = 0.0  # zero factor (no training interactions): no recommendations
    ids, scores = top_k(q, t, n, exclude=CSR.from_dense(seen.astype(float)), batch_size=batch_size,
                        device=device)
    assert ids.shape == (9, n) and scores.shape == (9, n)
    ref = numpy_topk(q @ t.T, seen, n)
    ref[5] = []
    _check(ids, scores, ref, q, t, seen, n)
    # and without filtering
    ids, scores = top_k(q, t, n, batch_size=batch_size, device=device)
    ref = numpy_topk(q @ t.T, np.zeros_like(seen), n)
    ref[5] = []
    _check(ids, scores, ref, q, t, np.zeros_like(seen), n)


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
    model = WALSModel(factors=4, regularization=0.3, objective="wals", unobserved_weight=0.2,
                      iterations=3)
    model.fit(CSR.from_dense(d))
    return d, model


def test_model_recommend_and_recommend_users(fitted):
    """Both directions, filtered or not, against float64 scores (see :func:`_check`)."""
    d, model = fitted
    u, v = model.user_factors, model.item_factors
    users = np.array([0, 7, 12, 29, 12])
    items = np.array([0, 5, 18])
    assert np.all(u[7] == 0)  # user 7 has no interactions → zero factor → nothing
    for fn, ids_in, q, t, seen, n in (
        (model.recommend, users, u[users], v, d[users] != 0, 5),
        (model.recommend_users, items, v[items], u, d.T[items] != 0, 6),
    ):
        for filtered in (True, False):
            ids, scores = fn(ids_in, N=n, filter_already_liked_items=filtered)
            assert_topk_consistent(
                ids, scores, q.astype(np.float64) @ t.T.astype(np.float64),
                dot_tolerance(q, t, np.float32), seen if filtered else np.zeros_like(seen), n,
                empty=np.all(q == 0, axis=1),
            )
    one, _ = model.recommend(12, N=3)
    assert one.shape == (3,)
    with pytest.raises(TrainerInputError, match="out of range"):
        model.recommend([30])


def _new_user_row(model, items, ratings):
    """The dense ``(target, weights)`` row (1 × nitems, float64) of a new user with these
    distinct items and (merged, clipped) ratings under the model's objective, row weight 1:
    ``wals``: ``w0 + c_j`` / ``r_j`` on them, ``w0`` / 0 elsewhere; ``implicit`` (linear):
    ``1 + α r_j`` / ``[r_j > 0]``, 1 / 0 elsewhere (trainer/weights.py's definitions)."""
    wt = model.weighting
    nitems = model.item_factors.shape[0]
    target, weights = np.zeros((1, nitems)), np.full((1, nitems), wt.w0)
    for j, r in zip(items, ratings):
        if wt.objective == "implicit":
            weights[0, j], target[0, j] = 1.0 + wt.alpha * r, float(r > 0)
        else:
            weights[0, j], target[0, j] = wt.w0 + model.col_weights[j], r
    return target, weights


def _assert_fold_in(model, got, items, ratings):
    """``got`` equals the float64 closed form within (X) for a float64 solve stored in float32
    (tests/tolerances.py)."""
    v = model.item_factors.astype(np.float64)
    target, weights = _new_user_row(model, items, ratings)
    lam = model.regularization
    assert got.dtype == np.float32 and np.all(np.isfinite(got)), got
    assert_rows_within(got, numpy_solve_rows(v, target, weights, lam),
                       solve_tolerance(v, target, weights, lam, np.float64, output_dtype=np.float32),
                       "recalculate_user")


def test_recalculate_user_equals_numpy_solve(fitted):
    d, model = fitted
    items = np.array([3, 11, 0, 11])
    ratings = np.array([0.5, 0.25, 1.0, 0.5])  # item 11 twice: ratings summed
    _assert_fold_in(model, model.recalculate_user(items, ratings), [3, 11, 0], [0.5, 0.75, 1.0])
    # a user with the same data as training user 4 gets user 4's row solve against the last
    # sweep's item factors: the fold-in is the row half-sweep
    j = np.flatnonzero(d[4])
    _assert_fold_in(model, model.recalculate_user(j, d[4, j]), j, d[4, j])
    np.testing.assert_array_equal(model.recalculate_user([], []), np.zeros(4, np.float32))
    with pytest.raises(TrainerInputError, match="out of range"):
        model.recalculate_user([19], [1.0])
    with pytest.raises(TrainerInputError, match="NaN"):
        model.recalculate_user([1], [np.nan])


@pytest.fixture(scope="module")
def fitted_implicit():
    d = random_ratings(30, 19, 0.25, 1)
    model = WALSModel(factors=4, regularization=0.3, objective="implicit", alpha=10.0, iterations=3)
    model.fit(CSR.from_dense(d))
    return d, model


@pytest.mark.parametrize("objective", ["implicit", "wals"])
@pytest.mark.parametrize("given,merged", [
    ([(3, 1e8), (5, 0.5)], [(3, 1e8), (5, 0.5)]),
    ([(3, 1e8), (3, 1e8), (5, 0.0)], [(3, 2e8), (5, 0.0)]),
    ([(3, 0.7), (5, 0.2), (3, 0.2)], [(3, 0.7 + 0.2), (5, 0.2)]),  # summed in float64
])
def test_recalculate_user_huge_ratings_equal_float64_closed_form(fitted, fitted_implicit,
                                                                 objective, given, merged):
    """Regression: a rating of 1e8 (implicit confidence 1 + α·1e8 ≈ 1e9) gave NaN from the
    float32 Cholesky; the k × k system is now solved in float64 (κ ≈ 2–4e8 here: accurate)."""
    _, model = fitted_implicit if objective == "implicit" else fitted
    got = model.recalculate_user([j for j, _ in given], [r for _, r in given])
    _assert_fold_in(model, got, [j for j, _ in merged], [r for _, r in merged])


def test_recalculate_user_1e30(fitted, fitted_implicit):
    """``wals``: the rating is the target, so 1e30 only scales ``b`` (κ(M) unchanged): the
    answer is the closed form. ``implicit``: confidence 1 + α·1e30 makes ``M`` numerically
    singular even in float64 (``κ·u₆₄ ≫ 1``; NumPy's own closed form is then garbage), so it is
    refused with ValueError — unless a ``rating_cap`` clips it to the training range."""
    d, wals = fitted
    _assert_fold_in(wals, wals.recalculate_user([3, 5], [1e30, 0.5]), [3, 5], [1e30, 0.5])
    _assert_fold_in(wals, wals.recalculate_user([3, 3], [1e30, 1e30]), [3], [2e30])
    with pytest.raises(ValueError, match="float32"):  # a solution beyond float32's range
        wals.recalculate_user([3], [1e300])
    d, imp = fitted_implicit
    with pytest.raises(ValueError, match="rating_cap"):
        imp.recalculate_user([3, 5], [1e30, 0.5])
    cap = float(d.max())
    _assert_fold_in(imp, imp.recalculate_user([3, 5], [1e30, 0.5], rating_cap=cap), [3, 5], [cap, 0.5])
    # clipping applies to the summed rating
    _assert_fold_in(imp, imp.recalculate_user([3, 3], [0.6 * cap, 0.6 * cap], rating_cap=cap),
                    [3], [cap])


@pytest.mark.parametrize("bad,match", [
    (-0.5, "negative"), (float("nan"), "NaN"), (float("inf"), "NaN/inf"), (-float("inf"), "NaN/inf"),
])
@pytest.mark.parametrize("objective", ["implicit", "wals"])
def test_recalculate_user_refuses_negative_and_non_finite_ratings(fitted, fitted_implicit,
                                                                  objective, bad, match):
    _, model = fitted_implicit if objective == "implicit" else fitted
    with pytest.raises(ValueError, match=match):
        model.recalculate_user([0, 1], [0.5, bad])
    with pytest.raises(ValueError, match="rating_cap"):
        model.recalculate_user([0], [0.5], rating_cap=bad)
