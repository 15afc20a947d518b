r"""The serving SavedModel: raw IDs in, raw IDs out, fold-in for new users.

``tf.saved_model.load(OUTPUT_DIR/export)`` needs only TensorFlow (not this package). Signatures
(all inputs are batched string tensors of raw IDs plus a scalar ``k``):

``recommend_items`` (also ``serving_default``)
    ``visitor_ids: string[B]``, ``k: int32[]`` →
    ``content_ids: string[B, k']``, ``scores: float32[B, k']``, ``count: int32[B]``,
    ``known: bool[B]``. ``k' = min(k, nitems)``. Scores are ``u_i · v_j``, best first; items the
    user has in the training data are left out. Only the first ``count`` slots are valid; the
    rest hold ``""`` and score 0. An unknown visitorId (``known = False``) and a known user
    without training interactions (zero factor) get ``count = 0``.
``recommend_users``
    ``content_ids: string[B]``, ``k: int32[]`` → ``visitor_ids``, ``scores``, ``count``,
    ``known`` — the top users for each item (targeting), users who already have it left out.
``fold_in``
    ``content_ids: string[N]``, ``ratings: float32[N]``, ``k: int32[]`` → ``embedding:
    float32[F]``, ``content_ids: string[k']``, ``scores``, ``count: int32[]``,
    ``unknown_items: int32[]``, ``clipped_ratings: int32[]``. The new user's factor is the
    exact least-squares row solve against the trained item factors (``trainer.wals``, row
    weight ρ = 1)::

        (w0 VᵀV + λ I + Σ_j (W_j − w0) v_j v_jᵀ) u = Σ_j W_j A_j v_j

    with ``W_j, A_j`` from the training objective (``trainer.weights``), solved in float64.
    Unknown contentIds are ignored and counted in ``unknown_items``; repeated ones have their
    ratings summed; the given items are left out of the recommendations.

    Ratings are engagement scores in ``[0, cap]``, ``cap`` = the largest rating the training
    data can hold (``metadata.json``'s ``rating.cap``, else the largest training rating).
    A (summed) rating above ``cap`` is clipped to ``cap`` and counted in
    ``clipped_ratings``: the model was fitted on that range, and far larger values (a
    confidence ``1 + α·1e8``) make the normal equations too ill-conditioned to solve —
    before this clip a rating of 1e8 gave a NaN embedding. NaN/inf or negative ratings and
    ``k < 1`` raise ``InvalidArgumentError``; so would a non-finite solution (it cannot
    happen with clipped ratings, but the signature refuses rather than return NaN).
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from trainer import fileio
from trainer.sparse import CSR
from trainer.weights import Weighting

log = logging.getLogger(__name__)


def build_module(
    user_factors: np.ndarray,
    item_factors: np.ndarray,
    user_vocab_file: str,
    item_vocab_file: str,
    user_items: CSR,
    col_weights: np.ndarray,
    weighting: Weighting,
    regularization: float,
    rating_cap: float,
) -> Any:
    """The ``tf.Module`` that :func:`export_saved_model` saves (module doc).

    Parameters
    ----------
    user_factors, item_factors : ndarray
        The trained factors (nusers × F, nitems × F).
    user_vocab_file, item_vocab_file : str
        Vocabulary files (line i = raw ID of dense ID i), saved as assets.
    user_items : CSR
        The training matrix: each user's items are left out of their recommendations.
    col_weights : ndarray
        Per-item weights ``c_j`` of the ``wals`` objective.
    weighting : Weighting
        The training objective's weights (fold-in uses the same).
    regularization : float
        λ.
    rating_cap : float
        Finite, > 0: fold-in ratings above it are clipped to it.
    """
    import tensorflow as tf

    if not (np.isfinite(rating_cap) and rating_cap > 0):
        raise ValueError(f"rating_cap must be finite and > 0, got {rating_cap}")

    item_users = user_items.transpose()
    w0 = float(weighting.w0)
    lam = float(regularization)
    objective = weighting.objective
    alpha, eps, conf = float(weighting.alpha), float(weighting.epsilon), weighting.confidence
    cap = float(rating_cap)
    ninf = tf.constant(-np.inf, tf.float32)
    v64 = item_factors.astype(np.float64)

    def text_tables(path: str) -> tuple[Any, Any]:
        asset = tf.saved_model.Asset(path)
        to_id = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(
                asset, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
                tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER,
            ),
            default_value=-1,
        )
        to_name = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(
                asset, tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER,
                tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
            ),
            default_value="",
        )
        return asset, to_id, to_name

    class Recommender(tf.Module):
        def __init__(self) -> None:
            super().__init__(name="wals_recommender")
            self.user_factors = tf.Variable(user_factors.astype(np.float32), trainable=False)
            self.item_factors = tf.Variable(item_factors.astype(np.float32), trainable=False)
            # the fold-in solves in float64: VᵀV kept in float64 too
            self.item_gram = tf.Variable(v64.T @ v64, trainable=False)
            self.col_weights = tf.Variable(np.asarray(col_weights, np.float32), trainable=False)
            self.user_seen_splits = tf.Variable(user_items.indptr, trainable=False)
            self.user_seen = tf.Variable(user_items.indices.astype(np.int64), trainable=False)
            self.item_seen_splits = tf.Variable(item_users.indptr, trainable=False)
            self.item_seen = tf.Variable(item_users.indices.astype(np.int64), trainable=False)
            self.user_vocab, self.user_to_id, self.id_to_user = text_tables(user_vocab_file)
            self.item_vocab, self.item_to_id, self.id_to_item = text_tables(item_vocab_file)

        def _top(self, q, targets, seen_coords, k):
            tf.debugging.assert_positive(k, message="k must be >= 1")
            n = tf.minimum(k, tf.shape(targets, out_type=tf.int32)[0])
            s = tf.linalg.matmul(q, targets, transpose_b=True)
            s = tf.tensor_scatter_nd_update(s, seen_coords, tf.fill([tf.shape(seen_coords)[0]], ninf))
            vals, ids = tf.math.top_k(s, k=n, sorted=True)
            zero = tf.reduce_all(tf.equal(q, 0.0), axis=1, keepdims=True)
            ok = tf.logical_not(tf.logical_or(tf.equal(vals, ninf), zero))
            ids = tf.where(ok, tf.cast(ids, tf.int64), tf.constant(-1, tf.int64))
            vals = tf.where(ok, vals, tf.zeros_like(vals))
            return ids, vals, tf.reduce_sum(tf.cast(ok, tf.int32), axis=1)

        def _by_id(self, raw, to_id, factors, splits, seen, targets, to_name, k):
            rows = to_id.lookup(raw)
            known = rows >= 0
            safe = tf.maximum(rows, 0)
            q = tf.gather(factors, safe) * tf.cast(known, tf.float32)[:, None]
            seen_r = tf.gather(tf.RaggedTensor.from_row_splits(seen, splits, validate=False), safe)
            coords = tf.stack([seen_r.value_rowids(), seen_r.flat_values], axis=1)
            ids, vals, count = self._top(q, targets, coords, k)
            return to_name.lookup(ids), vals, count, known

        @tf.function(
            input_signature=[tf.TensorSpec([None], tf.string), tf.TensorSpec([], tf.int32)]
        )
        def recommend_items(self, visitor_ids, k):
            names, vals, count, known = self._by_id(
                visitor_ids, self.user_to_id, self.user_factors, self.user_seen_splits,
                self.user_seen, self.item_factors, self.id_to_item, k,
            )
            return {"content_ids": names, "scores": vals, "count": count, "known": known}

        @tf.function(
            input_signature=[tf.TensorSpec([None], tf.string), tf.TensorSpec([], tf.int32)]
        )
        def recommend_users(self, content_ids, k):
            names, vals, count, known = self._by_id(
                content_ids, self.item_to_id, self.item_factors, self.item_seen_splits,
                self.item_seen, self.user_factors, self.id_to_user, k,
            )
            return {"visitor_ids": names, "scores": vals, "count": count, "known": known}

        @tf.function(
            input_signature=[
                tf.TensorSpec([None], tf.string),
                tf.TensorSpec([None], tf.float32),
                tf.TensorSpec([], tf.int32),
            ]
        )
        def fold_in(self, content_ids, ratings, k):
            tf.debugging.assert_equal(
                tf.shape(content_ids), tf.shape(ratings),
                message="content_ids and ratings must have the same length",
            )
            # the returned tensors are used, so the checks can never be pruned from the graph
            ratings = tf.debugging.assert_all_finite(ratings, "fold_in: NaN/inf ratings refused")
            tf.debugging.assert_non_negative(
                ratings, message="fold_in: negative ratings refused (ratings are >= 0)"
            )
            ids = self.item_to_id.lookup(content_ids)
            known = ids >= 0
            unknown = tf.reduce_sum(tf.cast(tf.logical_not(known), tf.int32))
            uniq, pos = tf.unique(tf.boolean_mask(ids, known))
            # float64 sum: float32 maxima summed do not overflow to inf
            r = tf.math.unsorted_segment_sum(
                tf.cast(tf.boolean_mask(ratings, known), tf.float64), pos, tf.size(uniq)
            )
            clipped = tf.reduce_sum(tf.cast(r > cap, tf.int32))
            r = tf.minimum(r, cap)  # the range the model was trained on (module doc)
            if objective == "wals":
                w = w0 + tf.cast(tf.gather(self.col_weights, uniq), tf.float64)
                a = r
            else:
                f = r if conf == "linear" else tf.math.log1p(r / eps)
                w = 1.0 + alpha * f
                a = tf.cast(r > 0, tf.float64)
            # float64: with large confidences a float32 Cholesky loses positive definiteness
            x = tf.cast(tf.gather(self.item_factors, uniq), tf.float64)  # (n, F)
            nf = tf.shape(self.item_factors)[1]
            m = (
                w0 * self.item_gram
                + lam * tf.eye(nf, dtype=tf.float64)
                + tf.linalg.matmul(x * (w - w0)[:, None], x, transpose_a=True)
            )
            b = tf.linalg.matvec(x, w * a, transpose_a=True)
            u64 = tf.linalg.cholesky_solve(tf.linalg.cholesky(m), b[:, None])[:, 0]
            u = tf.cast(u64, tf.float32)
            u = tf.debugging.assert_all_finite(u, "fold_in: the solve gave a non-finite embedding")
            coords = tf.stack([tf.zeros_like(uniq), uniq], axis=1)
            ids_k, vals, count = self._top(u[None, :], self.item_factors, coords, k)
            return {
                "embedding": u,
                "content_ids": self.id_to_item.lookup(ids_k[0]),
                "scores": vals[0],
                "count": count[0],
                "unknown_items": unknown,
                "clipped_ratings": clipped,
            }

    return Recommender()


def export_saved_model(export_dir: str, module: Any) -> str:
    """Writes the SavedModel (replacing an older one at ``export_dir``)."""
    import tensorflow as tf

    if tf.io.gfile.exists(export_dir):
        tf.io.gfile.rmtree(export_dir)
    signatures = {
        "serving_default": module.recommend_items,
        "recommend_items": module.recommend_items,
        "recommend_users": module.recommend_users,
        "fold_in": module.fold_in,
    }
    tf.saved_model.save(module, export_dir, signatures=signatures)
    log.info("exported SavedModel to %s", export_dir)
    return export_dir


def write_vocabulary(path: str, names: list[str]) -> None:
    """One raw ID per line (the SavedModel's lookup tables read these files)."""
    fileio.write_text_atomic(path, "".join(n + "\n" for n in names))
