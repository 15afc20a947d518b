r"""Tolerances for the trainer's floating-point tests, derived from rounding-error analysis.

Every tolerance a trainer test uses comes from one of the bounds below, evaluated on the test's
own data in float64 by NumPy; none is picked by hand or measured on one CPU. The bounds hold
for any order in which a kernel sums (recursive, pairwise, blocked, the vectorised and
multithreaded reduction trees of Eigen, oneDNN and BLAS), so they do not depend on the CPU.

Model of arithmetic (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., 2002,
§2.2 and Lemma 3.1): each operation in precision ``t`` returns ``(a op b)(1 + δ)``, ``|δ| ≤ u``,
unit roundoff ``u = 2⁻²⁴`` (float32) or ``2⁻⁵³`` (float64); a fused multiply-add only drops a
rounding. A product of ``n`` factors ``(1 + δ_i)^{±1}`` is ``1 + θ_n`` with::

    |θ_n| ≤ γ_n = n u / (1 − n u)                                                         (G)

Assumed: IEEE float32 arithmetic in the kernels (no TF32 or bfloat16 matmuls: tests run on
the CPU, ``tests/conftest.py`` hides GPUs; oneDNN's default float32 math mode is exact f32).

1. Sums and inner products (Higham §3.1 and §4.2). In any order each term passes through at
   most ``n − 1`` additions, so::

       |fl(Σ_{i≤n} x_i) − Σ x_i| ≤ γ_{n−1} Σ |x_i|,       |fl(xᵀy) − xᵀy| ≤ γ_n |x|ᵀ|y|      (S)

   Pairwise summation (``np.sum`` on a contiguous array) has ``γ_{⌈log₂ n⌉+c}`` instead, but the
   kernel, not the test, decides the order, so only the order-free (S) is used. The trainer's
   loss is summed in float64 (``u = 2⁻⁵³``), but its per-entry ``W − w0`` and ``W·A`` are stored
   in float32: that input rounding, ``≤ 2⁻²⁴`` relative per entry, dominates (S) unless a sum
   has more than ``2²⁹`` terms (:func:`objective_tolerance`).

2. One row solve of a half-sweep (``trainer/wals.py``). With the ``n`` fixed factor rows
   ``v_j`` (``k`` columns), weights ``W_j ≥ 0`` and targets ``A_j`` of one row::

       M = Σ_j W_j v_j v_jᵀ + λI,   b = Σ_j W_j A_j v_j,    M x = b
       M_abs = Σ_j W_j |v_j||v_j|ᵀ + λI,   b_abs = Σ_j |W_j A_j| |v_j|

   *Forming* ``M̂ = fl(fl(w0·fl(VᵀV) + λI) + fl(Xᵀ diag(fl(W − w0)) X))`` (``X`` the observed
   rows). Every term of an entry passes through at most ``n + 4`` roundings: the ``w0 v_jv_jᵀ``
   terms an inner product of ``n`` terms (γ_n), ``w0`` rounded to float32, the product by it,
   two additions; the ``(W_j − w0) v_jv_jᵀ`` terms an inner product of ``L ≤ n``, the float64
   subtraction ``W − w0`` and its float32 storage (both relative to ``W_j``, which bounds
   ``W_j − w0``: the subtraction may cancel), the product by it, one addition; ``λ`` its
   float32 rounding and two additions. Two more are allowed for the oracle's own float64
   weight arithmetic, which need not be the trainer's (e.g. popularity weights the test
   computes itself). With ``b̂ = fl(Xᵀ fl(W·A))`` (γ_n, the float64 product, the float32
   storage, plus the same two)::

       |M̂ − M| ≤ γ_{n+6} M_abs,      |b̂ − b| ≤ γ_{n+4} b_abs                                (F)

   A float64 fold-in (``recalculate_user``, the SavedModel's ``fold_in``) forms the same sums
   without the float32 storage: (F) with ``u = 2⁻⁵³`` holds for it too.

   *Solving* by Cholesky (Higham Thm 10.3, 10.4): ``(M̂ + ΔM)x̂ = b̂`` with
   ``|ΔM| ≤ γ_{3k+1} |R̂ᵀ||R̂|``, and ``‖|R̂ᵀ||R̂|‖₂ ≤ ‖R̂‖²_F = tr(R̂ᵀR̂) ≤ tr(M̂)/(1 − γ_{k+1})``
   (the diagonal of Thm 10.3), ``tr M̂ ≤ (1 + γ_{n+6}) tr M`` (``M_abs`` and ``M`` share their
   diagonal). So ``‖ΔM‖₂ ≤ β_s ‖M‖₂`` with::

       β_s = γ_{3k+1} (1 + γ_{n+6}) tr(M) / ((1 − γ_{k+1}) ‖M‖₂)                             (C)

   (``tr M ≤ k‖M‖``, so this is at most Higham's normwise ``k γ_{3k+1}``, and much less when
   ``M`` is a low-rank term plus ``λI``, the usual case.) The Woodbury short-row path is not
   covered by a theorem: its claim (module docstring of ``trainer/wals.py``: (W3) plus two
   steps of iterative refinement) is a normwise backward error ``‖b − M x̂‖ ≤ k·u(‖M‖‖x̂‖+‖b‖)``
   against the exact ``M, b`` — what ``test_short_row_paths_are_exact_and_backward_stable``
   checks — and ``k·u < (3k+1)u ≤ β_s``, so allowing ``β_s`` on both ``M`` and ``b`` covers it.
   Together::

       (M + E) x̂ = b + e,   ‖E‖₂ ≤ ε_M = γ_{n+6}‖M_abs‖₂ + β_s‖M‖₂
                            ‖e‖₂ ≤ ε_b = γ_{n+4}‖b_abs‖₂ + β_s‖b‖₂

   (for Cholesky the ``β_s‖b‖₂`` is spare: its solve perturbs only ``M``).

   *Forward error* (perturbation of ``Mx = b``; Higham Thm 7.2 for the normwise form):
   ``M(x̂ − x) = e − E x̂`` gives, when ``‖M⁻¹‖₂ ε_M < 1``::

       ‖x̂ − x‖₂ ≤ ‖M⁻¹‖₂ (ε_b + ε_M ‖x‖₂) / (1 − ‖M⁻¹‖₂ ε_M)                                (X)

   i.e. about ``κ₂(M) · (β_s + γ_{n+6}‖M_abs‖/‖M‖) · ‖x‖``: condition number × eps, with
   ``‖M⁻¹‖₂ = 1/λ_min(M)`` from ``np.linalg.eigvalsh`` in float64. An empty row (``b = 0``) gets
   the bound 0: its solution must be exactly 0. The float64 oracle's own error is (X) with
   ``u = 2⁻⁵³`` (its LU's pivot growth ρ would multiply that term; it is ``2⁻²⁹`` of the float32
   term, so any ρ < 2²⁰ changes the total by under 0.1 %) and is added. A float64 solve whose
   result is then stored in float32 (fold-in) adds ``u₃₂ ‖x̂‖₂ ≤ u₃₂(‖x‖₂ + bound)``.

3. An exact minimiser computed with error ``δ`` raises the row's quadratic
   ``f(y) = yᵀMy − 2bᵀy`` by exactly ``δᵀMδ ≤ λ_max(M)‖δ‖²`` above its minimum
   (:func:`half_sweep_excess`): the slack of "the objective never increases".

4. Dot products for top-k scores: ``|fl(qᵀt) − qᵀt| ≤ γ_k |q|ᵀ|t|`` (S); a ranking computed
   from such scores may swap two targets only when their exact scores are within the sum of
   their tolerances (:func:`assert_topk_consistent`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

U32 = 2.0**-24
U64 = 2.0**-53


def unit_roundoff(dtype: Any) -> float:
    """``u = eps/2``: ``2⁻²⁴`` for float32, ``2⁻⁵³`` for float64."""
    return float(np.finfo(np.dtype(dtype)).eps) / 2.0


def gamma(n: int, dtype: Any) -> float:
    """(G): ``γ_n = n·u/(1 − n·u)``; ``inf`` when ``n·u ≥ 1`` (no bound)."""
    nu = n * unit_roundoff(dtype)
    return nu / (1.0 - nu) if nu < 1.0 else float("inf")


def normwise_forward_bound(kappa: np.ndarray, beta: float) -> np.ndarray:
    """Relative forward error implied by a normwise backward error ``β`` on both ``M`` and ``b``
    (Rigal–Gaches; Higham Thm 7.2 with ``‖M⁻¹‖‖b‖ ≤ κ‖x‖``): ``2κβ/(1 − κβ)``, ``inf`` where
    ``κβ ≥ 1/2`` (there it allows any error; callers check only ``κβ ≤ 1/2``)."""
    kb = np.asarray(kappa, np.float64) * beta
    return np.where(kb <= 0.5, 2.0 * kb / (1.0 - np.minimum(kb, 0.5)), np.inf)


# --------------------------------------------------------------------------- row solves
@dataclass
class RowSystems:
    """The float64 normal equations of every row (section 2 of the module docstring)."""

    m: np.ndarray  # (R, k, k)  M_i
    b: np.ndarray  # (R, k)     b_i
    x: np.ndarray  # (R, k)     float64 solution of M_i x = b_i
    m_norm: np.ndarray  # ‖M_i‖₂ = λ_max
    m_inv_norm: np.ndarray  # ‖M_i⁻¹‖₂ = 1/λ_min
    m_abs_norm: np.ndarray  # ‖M_abs,i‖₂
    trace: np.ndarray  # tr M_i
    b_abs_norm: np.ndarray  # ‖b_abs,i‖₂
    nfixed: int

    @property
    def kappa(self) -> np.ndarray:
        return self.m_norm * self.m_inv_norm


def row_systems(fixed: np.ndarray, target: np.ndarray, weights: np.ndarray,
                lam: float) -> RowSystems:
    """``M_i, b_i`` and the norms (X) needs, in float64, for the rows of the dense ``target``
    and ``weights`` (rows × fixed rows, as :func:`trainer_fixtures.numpy_solve_rows` takes)."""
    v = np.asarray(fixed, np.float64)
    w = np.asarray(weights, np.float64)
    t = np.asarray(target, np.float64)
    if np.any(w < 0):
        raise ValueError("the bounds assume W >= 0 (the trainer refuses anything else)")
    k = v.shape[1]
    eye = np.eye(k)
    m = np.einsum("jp,ij,jq->ipq", v, w, v) + lam * eye
    m_abs = np.einsum("jp,ij,jq->ipq", np.abs(v), w, np.abs(v)) + lam * eye
    b = np.einsum("jp,ij->ip", v, w * t)
    b_abs = np.einsum("jp,ij->ip", np.abs(v), np.abs(w * t))
    ev = np.linalg.eigvalsh(m)
    if np.any(ev[:, 0] <= 0):
        raise ValueError("a row's normal equations are not positive definite")
    return RowSystems(
        m=m, b=b, x=np.linalg.solve(m, b[..., None])[..., 0],
        m_norm=ev[:, -1], m_inv_norm=1.0 / ev[:, 0],
        m_abs_norm=np.linalg.eigvalsh(m_abs)[:, -1], trace=np.trace(m, axis1=1, axis2=2),
        b_abs_norm=np.linalg.norm(b_abs, axis=1), nfixed=v.shape[0],
    )


def _forward(rs: RowSystems, dtype: Any) -> np.ndarray:
    """(X) for a solve in ``dtype`` (forming (F) + solving (C)); ``inf`` where
    ``‖M⁻¹‖ ε_M ≥ 1``."""
    k, n = rs.m.shape[1], rs.nfixed
    g_m, g_b = gamma(n + 6, dtype), gamma(n + 4, dtype)
    beta_s = gamma(3 * k + 1, dtype) * (1 + g_m) * rs.trace / ((1 - gamma(k + 1, dtype)) * rs.m_norm)
    eps_m = g_m * rs.m_abs_norm + beta_s * rs.m_norm
    eps_b = g_b * rs.b_abs_norm + beta_s * np.linalg.norm(rs.b, axis=1)
    q = rs.m_inv_norm * eps_m
    x_norm = np.linalg.norm(rs.x, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = rs.m_inv_norm * (eps_b + eps_m * x_norm) / (1.0 - q)
    return np.where(q < 1.0, out, np.inf)


def solve_tolerance(fixed: np.ndarray, target: np.ndarray, weights: np.ndarray, lam: float,
                    dtype: Any, output_dtype: Any | None = None) -> np.ndarray:
    """Per-row bound on ``‖x̂_i − x_i^oracle‖₂``: (X) for the solver's ``dtype`` plus (X) at
    ``u = 2⁻⁵³`` for the float64 oracle, plus ``u_out(‖x‖ + bound)`` when the result is stored
    in a narrower ``output_dtype`` (module docstring, section 2)."""
    rs = row_systems(fixed, target, weights, lam)
    tol = _forward(rs, dtype) + _forward(rs, np.float64)
    if output_dtype is not None and unit_roundoff(output_dtype) > unit_roundoff(dtype):
        tol = tol + unit_roundoff(output_dtype) * (np.linalg.norm(rs.x, axis=1) + tol)
    return tol


def assert_rows_within(got: np.ndarray, want: np.ndarray, tol: np.ndarray, what: str = "") -> None:
    """``‖got_i − want_i‖₂ ≤ tol_i`` for every row (``tol`` must be finite: a test whose bound
    allows anything proves nothing)."""
    got = np.atleast_2d(np.asarray(got, np.float64))
    want = np.atleast_2d(np.asarray(want, np.float64))
    tol = np.atleast_1d(np.asarray(tol, np.float64))
    assert np.all(np.isfinite(tol)), f"{what}: no finite bound for rows {np.flatnonzero(~np.isfinite(tol))}"
    err = np.linalg.norm(got - want, axis=1)
    bad = ~(err <= tol)
    if np.any(bad):
        i = int(np.argmax(np.where(bad, err / np.where(tol > 0, tol, np.finfo(float).tiny), -1)))
        raise AssertionError(
            f"{what}: {int(bad.sum())} row(s) outside the error bound; row {i}: "
            f"‖got − want‖ = {err[i]:.3e} > bound {tol[i]:.3e}"
        )


def half_sweep_excess(fixed: np.ndarray, target: np.ndarray, weights: np.ndarray, lam: float,
                      dtype: Any) -> float:
    """Section 3: ``Σ_i λ_max(M_i) · b_i²`` with ``b_i`` the float32 part of (X): how far a
    half-sweep computed in ``dtype`` may end above the exact block minimum of the objective."""
    rs = row_systems(fixed, target, weights, lam)
    return float(np.sum(rs.m_norm * _forward(rs, dtype) ** 2))


def cg_half_sweep_excess(fixed: np.ndarray, target: np.ndarray, weights: np.ndarray, lam: float,
                         previous: np.ndarray, steps: int, dtype: Any) -> float:
    """Section 3 for ``steps`` CG iterations from ``previous`` (the rows' factors before the
    half-sweep): exact-arithmetic CG never raises a row's quadratic ``f`` above ``f(previous)``;
    a computed iterate ``x_m + δ`` is ``2 r_mᵀδ + δᵀMδ`` above it, bounded with
    ``‖r_m‖₂ ≤ √κ ‖r_0‖₂`` (CG does not increase ``‖r‖_{M⁻¹}``), ``r_0 = b − M·previous`` in
    float64, and ``‖δ‖ ≤ steps·(X)``: one direct solve's rounding per step, the estimate of the
    drift of CG's recursively updated residual (Greenbaum 1997). An estimate, not a theorem:
    floating-point CG has no backward-error bound of the direct solve's kind."""
    rs = row_systems(fixed, target, weights, lam)
    x0 = np.asarray(previous, np.float64)
    r0 = np.linalg.norm(rs.b - np.einsum("ipq,iq->ip", rs.m, x0), axis=1)
    delta = steps * _forward(rs, dtype)
    return float(np.sum(2 * np.sqrt(rs.kappa) * r0 * delta + rs.m_norm * delta**2))


