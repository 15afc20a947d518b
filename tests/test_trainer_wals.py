"""The WALS solver against dense NumPy closed-form solves (independent oracles)."""
from __future__ import annotations

import numpy as np
import pytest



from tests.trainer_fixtures import (  # noqa: F401 - device: the per-device fixture
    dense_weights,
    device,
    numpy_objective,
    numpy_solve_rows,
    random_ratings,
)

from tests.tolerances import (
    assert_rows_within,
    cg_half_sweep_excess,
    half_sweep_excess,
    normwise_forward_bound,
    objective_tolerance,
    rwse_rel_tolerance,
    solve_tolerance,
    unit_roundoff,
    weight_sum_tolerance,
)

from trainer.errors import TrainerInputError
from trainer.sparse import CSR
from trainer import wals as wals_mod
from trainer.wals import WALSModel, compute_loss, route_batches, solve_half_sweep

tf = pytest.importorskip("tensorflow")


def _on(device: str, array: np.ndarray):
    """``array`` as a tensor held on ``device`` (the solver runs where its fixed factors are)."""
    with tf.device(device):
        return tf.identity(tf.constant(array))


def _edge_matrix(seed: int = 0) -> np.ndarray:
    """23 × 17 with an empty row, a full row, an empty column, a full column, rows with one
    entry (k = 8 is larger than most rows' counts). Float32-exact, like every rating the
    trainer stores (``CSR.values`` is float32), so the float64 oracles get the same inputs."""
    d = random_ratings(23, 17, 0.15, seed)
    d[0, :] = 0.0  # user without observations
    d[1, :] = np.linspace(0.1, 1.0, 17, dtype=np.float32)  # user with every item
    d[:, 2] = 0.0  # item without observations
    d[:, 3] = 0.5  # item every user has
    d[0, 3] = 0.0
    d[4, :] = 0.0
    d[4, 9] = float(np.float32(0.7))  # single-entry row
    return d


def _half_sweeps(model: WALSModel, d: np.ndarray, v0: np.ndarray, u0: np.ndarray,
                 woodbury: bool = True, **kw):
    """Both half-sweeps from given factors; ``woodbury=True`` sends every row with at most
    3k/4 entries through the Woodbury path (at any k), ``False`` none."""
    user_plan, item_plan = model.prepare(CSR.from_dense(d), **kw)
    w0, lam = model.weighting.w0, model.regularization
    u = solve_half_sweep(_on(model.device, v0), user_plan, w0, lam, woodbury=woodbury)
    v = solve_half_sweep(_on(model.device, u0), item_plan, w0, lam, woodbury=woodbury)
    return u.numpy(), v.numpy()


def _assert_half_sweeps_exact(u, v, v0, u0, target, w, lam):
    """Both float32 half-sweeps against the float64 oracle, given the same inputs, row by row
    within the bound (X) of tests/tolerances.py (κ(M_i) × the float32 forming and Cholesky
    backward errors, plus the oracle's own float64 error)."""
    assert_rows_within(u, numpy_solve_rows(v0, target, w, lam),
                       solve_tolerance(v0, target, w, lam, np.float32), "row half-sweep")
    assert_rows_within(v, numpy_solve_rows(u0, target.T, w.T, lam),
                       solve_tolerance(u0, target.T, w.T, lam, np.float32), "column half-sweep")


