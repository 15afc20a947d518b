r"""Weighted alternating least squares (WALS) in TensorFlow 2: the solver and the model.

Objective
---------
For the ``nusers × nitems`` rating matrix with observed cells ``Ω``, factors
``U`` (``nusers × k``, row ``u_i``) and ``V`` (``nitems × k``, row ``v_j``)::

    L(U, V) = Σ_{i,j} W_ij (A_ij − u_i·v_j)²  +  λ (‖U‖²_F + ‖V‖²_F)

    W_ij = w0          for (i, j) ∉ Ω  (and A_ij = 0 there)
    W_ij, A_ij         for (i, j) ∈ Ω  from trainer.weights (default W_ij = w0 + ρ_i γ_j, A_ij = r_ij)

Row half-sweep (``V`` fixed): each ``u_i`` minimises a strictly convex quadratic (``λ > 0``),
so it is the solution of the normal equations::

    M_i u_i = b_i
    M_i = w0 G + λ I + Σ_{j∈Ω_i} (W_ij − w0) v_j v_jᵀ,      G = VᵀV = Σ_j v_j v_jᵀ
    b_i = Σ_{j∈Ω_i} W_ij A_ij v_j

(the unobserved cells contribute ``w0 Σ_{j∉Ω_i} v_j v_jᵀ = w0 G − w0 Σ_{j∈Ω_i} v_j v_jᵀ``, which is
why only the observed entries appear in the correction). A row with no observations has
``b_i = 0`` and therefore ``u_i = 0`` exactly. The column half-sweep is the mirror image with
``U``, ``Ωᵀ`` and ``G = UᵀU``. A *sweep* is a row half-sweep followed by a column half-sweep;
since each half-sweep minimises ``L`` exactly over one block, ``L`` never increases (up to
float rounding).

Backends: this module's batched TensorFlow kernels (below) run on GPUs, on several devices
and for both solvers; the default ``solver="cg"`` on a CPU-only machine runs instead in
:mod:`trainer.cpu_cg`, a per-row loop compiled by Numba over the same equations
(:meth:`WALSModel.backend_in_use`).

Implementation (no Python loop over rows):

* ``G`` is computed once per half-sweep; ``w0 G + λ I`` is shared by all rows.
* Rows are solved in batches laid out by :mod:`trainer.plan`: rows of similar length (within
  a factor 2^(1/8)) form a padded ``(B, L)`` block of column IDs and ratings, 8 bytes per
  entry, kept on its device; ``W − w0`` and ``W·A`` are computed from the ratings when the
  batch is solved (padding has weight 0, so it contributes nothing). ``B·L·k`` and, on the
  ``k × k`` path below, ``B·k²`` stay under ``max_batch_floats``, which defaults to the
  device's (:func:`trainer.device.max_batch_floats`).
* Batches are solved :func:`trainer.device.batches_in_flight` at a time per device (two on a
  CPU, from two Python threads; :mod:`trainer.device` says why). Every batch is independent,
  so the factors are the same. With several devices (:func:`trainer.device.compute_devices`:
  every visible GPU by default) the plan spreads the batches over them and each half-sweep
  copies the fixed factors to every device once; the solutions are written back into the
  factors, held once on the first device, row by row (``tf.Variable.scatter_update``): a
  sweep updates the factors in place.
* Per batch: ``X = V[idx]`` (``B × L × k``), ``M = Xᵀ diag(W − w0) X + (w0 G + λ I)`` and
  ``b = Xᵀ (W·A)`` by batched matmul, then a batched Cholesky solve — or, with
  ``solver="cg"``, ``cg_steps`` conjugate-gradient iterations on ``M x = b`` warm-started from
  the previous factors, which never forms ``M``: ``M p = (w0 G + λ I) p + Xᵀ((W − w0) ⊙ X p)``.
  CG from the previous iterate lowers each row's quadratic monotonically, so the objective
  still never increases, but a half-sweep is no longer the exact minimiser.
* Short rows (``L ≤ 3k/4``: most rows of skewed usage data) use, when ``k ≥ 24`` and the batch
  is well conditioned (below), the Woodbury identity instead — an exact solve of the same
  system that costs ``O(L²k + L³ + k²)`` per row instead of ``O(Lk² + k³)`` (an ``L × L``
  Cholesky instead of ``k × k``). With ``B0 = w0 G + λ I``, ``Y = diag(s) X``,
  ``s = √(W − w0)``, ``K = Y B0⁻¹ Yᵀ`` (``L × L``) and ``Q = V B0⁻¹`` (once per half-sweep, so
  ``X B0⁻¹ = Q[idx]`` is a gather)::

      M⁻¹ r = B0⁻¹ r − B0⁻¹ Yᵀ (I_L + K)⁻¹ Y B0⁻¹ r                                    (W1)

  (W1) subtracts two terms of size up to ``‖B0⁻¹‖‖r‖`` whose difference can be ``1 + ‖K‖``
  times smaller: with ``w0 = 0`` and ``L < k``, ``B0 = λI`` and
  ``‖K‖ = σ_max(Y)²/λ = κ(M) − 1``, so used on ``b`` it loses ``u·κ(M)`` relative accuracy
  in float32 (unit roundoff ``u = 2⁻²⁴``) *on top of* the Cholesky path's error. So the first
  solve uses the push-through identity ``(B0 + YᵀY)⁻¹Yᵀ = B0⁻¹Yᵀ(I_L + K)⁻¹``, which needs no
  subtraction: write ``b = Yᵀc + b⊥`` with ``c_l = (W·A)_l / s_l`` where ``s_l > 0`` and
  ``b⊥`` the entries with ``W = w0`` (a column weight 0; usually none), then::

      u = z⊥ + Q[idx]ᵀ (s ⊙ t),   (I_L + K) t = c − s ⊙ (X z⊥),   z⊥ = B0⁻¹ b⊥          (W2)

  Its backward error still grows with ``κ(Y)``, so two steps of fixed-precision iterative
  refinement follow: ``u ← u + M⁻¹(b − M u)`` with (W1) for ``M⁻¹`` (the residual is not in
  the range of ``Yᵀ``), reusing the ``L × L`` factorisation; ``M u`` is applied without
  forming ``M``. Each step multiplies the residual by the relative error ``η`` of (W1) and
  stops at the rounding error of computing ``b − M u`` itself (``~u‖M‖‖u‖``, the Cholesky
  path's backward error), provided ``η < 1``. ``η`` has two sources: applying ``B0⁻¹``
  (``~u κ(B0)``) and the cancellation in (W1) (``~u (1 + ‖K‖)``, and
  ``‖K‖ ≤ tr K = Σ_l (W − w0)_l h_l`` with ``h_j = v_jᵀ B0⁻¹ v_j``, one number per fixed row
  per half-sweep). A batch therefore takes this path only when::

      θ = u · (κ(B0) + max_{rows i of the batch} tr K_i)  ≤  2⁻¹⁰                          (W3)

  and the ``k × k`` Cholesky path otherwise, in chunks of at most ``max_batch_floats / k²``
  rows (the test is a ``tf.cond`` inside the batch's graph: no host round trip). On random
  test systems (k = 16–64, w0 = 0–1, λ = 10⁻³–10) the measured ``η`` was at most
  ``33 u (1 + tr K)``, and about ``0.7 u κ(B0)`` where ``tr K`` was small and ``G`` badly
  conditioned in a rotated basis; so under (W3) ``η ≲ 0.035``, and two steps bring the
  backward error ``‖b − M u‖ / (‖M‖‖u‖ + ‖b‖)`` to the Cholesky path's level (a few ``u``;
  both paths are tested against ``≤ k·u``). With ``w0 = 0``, (W3) means
  ``κ(M) ≲ 1.6·10⁴`` in float32; in float64 it practically always holds. On the matrix of
  ``benchmarks/trainer_speed.py`` at k = 64 after 5 sweeps, ``θ ≤ 5·10⁻⁶`` with the
  trainer's defaults (implicit, and wals w0 = 0.01, λ = 10) and the benchmark's
  (w0 = λ = 0.1): every short-row batch stays on the Woodbury path; with w0 = 0, λ = 0.01
  (2 sweeps) the item half-sweep's short-row batches have ``θ`` of 1.1–16× the limit and go
  to k × k.
* One ``tf.function`` with dynamic shapes serves every batch (traced once per dtype).

Loss (float64, once per sweep), using ``Σ_{ij} w0 (u_i·v_j)² = w0 · Σ (UᵀU ⊙ VᵀV)``::

    L_unreg = Σ_Ω W A²  − 2 Σ_Ω W A p  + Σ_Ω (W − w0) p²  + w0 Σ (UᵀU ⊙ VᵀV),   p = u_i·v_j
    L       = L_unreg + λ (‖U‖² + ‖V‖²)
    RWSE    = sqrt(L_unreg / Σ_{ij} W_ij),   Σ_{ij} W_ij = w0 · nusers · nitems + Σ_Ω (W − w0)
"""
from __future__ import annotations

