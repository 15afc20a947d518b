"""Batched top-k recommendation and the ``batch_pred.txt`` writer and reader.

For query factors ``Q`` (users, or items for targeting) and target factors ``T``::

    S = Q Tᵀ                           (one batched matmul per block of queries)
    S[b, j] = −inf  for every (b, j) in the exclusion matrix (already-seen items)
    S[:, j] = −inf  for every target j that is not a candidate (e.g. a stale item, --max_age_days)
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

Command line (needs only TensorFlow and this module): the top-k of one ID from the exported
SavedModel (:mod:`trainer.export`)::

    python -m trainer.recommend --model_dir DIR (--visitor_id ID | --similar_to CONTENT_ID) [--k 10]
        [--max_age_days N]

``DIR`` is the trainer's output dir, its ``export/`` or an ``export/<version>/`` folder (the
largest version is used). ``--visitor_id`` asks ``recommend_items``, ``--similar_to``
``similar_items``; with ``--max_age_days`` their ``_fresh`` twins (only items last seen within
N days of the training data's newest date; refused for a model trained without dates). Prints ``raw_id<TAB>score`` lines, best first (scores with 9 significant
digits: a float32 read back exactly). A known ID with no recommendations (no training
interactions) prints nothing. Exit 2 with one ``error:`` line on stderr for an unknown ID, a
missing model or a bad flag.
"""
from __future__ import annotations

