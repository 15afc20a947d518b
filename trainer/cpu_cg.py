r"""The CPU backend's half-sweep: warm-started conjugate gradient per row, compiled by Numba.

The same equations as the TensorFlow ``solver="cg"`` path of :mod:`trainer.wals` (its module
docstring), row by row instead of in padded batches. For row ``i`` with observed columns
``Ω_i``, fixed factors ``V`` (rows ``v_j``), ``B0 = w0 VᵀV + λ I`` and per entry
``e_j = W_ij − w0`` and ``c_j = W_ij A_ij`` (:func:`trainer.weights.observed_tf`'s equations)::

    M_i = B0 + Σ_{j∈Ω_i} e_j v_j v_jᵀ,      b_i = Σ_{j∈Ω_i} c_j v_j

    x ← x_i (the previous factors: the warm start)
    r = b_i − M_i x = Σ_j v_j (c_j − e_j v_j·x) − B0 x,   p = r
    repeat cg_steps times:
        q = M_i p = B0 p + Σ_j v_j e_j (v_j·p)
        a = (r·r) / (p·q)          (0 when p·q = 0: r = 0, the row is solved)
        x ← x + a p,   r ← r − a q
        p ← r + ((r·r)_new / (r·r)_old) p

A row without observations gets ``x = 0`` (``b_i = 0``). Each step lowers the row's quadratic
(CG from the previous iterate), so a sweep never raises the objective.

Why a compiled loop on a CPU: every ``M_i p`` reads the row's fixed factors twice (``v_j·p``,
then ``+= e_j (v_j·p) v_j``), and a loop reads each ``v_j`` once for both, from the L1 cache,
without materialising the row's ``|Ω_i| × k`` block; the batched TensorFlow form gathers that
block into memory and reads it back eight times per half-sweep, which makes it memory-bound on
a CPU (BENCHMARKS.md §2). No padding, no per-batch plan: the solver reads the CSR arrays
themselves (4 bytes of column ID and 4 of rating per entry and orientation).

Rows are split into contiguous ranges of about equal work; each range runs in a thread with
the GIL released. Every row is independent, so the factors do not depend on the split or the
number of threads. Sums inside a row are accumulated in the factors' dtype, in an order the
compiler may vectorise (``fastmath`` reassociation; no NaN/inf assumptions, so a NaN still
shows).
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np

from trainer import weights as wts
from trainer.sparse import CSR

# reassociation lets LLVM vectorise the dot products (in an order fixed at compile time: see
# ``dot``); fused multiply-add; NaN/inf stay IEEE (no nnan/ninf)
_FASTMATH = {"reassoc", "contract"}
# ranges per thread: enough that one slow range does not leave a core idle at the end
_RANGES_PER_THREAD = 8
# the loss is summed over this many fixed ranges (in order), whatever the thread count, so it
# is the same number on every machine with the same kernels
_LOSS_RANGES = 64


def available() -> bool:
    """Whether Numba can be imported (the backend's one extra dependency)."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def cpu_threads() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class Orientation:
    """One orientation of the ratings, as the kernels read it: CSR arrays plus the weights of
    its rows (``ρ`` for users × items, ``γ`` for items × users) and of its columns."""

    indptr: np.ndarray  # int64, nrows + 1
    indices: np.ndarray  # int32, nnz
    ratings: np.ndarray  # the solver's dtype, nnz
    row_weights: np.ndarray  # the solver's dtype, nrows
    col_weights: np.ndarray  # the solver's dtype, ncols

    @property
    def nrows(self) -> int:
        return int(self.indptr.shape[0] - 1)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.indptr, self.indices, self.ratings,
                                      self.row_weights, self.col_weights))


def orientations(
    user_items: CSR, row_weights: np.ndarray, col_weights: np.ndarray, dtype: str
) -> tuple[Orientation, Orientation]:
    """The users × items and items × users orientations (the second by a counting sort: no
    permutation array, users ascending within each item)."""
    k = _kernels()
    dt = np.dtype(dtype)
    ratings = user_items.values.astype(dt, copy=False)
    nusers, nitems = user_items.shape
    counts = np.bincount(user_items.indices, minlength=nitems)
    t_indptr = np.zeros(nitems + 1, np.int64)
    np.cumsum(counts, out=t_indptr[1:])
    t_indices = np.empty(user_items.nnz, np.int32)
    t_ratings = np.empty(user_items.nnz, dt)
    k["transpose"](user_items.indptr, user_items.indices, ratings, t_indptr, t_indices, t_ratings)
    rho, gamma = row_weights.astype(dt), col_weights.astype(dt)
    return (Orientation(user_items.indptr, user_items.indices, ratings, rho, gamma),
            Orientation(t_indptr, t_indices, t_ratings, gamma, rho))