import functools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from trainer import cpu_cg
from trainer import device as device_policy
from trainer import weights as wts
from trainer.errors import TrainerInputError
from trainer.hparams import (
    DEFAULTS, Backend, ColWeights, Confidence, DType, HyperparameterError, Objective, Solver,
    validate,
)
from trainer.plan import SweepPlan, block_signature, build_plans, expand_block, loss_sums
from trainer.recommend import top_k
from trainer.sparse import CSR

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]


def _tf():
    import tensorflow as tf

    return tf


# Below this k the k × k path is faster for short rows too (docs/TRAINER.md, "Speed").
WOODBURY_MIN_K = 24
# (W3) in the module docstring: a short-row batch takes the Woodbury path only while
# u·(κ(B0) + max tr K) stays below this (refinement then contracts by η ≲ 0.035 per step).
WOODBURY_MAX_THETA = 2.0**-10

# --------------------------------------------------------------------------- TF kernels
@functools.lru_cache(maxsize=None)
def _kernels(
    dtype_name: str, cg_steps: int, objective: str = "implicit", confidence: str = "linear",
    refine_steps: int = 2,
) -> dict[str, Any]:
    """The per-batch ``tf.function``s for one dtype and weighting (dynamic shapes: traced once).

    The solve kernels take a batch as stored (:meth:`trainer.plan.SweepPlan.block`) and
    expand it inside their own graph (:func:`trainer.plan.expand_block`): one dispatch per
    batch, and the padded weights are never handed between functions."""
    tf = _tf()
    dt = tf.as_dtype(dtype_name)
    block = block_signature(dt)

    def expanded(blk):
        return expand_block(objective, confidence, *blk)

    def real_rows(x, blk):  # the padding rows (solved to 0) left out
        return x[: tf.shape(blk[2])[0]]
    mat = tf.TensorSpec([None, None], dt)
    ids2 = tf.TensorSpec([None, None], tf.int32)
    ids1 = tf.TensorSpec([None], tf.int32)

    vec = tf.TensorSpec([None], dt)
    scalar = tf.TensorSpec([], dt)
    int_scalar = tf.TensorSpec([], tf.int32)

    def cholesky_rows(fixed, base, idx, extra, wa):
        x = tf.gather(fixed, idx)  # (B, L, k)
        m = tf.linalg.matmul(x * extra[..., None], x, transpose_a=True) + base
        b = tf.linalg.matvec(x, wa, transpose_a=True)  # (B, k)
        chol = tf.linalg.cholesky(m)
        return tf.linalg.cholesky_solve(chol, b[..., None])[..., 0]

    @tf.function(input_signature=[mat, mat, *block])
    def cholesky_batch(fixed, base, *blk):
        return real_rows(cholesky_rows(fixed, base, *expanded(blk)), blk)

    def cholesky_chunked(fixed, base, chunk, idx, extra, wa):
        """The k × k path on ``chunk`` rows at a time (a short-row batch was cut for
        ``B·L·k``, not ``B·k²``, floats). Padding rows have weight 0 and are dropped."""
        rows, width = tf.shape(idx)[0], tf.shape(idx)[1]
        n = (rows + chunk - 1) // chunk
        pad = [[0, n * chunk - rows], [0, 0]]
        parts = [tf.reshape(tf.pad(a, pad), [n, chunk, width]) for a in (idx, extra, wa)]
        out = tf.map_fn(
            lambda p: cholesky_rows(fixed, base, p[0], p[1], p[2]), parts,
            fn_output_signature=tf.TensorSpec([None, None], dt), parallel_iterations=1,
        )
        return tf.reshape(out, [n * chunk, tf.shape(fixed)[1]])[:rows]

    def batch_load(h, idx, extra):
        """max over the batch's rows of tr K_i = Σ_l (W − w0)_l h_idx_l, h_j = v_jᵀ B0⁻¹ v_j."""
        return tf.reduce_max(tf.reduce_sum(extra * tf.gather(h, idx), axis=1))

    # entries with W − w0 at or below this go to b⊥ in (W2) (W·A / √(W − w0) stays finite)
    tiny_extra = float(np.finfo(dtype_name).tiny) ** 0.5

    def woodbury_rows(fixed, fixed_binv, base, base_inv, idx, extra, wa):
        x = tf.gather(fixed, idx)  # (B, L, k)
        q = tf.gather(fixed_binv, idx)  # (B, L, k): rows of X B0⁻¹
        s = tf.sqrt(extra)
        kern = tf.linalg.matmul(q, x, transpose_b=True)  # (B, L, L) = X B0⁻¹ Xᵀ
        small = s[:, :, None] * kern * s[:, None, :] + tf.eye(tf.shape(idx)[1], dtype=dt)
        chol = tf.linalg.cholesky(small)  # I_L + K

        def solve(z):  # (W1): M⁻¹ r given z = B0⁻¹ r
            y = s * tf.linalg.matvec(x, z)
            t = tf.linalg.cholesky_solve(chol, y[..., None])[..., 0]
            return z - tf.linalg.matvec(q, s * t, transpose_a=True)

        # (W2): b = Yᵀc + b⊥; no subtraction of large terms when b⊥ = 0 (the usual case)
        on = extra > tiny_extra
        c = tf.where(on, wa / tf.where(on, s, tf.ones_like(s)), tf.zeros_like(wa))
        z_perp = tf.linalg.matvec(q, tf.where(on, tf.zeros_like(wa), wa), transpose_a=True)
        rhs = c - s * tf.linalg.matvec(x, z_perp)
        t = tf.linalg.cholesky_solve(chol, rhs[..., None])[..., 0]
        u = z_perp + tf.linalg.matvec(q, s * t, transpose_a=True)
        b = tf.linalg.matvec(x, wa, transpose_a=True)
        for _ in range(refine_steps):  # iterative refinement: u += M⁻¹ (b − M u)
            r = b - tf.linalg.matmul(u, base) - tf.linalg.matvec(
                x, extra * tf.linalg.matvec(x, u), transpose_a=True
            )
            u = u + solve(tf.linalg.matmul(r, base_inv))
        return u

    @tf.function(input_signature=[mat, mat, mat, mat, vec, scalar, int_scalar, *block])
    def woodbury_batch(fixed, fixed_binv, base, base_inv, h, max_load, chunk, *blk):
        """(W3) decided in the graph (no host round trip): Woodbury, else k × k in chunks."""
        idx, extra, wa = expanded(blk)
        return real_rows(tf.cond(
            batch_load(h, idx, extra) <= max_load,  # False for NaN
            lambda: woodbury_rows(fixed, fixed_binv, base, base_inv, idx, extra, wa),
            lambda: cholesky_chunked(fixed, base, chunk, idx, extra, wa),
        ), blk)

    @tf.function(input_signature=[vec, scalar, ids2, mat])
    def woodbury_route(h, max_load, idx, extra):
        return batch_load(h, idx, extra) <= max_load

    @tf.function(input_signature=[mat, mat, mat, *block])
    def cg_batch(fixed, base, x0, *blk):
        """``x0``: the warm start of the batch's real rows (the padding rows start at 0)."""
        idx, extra, wa = expanded(blk)
        x0 = tf.pad(x0, [[0, tf.shape(idx)[0] - tf.shape(x0)[0]], [0, 0]])
        x_ = tf.gather(fixed, idx)

        def apply(p):
            return tf.linalg.matmul(p, base) + tf.linalg.matvec(
                x_, extra * tf.linalg.matvec(x_, p), transpose_a=True
            )

        x = x0
        # r = b − M x = Xᵀ(W·A − (W − w0) ⊙ X x) − (w0 G + λI) x: one pass over X fewer than
        # forming b = Xᵀ(W·A) and M x separately
        r = tf.linalg.matvec(
            x_, wa - extra * tf.linalg.matvec(x_, x), transpose_a=True
        ) - tf.linalg.matmul(x, base)
        p = r
        rs = tf.reduce_sum(r * r, axis=-1, keepdims=True)
        for _ in range(cg_steps):
            ap = apply(p)
            alpha = tf.math.divide_no_nan(rs, tf.reduce_sum(p * ap, axis=-1, keepdims=True))
            x = x + alpha * p
            r = r - alpha * ap
            rs_new = tf.reduce_sum(r * r, axis=-1, keepdims=True)
            p = r + tf.math.divide_no_nan(rs_new, rs) * p
            rs = rs_new
        return real_rows(x, blk)

    f64 = tf.TensorSpec([None, None], tf.float64)

    @tf.function(input_signature=[f64, f64, ids1, ids2, mat, mat])
    def loss_batch(u64, v64, rows, idx, extra, wa):
        p = tf.linalg.matvec(tf.gather(v64, idx), tf.gather(u64, rows))  # (B, L)
        e = tf.cast(extra, tf.float64)
        c = tf.cast(wa, tf.float64)
        return tf.reduce_sum(e * p * p) - 2.0 * tf.reduce_sum(c * p)

    return {
        "cholesky": cholesky_batch,
        "woodbury": woodbury_batch,
        "woodbury_route": woodbury_route,
        "cg": cg_batch,
        "loss": loss_batch,
    }