# --------------------------------------------------------------------------- the loss
def objective_tolerance(u: np.ndarray, v: np.ndarray, target: np.ndarray, weights: np.ndarray,
                        w0: float, lam: float, stored_dtype: Any = np.float32) -> float:
    """Bound on ``|trainer.wals.compute_loss(...)["loss"] − numpy_objective(...)|`` for the same
    factors (also for ``unregularized_loss`` with ``lam`` = 0 in the oracle; the bound with the
    regulariser included covers both).

    ``compute_loss`` evaluates, in float64, with ``p_ij = u_i·v_j``::

        L = Σ_Ω W A² − 2 Σ_Ω c p + Σ_Ω e p² + w0 Σ(UᵀU ⊙ VᵀV) + λ(‖U‖² + ‖V‖²)

    from ``e = W − w0`` and ``c = W·A`` stored in ``stored_dtype`` (float32). Three parts:

    * storage: ``|ê − e| ≤ u_s e + 2u₆₄ W`` (the float64 subtraction may cancel: relative to
      ``W``), ``|ĉ − c| ≤ (u_s + u₆₄)|c|``, so ``≤ (u_s + 2u₆₄)(Σ_Ω W p̄² + 2Σ_Ω |c| p̄)`` with
      ``p̄ = |u_i|·|v_j| ≥ |p|``;
    * float64 arithmetic (S), every term through at most
      ``N = nnz + (nusers + nitems)(k + 1) + k² + 16`` roundings (the longest sums: the
      entries, ``‖U‖² + ‖V‖²``, ``UᵀU ⊙ VᵀV``):
      ``γ_N (Σ_Ω W A² + Σ_Ω e p̄² + 2Σ_Ω|c|p̄ + w0 Σ(|U|ᵀ|U| ⊙ |V|ᵀ|V|) + λ(‖U‖² + ‖V‖²))``;
    * the oracle ``Σ_ij W (A − p)² + λ(…)`` in float64:
      ``γ_{nusers·nitems + (nusers + nitems) k + 8}``
      ``(Σ_ij W (|A| + p̄)² + λ(‖U‖² + ‖V‖²))``.

    ``Ω`` = the stored entries, ``target != 0``.
    """
    u = np.asarray(u, np.float64)
    v = np.asarray(v, np.float64)
    t = np.asarray(target, np.float64)
    w = np.asarray(weights, np.float64)
    obs = t != 0
    pa = np.abs(u) @ np.abs(v).T
    e = np.where(obs, w - w0, 0.0)
    c = np.where(obs, w * t, 0.0)
    us = unit_roundoff(stored_dtype)
    storage = (us + 2 * U64) * (np.sum(np.where(obs, w, 0.0) * pa**2) + 2 * np.sum(np.abs(c) * pa))
    reg = lam * (np.sum(u * u) + np.sum(v * v))
    nu, ni, k = u.shape[0], v.shape[0], u.shape[1]
    n_terms = int(obs.sum()) + (nu + ni) * (k + 1) + k * k + 16
    gram = np.sum((np.abs(u).T @ np.abs(u)) * (np.abs(v).T @ np.abs(v)))
    trainer = gamma(n_terms, np.float64) * (
        np.sum(np.where(obs, w * t * t, 0.0)) + np.sum(np.abs(e) * pa**2)
        + 2 * np.sum(np.abs(c) * pa) + w0 * gram + reg
    )
    oracle = gamma(nu * ni + (nu + ni) * k + 8, np.float64) * (
        np.sum(w * (np.abs(t) + pa) ** 2) + reg
    )
    return float(storage + trainer + oracle)