@pytest.mark.parametrize(
    "w0,lam,k,batch_size,max_floats",
    [
        (0.1, 0.5, 8, 4096, 1 << 24),  # one batch per length bucket
        (0.0, 0.05, 8, 2, 64),  # w0 = 0, tiny batches: many buckets and splits
        (1.0, 2.0, 3, 5, 1 << 24),
    ],
)
@pytest.mark.parametrize("woodbury", [True, False])
def test_half_sweeps_equal_dense_closed_form(w0, lam, k, batch_size, max_floats, woodbury, device):
    d = _edge_matrix()
    rng = np.random.default_rng(1)
    v0 = rng.standard_normal((17, k)).astype(np.float32)
    u0 = rng.standard_normal((23, k)).astype(np.float32)
    model = WALSModel(
        factors=k, regularization=lam, objective="wals", unobserved_weight=w0,
        batch_size=batch_size, max_batch_floats=max_floats, device=device,
    )
    u, v = _half_sweeps(model, d, v0, u0, woodbury=woodbury)
    w = dense_weights(d, w0, np.ones(23), np.ones(17))
    _assert_half_sweeps_exact(u, v, v0, u0, d, w, lam)
    assert np.all(u[0] == 0) and np.all(v[2] == 0)  # empty row / column: exactly 0, no NaN
    assert np.all(np.isfinite(u)) and np.all(np.isfinite(v))


def test_half_sweeps_with_row_and_column_weights(device):
    d = _edge_matrix(3)
    rng = np.random.default_rng(2)
    rw, cw = rng.uniform(0.2, 3.0, 23), rng.uniform(0.0, 5.0, 17)
    v0 = rng.standard_normal((17, 6)).astype(np.float32)
    u0 = rng.standard_normal((23, 6)).astype(np.float32)
    model = WALSModel(factors=6, regularization=0.3, objective="wals", unobserved_weight=0.2,
                      device=device)
    u, v = _half_sweeps(model, d, v0, u0, row_weights=rw, col_weights=cw)
    w = dense_weights(d, 0.2, rw, cw)
    _assert_half_sweeps_exact(u, v, v0, u0, d, w, 0.3)


@pytest.mark.parametrize("kind,param", [("inverse_linear", 7.0), ("inverse_power", 0.6)])
def test_popularity_column_weights(kind, param, device):
    d = _edge_matrix(4)
    n = (d > 0).sum(axis=0).astype(float)
    with np.errstate(divide="ignore"):
        gamma = np.where(n > 0, param / n, 0.0) if kind == "inverse_linear" else np.where(n > 0, n ** -param, 0.0)
    rng = np.random.default_rng(5)
    v0 = rng.standard_normal((17, 4)).astype(np.float32)
    u0 = rng.standard_normal((23, 4)).astype(np.float32)
    model = WALSModel(factors=4, regularization=0.1, objective="wals", unobserved_weight=0.05,
                      col_weights=kind, col_weight_factor=param, col_weight_exp=param, device=device)
    u, v = _half_sweeps(model, d, v0, u0)
    w = dense_weights(d, 0.05, np.ones(23), gamma)
    _assert_half_sweeps_exact(u, v, v0, u0, d, w, 0.1)


@pytest.mark.parametrize("confidence", ["linear", "log"])
def test_implicit_confidence_objective(confidence, device):
    d = (_edge_matrix(6) * 5.0).astype(np.float32).astype(np.float64)  # as the CSR stores it
    alpha, eps = 4.0, 0.5
    f = d if confidence == "linear" else np.log1p(d / eps)
    w = np.where(d > 0, 1.0 + alpha * f, 1.0)
    pref = (d > 0).astype(float)
    rng = np.random.default_rng(7)
    v0 = rng.standard_normal((17, 5)).astype(np.float32)
    u0 = rng.standard_normal((23, 5)).astype(np.float32)
    model = WALSModel(factors=5, regularization=0.2, objective="implicit", alpha=alpha,
                      confidence=confidence, epsilon=eps, device=device)
    u, v = _half_sweeps(model, d, v0, u0)
    _assert_half_sweeps_exact(u, v, v0, u0, pref, w, 0.2)


