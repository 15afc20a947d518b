"""The Numba CPU backend (trainer/cpu_cg.py) against NumPy oracles, and how the model picks it.

The oracle of ``m`` CG steps from ``x0`` is a closed form, independent of CG's recurrences: in
exact arithmetic the m-th CG iterate minimises the row's quadratic over
``x0 + span{r0, M r0, …, M^(m−1) r0}`` (``r0 = b − M x0``), so it is ``x0 + Q y`` with ``Q`` an
orthonormal basis of that Krylov space and ``(QᵀMQ) y = Qᵀ r0``; NumPy computes it in float64
from the dense ``M_i`` and ``b_i`` of tests/tolerances.py.
"""
from __future__ import annotations

import numpy as np
import pytest

from tests.tolerances import (
    assert_rows_within,
    cg_half_sweep_excess,
    objective_tolerance,
    row_systems,
    solve_tolerance,
)
from tests.trainer_fixtures import dense_weights, numpy_objective, numpy_solve_rows, random_ratings
from trainer import cpu_cg
from trainer import weights as wts
from trainer.hparams import HyperparameterError
from trainer.sparse import CSR
from trainer.wals import WALSModel

pytest.importorskip("numba")


def krylov_iterate(m: np.ndarray, b: np.ndarray, x0: np.ndarray, steps: int) -> np.ndarray:
    """Exact-arithmetic CG after ``steps`` steps from ``x0``, row by row (module docstring)."""
    out = np.array(x0, np.float64)
    for i in range(b.shape[0]):
        r0 = b[i] - m[i] @ out[i]
        basis = [r0]
        for _ in range(steps - 1):
            basis.append(m[i] @ basis[-1])
        q, _ = np.linalg.qr(np.stack(basis, axis=1))
        out[i] += q @ np.linalg.solve(q.T @ m[i] @ q, q.T @ r0)
    return out


def _wals_problem(seed: int, dtype: str, k: int = 8):
    rng = np.random.default_rng(seed)
    d = random_ratings(40, 30, 0.3, seed)
    d[5, :] = 0.0  # a row without observations: its factors become 0
    rw, cw = rng.uniform(0.1, 4.0, 40), rng.uniform(0.0, 4.0, 30)
    fixed = rng.standard_normal((30, k)).astype(dtype)
    x0 = rng.standard_normal((40, k)).astype(dtype)
    return d, rw, cw, fixed, x0


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("seed", range(3))
def test_cg_steps_equal_the_krylov_minimiser(seed, dtype):
    """3 CG steps per row equal the exact-arithmetic iterate within ``steps·(X)`` (the same
    per-step drift estimate as tests/test_trainer_wals.py's CG tests), and 2 steps do not."""
    d, rw, cw, fixed, x0 = _wals_problem(seed, dtype)
    w0, lam = 0.3, 0.5
    data, _ = cpu_cg.orientations(CSR.from_dense(d), rw, cw, dtype)
    weighting = wts.Weighting(objective="wals", unobserved_weight=w0)
    w = dense_weights(d, w0, rw, cw)
    rs = row_systems(fixed, d, w, lam)
    observed = d.any(axis=1)
    tol = 3 * solve_tolerance(fixed, d, w, lam, np.dtype(dtype))
    want = np.where(observed[:, None], krylov_iterate(rs.m, rs.b, x0, 3), 0.0)
    x = x0.copy()
    cpu_cg.cg_half_sweep(fixed, x, data, weighting, lam, 3, threads=2)
    assert_rows_within(x, want, tol, "3 CG steps")
    two = x0.copy()
    cpu_cg.cg_half_sweep(fixed, two, data, weighting, lam, 2, threads=2)
    gap = np.linalg.norm(two - want, axis=1)[observed]
    assert np.all(gap > 100 * tol[observed])


