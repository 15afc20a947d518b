"""Batched top-k recommendation and the ``batch_pred.txt`` writer and reader.

For query factors ``Q`` (users, or items for targeting) and target factors ``T``::

    S = Q Tᵀ                           (one batched matmul per block of queries)
    S[b, j] = −inf  for every (b, j) in the exclusion matrix (already-seen items)
    ids, scores = top_k(S, N)          (best first; ties: lower dense id first)

Slots whose score is −inf (fewer than ``N`` candidates left) get id −1. A query whose factor
is all zeros (a row without training interactions: its least-squares factor is exactly 0, so
every score ties at 0) gets no recommendations: all its slots are −1 / −inf.

The work runs on the device :func:`trainer.device.resolve` chooses (the accelerator when there
is one), a block of queries at a time (never one query at a time); the block size keeps
``B × ntargets`` scores under ``max_scores`` floats.

``batch_pred.txt`` (and ``batch_pred_users.txt``) is UTF-8 text, one line per query in dense
ID order, fields separated by tabs: ``query<TAB>target<TAB>target...``, best first. A query
without recommendations has a line holding only its ID (no trailing tab). The format is
unambiguous because raw IDs never contain a tab or a line break: the preprocessing drops such
IDs and :func:`trainer.metadata.read_vocabulary` refuses them. Commas, spaces, quotes and
non-ASCII text are ordinary ID characters.
"""
from __future__ import annotations

import functools
import logging
from typing import Any, Sequence

import numpy as np

from trainer import device as device_policy
from trainer import fileio
from trainer.errors import TrainerInputError
from trainer.sparse import CSR

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=None)
def _kernel(dtype_name: str) -> Any:
    import tensorflow as tf

    dt = tf.as_dtype(dtype_name)
    mat = tf.TensorSpec([None, None], dt)

    @tf.function(
        input_signature=[mat, mat, tf.TensorSpec([None, 2], tf.int32), tf.TensorSpec([], tf.int32)]
    )
    def topk_block(q, t, coords, n):
        s = tf.linalg.matmul(q, t, transpose_b=True)
        ninf = tf.constant(-np.inf, dt)
        s = tf.tensor_scatter_nd_update(s, coords, tf.fill([tf.shape(coords)[0]], ninf))
        vals, ids = tf.math.top_k(s, k=n, sorted=True)
        zero = tf.reduce_all(tf.equal(q, 0), axis=1, keepdims=True)
        bad = tf.logical_or(tf.equal(vals, ninf), zero)
        return tf.where(bad, -1, ids), tf.where(bad, ninf, vals)

    return topk_block


def _blocks(nq: int, ntargets: int, batch_size: int, max_scores: int) -> list[tuple[int, int]]:
    step = max(1, min(batch_size, max_scores // max(ntargets, 1)))
    return [(s, min(s + step, nq)) for s in range(0, nq, step)]


def top_k(
    queries: np.ndarray,
    targets: np.ndarray,
    N: int,
    exclude: CSR | None = None,
    batch_size: int = 1024,
    max_scores: int = 1 << 25,
    device: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(ids int64, scores float32)`` of shape ``(len(queries), N)`` (module doc).

    ``exclude`` is a ``len(queries) × len(targets)`` CSR of (query, target) pairs to skip.
    """
    import tensorflow as tf

    if isinstance(N, bool) or not isinstance(N, (int, np.integer)) or N < 1:
        raise TrainerInputError(f"N (--topk) must be an integer >= 1, got {N!r}")
    queries = np.asarray(queries)
    targets = np.asarray(targets)
    if queries.ndim != 2 or targets.ndim != 2 or queries.shape[1] != targets.shape[1]:
        raise TrainerInputError("queries and targets must be 2-D with the same number of factors")
    nq, nt = queries.shape[0], targets.shape[0]
    if exclude is not None and exclude.shape != (nq, nt):
        raise TrainerInputError(f"exclude has shape {exclude.shape}, expected {(nq, nt)}")
    dt = np.float32 if queries.dtype != np.float64 else np.float64
    n_eff = int(min(N, nt))
    kern = _kernel(np.dtype(dt).name)
    ids_out = np.full((nq, N), -1, dtype=np.int64)
    sc_out = np.full((nq, N), -np.inf, dtype=np.float32)
    with tf.device(device_policy.resolve(device)):
        t = tf.identity(tf.constant(targets.astype(dt)))
        for s, e in _blocks(nq, nt, batch_size, max_scores):
            if exclude is not None:
                blk = exclude.slice_rows(s, e)
                coords = np.stack([blk.row_ids(), blk.indices], axis=1).astype(np.int32)
            else:
                coords = np.zeros((0, 2), np.int32)
            ids, sc = kern(tf.constant(queries[s:e].astype(dt)), t, coords, n_eff)
            ids_out[s:e, :n_eff] = ids.numpy()
            sc_out[s:e, :n_eff] = sc.numpy()
    return ids_out, sc_out


def write_batch_predictions(
    path: str,
    queries: np.ndarray,
    targets: np.ndarray,
    query_names: Sequence[str],
    target_names: Sequence[str],
    N: int,
    exclude: CSR | None = None,
    batch_size: int = 1024,
    device: str | None = None,
) -> int:
    """Writes ``query_name<TAB>target<TAB>target...`` (best first, module doc) for every query
    row, in dense ID order; returns the number of lines.

    ``N`` above the number of targets is clamped to it (a longer list cannot exist, and the
    buffers grow with ``N``). Written through a temporary file + rename.
    """
    import tensorflow as tf

    if len(query_names) != queries.shape[0] or len(target_names) != targets.shape[0]:
        raise TrainerInputError("vocabulary sizes do not match the factor matrices")
    if isinstance(N, bool) or not isinstance(N, (int, np.integer)) or N < 1:
        raise TrainerInputError(f"N (--topk) must be an integer >= 1, got {N!r}")
    N = int(min(N, max(targets.shape[0], 1)))
    names = np.asarray(target_names, dtype=object)
    nq = queries.shape[0]
    step = max(1, batch_size * 16)
    tmp = path + ".tmp"
    with tf.io.gfile.GFile(tmp, "w") as f:
        for s in range(0, nq, step):
            e = min(s + step, nq)
            ids, _ = top_k(
                queries[s:e], targets, N,
                exclude=None if exclude is None else exclude.slice_rows(s, e),
                batch_size=batch_size, device=device,
            )
            lines = []
            for r in range(e - s):
                row = ids[r]
                lines.append("\t".join([query_names[s + r], *names[row[row >= 0]]]) + "\n")
            f.write("".join(lines))
    tf.io.gfile.rename(tmp, path, overwrite=True)
    log.info("wrote %d lines to %s", nq, path)
    return nq


def read_batch_predictions(path: str) -> dict[str, list[str]]:
    """Parses a ``batch_pred.txt`` back into ``{query: [targets best first]}``.

    Lines are split on ``\\n`` only (not :meth:`str.splitlines`, which also breaks at
    characters such as U+0085 that the file format does not treat as line ends), fields on
    ``\\t``.
    """
    text = fileio.read_text(path)
    out: dict[str, list[str]] = {}
    for line in text.split("\n")[:-1] if text.endswith("\n") else text.split("\n"):
        if line:
            q, *targets = line.split("\t")
            out[q] = targets
    return out