def test_cg_converges_to_closed_form(device):
    """30 float64 CG steps on k = 6 (exact in ≤ 6 steps in exact arithmetic) reach the closed
    form to within ``m·(X)``, m = 30: (X) of tests/tolerances.py is one backward-stable direct
    solve's forward error; in floating point CG's computed residual drifts from the true one by
    at most about one such rounding per step (Greenbaum, SIAM J. Matrix Anal. Appl. 18 (1997)
    535, "attainable accuracy" of recursively computed residuals: linear in the number of
    steps), which is where CG's error stagnates. An estimate with stated constants, not a
    theorem; 2 steps miss it by orders of magnitude, so the check can fail."""
    d = _edge_matrix(8)
    rng = np.random.default_rng(9)
    v0 = rng.standard_normal((17, 6))
    model = WALSModel(factors=6, regularization=0.4, dtype="float64", objective="wals",
                      unobserved_weight=0.3, device=device)
    user_plan, _ = model.prepare(CSR.from_dense(d))
    start = _on(device, rng.standard_normal((23, 6)))
    steps = 30
    u = solve_half_sweep(_on(device, v0), user_plan, 0.3, 0.4, "cg", cg_steps=steps, previous=start)
    w = dense_weights(d, 0.3, np.ones(23), np.ones(17))
    want = numpy_solve_rows(v0, d, w, 0.4)
    tol = steps * solve_tolerance(v0, d, w, 0.4, np.float64)
    assert_rows_within(u.numpy(), want, tol, "30 CG steps")
    # and 2 steps are not yet the solution (the test above can fail)
    u2 = solve_half_sweep(_on(device, v0), user_plan, 0.3, 0.4, "cg", cg_steps=2, previous=start)
    err2 = np.linalg.norm(u2.numpy() - want, axis=1)
    assert np.all(err2[tol > 0] > 1e3 * tol[tol > 0])


def test_loss_and_rwse_equal_dense_objective(device):
    d = _edge_matrix(10)
    rng = np.random.default_rng(11)
    u = rng.standard_normal((23, 5)).astype(np.float32)
    v = rng.standard_normal((17, 5)).astype(np.float32)
    model = WALSModel(factors=5, regularization=0.25, objective="wals", unobserved_weight=0.15,
                      device=device)
    user_plan, _ = model.prepare(CSR.from_dense(d))
    got = compute_loss(_on(device, u), _on(device, v), user_plan, 0.15, 0.25)
    w = dense_weights(d, 0.15, np.ones(23), np.ones(17))
    want = numpy_objective(u, v, d, w, 0.25)
    unreg = numpy_objective(u, v, d, w, 0.0)
    # bounds: tests/tolerances.py (float32-stored W − w0 and W·A dominate the float64 sums)
    tol = objective_tolerance(u, v, d, w, 0.15, 0.25)
    assert abs(got["loss"] - want) <= tol, (got["loss"] - want, tol)
    assert abs(got["unregularized_loss"] - unreg) <= tol, (got["unregularized_loss"] - unreg, tol)
    tol_w = weight_sum_tolerance(w)
    assert abs(got["sum_weights"] - w.sum()) <= tol_w, (got["sum_weights"] - w.sum(), tol_w)
    rwse = np.sqrt(unreg / w.sum())
    assert abs(got["rwse"] - rwse) <= rwse * rwse_rel_tolerance(unreg, tol, w.sum(), tol_w)
    # the bound is informative: a wrong term (λ, w0, one weight) cannot hide in it
    assert tol < 1e-6 * want, tol / want


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("solver", ["cholesky", "cg"])
def test_objective_never_increases(seed, solver, device):
    """Property: over random shapes, densities, k, w0, λ and weights the per-sweep objective
    (float32 solves, float64 loss) is non-increasing up to rounding, bounded as in
    tests/tolerances.py. From sweep s − 1 to s the loss may rise by at most the evaluation
    error of both losses (:func:`objective_tolerance`) plus, for each half-sweep, how far its
    computed rows end above the exact block minimum (which is ≤ the loss before it):

    * Cholesky: ``Σ_i λ_max(M_i)·(X)_i²`` (section 3), a theorem;
    * CG (2 steps from the previous factors, which exact CG never makes worse): the rows may
      end ``2√κ_i ‖r0_i‖ δ_i + λ_max δ_i²`` above the exact-arithmetic CG iterate, with
      ``δ_i = steps·(X)_i`` the same per-step drift estimate as in
      :func:`test_cg_converges_to_closed_form` (an estimate, not a theorem) and
      ``‖r_m‖ ≤ √κ ‖r_0‖`` (CG never increases ``‖r‖_{M⁻¹}``)."""
    rng = np.random.default_rng(100 + seed)
    n, m = int(rng.integers(2, 40)), int(rng.integers(2, 30))
    d = random_ratings(n, m, float(rng.uniform(0.05, 0.6)), seed)
    d[0, 0] = float(np.float32(0.9))  # at least one entry (float32-exact, as stored)
    k = int(rng.integers(1, 12))
    w0, lam = float(rng.choice([0.0, rng.uniform(0, 1)])), float(rng.uniform(0.01, 2.0))
    rw, cw = rng.uniform(0.1, 4.0, n), rng.uniform(0.0, 4.0, m)
    model = WALSModel(factors=k, regularization=lam, solver=solver, cg_steps=2, objective="wals",
                      unobserved_weight=w0, random_state=seed, iterations=6,
                      calculate_training_loss=True, device=device)
    states = []
    model.fit(CSR.from_dense(d), row_weights=rw, col_weights=cw,
              callback=lambda st: states.append(st))
    losses = [h["loss"] for h in model.history]
    assert len(states) == len(losses) == 6
    w = dense_weights(d, w0, rw, cw)

    def excess(fixed, target, weights, previous):
        if solver == "cholesky":
            return half_sweep_excess(fixed, target, weights, lam, np.float32)
        return cg_half_sweep_excess(fixed, target, weights, lam, previous, 2, np.float32)

    eval_tol = [objective_tolerance(st.user_factors, st.item_factors, d, w, w0, lam) for st in states]
    for s in range(1, 6):
        before, after = states[s - 1], states[s]
        slack = (eval_tol[s - 1] + eval_tol[s]
                 + excess(before.item_factors, d, w, before.user_factors)
                 + excess(after.user_factors, d.T, w.T, before.item_factors))
        assert losses[s] <= losses[s - 1] + slack, (s, losses, slack)
    final = numpy_objective(model.user_factors, model.item_factors, d, w, lam)
    assert abs(losses[-1] - final) <= eval_tol[-1], (losses[-1] - final, eval_tol[-1])