def test_cg_converges_to_closed_form():
    """30 float64 steps on k = 6 reach the closed-form solve within 30·(X) (as the TensorFlow
    path's test), for the implicit objective with log confidence."""
    rng = np.random.default_rng(3)
    d = (random_ratings(30, 20, 0.3, 3) * 5).astype(np.float32).astype(np.float64)  # as stored
    fixed = rng.standard_normal((20, 6))
    alpha, eps, lam = 4.0, 0.5, 0.3
    weighting = wts.Weighting(objective="implicit", alpha=alpha, confidence="log", epsilon=eps)
    w = np.where(d > 0, 1.0 + alpha * np.log1p(d / eps), 1.0)
    pref = (d > 0).astype(np.float64)
    data, _ = cpu_cg.orientations(CSR.from_dense(d), np.ones(30), np.ones(20), "float64")
    x = rng.standard_normal((30, 6))
    cpu_cg.cg_half_sweep(fixed, x, data, weighting, lam, 30)
    want = numpy_solve_rows(fixed, pref, w, lam)
    assert_rows_within(x, want, 30 * solve_tolerance(fixed, pref, w, lam, np.float64), "30 steps")


def test_results_do_not_depend_on_the_threads():
    d, rw, cw, fixed, x0 = _wals_problem(4, "float32", k=16)
    data, _ = cpu_cg.orientations(CSR.from_dense(d), rw, cw, "float32")
    weighting = wts.Weighting(objective="wals", unobserved_weight=0.1)
    runs = []
    for threads in (1, 2, 3):
        x = x0.copy()
        cpu_cg.cg_half_sweep(fixed, x, data, weighting, 0.2, 3, threads=threads)
        runs.append(x)
    assert np.array_equal(runs[0], runs[1]) and np.array_equal(runs[0], runs[2])


def test_items_orientation_is_the_transpose():
    d = random_ratings(50, 35, 0.2, 5)
    d[:, 7] = 0.0
    ui = CSR.from_dense(d)
    users, items = cpu_cg.orientations(ui, np.arange(50.0), np.arange(35.0), "float32")
    want = CSR.from_dense(d.T)
    np.testing.assert_array_equal(items.indptr, want.indptr)
    np.testing.assert_array_equal(items.indices, want.indices)
    np.testing.assert_array_equal(items.ratings, want.values)
    np.testing.assert_array_equal(items.row_weights, np.arange(35.0, dtype=np.float32))
    np.testing.assert_array_equal(users.col_weights, np.arange(35.0, dtype=np.float32))


@pytest.mark.parametrize("seed", range(4))
def test_fit_never_raises_the_objective_and_reports_it(seed):
    """The model on this backend: per-sweep losses (computed by the Numba loss) equal the dense
    NumPy objective of the states the callback saw, and never rise beyond the rounding slack
    of tests/test_trainer_wals.py's CG property test."""
    rng = np.random.default_rng(200 + seed)
    n, m = int(rng.integers(2, 40)), int(rng.integers(2, 30))
    d = random_ratings(n, m, float(rng.uniform(0.05, 0.6)), seed)
    d[0, 0] = float(np.float32(0.9))
    k = int(rng.integers(1, 12))
    w0, lam = float(rng.choice([0.0, rng.uniform(0, 1)])), float(rng.uniform(0.01, 2.0))
    rw, cw = rng.uniform(0.1, 4.0, n), rng.uniform(0.0, 4.0, m)
    model = WALSModel(factors=k, regularization=lam, cg_steps=2, objective="wals",
                      unobserved_weight=w0, random_state=seed, iterations=5,
                      calculate_training_loss=True, backend="numba")
    states = []
    model.fit(CSR.from_dense(d), row_weights=rw, col_weights=cw, callback=states.append)
    w = dense_weights(d, w0, rw, cw)
    losses = [h["loss"] for h in model.history]
    tols = [objective_tolerance(s.user_factors, s.item_factors, d, w, w0, lam) for s in states]
    for s, state in enumerate(states):
        want = numpy_objective(state.user_factors, state.item_factors, d, w, lam)
        assert abs(losses[s] - want) <= tols[s], (s, losses[s] - want, tols[s])
    for s in range(1, len(states)):
        before, after = states[s - 1], states[s]
        slack = (tols[s - 1] + tols[s]
                 + cg_half_sweep_excess(before.item_factors, d, w, lam, before.user_factors, 2, np.float32)
                 + cg_half_sweep_excess(after.user_factors, d.T, w.T, lam, before.item_factors, 2,
                                        np.float32))
        assert losses[s] <= losses[s - 1] + slack, (s, losses, slack)
    np.testing.assert_array_equal(model.user_factors, states[-1].user_factors)