def weight_sum_tolerance(weights: np.ndarray) -> float:
    """``|sum_weights − weights.sum()|``: ``w0·nusers·nitems + Σ_Ω(W − w0)`` and the dense sum,
    both float64 (S), each entry through at most ``nusers·nitems + 4`` roundings (the
    subtraction ``W − w0`` relative to ``W``)."""
    w = np.asarray(weights, np.float64)
    return 2 * gamma(w.size + 4, np.float64) * float(np.sum(np.abs(w)))


def rwse_rel_tolerance(unreg: float, unreg_tol: float, sum_w: float, sum_w_tol: float) -> float:
    """Relative bound on ``|rwse − sqrt(unreg/sum_w)|`` (both sides computed): with
    ``α = tol_L/(L − tol_L)``, ``σ = tol_S/(S − tol_S)`` the ratio is off by
    ``z ≤ (1 + α)(1 + u)/(1 − σ) − 1`` (one division), ``|√(1+z) − 1| ≤ |z|``, one rounding of
    the square root, and the oracle's own division and root: ``z(1 + u) + 3u``, u = 2⁻⁵³."""
    a = unreg_tol / (unreg - unreg_tol)
    s = sum_w_tol / (sum_w - sum_w_tol)
    z = (1 + a) * (1 + U64) / (1 - s) - 1
    return z * (1 + U64) + 3 * U64