@pytest.mark.parametrize("k", [7, 30])  # k = 30: every row goes through the Woodbury path
def test_fit_is_deterministic_and_last_half_sweep_is_exact(k, device):
    d = _edge_matrix(12)
    kw = dict(factors=k, regularization=0.2, objective="wals", unobserved_weight=0.1, random_state=3,
              iterations=3, device=device, solver="cholesky")
    a = WALSModel(**kw).fit(CSR.from_dense(d))
    b = WALSModel(**kw).fit(CSR.from_dense(d))
    np.testing.assert_array_equal(a.user_factors, b.user_factors)
    np.testing.assert_array_equal(a.item_factors, b.item_factors)
    c = WALSModel(**dict(kw, random_state=4)).fit(CSR.from_dense(d))
    assert not np.array_equal(a.item_factors, c.item_factors)
    # the last half-sweep, given the same (final) user factors: the one-solve bound applies,
    # no compounding over sweeps
    w = dense_weights(d, 0.1, np.ones(23), np.ones(17))
    assert_rows_within(a.item_factors, numpy_solve_rows(a.user_factors, d.T, w.T, 0.2),
                       solve_tolerance(a.user_factors, d.T, w.T, 0.2, np.float32), "last half-sweep")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"factors": 0}, "factors"),
        ({"factors": 2.5}, "factors"),
        ({"regularization": 0.0}, "regularization"),
        ({"regularization": float("nan")}, "regularization"),
        ({"solver": "lu"}, "solver"),
        ({"iterations": 0}, "iterations"),
        ({"unobserved_weight": -1.0}, "unobserved_weight"),
        ({"alpha": float("inf")}, "alpha"),
        ({"objective": "als"}, "objective"),
        ({"col_weights": "inverse_linear"}, "col_weights"),  # implicit (the default) has none
        ({"random_state": -1}, "random_state"),
        ({"calculate_training_loss": 1}, "calculate_training_loss"),
        ({"max_batch_floats": 0}, "max_batch_floats"),
    ],
)
def test_bad_hyperparameters(kwargs, match):
    with pytest.raises(TrainerInputError, match=match):
        WALSModel(**kwargs)