@dataclass
class _WoodburyInputs:
    """What the Woodbury path needs in one half-sweep (all on the device, no host sync)."""

    fixed_binv: Any  # Q = V B0⁻¹
    base_inv: Any  # B0⁻¹
    h: Any  # (nfixed,) h_j = v_jᵀ B0⁻¹ v_j
    max_load: Any  # scalar: (W3) holds iff max_i tr K_i ≤ max_load = 2⁻¹⁰/u − κ(B0)


def _woodbury_inputs(fixed: Any, base: Any) -> _WoodburyInputs:
    """``B0⁻¹``, ``V B0⁻¹``, ``h`` and the (W3) limit on ``tr K`` for one half-sweep.

    ``κ(B0)`` from the float64 eigenvalues of the rounded ``base`` actually used ((W1) is
    applied to that matrix); ``max_load < 0`` (every batch on the k × k path) when it is not
    numerically positive definite.
    """
    tf = _tf()
    k = int(fixed.shape[1])
    u = float(np.finfo(np.dtype(fixed.dtype.as_numpy_dtype)).eps) / 2.0  # unit roundoff
    ev = tf.linalg.eigvalsh(tf.cast(base, tf.float64))
    max_load = tf.where(ev[0] > 0, WOODBURY_MAX_THETA / u - ev[-1] / ev[0], -1.0)
    base_chol = tf.linalg.cholesky(base)
    fixed_binv = tf.transpose(tf.linalg.cholesky_solve(base_chol, tf.transpose(fixed)))
    return _WoodburyInputs(
        fixed_binv=fixed_binv,
        base_inv=tf.linalg.cholesky_solve(base_chol, tf.eye(k, dtype=fixed.dtype)),
        h=tf.reduce_sum(fixed * fixed_binv, axis=1),
        max_load=tf.cast(max_load, fixed.dtype),
    )


def _base(fixed: Any, w0: float, regularization: float) -> Any:
    """``B0 = w0 VᵀV + λ I`` in the factors' dtype."""
    tf = _tf()
    k = int(fixed.shape[1])
    gram = tf.linalg.matmul(fixed, fixed, transpose_a=True)
    return w0 * gram + regularization * tf.eye(k, dtype=fixed.dtype)


def _woodbury_eligible(plan: SweepPlan, k: int, solver: str, woodbury: bool | None) -> list[bool]:
    use = k >= WOODBURY_MIN_K if woodbury is None else bool(woodbury)
    return [solver == "cholesky" and use and 4 * b.width <= 3 * k for b in plan.batches]


def _replicate(tensor: Any, devices: list[str]) -> dict[str, Any]:
    """``tensor`` on each of ``devices`` (the same tensor where it already is): the fixed
    factors and the per-half-sweep matrices every batch reads."""
    tf = _tf()
    here = tf.DeviceSpec.from_string(tensor.device)
    out = {}
    for d in devices:
        spec = tf.DeviceSpec.from_string(d)
        if (spec.device_type, spec.device_index) == (here.device_type, here.device_index):
            out[d] = tensor
        else:
            with tf.device(d):
                out[d] = tf.identity(tensor)
    return out


def _run_batches(plan: SweepPlan, solve: Callable[[int], Any], threads: int | None,
                 progress: ProgressFn | None, stage: str) -> list[Any]:
    """``solve(t)`` for every batch, ``threads`` at a time (``None``: the devices' own
    :func:`trainer.device.batches_in_flight`, summed), results in batch order."""
    if threads is None:
        threads = sum(device_policy.batches_in_flight(d) for d in plan.devices)
    n = len(plan.batches)
    outs = []
    if threads <= 1 or n <= 1:
        for t in range(n):
            outs.append(solve(t))
            if progress is not None:
                progress(stage, t + 1, n)
        return outs
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for t, out in enumerate(pool.map(solve, range(n))):
            outs.append(out)
            if progress is not None:
                progress(stage, t + 1, n)
    return outs


def route_batches(
    fixed: Any,
    plan: SweepPlan,
    w0: float,
    regularization: float,
    solver: Solver = "cholesky",
    woodbury: bool | None = None,
) -> list[str]:
    """The path :func:`solve_half_sweep` takes for each batch of ``plan`` with these ``fixed``
    factors: ``"woodbury"``, ``"cholesky"`` or ``"cg"`` (for tests and diagnostics; the same
    (W3) test as the solver's graph, on the same tensors)."""
    tf = _tf()
    k = int(fixed.shape[1])
    eligible = _woodbury_eligible(plan, k, solver, woodbury)
    other = "cholesky" if solver == "cholesky" else "cg"
    if not any(eligible):
        return [other] * len(plan.batches)
    wb = _woodbury_inputs(fixed, _base(fixed, w0, regularization))
    route = _kernels(fixed.dtype.name, 1)["woodbury_route"]
    out = []
    for e, b in zip(eligible, plan.batches):
        if not e:
            out.append(other)
            continue
        idx, extra, _ = plan.expand(b)
        with tf.device(fixed.device):
            out.append("woodbury" if bool(route(wb.h, wb.max_load, idx, extra)) else other)
    return out


