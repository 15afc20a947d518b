r"""The batch plan of a half-sweep: which rows are solved together, where their data lives.

A half-sweep solves every non-empty row of one orientation (users × items, or items × users)
against the other side's fixed factors (:mod:`trainer.wals`). This module decides how:

* Rows are sorted by length and grouped into buckets whose lengths differ by at most a factor
  2^(1/:data:`BUCKETS_PER_OCTAVE`); each bucket is cut into batches of at most ``batch_size``
  rows and at most ``max_batch_floats`` gathered floats (``B·L·k``, and ``B·k²`` for rows on
  the ``k × k`` path, ``4L > 3k``). A batch is solved as a padded ``(B, L)`` block (padding has
  weight 0): ``L`` is the bucket's ladder width and ``B`` its row cap, or the next power of two
  for the bucket's last batch. So a plan has about two block shapes per bucket, the same from
  plan to plan: TensorFlow's kernels (and oneDNN's primitives behind them, which hold memory
  per shape) are made once per shape rather than once per batch.
* Batches are spread over the compute devices (largest first onto the device with the least
  padded floats so far); every batch is computed the same way wherever it runs, so the factors
  do not depend on how many devices there are.
* What a batch stores on its device is its rows' column IDs (int32) and ratings (float32),
  each row padded only to the batch's longest row (about 1 % padding on a MovieLens-shaped
  matrix): 8 bytes per entry, 16 bytes per interaction for the two orientations — the same as
  a CSR matrix and its transpose. The block is padded to its solve shape and the weights
  ``W − w0``, ``W·A`` are computed from the ratings inside the solve kernel
  (:func:`expand_block`, :func:`trainer.weights.observed_tf`); nothing of that size is kept
  between batches.
* Building a plan needs no transposed copy of the matrix: the items × users orientation is
  read through one stable permutation of the users × items entries.

The per-orientation sums the loss needs (``Σ_Ω W A²`` and ``Σ_Ω (W − w0)``) are computed here in
float64 from :func:`trainer.weights.observed`, a chunk of entries at a time, which also
validates the ratings and weights (negative confidences, negative weights) before anything is
placed on a device.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from trainer import weights as wts
from trainer.sparse import CSR

# length buckets per doubling of the row length: rows of a bucket differ in length by at most
# 2^(1/BUCKETS_PER_OCTAVE) (padding waste) and a plan has about two batch shapes per bucket
BUCKETS_PER_OCTAVE = 8
# entries per chunk when the loss sums are computed on the host (bounds the float64 temporaries)
_SUM_CHUNK = 1 << 20


def _tf():
    import tensorflow as tf

    return tf


@dataclass
class Batch:
    """One padded ``(B, L)`` block of rows solved together, held on one device."""

    rows: Any  # tf int32 (B,) row IDs
    cols: Any  # tf int32 (rows, width) column IDs, −1 in the padding
    ratings: Any  # tf float (rows, width) ratings r_ij, 0 in the padding
    width: int  # the longest row's length
    shape: tuple[int, int]  # (B, L) the batch is solved at: padded with empty rows / entries
    padded_shape: Any  # the same as a tf int32 (2,) on the batch's device
    nnz: int
    part: int  # index into SweepPlan.parts: the device


@dataclass
class Part:
    """What one device holds of an orientation besides its batches: the weight vectors."""

    device: str
    row_weights: Any  # tf float (nrows,): ρ_i (users × items) or γ_j (items × users)
    col_weights: Any  # tf float (ncols,): γ_j or ρ_i
    scalars: Any  # tf float (3,): α, ε, w0 of the weighting (on the device: no per-batch copy)


@dataclass
class SweepPlan:
    """The batches of one orientation and where they are (see module doc)."""

    nrows: int
    ncols: int
    batches: list[Batch]
    parts: list[Part]
    empty_rows: Any  # tf int32 on the primary device: the rows without entries (their factor is 0)
    weighting: wts.Weighting
    sum_waa: float  # Σ_Ω W A²   (float64)
    sum_extra: float  # Σ_Ω (W − w0)
    nnz: int
    max_batch_floats: int = 1 << 62  # the cap the batches were cut with (chunks the fallback)

    @property
    def devices(self) -> list[str]:
        return [p.device for p in self.parts]

    def device_of(self, batch: Batch) -> str:
        return self.parts[batch.part].device

    def stored_bytes(self) -> int:
        """Bytes the plan holds on its devices: every tensor it keeps (entries, row IDs,
        shapes, weight vectors, scalars, empty rows)."""
        tensors = [self.empty_rows]
        for p in self.parts:
            tensors += [p.row_weights, p.col_weights, p.scalars]
        for b in self.batches:
            tensors += [b.rows, b.cols, b.ratings, b.padded_shape]
        return sum(int(np.prod(t.shape)) * t.dtype.size for t in tensors)

    def expand(self, batch: Batch) -> tuple[Any, Any, Any]:
        """The column IDs, ``W − w0`` and ``W·A`` of ``batch`` at its padded shape
        :attr:`Batch.shape` (ID 0 and weight 0 in the padding: no contribution to any row's
        normal equations; padding rows solve to 0), computed on the batch's device."""
        tf = _tf()
        part = self.parts[batch.part]
        w = self.weighting
        fn = _expand_fn(batch.ratings.dtype.name, w.objective, w.confidence)
        with tf.device(part.device):
            return fn(*self.block(batch))

    def block(self, batch: Batch) -> tuple[Any, ...]:
        """The tensors :func:`expand_block` takes for ``batch`` (all on its device)."""
        part = self.parts[batch.part]
        return (batch.cols, batch.ratings, batch.rows, part.row_weights, part.col_weights,
                part.scalars, batch.padded_shape)