def test_bad_matrices():
    with pytest.raises(TrainerInputError, match="NaN"):
        CSR.from_coo([0], [1], [np.nan], (2, 2))
    with pytest.raises(TrainerInputError, match="inf"):
        CSR.from_coo([0], [1], [np.inf], (2, 2))
    with pytest.raises(TrainerInputError, match="out of range"):
        CSR.from_coo([0], [2], [1.0], (2, 2))
    with pytest.raises(TrainerInputError, match="duplicate"):
        CSR.from_coo([0, 0], [1, 1], [1.0, 2.0], (2, 2))
    with pytest.raises(TrainerInputError, match="no entries"):
        WALSModel(iterations=1).fit(CSR.from_dense(np.zeros((3, 3))))
    with pytest.raises(TrainerInputError, match="implicit"):
        WALSModel(objective="implicit", iterations=1).fit(CSR.from_dense(np.array([[1.0, -1.0]])))


def _short_row_case(w0: float, lam: float, scale: float, k: int = 16):
    """60 × 40, every row ≤ 3k/4 entries, fixed factors with one dominant direction (column 0
    ×30), float32-exact so that the float64 oracle sees exactly the solver's factors."""
    d = random_ratings(60, 40, 0.12, 21)
    d[:, :3] = 0.0
    rng = np.random.default_rng(22)
    v0 = rng.standard_normal((40, k)) * scale
    v0[:, 0] *= 30.0
    return d, v0.astype(np.float32).astype(np.float64)


def _woodbury_theta_numpy(v0, d, w, w0, lam, plan, u):
    """(W3) of trainer/wals.py per batch, from the dense float64 data: u·(κ(B0) + max tr K_i),
    tr K_i = Σ_j (W_ij − w0) v_jᵀ B0⁻¹ v_j over the row's observed j."""
    k = v0.shape[1]
    b0 = w0 * v0.T @ v0 + lam * np.eye(k)
    ev = np.linalg.eigvalsh(b0)
    h = np.einsum("jk,jk->j", v0, np.linalg.solve(b0, v0.T).T)
    tr_k = (np.where(d != 0, w - w0, 0.0) * h[None, :]).sum(axis=1)
    return [u * (ev[-1] / ev[0] + tr_k[b.rows.numpy()].max()) for b in plan.batches]