import argparse
import functools
import logging
import sys
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
        input_signature=[mat, mat, tf.TensorSpec([None, 2], tf.int32), tf.TensorSpec([], tf.int32),
                         tf.TensorSpec([None], tf.bool)]
    )
    def topk_block(q, t, coords, n, candidate):
        s = tf.linalg.matmul(q, t, transpose_b=True)
        ninf = tf.constant(-np.inf, dt)
        s = tf.tensor_scatter_nd_update(s, coords, tf.fill([tf.shape(coords)[0]], ninf))
        s = tf.where(candidate[None, :], s, ninf)
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
    candidates: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(ids int64, scores float32)`` of shape ``(len(queries), N)`` (module doc).

    ``exclude`` is a ``len(queries) × len(targets)`` CSR of (query, target) pairs to skip;
    ``candidates`` a bool per target (``None``: all), the targets any query may get.
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
    allowed = np.ones(nt, bool) if candidates is None else np.asarray(candidates, bool)
    if allowed.shape != (nt,):
        raise TrainerInputError(f"candidates has shape {allowed.shape}, expected {(nt,)}")
    dt = np.float32 if queries.dtype != np.float64 else np.float64
    n_eff = int(min(N, nt))
    kern = _kernel(np.dtype(dt).name)
    ids_out = np.full((nq, N), -1, dtype=np.int64)
    sc_out = np.full((nq, N), -np.inf, dtype=np.float32)
    with tf.device(device_policy.resolve(device)):
        t = tf.identity(tf.constant(targets.astype(dt)))
        allowed_t = tf.constant(allowed)
        for s, e in _blocks(nq, nt, batch_size, max_scores):
            if exclude is not None:
                blk = exclude.slice_rows(s, e)
                coords = np.stack([blk.row_ids(), blk.indices], axis=1).astype(np.int32)
            else:
                coords = np.zeros((0, 2), np.int32)
            ids, sc = kern(tf.constant(queries[s:e].astype(dt)), t, coords, n_eff, allowed_t)
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
    candidates: np.ndarray | None = None,
) -> int:
    """Writes ``query_name<TAB>target<TAB>target...`` (best first, module doc) for every query
    row, in dense ID order; returns the number of lines. Only ``candidates`` (a bool per
    target; ``None``: all) are ever written.

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
                batch_size=batch_size, device=device, candidates=candidates,
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


# --------------------------------------------------------------------------- command line
class _Parser(argparse.ArgumentParser):
    """Bad flags: one ``error:`` line and exit 2 (no usage dump)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def parse_cli(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The flags of ``python -m trainer.recommend`` (module doc)."""
    p = _Parser(prog="python -m trainer.recommend",
                description="Top-k recommendations from the exported SavedModel.")
    p.add_argument("--model_dir", required=True,
                   help="the trainer's output dir, its export/ or an export/<version>/ folder")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--visitor_id", help="recommend items for this visitorId (recommend_items)")
    q.add_argument("--similar_to", help="items most similar to this contentId (similar_items)")
    p.add_argument("--k", type=int, default=10, help="how many (default 10)")
    p.add_argument("--max_age_days", type=int, default=None,
                   help="only items last seen within N days of the newest date in the training data")
    args = p.parse_args(argv)
    if args.k < 1:
        p.error(f"--k must be >= 1, got {args.k}")
    if args.max_age_days is not None and args.max_age_days < 0:
        p.error(f"--max_age_days must be >= 0, got {args.max_age_days}")
    return args


def query(model_dir: str, k: int, visitor_id: str | None = None,
          similar_to: str | None = None, max_age_days: int | None = None) -> list[tuple[str, float]]:
    """``[(raw_id, score), ...]`` best first, from the newest SavedModel under ``model_dir``.

    Parameters
    ----------
    model_dir : str
        The trainer's output dir, its ``export/`` or an ``export/<version>/`` folder.
    k : int
        At most this many (>= 1).
    visitor_id, similar_to : str, optional
        Exactly one: the visitorId to recommend items for, or the contentId to find similar
        items for.
    max_age_days : int, optional
        Only items last seen within this many days of the training data's newest date.

    Returns
    -------
    list of (str, float)

    Raises
    ------
    TrainerInputError
        No SavedModel under ``model_dir``, the ID is not in the model's vocabulary, or
        ``max_age_days`` for a model trained without item dates.
    """
    import tensorflow as tf

    from trainer.export import latest_export

    if (visitor_id is None) == (similar_to is None):
        raise TrainerInputError("give exactly one of visitor_id and similar_to")
    path = latest_export(model_dir)
    if path is None:
        raise TrainerInputError(f"no exported SavedModel in {model_dir} (nor in its export/<version>/)")
    model = tf.saved_model.load(path)
    if visitor_id is not None:
        sig, arg, raw, what = "recommend_items", "visitor_ids", visitor_id, "visitorId"
    else:
        sig, arg, raw, what = "similar_items", "content_ids", similar_to, "contentId"
    inputs = {arg: tf.constant([raw]), "k": tf.constant([k], tf.int32)}
    if max_age_days is not None:
        sig += "_fresh"
        if sig not in model.signatures:
            raise TrainerInputError(f"--max_age_days: the model in {path} has no item dates (it was "
                                    "trained on an input without dates), so it cannot filter by age")
        inputs["max_age_days"] = tf.constant([max_age_days], tf.int32)
    r = model.signatures[sig](**inputs)
    if not bool(r["known"].numpy()[0]):
        raise TrainerInputError(f"unknown {what} {raw!r}: not in the model's vocabulary ({path})")
    n = int(r["count"].numpy()[0])
    names = r["content_ids"].numpy()[0, :n]
    scores = r["scores"].numpy()[0, :n]
    return [(b.decode("utf-8"), float(s)) for b, s in zip(names, scores)]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m trainer.recommend`` (module doc); returns the exit status."""
    from trainer.errors import one_line

    args = parse_cli(argv)
    try:
        rows = query(args.model_dir, args.k, visitor_id=args.visitor_id, similar_to=args.similar_to,
                     max_age_days=args.max_age_days)
    except TrainerInputError as e:
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        return 2
    sys.stdout.write("".join(f"{name}\t{score:.9g}\n" for name, score in rows))
    return 0


if __name__ == "__main__":
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # fewer TensorFlow log lines on stderr
    sys.exit(main())