def _ranges(indptr: np.ndarray, k: int, steps: int, parts: int) -> list[tuple[int, int]]:
    """Contiguous row ranges of about equal work: per row ``(steps + 1)·2·nnz·k`` for the
    passes over its entries plus ``steps·k²`` for ``B0 p``."""
    nrows = indptr.shape[0] - 1
    if nrows == 0:
        return []
    lengths = np.diff(indptr).astype(np.float64)
    work = np.cumsum((steps + 1) * 2.0 * k * lengths + steps * float(k * k) + 1.0)
    cuts = np.searchsorted(work, work[-1] * np.arange(1, parts) / parts, side="left")
    bounds = np.unique(np.concatenate([[0], np.minimum(cuts + 1, nrows), [nrows]]))
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def gram(fixed: np.ndarray, block: int = 8192) -> np.ndarray:
    """``VᵀV`` in float64, a block of rows at a time (no float64 copy of ``V``)."""
    k = fixed.shape[1]
    out = np.zeros((k, k))
    for start in range(0, fixed.shape[0], block):
        part = fixed[start:start + block].astype(np.float64)
        out += part.T @ part
    return out


def cg_half_sweep(
    fixed: np.ndarray,
    x: np.ndarray,
    data: Orientation,
    weighting: wts.Weighting,
    regularization: float,
    cg_steps: int,
    threads: int | None = None,
) -> None:
    """Updates ``x`` (``data.nrows × k``, C-contiguous, the warm start) in place with
    ``cg_steps`` CG steps per row given the other side's ``fixed`` factors."""
    k = _kernels()
    dt = x.dtype.type
    base = (weighting.w0 * gram(fixed) + regularization * np.eye(fixed.shape[1])).astype(x.dtype)
    threads = threads or cpu_threads()
    args = (data.indptr, data.indices, data.ratings, data.row_weights, data.col_weights,
            fixed, base, x, weighting.objective == "wals", weighting.confidence == "log",
            dt(weighting.alpha), dt(weighting.epsilon), dt(weighting.w0), int(cg_steps), dt(0))
    ranges = _ranges(data.indptr, fixed.shape[1], int(cg_steps), threads * _RANGES_PER_THREAD)
    _run(lambda r: k["cg_rows"](r[0], r[1], *args), ranges, threads)


def observed_loss(
    u: np.ndarray, v: np.ndarray, data: Orientation, weighting: wts.Weighting,
    threads: int | None = None,
) -> float:
    """``Σ_Ω (W − w0) p² − 2 Σ_Ω W A p`` with ``p = u_i·v_j``, in float64 (the terms of the
    loss that depend on the factors and the observed entries; :func:`trainer.wals.compute_loss`)."""
    k = _kernels()
    dt = u.dtype.type
    args = (data.indptr, data.indices, data.ratings, data.row_weights, data.col_weights, u, v,
            weighting.objective == "wals", weighting.confidence == "log",
            dt(weighting.alpha), dt(weighting.epsilon), dt(weighting.w0), dt(0))
    ranges = _ranges(data.indptr, 1, 0, _LOSS_RANGES)
    terms = _run(lambda r: k["loss_rows"](r[0], r[1], *args), ranges, threads or cpu_threads())
    return float(math.fsum(terms))


def _run(fn: Callable, ranges: list, threads: int) -> list:
    if threads <= 1 or len(ranges) <= 1:
        return [fn(r) for r in ranges]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(fn, ranges))


_KERNELS: dict | None = None


def _kernels() -> dict:
    """The compiled kernels (Numba imported and the functions defined on first use; compiled
    per dtype on first call, cached on disk where the package directory is writable)."""
    global _KERNELS
    if _KERNELS is None:
        _KERNELS = _define()
    return _KERNELS