@pytest.mark.parametrize(
    "w0,lam,scale,float32_paths",
    [
        # w0 VᵀV dominates B0: κ(M) ≤ 7e3
        (1.0, 1e-3, 3.0, {"woodbury"}),
        (0.01, 0.07, 0.3, {"woodbury"}),  # κ(M) ≤ 1.5e4
        # B0 = λI, κ(M) up to 1.3e6: (W3) sends the batches to k × k (θ = 1.1–78 × limit)
        (0.0, 1e-2, 1.0, {"cholesky"}),
        (0.0, 0.3, 1.0, {"woodbury", "cholesky"}),  # κ(M) up to 4e4: both paths
        (0.0, 1.0, 1.0, {"woodbury"}),  # κ(M) up to 1.3e4: Woodbury at θ up to 0.78 × limit
    ],
)
def test_short_row_paths_are_exact_and_backward_stable(w0, lam, scale, float32_paths, device):
    """Rows with ≤ 3k/4 entries on the Woodbury path (where (W3) allows) and on the k×k
    Cholesky path, float64 and float32, against per-row dense float64 solves (the oracle is
    built from exactly the factors the solver gets). Bounds, u = unit roundoff (2⁻²⁴ / 2⁻⁵³):

    * backward error β_i = ‖b_i − M_i û_i‖ / (‖M_i‖‖û_i‖ + ‖b_i‖) ≤ k·u (float32): the
      first-order bound γ_k ≈ k·u for the length-k inner products of a backward-stable k×k
      solve; the inputs the oracle keeps exact (w0, λ, W − w0, W·A, VᵀV) add O(u). Measured
      here: ≤ 1.7u on both paths. (Not checked in float64: the oracle's own float64 residual
      is not accurate to 16·2⁻⁵³.)
    * forward error ‖û_i − u_i‖/‖u_i‖ ≤ 2κ_i·k·u / (1 − κ_i·k·u), κ_i = cond₂(M_i) in float64:
      what β_i ≤ k·u implies (Rigal–Gaches backward error, Higham, ASNA 2nd ed., Thm 7.2),
      checked where κ_i·k·u ≤ 1/2 (beyond that it allows any error).

    Both paths meet the same bounds, which is the claim of the module docstring ("no less
    accurate": the refined Woodbury solve is backward stable like Cholesky). Before (W2)/(W3)
    the Woodbury path on the w0 = 0, λ = 0.01 case had β up to 6.5e3·u."""
    k = 16
    d, v0 = _short_row_case(w0, lam, scale, k)
    w = dense_weights(d, w0, np.ones(60), np.ones(40))
    m_rows = [(v0.T * w[i]) @ v0 + lam * np.eye(k) for i in range(60)]
    b_rows = [v0.T @ (w[i] * d[i]) for i in range(60)]
    want = np.array([np.linalg.solve(m, b) for m, b in zip(m_rows, b_rows)])
    kappa = np.array([np.linalg.cond(m) for m in m_rows])
    nonempty = np.abs(want).max(axis=1) > 0
    routes_seen = set()
    for dtype in ("float64", "float32"):
        u = unit_roundoff(dtype)
        for mbf in (None, 2 * k * k):  # 2k²: a batch sent to k × k by (W3) is cut into chunks
            model = WALSModel(factors=k, regularization=lam, dtype=dtype, max_batch_floats=mbf,
                              objective="wals", unobserved_weight=w0, device=device)
            user_plan, _ = model.prepare(CSR.from_dense(d))
            assert max(b.width for b in user_plan.batches) <= 3 * k // 4
            v = _on(device, v0.astype(dtype))
            routes = route_batches(v, user_plan, w0, lam, woodbury=True)
            limit = wals_mod.WOODBURY_MAX_THETA
            theta = _woodbury_theta_numpy(v0, d, w, w0, lam, user_plan, u)
            for route, th in zip(routes, theta):  # (W3), away from its boundary
                if not 0.5 < th / limit < 2:
                    assert route == ("woodbury" if th <= limit else "cholesky"), (th, route)
            routes_seen.update((dtype, r) for r in routes)
            for woodbury in (True, False):
                got = solve_half_sweep(v, user_plan, w0, lam, woodbury=woodbury).numpy()
                got = got.astype(np.float64)
                assert np.all(got[~nonempty] == 0)
                fwd = np.linalg.norm(got - want, axis=1)[nonempty] / np.linalg.norm(
                    want, axis=1)[nonempty]
                bound = normwise_forward_bound(kappa[nonempty], k * u)
                ok = kappa[nonempty] * k * u <= 0.5
                assert np.all(fwd[ok] <= bound[ok]), (dtype, woodbury, (fwd / bound)[ok].max())
                if dtype == "float32":
                    beta = np.array([
                        np.linalg.norm(b_rows[i] - m_rows[i] @ got[i])
                        / (np.linalg.norm(m_rows[i], 2) * np.linalg.norm(got[i])
                           + np.linalg.norm(b_rows[i]))
                        for i in np.flatnonzero(nonempty)
                    ])
                    assert beta.max() <= k * u, (woodbury, mbf, beta.max() / u)
    # the cases exercise what they are meant to; float64 always takes the Woodbury path
    assert {r for dt, r in routes_seen if dt == "float64"} == {"woodbury"}
    assert float32_paths <= {r for dt, r in routes_seen if dt == "float32"}