def solve_half_sweep(
    fixed: Any,
    plan: SweepPlan,
    w0: float,
    regularization: float,
    solver: Solver = "cholesky",
    cg_steps: int = 3,
    previous: Any = None,
    progress: ProgressFn | None = None,
    stage: str = "rows",
    woodbury: bool | None = None,
    batches_in_flight: int | None = None,
    out: Any = None,
) -> Any:
    """New factors for all ``plan.nrows`` rows given the other side's ``fixed`` factors.

    Returns a ``(plan.nrows, k)`` tensor on ``fixed``'s device; rows without observations are
    0. ``previous`` (the current factors of the rows being solved) is the CG warm start.
    ``out``: a ``tf.Variable`` of that shape on ``fixed``'s device to write the factors into,
    batch by batch (default: a new one). It may be ``previous`` itself: each batch reads its
    own rows' warm start before it writes them, and no batch reads another's rows, so solving
    in place gives the same factors and holds one copy of them instead of three.
    ``woodbury``: ``None`` makes rows with ``L ≤ 3k/4`` eligible for the Woodbury path when
    ``k ≥ WOODBURY_MIN_K``; ``True`` at any ``k``; ``False`` never. An eligible batch takes it
    only when (W3) of the module docstring holds, else the ``k × k`` Cholesky path (decided
    inside the batch's graph; :func:`route_batches` tells which). ``batches_in_flight``: how
    many batches are solved concurrently, over all of the plan's devices (from that many
    Python threads; every batch is independent, so the result does not depend on it);
    ``None``: the devices' (:func:`trainer.device.batches_in_flight`).

    Several devices: ``fixed`` (and ``previous``), ``B0`` and the Woodbury inputs are computed
    once on ``fixed``'s device and copied to the others, each batch is solved on the device
    that holds its entries, and the solutions are gathered back; so every batch sees the same
    inputs and the factors equal a one-device run's.
    """
    tf = _tf()
    k = int(fixed.shape[1])
    kern = _kernels(fixed.dtype.name, int(cg_steps), plan.weighting.objective,
                    plan.weighting.confidence)
    primary = fixed.device
    devices = plan.devices
    base = _base(fixed, w0, regularization)
    eligible = _woodbury_eligible(plan, k, solver, woodbury)
    wb = _woodbury_inputs(fixed, base) if any(eligible) else None
    fixed_on = _replicate(fixed, devices)
    base_on = _replicate(base, devices)
    wb_on = {d: _WoodburyInputs(*(_replicate(t, [d])[d] for t in (
        wb.fixed_binv, wb.base_inv, wb.h, wb.max_load))) for d in devices} if wb else None
    prev_on = _replicate(previous, devices) if solver == "cg" else None
    # rows per k × k chunk when (W3) sends a short-row batch there; on every device once
    chunk_on = {}
    for d in devices:
        with tf.device(d):
            chunk_on[d] = tf.constant(max(1, plan.max_batch_floats // (k * k)), tf.int32)

    def solve(t: int) -> Any:
        b = plan.batches[t]
        d = plan.device_of(b)
        blk = plan.block(b)
        with tf.device(d):  # device scopes are per thread
            if eligible[t]:
                w = wb_on[d]
                return kern["woodbury"](fixed_on[d], w.fixed_binv, base_on[d], w.base_inv, w.h,
                                        w.max_load, chunk_on[d], *blk)
            if solver == "cholesky":
                return kern["cholesky"](fixed_on[d], base_on[d], *blk)
            return kern["cg"](fixed_on[d], base_on[d], tf.gather(prev_on[d], b.rows), *blk)

    with tf.device(primary):
        if out is None:
            out = tf.Variable(tf.zeros([plan.nrows, k], dtype=fixed.dtype), trainable=False)
        elif plan.empty_rows.shape[0]:
            out.scatter_update(tf.IndexedSlices(
                tf.zeros([plan.empty_rows.shape[0], k], fixed.dtype), plan.empty_rows))

    def solve_into(t: int) -> None:
        x = solve(t)
        with tf.device(primary):
            out.scatter_update(tf.IndexedSlices(x, plan.batches[t].rows))

    _run_batches(plan, solve_into, batches_in_flight, progress, stage)
    return out.read_value()


def compute_loss(
    u: Any, v: Any, plan: SweepPlan, w0: float, regularization: float,
    batches_in_flight: int | None = None,
) -> dict:
    """``loss``, ``unregularized_loss``, ``rwse`` and ``sum_weights`` (see module doc), float64.

    ``plan`` must be the users × items plan (rows of ``u``). The per-batch terms are computed
    ``batches_in_flight`` at a time (as in :func:`solve_half_sweep`) and summed in batch order,
    so the result does not depend on it."""
    tf = _tf()
    with tf.device(u.device):
        u64 = tf.cast(u, tf.float64)
        v64 = tf.cast(v, tf.float64)
    kern = _kernels(u.dtype.name, 1)
    u_on, v_on = _replicate(u64, plan.devices), _replicate(v64, plan.devices)

    def term(t: int) -> Any:
        b = plan.batches[t]
        d = plan.device_of(b)
        idx, extra, wa = plan.expand(b)
        with tf.device(d):
            rows = tf.pad(b.rows, [[0, b.shape[0] - int(b.rows.shape[0])]])  # padding: weight 0
            return kern["loss"](u_on[d], v_on[d], rows, idx, extra, wa)

    terms = _run_batches(plan, term, batches_in_flight, None, "loss")
    with tf.device(u.device):
        obs = tf.constant(0.0, tf.float64)
        for t in terms:  # in batch order (deterministic); one host read, not one per batch
            obs += t
        full = w0 * tf.reduce_sum(
            tf.linalg.matmul(u64, u64, transpose_a=True)
            * tf.linalg.matmul(v64, v64, transpose_a=True)
        )
        reg = regularization * float((tf.reduce_sum(u64 * u64) + tf.reduce_sum(v64 * v64)).numpy())
    unreg = plan.sum_waa + float(obs.numpy()) + float(full.numpy())
    return _loss_dict(unreg, reg, w0 * float(plan.nrows) * float(plan.ncols) + plan.sum_extra)


def loss_terms(
    u: np.ndarray, v: np.ndarray, observed: float, sums: tuple[float, float], w0: float,
    regularization: float,
) -> dict:
    """:func:`compute_loss` from NumPy factors, given ``observed`` (``Σ_Ω (W − w0) p² −
    2 Σ_Ω W A p``, e.g. :func:`trainer.cpu_cg.observed_loss`) and ``sums`` (``Σ_Ω W A²``,
    ``Σ_Ω (W − w0)``: :func:`trainer.plan.loss_sums`); the rest in float64 here."""
    u64, v64 = u.astype(np.float64), v.astype(np.float64)
    full = w0 * float(np.sum((u64.T @ u64) * (v64.T @ v64)))
    reg = regularization * float(np.sum(u64 * u64) + np.sum(v64 * v64))
    unreg = sums[0] + observed + full
    return _loss_dict(unreg, reg, w0 * float(u.shape[0]) * float(v.shape[0]) + sums[1])


def _loss_dict(unreg: float, reg: float, sum_w: float) -> dict:
    rwse = float(np.sqrt(max(unreg, 0.0) / sum_w)) if sum_w > 0 else float("nan")
    return {
        "loss": unreg + reg,
        "unregularized_loss": unreg,
        "rwse": rwse,
        "sum_weights": sum_w,
    }


# --------------------------------------------------------------------------- model
@dataclass
class TrainingState:
    """Everything needed to continue a run: factors after ``sweeps_done`` sweeps + history."""

    sweeps_done: int
    user_factors: np.ndarray
    item_factors: np.ndarray
    history: list[dict] = field(default_factory=list)


class WALSModel:
    """Weighted matrix factorisation by alternating exact least squares.

    Interface and vocabulary in the style of ``implicit``'s ``AlternatingLeastSquares``:
    :meth:`fit`, :meth:`recommend`, :meth:`recommend_users`, :meth:`recalculate_user`; the
    factors are :attr:`user_factors` / :attr:`item_factors` (NumPy, float32) after fitting.
    The defaults are those of ``python -m trainer.task`` (:data:`trainer.hparams.DEFAULTS`).

    Parameters
    ----------
    factors : int
        Latent dimension ``k`` (≥ 1).
    regularization : float
        ``λ`` (> 0).
    alpha : float
        ``objective="implicit"``: confidence scale ``α`` (≥ 0) of ``W = 1 + α f(r)``.
    iterations : int
        Sweeps :meth:`fit` runs (≥ 1); a sweep solves every user row, then every item row.
    objective : {"implicit", "wals"}
        The weights and targets (:mod:`trainer.weights`).
    unobserved_weight : float
        ``objective="wals"``: ``w0`` (≥ 0), the weight of every unobserved cell.
    confidence : {"linear", "log"}
        ``objective="implicit"``: ``f(r) = r`` or ``log(1 + r/ε)``.
    epsilon : float
        ``ε`` (> 0) of the log confidence.
    col_weights : {"uniform", "inverse_linear", "inverse_power"}
        ``objective="wals"``: per-item weights ``γ_j``: 1, ``col_weight_factor / n_j`` or
        ``n_j ** -col_weight_exp``.
    col_weight_factor, col_weight_exp : float
        Parameters of the two popularity weights.
    solver : {"cg", "cholesky"}
        ``cg_steps`` warm-started conjugate-gradient steps per row and half-sweep (the
        default, as in ``implicit``), or the exact batched Cholesky solve.
    cg_steps : int
        CG steps per half-sweep (≥ 1).
    backend : {"auto", "tensorflow", "numba"}
        Who runs the half-sweeps. ``"numba"``: the CG loop of :mod:`trainer.cpu_cg`, compiled
        by Numba, on the CPU (``solver="cg"`` only); ``"tensorflow"``: the batched kernels of
        this module on :attr:`devices` (GPUs, several devices, both solvers). ``"auto"``:
        ``"numba"`` when the solver is CG, the only device is the CPU and Numba is installed,
        else ``"tensorflow"`` (:meth:`backend_in_use`). Both solve the same equations; their
        factors agree to rounding.
    batch_size : int
        Rows per solve batch at most (≥ 1).
    dtype : {"float32", "float64"}
        Solver precision (the factors are stored as float32).
    random_state : int
        Seed (≥ 0) of the initial factors.
    calculate_training_loss : bool
        Compute the loss (module docstring) after every sweep into :attr:`history`.
    device : str or sequence of str, optional
        TensorFlow device(s). Several: the row solves of every half-sweep are spread over
        them, the factors live on the first, and the result equals a one-device fit's.
        Default (:func:`trainer.device.compute_devices`): every visible GPU, else the CPU.
    max_batch_floats : int, optional
        Floats one batch may gather; default :func:`trainer.device.max_batch_floats` (the
        smallest over the devices).

    Raises
    ------
    trainer.hparams.HyperparameterError (a TrainerInputError, a ValueError)
        A value outside its rule (:func:`trainer.hparams.validate`).
    """

    def __init__(
        self,
        factors: int = DEFAULTS.factors,
        regularization: float = DEFAULTS.regularization,
        alpha: float = DEFAULTS.alpha,
        iterations: int = DEFAULTS.iterations,
        objective: Objective = DEFAULTS.objective,
        unobserved_weight: float = DEFAULTS.unobserved_weight,
        confidence: Confidence = DEFAULTS.confidence,
        epsilon: float = DEFAULTS.epsilon,
        col_weights: ColWeights = DEFAULTS.col_weights,
        col_weight_factor: float = DEFAULTS.col_weight_factor,
        col_weight_exp: float = DEFAULTS.col_weight_exp,
        solver: Solver = DEFAULTS.solver,
        cg_steps: int = DEFAULTS.cg_steps,
        batch_size: int = DEFAULTS.batch_size,
        dtype: DType = DEFAULTS.dtype,
        random_state: int = DEFAULTS.random_state,
        calculate_training_loss: bool = DEFAULTS.calculate_training_loss,
        device: str | Sequence[str] | None = None,
        max_batch_floats: int | None = None,
        backend: Backend = DEFAULTS.backend,
    ) -> None:
        validate(
            factors=factors, regularization=regularization, alpha=alpha, iterations=iterations,
            objective=objective, unobserved_weight=unobserved_weight, confidence=confidence,
            epsilon=epsilon, col_weights=col_weights, col_weight_factor=col_weight_factor,
            col_weight_exp=col_weight_exp, solver=solver, cg_steps=cg_steps,
            batch_size=batch_size, dtype=dtype, random_state=random_state,
            calculate_training_loss=calculate_training_loss, device=device, backend=backend,
            max_batch_floats=max_batch_floats,
        )
        # W and A are defined by these (trainer.weights); an internal detail of the model
        self.weighting = wts.Weighting(
            objective=objective, unobserved_weight=float(unobserved_weight), alpha=float(alpha),
            confidence=confidence, epsilon=float(epsilon), col_weights=col_weights,
            col_weight_factor=float(col_weight_factor), col_weight_exp=float(col_weight_exp),
        )
        self.factors = int(factors)
        self.regularization = float(regularization)
        self.iterations = int(iterations)
        self.solver: Solver = solver
        self.cg_steps = int(cg_steps)
        self.batch_size = int(batch_size)
        self.dtype = dtype
        self.random_state = int(random_state)
        self.calculate_training_loss = calculate_training_loss
        self.device = device if device is None or isinstance(device, str) else list(device)
        self._max_batch_floats = None if max_batch_floats is None else int(max_batch_floats)
        self.backend: Backend = backend
        self.user_factors: np.ndarray | None = None
        self.item_factors: np.ndarray | None = None
        self.row_weights: np.ndarray | None = None
        self.col_weights: np.ndarray | None = None
        self.user_items: CSR | None = None
        self.history: list[dict] = []

    # ------------------------------------------------------------------ helpers
    @property
    def max_batch_floats(self) -> int:
        """The batch cap: as given, else the device's (:func:`trainer.device.max_batch_floats`)."""
        if self._max_batch_floats is not None:
            return self._max_batch_floats
        itemsize = np.dtype(self.dtype).itemsize
        return min(device_policy.max_batch_floats(d, itemsize) for d in self.devices())

    def hyperparameters(self) -> dict:
        """The hyperparameters that determine the factors, by their keyword names (with the
        batch cap in effect); what a checkpoint's fingerprint and ``training_summary.json``
        record."""
        return {
            "factors": self.factors,
            "regularization": self.regularization,
            "iterations": self.iterations,
            **self.weighting.to_dict(),
            "solver": self.solver,
            "cg_steps": self.cg_steps,
            "backend": self.backend_in_use(),
            "batch_size": self.batch_size,
            "max_batch_floats": self.max_batch_floats,
            "dtype": self.dtype,
            "random_state": self.random_state,
        }

    def devices(self) -> list[str]:
        """The devices the row solves are spread over (:func:`trainer.device.compute_devices`:
        ``device`` as given, else every GPU TensorFlow sees, else the CPU); the first holds
        the factors."""
        return device_policy.compute_devices(self.device)

    def _device(self) -> str:
        return self.devices()[0]

    def backend_in_use(self) -> str:
        """``"numba"`` or ``"tensorflow"``: :attr:`backend` resolved as its doc says.

        Raises
        ------
        HyperparameterError
            ``backend="numba"`` with the Cholesky solver, a non-CPU device or no Numba.
        """
        devices = self.devices()
        cpu_only = len(devices) == 1 and not device_policy.is_gpu(devices[0])
        if self.backend == "tensorflow":
            return "tensorflow"
        if self.backend == "auto":
            return "numba" if self.solver == "cg" and cpu_only and cpu_cg.available() else "tensorflow"
        if self.solver != "cg":
            raise HyperparameterError("backend", "'numba' runs solver='cg' only", self.backend)
        if not cpu_only:
            raise HyperparameterError("backend", f"'numba' runs on the CPU only, not {devices}",
                                      self.backend)
        if not cpu_cg.available():
            raise HyperparameterError("backend", "'numba' needs the numba package", self.backend)
        return "numba"

    def initial_factors(self, nusers: int, nitems: int) -> tuple[np.ndarray, np.ndarray]:
        """Seeded N(0, 0.1²/k) initial factors (``V`` is what the first row half-sweep uses;
        ``U`` only seeds the CG warm start)."""
        rng = np.random.default_rng(self.random_state)
        scale = 0.1 / np.sqrt(self.factors)

        def draw(n: int) -> np.ndarray:
            # a block of rows at a time: the same stream as one draw of all of them, without
            # a float64 copy of the whole matrix
            out = np.empty((n, self.factors), self.dtype)
            for start in range(0, n, 8192):
                stop = min(n, start + 8192)
                out[start:stop] = rng.standard_normal((stop - start, self.factors)) * scale
            return out

        v = draw(nitems)
        u = draw(nusers)
        return u, v

    def prepare(
        self,
        user_items: CSR,
        item_users: CSR | None = None,
        row_weights: np.ndarray | None = None,
        col_weights: np.ndarray | None = None,
    ) -> tuple[SweepPlan, SweepPlan]:
        """Validates the matrices and weights and builds both sweep plans.

        ``user_items`` (and ``item_users``) may be a :class:`~trainer.sparse.CSR` or anything
        stored by compressed rows, such as ``scipy.sparse.csr_matrix``
        (:meth:`~trainer.sparse.CSR.from_compressed_rows`)."""
        tf = _tf()
        user_items, item_users, row_weights, col_weights = self._inputs(
            user_items, item_users, row_weights, col_weights)
        args = (self.factors, self.batch_size, self.max_batch_floats, tf.as_dtype(self.dtype),
                self.devices())
        user_plan, item_plan = build_plans(
            user_items, item_users, self.weighting, row_weights,
            col_weights, *args)
        self.user_items = user_items
        return user_plan, item_plan

    def _inputs(
        self, user_items: CSR, item_users: CSR | None, row_weights: np.ndarray | None,
        col_weights: np.ndarray | None,
    ) -> tuple[CSR, CSR | None, np.ndarray, np.ndarray]:
        """The checked matrices and ``ρ`` / ``γ`` (float64), kept on the model."""
        user_items = CSR.from_compressed_rows(user_items, "user_items")
        if item_users is not None:
            item_users = CSR.from_compressed_rows(item_users, "item_users")
        _check_matrices(user_items, item_users)
        nusers, nitems = user_items.shape
        if row_weights is None:
            row_weights = np.ones(nusers)
        if col_weights is None:
            col_weights = self.weighting.column_weights(wts.item_positive_counts(user_items))
        row_weights = np.asarray(row_weights, np.float64)
        col_weights = np.asarray(col_weights, np.float64)
        if row_weights.shape != (nusers,) or col_weights.shape != (nitems,):
            raise TrainerInputError("row_weights/col_weights must have nusers/nitems entries")
        self.row_weights, self.col_weights = row_weights, col_weights
        return user_items, item_users, row_weights, col_weights

    # ------------------------------------------------------------------ training
    def fit(
        self,
        user_items: CSR,
        *,
        item_users: CSR | None = None,
        row_weights: np.ndarray | None = None,
        col_weights: np.ndarray | None = None,
        state: TrainingState | None = None,
        callback: Callable[[TrainingState], bool | None] | None = None,
        progress: ProgressFn | None = None,
    ) -> "WALSModel":
        """Runs sweeps ``state.sweeps_done + 1 .. iterations`` (all of them without ``state``).

        Parameters
        ----------
        user_items : CSR or scipy.sparse.csr_matrix
            The ``nusers × nitems`` ratings: a :class:`~trainer.sparse.CSR`, or anything with
            ``indptr``, ``indices``, ``data`` and ``shape`` stored by rows (SciPy's CSR
            matrices and arrays; repeated entries are summed, stored zeros left out).
        item_users : CSR, optional
            Its transpose, when the caller has it already (else computed).
        row_weights, col_weights : ndarray, optional
            ``ρ_i`` (default 1) and ``γ_j`` (default from ``col_weights``), ``objective="wals"``.
        state : TrainingState, optional
            Where to continue (a checkpoint); default: seeded initial factors.
        callback : callable, optional
            Called with the :class:`TrainingState` after each sweep (it may checkpoint, log
            or raise); when it returns ``True`` no further sweep runs (early stopping) and
            the model keeps the factors of the sweep just finished.
        progress : callable, optional
            ``progress(stage, batches_done, batches)`` during each half-sweep.

        Returns
        -------
        WALSModel
            ``self``, with :attr:`user_factors`, :attr:`item_factors` and :attr:`history`
            (per sweep: ``sweep``, ``seconds``, and with ``calculate_training_loss`` ``loss``,
            ``unregularized_loss``, ``rwse``, ``sum_weights``). The run is deterministic on
            CPU for a fixed ``random_state``, so resuming from a saved state gives the same
            factors.
        """
        if self.backend_in_use() == "numba":
            return self._fit_numba(user_items, item_users, row_weights, col_weights, state,
                                   callback, progress)
        tf = _tf()
        user_plan, item_plan = self.prepare(user_items, item_users, row_weights, col_weights)
        state = self._start(state, *user_items.shape)
        with tf.device(self._device()):
            # the factors are updated in place (solve_half_sweep's ``out``): one copy each
            u = tf.Variable(state.user_factors.astype(self.dtype), trainable=False)
            v = tf.Variable(state.item_factors.astype(self.dtype), trainable=False)
            for sweep in range(state.sweeps_done + 1, self.iterations + 1):
                t0 = time.perf_counter()
                self._sweep(u, v, user_plan, item_plan, f"sweep {sweep}/{self.iterations}", progress)
                _ = v[:1].numpy()  # wait for the device before taking the time
                # a callback gets the factors as NumPy arrays: a second copy of them, which a
                # fit without one does not need to hold
                state = self._record(state, u, v, user_plan, time.perf_counter() - t0,
                                     snapshot=callback is not None)
                if callback is not None and callback(state):
                    break
            self.user_factors = np.asarray(u.numpy(), np.float32)  # .numpy() copies already
            self.item_factors = np.asarray(v.numpy(), np.float32)
        self.history = list(state.history)
        return self

    def _fit_numba(
        self, user_items: CSR, item_users: CSR | None, row_weights: np.ndarray | None,
        col_weights: np.ndarray | None, state: TrainingState | None,
        callback: Callable[[TrainingState], bool | None] | None, progress: ProgressFn | None,
    ) -> "WALSModel":
        """:meth:`fit` on the Numba backend (:mod:`trainer.cpu_cg`): the same sweeps, states,
        history and callbacks; the factors are NumPy arrays updated in place."""
        user_items, _, row_weights, col_weights = self._inputs(
            user_items, item_users, row_weights, col_weights)
        self.user_items = user_items
        sums = loss_sums(user_items, self.weighting, row_weights, col_weights)  # validates too
        users, items = cpu_cg.orientations(user_items, row_weights, col_weights, self.dtype)
        given = state is not None
        state = self._start(state, *user_items.shape)
        # updated in place: a caller's state is copied, the fresh start is ours already
        u = np.array(state.user_factors, dtype=self.dtype, order="C", copy=given or None)
        v = np.array(state.item_factors, dtype=self.dtype, order="C", copy=given or None)
        w0, lam = self.weighting.w0, self.regularization
        for sweep in range(state.sweeps_done + 1, self.iterations + 1):
            stage = f"sweep {sweep}/{self.iterations}"
            t0 = time.perf_counter()
            for fixed, x, data, side in ((v, u, users, "users"), (u, v, items, "items")):
                cpu_cg.cg_half_sweep(fixed, x, data, self.weighting, lam, self.cg_steps)
                if progress is not None:
                    progress(f"{stage} {side}", 1, 1)
            seconds = time.perf_counter() - t0
            entry: dict[str, Any] = {"sweep": sweep, "seconds": seconds}
            if self.calculate_training_loss:
                obs = cpu_cg.observed_loss(u, v, users, self.weighting)
                entry.update(loss_terms(u, v, obs, sums, w0, lam))
                if not np.isfinite(entry["loss"]):
                    raise FloatingPointError(f"loss became {entry['loss']} at sweep {sweep}")
            elif not (np.all(np.isfinite(u)) and np.all(np.isfinite(v))):
                raise FloatingPointError(f"the factors became NaN/inf at sweep {sweep}")
            history = [*state.history, entry]
            self.history = history
            # the last state's factors are let go before the next copy is made
            state = TrainingState(sweep, None, None, history)
            if callback is None:
                continue
            state.user_factors, state.item_factors = u.copy(), v.copy()
            self.user_factors, self.item_factors = state.user_factors, state.item_factors
            if callback(state):
                break
        # float32 factors are returned as they are (no second copy)
        self.user_factors = u if u.dtype == np.float32 else u.astype(np.float32)
        self.item_factors = v if v.dtype == np.float32 else v.astype(np.float32)
        self.history = list(state.history)
        return self

    def _start(self, state: TrainingState | None, nusers: int, nitems: int) -> TrainingState:
        """``state``, checked against the data's shape, or the seeded start."""
        if state is None:
            return TrainingState(0, *self.initial_factors(nusers, nitems), [])
        if (state.user_factors.shape != (nusers, self.factors)
                or state.item_factors.shape != (nitems, self.factors)):
            raise TrainerInputError("resumed factors do not match the data shape / factors")
        return state

    def _sweep(
        self, u: Any, v: Any, user_plan: SweepPlan, item_plan: SweepPlan, stage: str,
        progress: ProgressFn | None,
    ) -> None:
        """One sweep, in place: the user rows of ``u`` given ``v``, then the item rows of ``v``
        given the new ``u`` (both ``tf.Variable`` objects)."""
        w0, lam = self.weighting.w0, self.regularization
        solve_half_sweep(v.read_value(), user_plan, w0, lam, self.solver, self.cg_steps,
                         previous=u, progress=progress, stage=f"{stage} users", out=u)
        solve_half_sweep(u.read_value(), item_plan, w0, lam, self.solver, self.cg_steps,
                         previous=v, progress=progress, stage=f"{stage} items", out=v)

    def _record(
        self, before: TrainingState, u: Any, v: Any, user_plan: SweepPlan, seconds: float,
        snapshot: bool = True,
    ) -> TrainingState:
        """The state after the sweep that followed ``before`` (its loss when asked for), also
        kept on the model so that a callback sees it; without ``snapshot`` only the sweep count
        and history (the factors stay in ``u`` / ``v``: the state's are ``None``)."""
        tf = _tf()
        sweep = before.sweeps_done + 1
        entry: dict[str, Any] = {"sweep": sweep, "seconds": seconds}
        if self.calculate_training_loss:
            entry.update(compute_loss(u, v, user_plan, self.weighting.w0, self.regularization))
            if not np.isfinite(entry["loss"]):
                raise FloatingPointError(f"loss became {entry['loss']} at sweep {sweep}")
        history = [*before.history, entry]
        if not snapshot:
            if not self.calculate_training_loss and not bool(
                tf.reduce_all(tf.math.is_finite(u)) & tf.reduce_all(tf.math.is_finite(v))
            ):
                raise FloatingPointError(f"the factors became NaN/inf at sweep {sweep}")
            self.history = history
            return TrainingState(sweep, None, None, history)
        state = TrainingState(sweep, u.numpy(), v.numpy(), history)
        if not self.calculate_training_loss and not (
            np.all(np.isfinite(state.user_factors)) and np.all(np.isfinite(state.item_factors))
        ):
            raise FloatingPointError(f"the factors became NaN/inf at sweep {sweep}")
        self.user_factors, self.item_factors = state.user_factors, state.item_factors
        self.history = state.history
        return state

    def loss(self, user_items: CSR | None = None) -> dict:
        """Objective of the current factors on ``user_items`` (default: the training matrix)."""
        tf = _tf()
        self._check_fitted()
        user_items = user_items if user_items is not None else self.user_items
        user_plan, _ = self.prepare(user_items, None, self.row_weights, self.col_weights)
        with tf.device(self._device()):
            return compute_loss(
                tf.constant(self.user_factors.astype(self.dtype)),
                tf.constant(self.item_factors.astype(self.dtype)),
                user_plan,
                self.weighting.w0,
                self.regularization,
            )

    # ------------------------------------------------------------------ inference
    def _check_fitted(self) -> None:
        if self.user_factors is None or self.item_factors is None:
            raise RuntimeError("model is not fitted")

    def recommend(
        self,
        userids: int | np.ndarray,
        user_items: CSR | None = None,
        N: int = 10,
        filter_already_liked_items: bool = True,
        batch_size: int = 1024,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``N`` items for each user in ``userids`` (dense IDs), best first.

        ``user_items`` (nusers × nitems, default: the training matrix) names the items to
        filter. Returns ``(ids, scores)`` of shape ``(len(userids), N)``; slots with nothing to
        recommend hold id −1 and score −inf (a user with an all-zero factor — no training
        interactions — gets none).
        """
        self._check_fitted()
        scalar = np.isscalar(userids)
        ids = np.atleast_1d(np.asarray(userids, dtype=np.int64))
        if ids.size and (ids.min() < 0 or ids.max() >= self.user_factors.shape[0]):
            raise TrainerInputError("user id out of range")
        exclude = None
        if filter_already_liked_items:
            m = user_items if user_items is not None else self.user_items
            if m is None:
                raise TrainerInputError("filter_already_liked_items needs user_items")
            exclude = m.take_rows(ids)
        out_ids, scores = top_k(
            self.user_factors[ids], self.item_factors, N, exclude=exclude, batch_size=batch_size,
            device=self._device(),
        )
        return (out_ids[0], scores[0]) if scalar else (out_ids, scores)

    def recommend_users(
        self,
        itemids: int | np.ndarray,
        item_users: CSR | None = None,
        N: int = 10,
        filter_already_liked_items: bool = True,
        batch_size: int = 1024,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``N`` users for each item (targeting); the mirror image of :meth:`recommend`."""
        self._check_fitted()
        scalar = np.isscalar(itemids)
        ids = np.atleast_1d(np.asarray(itemids, dtype=np.int64))
        if ids.size and (ids.min() < 0 or ids.max() >= self.item_factors.shape[0]):
            raise TrainerInputError("item id out of range")
        exclude = None
        if filter_already_liked_items:
            m = item_users
            if m is None:
                if self.user_items is None:
                    raise TrainerInputError("filter_already_liked_items needs item_users")
                m = self.user_items.transpose()
            exclude = m.take_rows(ids)
        out_ids, scores = top_k(
            self.item_factors[ids], self.user_factors, N, exclude=exclude, batch_size=batch_size,
            device=self._device(),
        )
        return (out_ids[0], scores[0]) if scalar else (out_ids, scores)

    def recalculate_user(
        self, item_ids: np.ndarray, ratings: np.ndarray, *, rating_cap: float | None = None
    ) -> np.ndarray:
        r"""Fold-in: the factor of a new user with these (item, rating) pairs.

        One exact row solve against the fixed :attr:`item_factors` (row weight ρ = 1), with
        ``W_j, A_j`` from the model's objective (:mod:`trainer.weights`)::

            M u = b,   M = w0 VᵀV + λ I + Σ_j (W_j − w0) v_j v_jᵀ,   b = Σ_j W_j A_j v_j

        formed and solved (Cholesky) in float64 whatever :attr:`dtype` is, then stored in
        float32. The same contract as the SavedModel's ``fold_in`` (:mod:`trainer.export`),
        except the cap: repeated item IDs have their ratings summed (in float64); the
        summed rating is clipped to ``rating_cap`` when one is given (the model itself does
        not know the range its training ratings came from; ``python -m trainer.task``'s
        SavedModel uses ``metadata.json``'s ``rating.cap``).

        Why float64: with ``objective="implicit"`` a rating ``r`` gives the confidence
        ``1 + α r``, so ``κ(M)`` grows like ``α r ‖v_j‖² / λ_min(w0 VᵀV + λI)``; at
        ``r = 1e8`` that is ~1e8–1e9, beyond float32 (``κ·u₃₂ > 1``: the float32 Cholesky
        lost positive definiteness and returned NaN) but accurate in float64: the
        relative error is at most about ``κ(M)·(3k+1)·2⁻⁵³`` (Higham, ASNA, Thm 10.4). The
        system is refused when ``κ(M)·2⁻⁵³ > 2⁻¹⁰`` (the limit (W3) of the module docstring
        also uses) or ``M`` is not numerically positive definite: e.g. ``r = 1e30`` with
        ``implicit`` — no float64 solve of that system means anything, and NumPy's own
        closed form returns garbage for it. With ``objective="wals"`` the rating is the
        target, not a weight: a huge rating scales ``b`` and leaves ``κ(M)`` unchanged.

        Parameters
        ----------
        item_ids : array_like of int
            Dense item IDs in ``[0, nitems)``; repeats allowed (their ratings are summed).
        ratings : array_like of float
            One rating per ID: finite and ``>= 0`` (engagement scores).
        rating_cap : float, optional
            Finite, > 0: summed ratings above it are clipped to it. Default: no clipping.

        Returns
        -------
        ndarray
            float32 ``(k,)``; all zeros for no items.

        Raises
        ------
        TrainerInputError (a ValueError)
            IDs out of range, lengths differ, a NaN/inf or negative rating, a bad
            ``rating_cap``, a system too ill-conditioned for float64 (above), or a solution
            beyond float32's range (e.g. ``wals`` with a rating of 1e300).
        """
        tf = _tf()
        self._check_fitted()
        item_ids = np.asarray(item_ids, dtype=np.int64).ravel()
        ratings = np.asarray(ratings, dtype=np.float64).ravel()
        if item_ids.shape != ratings.shape:
            raise TrainerInputError("item_ids and ratings must have the same length")
        if rating_cap is not None and not (np.isfinite(rating_cap) and rating_cap > 0):
            raise TrainerInputError(f"rating_cap must be finite and > 0, got {rating_cap}")
        v = self.item_factors.astype(np.float64)
        nitems, k = v.shape
        if item_ids.size == 0:
            return np.zeros(k, np.float32)
        uniq, summed = _merge_ratings(item_ids, ratings, nitems)
        if rating_cap is not None:
            summed = np.minimum(summed, float(rating_cap))
        w, a = wts.observed(self.weighting, summed, 1.0, self.col_weights[uniq])
        w0 = self.weighting.w0
        x = v[uniq]
        m = w0 * (v.T @ v) + self.regularization * np.eye(k) + (x * (w - w0)[:, None]).T @ x
        b = x.T @ (w * a)
        ev = np.linalg.eigvalsh(m)
        u64 = float(np.finfo(np.float64).eps) / 2.0
        well_posed = ev[0] > 0 and ev[-1] * u64 <= WOODBURY_MAX_THETA * ev[0]  # κ·u ≤ 2⁻¹⁰
        if not (np.all(np.isfinite(ev)) and well_posed):
            raise TrainerInputError(
                f"recalculate_user: the normal equations are too ill-conditioned to solve even in "
                f"float64 (eigenvalues {ev[0]:.3g} .. {ev[-1]:.3g}; largest rating "
                f"{summed.max():.3g}): pass rating_cap= to clip ratings to the training range"
            )
        with tf.device("/CPU:0"):  # a k × k system: no device round trip
            sol = tf.linalg.cholesky_solve(
                tf.linalg.cholesky(tf.constant(m)), tf.constant(b[:, None])
            )[:, 0].numpy()
        if not np.all(np.isfinite(sol)):  # the Cholesky broke down (it fills NaN on CPU)
            raise TrainerInputError(
                "recalculate_user: the float64 Cholesky factorisation failed (the normal "
                "equations are not numerically positive definite): pass rating_cap= to clip "
                "ratings to the training range"
            )
        with np.errstate(over="ignore"):
            out = sol.astype(np.float32)
        if not np.all(np.isfinite(out)):
            raise TrainerInputError(
                f"recalculate_user: the solution (largest entry {np.abs(sol).max():.3g}) does not "
                f"fit in float32; pass rating_cap= to clip ratings to the training range"
            )
        return out


def _check_matrices(user_items: CSR, item_users: CSR | None) -> None:
    """Refuses an empty, all-zero or non-finite rating matrix, or an ``item_users`` that is not
    its transpose."""
    if not isinstance(user_items, CSR):
        raise TrainerInputError("user_items must be a trainer.sparse.CSR")
    if user_items.shape[0] < 1 or user_items.shape[1] < 1:
        raise TrainerInputError(f"empty matrix shape {user_items.shape}")
    if user_items.nnz == 0:
        raise TrainerInputError("the rating matrix has no entries")
    if not np.all(np.isfinite(user_items.values)):
        raise TrainerInputError("NaN/inf ratings refused")
    if item_users is not None and not item_users.same_entries_as_transpose_of(user_items):
        raise TrainerInputError("item_users is not the transpose of user_items")


def _merge_ratings(
    item_ids: np.ndarray, ratings: np.ndarray, nitems: int
) -> tuple[np.ndarray, np.ndarray]:
    """Distinct item IDs and their summed (float64) ratings; refuses out-of-range IDs and
    NaN/inf or negative ratings."""
    if item_ids.min() < 0 or item_ids.max() >= nitems:
        raise TrainerInputError(f"item id out of range [0, {nitems})")
    if not np.all(np.isfinite(ratings)):
        raise TrainerInputError("NaN/inf ratings refused")
    if np.any(ratings < 0):
        raise TrainerInputError("negative ratings refused (ratings are engagement scores >= 0)")
    uniq, inv = np.unique(item_ids, return_inverse=True)
    return uniq, np.bincount(inv, weights=ratings, minlength=uniq.size)