def test_the_backends_agree():
    """The same fit on both backends (float64): equal up to rounding, far below the change
    one sweep makes."""
    d = random_ratings(60, 40, 0.2, 6)
    kw = dict(factors=8, iterations=3, regularization=0.5, alpha=3.0, dtype="float64")
    a = WALSModel(backend="numba", **kw).fit(CSR.from_dense(d))
    b = WALSModel(backend="tensorflow", **kw).fit(CSR.from_dense(d))
    one = WALSModel(backend="numba", **{**kw, "iterations": 2}).fit(CSR.from_dense(d))
    diff = np.abs(a.user_factors - b.user_factors).max()
    # both solve in float64 (their difference is float64 rounding, ~1e-13 relative after 3
    # sweeps); the stored float32 factors may then differ by one float32 ulp: 2^-23 relative
    assert diff <= 2.0**-22 * np.abs(a.user_factors).max()
    assert np.abs(a.user_factors - one.user_factors).max() > 1e3 * max(diff, 1e-12)


def test_the_backend_is_chosen_as_documented():
    assert WALSModel(device="/CPU:0").backend_in_use() == "numba"
    assert WALSModel(device="/CPU:0", solver="cholesky").backend_in_use() == "tensorflow"
    assert WALSModel(device=["/CPU:0", "/CPU:1"]).backend_in_use() == "tensorflow"
    assert WALSModel(device="/GPU:0").backend_in_use() == "tensorflow"
    assert WALSModel(device="/CPU:0", backend="tensorflow").backend_in_use() == "tensorflow"
    assert WALSModel(device="/CPU:0").hyperparameters()["backend"] == "numba"
    with pytest.raises(HyperparameterError, match="solver='cg' only"):
        WALSModel(backend="numba", solver="cholesky").backend_in_use()
    with pytest.raises(HyperparameterError, match="CPU only"):
        WALSModel(backend="numba", device="/GPU:0").backend_in_use()
    with pytest.raises(HyperparameterError, match="backend must be one of"):
        WALSModel(backend="cuda")


def test_nan_factors_are_refused():
    d = random_ratings(20, 10, 0.4, 7)
    model = WALSModel(factors=4, iterations=1, backend="numba")
    u0, v0 = model.initial_factors(20, 10)
    v0[3, 0] = np.nan
    from trainer.wals import TrainingState

    with pytest.raises(FloatingPointError, match="NaN"):
        model.fit(CSR.from_dense(d), state=TrainingState(0, u0, v0, []))


def test_resuming_from_a_state_gives_the_same_factors():
    """A checkpointed state continued on this backend equals the uninterrupted fit, bit for bit
    (what ``python -m trainer.task --resume`` relies on)."""
    d = random_ratings(50, 30, 0.25, 8)
    kw = dict(factors=6, iterations=4, regularization=0.3, backend="numba")
    states = []
    whole = WALSModel(**kw).fit(CSR.from_dense(d), callback=states.append)
    resumed = WALSModel(**kw).fit(CSR.from_dense(d), state=states[1])
    np.testing.assert_array_equal(whole.user_factors, resumed.user_factors)
    np.testing.assert_array_equal(whole.item_factors, resumed.item_factors)
    assert [h["sweep"] for h in resumed.history] == [1, 2, 3, 4]