@pytest.mark.parametrize("solver", ["cholesky", "cg"])
def test_batches_in_flight_give_identical_factors(solver, device):
    """Solving several batches concurrently (the CPU default) gives bit-for-bit the factors of
    one batch at a time, on every path (tiny batches: many of each kind)."""
    d = random_ratings(60, 40, 0.3, 11)
    rng = np.random.default_rng(12)
    k = 8
    v0 = _on(device, rng.standard_normal((40, k)).astype(np.float32))
    u0 = _on(device, rng.standard_normal((60, k)).astype(np.float32))
    model = WALSModel(factors=k, regularization=0.3, solver=solver, batch_size=3,
                      max_batch_floats=200, objective="wals", unobserved_weight=0.1, device=device)
    user_plan, _ = model.prepare(CSR.from_dense(d))
    assert len(user_plan.batches) > 10
    out = [
        solve_half_sweep(v0, user_plan, 0.1, 0.3, solver, previous=u0, woodbury=True,
                         batches_in_flight=n).numpy()
        for n in (1, 2, 4)
    ]
    assert np.array_equal(out[0], out[1]) and np.array_equal(out[0], out[2])
    losses = [compute_loss(_on(device, out[0]), v0, user_plan, 0.1, 0.3, batches_in_flight=n)
              for n in (1, 3)]
    assert losses[0] == losses[1]


class _RowCompressed:
    """A matrix known only by its compressed-row arrays (what scipy.sparse.csr_matrix offers)."""

    def __init__(self, indptr, indices, data, shape, layout="csr"):
        self.indptr, self.indices, self.data, self.shape, self.format = indptr, indices, data, shape, layout


def test_fit_takes_any_compressed_row_matrix_and_sums_repeats():
    """Issue 11 item 1: fit accepts what the field passes around; the oracle is the same fit on
    the CSR built from the dense matrix (repeated entries summed, stored zeros dropped, as
    SciPy defines the matrix)."""
    d = random_ratings(12, 9, 0.4, seed=5)
    dense = CSR.from_dense(d)
    # The same matrix with one entry split in two repeated halves, an explicit zero and rows
    # whose columns are out of order.
    rows, cols, vals = [], [], []
    for i in range(d.shape[0]):
        js = list(np.flatnonzero(d[i]))[::-1]
        for j in js:
            if (i, j) == (0, js[-1]):
                rows += [i, i]; cols += [j, j]; vals += [d[i, j] / 2, d[i, j] / 2]
            else:
                rows.append(i); cols.append(j); vals.append(d[i, j])
        zero_col = int(np.flatnonzero(d[i] == 0)[0])
        rows.append(i); cols.append(zero_col); vals.append(0.0)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=d.shape[0]))])
    packed = _RowCompressed(indptr, np.array(cols), np.array(vals), d.shape)
    assert CSR.from_compressed_rows(packed).to_dense().tolist() == dense.to_dense().tolist()
    kw = dict(factors=3, regularization=0.5, iterations=2, random_state=1, device="/CPU:0")
    want = WALSModel(**kw).fit(dense)
    got = WALSModel(**kw).fit(packed)
    assert np.array_equal(got.user_factors, want.user_factors)
    assert np.array_equal(got.item_factors, want.item_factors)
    with pytest.raises(TrainerInputError, match="tocsr"):
        WALSModel(**kw).fit(_RowCompressed(indptr, np.array(cols), np.array(vals), d.shape, layout="csc"))
    with pytest.raises(TrainerInputError, match="indptr, indices, data, shape"):
        WALSModel(**kw).fit(d)  # a dense array is not a sparse matrix


def test_fit_takes_a_scipy_csr_matrix():
    sparse = pytest.importorskip("scipy.sparse")  # the bench extra; the trainer never needs it
    d = random_ratings(10, 7, 0.5, seed=2)
    kw = dict(factors=3, regularization=0.5, iterations=2, random_state=0, device="/CPU:0")
    want = WALSModel(**kw).fit(CSR.from_dense(d))
    for matrix in (sparse.csr_matrix(d), sparse.csr_array(d)):
        got = WALSModel(**kw).fit(matrix)
        assert np.array_equal(got.user_factors, want.user_factors)