def expand_block(
    objective: str, confidence: str, cols: Any, ratings: Any, rows: Any, row_weights: Any,
    col_weights: Any, scalars: Any, shape: Any,
) -> tuple[Any, Any, Any]:
    """In-graph body of :meth:`SweepPlan.expand` (the solver's kernels call it inside their own
    ``tf.function``, :meth:`SweepPlan.block`): pads the stored block to ``shape`` and computes
    the weights (:func:`trainer.weights.observed_tf`)."""
    tf = _tf()
    grow = [[0, shape[0] - tf.shape(cols)[0]], [0, shape[1] - tf.shape(cols)[1]]]
    cols = tf.pad(cols, grow, constant_values=-1)
    ratings = tf.pad(ratings, grow)
    mask = cols >= 0
    idx = tf.maximum(cols, 0)
    if objective == "wals":  # only its weights depend on the row and column
        # padding rows read row 0's weight; the mask gives their entries weight 0
        rho = tf.gather(row_weights, tf.pad(rows, grow[:1]))[:, None]
        gamma = tf.gather(col_weights, idx)
    else:
        rho = gamma = None
    alpha, epsilon, w0 = scalars[0], scalars[1], scalars[2]
    extra, wa = wts.observed_tf(objective, confidence, ratings, rho, gamma, alpha, epsilon, w0)
    zero = tf.zeros_like(ratings)
    return idx, tf.where(mask, extra, zero), tf.where(mask, wa, zero)


def block_signature(dtype: Any) -> list[Any]:
    """One ``tf.TensorSpec`` per tensor of :meth:`SweepPlan.block`."""
    tf = _tf()
    vec = tf.TensorSpec([None], dtype)
    return [tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None, None], dtype),
            tf.TensorSpec([None], tf.int32), vec, vec, tf.TensorSpec([3], dtype),
            tf.TensorSpec([2], tf.int32)]


@functools.lru_cache(maxsize=None)
def _expand_fn(dtype_name: str, objective: str, confidence: str) -> Any:
    """The ``tf.function`` behind :meth:`SweepPlan.expand` (one trace per dtype and objective)."""
    tf = _tf()

    @tf.function(input_signature=block_signature(tf.as_dtype(dtype_name)))
    def expand(*block):
        return expand_block(objective, confidence, *block)

    return expand


# --------------------------------------------------------------------------- building
def _ladder_width(bucket: int) -> int:
    """The widest row of length bucket ``bucket`` (lengths ``L`` with ⌊b log2 L⌋ = bucket,
    ``b`` = :data:`BUCKETS_PER_OCTAVE`)."""
    return max(1, int(np.ceil(2.0 ** ((bucket + 1) / BUCKETS_PER_OCTAVE))) - 1)