def _define() -> dict:
    from numba import njit

    def jit(fn: Callable) -> Callable:
        try:
            return njit(nogil=True, cache=True, fastmath=_FASTMATH)(fn)
        except RuntimeError:  # no writable cache directory (read-only install, no home):
            return njit(nogil=True, cache=False, fastmath=_FASTMATH)(fn)  # compile per process

    @jit
    def dot(x, y, k, zero):
        """``x·y``. Only ever a loop of loads: a loop that also stores gets a run-time
        overlap test from the vectoriser, and its scalar fallback (taken or not depending on
        where the arrays lie) would sum in another order."""
        s = zero
        for a in range(k):
            s += x[a] * y[a]
        return s

    @jit
    def entry_weights(r, rho, gamma, wals, log_conf, alpha, epsilon, w0, zero):
        """``(W − w0, W·A)`` of one entry: :func:`trainer.weights.observed_tf`."""
        if wals:
            extra = rho * gamma
            return extra, (w0 + extra) * r
        if log_conf:
            extra = alpha * np.log1p(r / epsilon)
        else:
            extra = alpha * r
        if r > zero:
            return extra, (zero + 1) + extra
        return extra, zero

    @jit
    def cg_rows(lo, hi, indptr, indices, ratings, row_w, col_w, fixed, base, x,
                wals, log_conf, alpha, epsilon, w0, steps, zero):
        k = fixed.shape[1]
        longest = 0
        for i in range(lo, hi):
            longest = max(longest, indptr[i + 1] - indptr[i])
        e = np.empty(longest, fixed.dtype)
        c = np.empty(longest, fixed.dtype)
        r = np.empty(k, fixed.dtype)
        p = np.empty(k, fixed.dtype)
        q = np.empty(k, fixed.dtype)
        for i in range(lo, hi):
            start, stop = indptr[i], indptr[i + 1]
            xi = x[i]
            if start == stop:
                xi[:] = zero
                continue
            for n in range(stop - start):
                e[n], c[n] = entry_weights(ratings[start + n], row_w[i],
                                           col_w[indices[start + n]], wals, log_conf,
                                           alpha, epsilon, w0, zero)
            # r = Σ_j v_j (c_j − e_j v_j·x) − B0 x
            for a in range(k):
                r[a] = -dot(base[a], xi, k, zero)
            for n in range(stop - start):
                v = fixed[indices[start + n]]
                f = c[n] - e[n] * dot(v, xi, k, zero)
                for a in range(k):
                    r[a] += f * v[a]
            for a in range(k):
                p[a] = r[a]
            rs = dot(r, r, k, zero)
            for _ in range(steps):
                for a in range(k):  # q = B0 p + Σ_j v_j e_j (v_j·p)
                    q[a] = dot(base[a], p, k, zero)
                for n in range(stop - start):
                    v = fixed[indices[start + n]]
                    f = e[n] * dot(v, p, k, zero)
                    for a in range(k):
                        q[a] += f * v[a]
                pq = dot(p, q, k, zero)
                step = rs / pq if pq != zero else zero
                for a in range(k):
                    xi[a] += step * p[a]
                    r[a] -= step * q[a]
                rs_new = dot(r, r, k, zero)
                beta = rs_new / rs if rs != zero else zero
                for a in range(k):
                    p[a] = r[a] + beta * p[a]
                rs = rs_new

    @jit
    def loss_rows(lo, hi, indptr, indices, ratings, row_w, col_w, u, v,
                  wals, log_conf, alpha, epsilon, w0, zero):
        k = u.shape[1]
        total = 0.0
        for i in range(lo, hi):
            ui = u[i]
            for n in range(indptr[i], indptr[i + 1]):
                j = indices[n]
                e, c = entry_weights(ratings[n], row_w[i], col_w[j], wals, log_conf,
                                     alpha, epsilon, w0, zero)
                vj = v[j]
                pred = 0.0
                for a in range(k):
                    pred += np.float64(ui[a]) * np.float64(vj[a])
                total += np.float64(e) * pred * pred - 2.0 * np.float64(c) * pred
        return total

    @jit
    def transpose(indptr, indices, ratings, t_indptr, t_indices, t_ratings):
        fill = t_indptr[:-1].copy()
        for i in range(indptr.shape[0] - 1):
            for n in range(indptr[i], indptr[i + 1]):
                j = indices[n]
                t_indices[fill[j]] = i
                t_ratings[fill[j]] = ratings[n]
                fill[j] += 1

    return {"cg_rows": cg_rows, "loss_rows": loss_rows, "transpose": transpose}