def test_fit_needs_no_scipy():
    import subprocess
    import sys

    # SciPy made unimportable (TensorFlow itself imports it when present, the trainer must not
    # need it): the fit still works, as in the lean training image.
    code = ("import sys, types\n"
            "sys.modules['scipy'] = None\n"
            "import numpy as np\n"
            "from trainer.wals import WALSModel\n"
            "m = types.SimpleNamespace(indptr=np.array([0, 2, 3]), indices=np.array([0, 1, 1]),"
            " data=np.array([1.0, 2.0, 1.0]), shape=(2, 2))\n"
            "print(WALSModel(factors=1, iterations=1).fit(m).user_factors.shape)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "(2, 1)", done.stderr[-2000:]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("objective,confidence", [("wals", "linear"), ("implicit", "linear"),
                                                  ("implicit", "log")])
def test_in_graph_weights_equal_the_formulas(objective, confidence, dtype):
    """trainer.weights.observed_tf (what the solver's kernels compute per batch) against the
    weight formulas written out in float64 NumPy: W − w0 and W·A within a few roundings of the
    dtype (each output is one to three operations of the inputs, log1p within 1 ulp)."""
    from trainer.weights import observed_tf

    rng = np.random.default_rng(3)
    r = np.concatenate([[0.0], rng.gamma(1.0, 2.0, 400)]).astype(dtype).astype(np.float64)
    rho = rng.random(r.size).astype(dtype).astype(np.float64)
    gamma = rng.random(r.size).astype(dtype).astype(np.float64)
    alpha, eps, w0 = 7.5, 0.5, (1.0 if objective == "implicit" else 0.25)
    if objective == "wals":
        extra, wa = rho * gamma, (w0 + rho * gamma) * r
    else:
        f = r if confidence == "linear" else np.log1p(r / eps)
        extra, wa = alpha * f, np.where(r > 0, 1.0 + alpha * f, 0.0)
    got = [t.numpy().astype(np.float64) for t in observed_tf(
        objective, confidence, tf.constant(r, dtype), tf.constant(rho, dtype),
        tf.constant(gamma, dtype), tf.constant(alpha, dtype), tf.constant(eps, dtype),
        tf.constant(w0, dtype))]
    u = unit_roundoff(dtype)
    for want, have in zip((extra, wa), got):
        assert np.all(np.abs(have - want) <= 6 * u * np.abs(want)), np.max(np.abs(have - want))


@pytest.mark.parametrize("solver", ["cholesky", "cg"])
def test_solving_in_place_gives_the_same_factors(solver):
    """``out=previous`` (what ``fit`` does) against a fresh output: bit-for-bit the same rows,
    and the rows without entries set to 0 in place."""
    d = random_ratings(50, 30, 0.3, 8)
    d[[4, 9]] = 0.0
    rng = np.random.default_rng(9)
    k = 6
    v0 = _on("/CPU:0", rng.standard_normal((30, k)).astype(np.float32))
    u0 = rng.standard_normal((50, k)).astype(np.float32)
    model = WALSModel(factors=k, regularization=0.3, solver=solver, batch_size=4,
                      device="/CPU:0")
    user_plan, _ = model.prepare(CSR.from_dense(d))
    fresh = solve_half_sweep(v0, user_plan, 1.0, 0.3, solver, previous=_on("/CPU:0", u0)).numpy()
    with tf.device("/CPU:0"):
        var = tf.Variable(u0)
    solve_half_sweep(v0, user_plan, 1.0, 0.3, solver, previous=var, out=var)
    assert np.array_equal(var.numpy(), fresh)
    assert not np.any(fresh[[4, 9]]) and np.all(np.any(fresh[np.any(d, axis=1)] != 0, axis=1))