def _cut_batches(
    lengths: np.ndarray, k: int, batch_size: int, max_batch_floats: int
) -> list[tuple[np.ndarray, tuple[int, int]]]:
    """Row IDs and padded ``(B, L)`` shape of each batch (module doc).

    Rows sorted by length fall into buckets of ratio 2^(1/4); every batch of a bucket is
    solved at the bucket's ladder width and the bucket's row cap, except the last, whose rows
    are padded to the next power of two: so a plan has at most two shapes per bucket, and
    the shapes repeat from plan to plan (kernels and their primitives are made once per
    shape, not once per batch)."""
    nonempty = np.flatnonzero(lengths)
    order = nonempty[np.argsort(lengths[nonempty], kind="stable")]
    slen = lengths[order]
    bucket = np.floor(BUCKETS_PER_OCTAVE * np.log2(np.maximum(slen, 1))).astype(np.int64)
    cuts = np.flatnonzero(np.diff(bucket)) + 1
    out: list[tuple[np.ndarray, tuple[int, int]]] = []
    for grp in np.split(np.arange(order.size), cuts) if order.size else []:
        rows_g = order[grp]
        longest = int(slen[grp].max())
        width = max(longest, _ladder_width(int(bucket[grp[0]])))
        cap = min(batch_size, max_batch_floats // (width * k))
        if 4 * longest > 3 * k:  # the k × k path forms B matrices of k² floats
            cap = min(cap, max_batch_floats // (k * k))
        cap = max(1, cap)
        for s in range(0, rows_g.size, cap):
            rows = rows_g[s : s + cap]
            padded = cap if rows.size == cap else min(cap, 1 << int(rows.size - 1).bit_length())
            out.append((rows, (padded, width)))
    return out


def _assign(sizes: Sequence[int], ndevices: int) -> list[int]:
    """Device of each batch: largest first onto the least loaded device (ties: lowest index)."""
    load = [0] * ndevices
    device = [0] * len(sizes)
    for t in sorted(range(len(sizes)), key=lambda t: (-sizes[t], t)):
        d = min(range(ndevices), key=lambda d: (load[d], d))
        device[t] = d
        load[d] += sizes[t]
    return device


def _build(
    indptr: np.ndarray,
    entries: Any,
    shape: tuple[int, int],
    row_weights: np.ndarray,
    col_weights: np.ndarray,
    sums: tuple[float, float],
    weighting: wts.Weighting,
    k: int,
    batch_size: int,
    max_batch_floats: int,
    dtype: Any,
    devices: Sequence[str],
) -> SweepPlan:
    """A plan for the orientation whose row ``i`` holds entries ``indptr[i]:indptr[i+1]``;
    ``entries(pos)`` returns the (column IDs, ratings) at those positions."""
    tf = _tf()
    lengths = np.diff(indptr)
    cut = _cut_batches(lengths, k, batch_size, max_batch_floats)
    row_sets = [rows for rows, _ in cut]
    shapes = [shape for _, shape in cut]
    widths = [int(lengths[r].max()) for r in row_sets]
    owner = _assign([b * w for b, w in shapes], len(devices))
    # interleave the devices' batches, so that a pool of threads keeps every device busy
    queues = [[t for t in range(len(row_sets)) if owner[t] == d] for d in range(len(devices))]
    order = [q[i] for i in range(max(map(len, queues), default=0)) for q in queues if i < len(q)]
    npdt = np.dtype(dtype.as_numpy_dtype)
    parts: list[Part] = []
    for dev in devices:
        with tf.device(dev):
            parts.append(Part(
                device=dev,
                row_weights=tf.identity(tf.constant(row_weights.astype(npdt))),
                col_weights=tf.identity(tf.constant(col_weights.astype(npdt))),
                scalars=tf.identity(tf.constant(
                    [weighting.alpha, weighting.epsilon, weighting.w0], dtype=dtype)),
            ))
    batches: list[Batch] = []
    for t in order:
        rows, width = row_sets[t], widths[t]
        lens = lengths[rows]
        slot = np.arange(width)[None, :]
        mask = slot < lens[:, None]
        pos = np.where(mask, indptr[rows][:, None] + slot, 0)
        c, r = entries(pos)
        with tf.device(devices[owner[t]]):
            batches.append(Batch(
                rows=tf.identity(tf.constant(rows.astype(np.int32))),
                cols=tf.identity(tf.constant(np.where(mask, c, -1).astype(np.int32))),
                ratings=tf.identity(tf.constant(np.where(mask, r, 0).astype(npdt))),
                width=width, shape=shapes[t], padded_shape=tf.identity(tf.constant(shapes[t])),
                nnz=int(lens.sum()), part=owner[t],
            ))
    with tf.device(devices[0]):
        empty = tf.identity(tf.constant(np.flatnonzero(lengths == 0).astype(np.int32)))
    return SweepPlan(
        nrows=shape[0], ncols=shape[1], batches=batches, parts=parts, empty_rows=empty,
        weighting=weighting, sum_waa=sums[0], sum_extra=sums[1], nnz=int(indptr[-1]),
        max_batch_floats=int(max_batch_floats),
    )


def loss_sums(
    user_items: CSR, weighting: wts.Weighting, row_weights: np.ndarray, col_weights: np.ndarray
) -> tuple[float, float]:
    """``Σ_Ω W A²`` and ``Σ_Ω (W − w0)`` in float64, a chunk of rows at a time; raises what
    :func:`trainer.weights.observed` raises (e.g. negative confidences)."""
    sum_waa = sum_extra = 0.0
    indptr = user_items.indptr
    start = 0
    nrows = user_items.shape[0]
    while start < nrows:
        stop = int(np.searchsorted(indptr, indptr[start] + _SUM_CHUNK, side="right"))
        stop = min(nrows, max(stop - 1, start + 1))
        s, e = indptr[start], indptr[stop]
        rows = np.repeat(np.arange(start, stop), np.diff(indptr[start : stop + 1]))
        w, a = wts.observed(
            weighting, user_items.values[s:e], row_weights[rows],
            col_weights[user_items.indices[s:e]],
        )
        sum_waa += float(np.sum(w * a * a))
        sum_extra += float(np.sum(w - weighting.w0))
        start = stop
    return sum_waa, sum_extra


def build_plans(
    user_items: CSR,
    item_users: CSR | None,
    weighting: wts.Weighting,
    row_weights: np.ndarray,
    col_weights: np.ndarray,
    k: int,
    batch_size: int,
    max_batch_floats: int,
    dtype: Any,
    devices: Sequence[str],
) -> tuple[SweepPlan, SweepPlan]:
    """The users × items and items × users plans of ``user_items`` on ``devices``.

    ``item_users``, when given, must be the transpose of ``user_items`` (the caller checks);
    otherwise the items × users orientation is read through a stable permutation of
    ``user_items``'s entries (no transposed copy). ``row_weights`` / ``col_weights`` are
    ``ρ`` (per user) and ``γ`` (per item)."""
    nusers, nitems = user_items.shape
    sums = loss_sums(user_items, weighting, row_weights, col_weights)
    common = (weighting, k, batch_size, max_batch_floats, dtype, devices)
    uv = user_items.values

    def user_entries(pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return user_items.indices[pos], uv[pos]

    user_plan = _build(user_items.indptr, user_entries, (nusers, nitems), row_weights,
                       col_weights, sums, *common)
    if item_users is not None:
        def item_entries(pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return item_users.indices[pos], item_users.values[pos]

        item_indptr = item_users.indptr
    else:
        perm = np.argsort(user_items.indices, kind="stable")  # item-major, users ascending
        user_of = np.repeat(np.arange(nusers, dtype=np.int32), user_items.row_lengths())
        item_indptr = np.zeros(nitems + 1, np.int64)
        np.cumsum(np.bincount(user_items.indices, minlength=nitems), out=item_indptr[1:])

        def item_entries(pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            e = perm[pos]
            return user_of[e], uv[e]

    item_plan = _build(item_indptr, item_entries, (nitems, nusers), col_weights, row_weights,
                       sums, *common)
    return user_plan, item_plan