# --------------------------------------------------------------------------- top-k
def dot_tolerance(q: np.ndarray, t: np.ndarray, dtype: Any, q_err: np.ndarray | None = None
                  ) -> np.ndarray:
    """Bound on ``|ŝ − s|`` for the scores ``ŝ = fl(q̂ t̂ᵀ)`` (computed in ``dtype``) against
    the exact ``s = q tᵀ``: ``(γ_k(dtype) + γ_k(float64)) |q̂||t|ᵀ`` (S, the second term for the
    float64 reference), plus ``‖q̂_b − q_b‖₂ ‖t_j‖₂`` when the queries themselves carry an error
    bounded by ``q_err`` (one number per query row). ``|q̂| ≤ |q| + q_err`` componentwise."""
    q = np.atleast_2d(np.asarray(q, np.float64))
    t = np.atleast_2d(np.asarray(t, np.float64))
    k = q.shape[1]
    qe = np.zeros(q.shape[0]) if q_err is None else np.atleast_1d(np.asarray(q_err, np.float64))
    qa = np.abs(q) + qe[:, None]
    return (gamma(k, dtype) + gamma(k, np.float64)) * (qa @ np.abs(t).T) + np.outer(
        qe, np.linalg.norm(t, axis=1)
    )


def assert_topk_consistent(ids: np.ndarray, scores: np.ndarray, exact: np.ndarray,
                           tau: np.ndarray, excluded: np.ndarray, n: int,
                           empty: np.ndarray | None = None) -> None:
    """The top-``n`` lists ``ids`` (−1 padded) with computed ``scores`` are a correct ranking of
    the ``exact`` (float64) scores when each computed score may be off by ``tau``:

    * row ``b`` lists ``min(n, #candidates)`` distinct non-``excluded`` targets (none for rows
      in ``empty``), then −1 / −inf;
    * each listed score is within ``tau`` of the exact one, and they are non-increasing;
    * every listed ``r`` ranked before a target ``c`` (listed later, or not listed) has
      ``s_r + τ_r ≥ s_c − τ_c``: only exact scores within the summed tolerances may swap.

    Where consecutive exact scores are further apart than that, the list is forced to be the
    exact ranking, so on data without near-ties this is equality with ``np.argsort``."""
    ids = np.atleast_2d(ids)
    scores = np.atleast_2d(scores)
    exact = np.atleast_2d(np.asarray(exact, np.float64))
    tau = np.atleast_2d(np.asarray(tau, np.float64))
    excluded = np.atleast_2d(np.asarray(excluded, bool))
    for b in range(ids.shape[0]):
        cand = np.flatnonzero(~excluded[b])
        want_n = 0 if (empty is not None and empty[b]) else min(n, cand.size)
        got = ids[b][ids[b] >= 0]
        assert got.size == want_n, (b, got, want_n)
        assert np.all(ids[b, want_n:] == -1) and np.all(np.isneginf(scores[b, want_n:])), b
        assert np.unique(got).size == got.size and not np.any(excluded[b, got]), (b, got)
        if not want_n:
            continue
        sc = np.asarray(scores[b, :want_n], np.float64)
        assert np.all(np.abs(sc - exact[b, got]) <= tau[b, got]), (
            b, np.abs(sc - exact[b, got]) / tau[b, got])
        assert np.all(np.diff(sc) <= 0), (b, sc)
        lo = exact[b, got] + tau[b, got]  # the best a listed target can be
        hi = exact[b] - tau[b]  # the worst any target can be
        rest = np.setdiff1d(cand, got)
        for p, r in enumerate(got):
            later = np.concatenate([got[p + 1:], rest])
            assert np.all(lo[p] >= hi[later]), (b, p, int(r), later[lo[p] < hi[later]])
