r"""The serving SavedModel: raw IDs in, raw IDs out, fold-in for new users.

The trainer writes it to ``OUTPUT_DIR/export/<version>/``, ``<version>`` an integer (the
layout TF Serving and Vertex AI expect: ``--model_base_path=OUTPUT_DIR/export``).
``tf.saved_model.load(OUTPUT_DIR/export/<version>)`` needs only TensorFlow (not this package).

Every input of every signature is batched: its first dimension is the instance (``B``), so the
REST ``instances`` (row) and ``inputs`` (columnar) formats of TF Serving and Vertex AI
endpoints both work. ``k`` is one ``int32`` per instance (``k: int32[B]``); each output has
``K = min(max(k), ntargets)`` slots per instance, of which the first ``count[b] ≤ k[b]`` are
valid and the rest hold ``""`` and score 0.

``recommend_items`` (also ``serving_default``)
    ``visitor_ids: string[B]``, ``k: int32[B]`` →
    ``content_ids: string[B, K]``, ``scores: float32[B, K]``, ``count: int32[B]``,
    ``known: bool[B]``. Scores are ``u_i · v_j``, best first (ties: lower dense ID first);
    items the user has in the training data are left out. An unknown visitorId
    (``known = False``) and a known user without training interactions (zero factor) get
    ``count = 0``.
``recommend_users``
    ``content_ids: string[B]``, ``k: int32[B]`` → ``visitor_ids``, ``scores``, ``count``,
    ``known`` — the top users for each item (targeting), users who already have it left out.
``similar_items``
    ``content_ids: string[B]``, ``k: int32[B]`` → ``content_ids: string[B, K]``, ``scores``,
    ``count``, ``known``: the items whose factors have the largest cosine similarity
    ``v_i·v_j / (‖v_i‖‖v_j‖)`` with the item's, the item itself left out. An unknown ID is
    not an error (the rest of the batch is answered): its instance has ``known = False``,
    ``count = 0``. An item with a zero factor (no training interactions) has no direction:
    ``count = 0``, and it is never listed for another item (its cosine is taken as 0/0 → left
    out). The unit vectors are computed in float64 and stored in float32.
``similar_users``
    ``visitor_ids: string[B]``, ``k: int32[B]`` → ``visitor_ids: string[B, K]``, ``scores``,
    ``count``, ``known``: the same for users.
``fold_in``
    ``content_ids: string[B, L]``, ``ratings: float32[B, L]``, ``k: int32[B]`` →
    ``embedding: float32[B, F]``, ``content_ids: string[B, K]``, ``scores``, ``count: int32[B]``,
    ``unknown_items: int32[B]``, ``clipped_ratings: int32[B]``. Instance ``b`` is one new user
    with the items ``content_ids[b]`` and their ratings. Lists of different lengths are
    padded to the longest ``L``: **an empty string ``""`` is padding** (no raw ID is empty: the
    vocabularies refuse empty lines), its rating is ignored but must still be finite and
    ``≥ 0`` (pad with 0). Each user's factor is the exact least-squares row solve against the
    trained item factors (``trainer.wals``, row weight ρ = 1)::

        (w0 VᵀV + λ I + Σ_j (W_j − w0) v_j v_jᵀ) u = Σ_j W_j A_j v_j

    with ``W_j, A_j`` from the training objective (``trainer.weights``), solved in float64.
    Unknown (non-empty) contentIds are ignored and counted in ``unknown_items``; repeated ones
    within an instance have their ratings summed; the given items are left out of that user's
    recommendations. A user with no known item gets ``u = 0`` and ``count = 0``.

    Ratings are engagement scores in ``[0, cap]``, ``cap`` = the largest rating the training
    data can hold (``metadata.json``'s ``rating.cap``, else the largest training rating).
    A (summed) rating above ``cap`` is clipped to ``cap`` and counted in
    ``clipped_ratings``: the model was fitted on that range, and far larger values (a
    confidence ``1 + α·1e8``) make the normal equations too ill-conditioned to solve —
    before this clip a rating of 1e8 gave a NaN embedding. NaN/inf or negative ratings
    (padding included), ``content_ids`` and ``ratings`` of different shapes, a ``k`` that is
    not one value per instance and ``k < 1`` raise ``InvalidArgumentError`` for the whole
    request; so would a non-finite solution (it cannot happen with clipped ratings, but the
    signature refuses rather than return NaN).

**Freshness** (only in a model trained on an input with item dates, ``metadata.json``'s
``dates``; ``trainer/freshness.py``): ``recommend_items_fresh``, ``similar_items_fresh`` and
``fold_in_fresh`` take the inputs of ``recommend_items``, ``similar_items`` and ``fold_in`` plus
``max_age_days: int32[B]`` and answer the same way, except that instance ``b`` only gets items
last seen within ``max_age_days[b]`` days of the newest date in the training data (age
``newest − last_seen ≤ max_age_days[b]``; an item without a date never); a negative
``max_age_days[b]`` means no filter for that instance (the answer of the plain signature).
A model trained without dates has none of these signatures (a request for one fails with
TF Serving's unknown-signature error), so a filter is never silently ignored.
"""
from __future__ import annotations

import logging
import re
import time
from typing import Any

import numpy as np

from trainer import fileio
from trainer.sparse import CSR
from trainer.weights import Weighting

log = logging.getLogger(__name__)

SIGNATURES = ("recommend_items", "recommend_users", "similar_items", "similar_users", "fold_in")
FRESH_SIGNATURES = ("recommend_items_fresh", "similar_items_fresh", "fold_in_fresh")  # with dates only
_VERSION = re.compile(r"^[0-9]+$")


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Each row divided by its Euclidean norm (computed in float64), returned in float32;
    all-zero rows stay zero.

    Parameters
    ----------
    x : ndarray
        ``n × F`` factors.

    Returns
    -------
    ndarray
        ``n × F`` float32 unit rows (or zero rows).
    """
    x64 = np.asarray(x, np.float64)
    norms = np.linalg.norm(x64, axis=1, keepdims=True)
    return np.divide(x64, norms, out=np.zeros_like(x64), where=norms > 0).astype(np.float32)


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
    item_ages: np.ndarray | None = None,
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
    item_ages : ndarray, optional
        int64 age in days per item (``trainer.freshness.ItemDates.ages``); given, the module
        also has the :data:`FRESH_SIGNATURES`.

    Returns
    -------
    tf.Module
        With the ``tf.function`` s named in :data:`SIGNATURES` (and :data:`FRESH_SIGNATURES`).
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
    nitems = int(item_factors.shape[0])
    ninf = tf.constant(-np.inf, tf.float32)
    v64 = item_factors.astype(np.float64)
    ids_spec = tf.TensorSpec([None], tf.string)
    k_spec = tf.TensorSpec([None], tf.int32)

    def text_tables(path: str) -> tuple[Any, Any, Any]:
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
            self.user_units = tf.Variable(unit_rows(user_factors), trainable=False)
            self.item_units = tf.Variable(unit_rows(item_factors), trainable=False)
            # the fold-in solves in float64: VᵀV kept in float64 too
            self.item_gram = tf.Variable(v64.T @ v64, trainable=False)
            self.col_weights = tf.Variable(np.asarray(col_weights, np.float32), trainable=False)
            self.user_seen_splits = tf.Variable(user_items.indptr, trainable=False)
            self.user_seen = tf.Variable(user_items.indices.astype(np.int64), trainable=False)
            self.item_seen_splits = tf.Variable(item_users.indptr, trainable=False)
            self.item_seen = tf.Variable(item_users.indices.astype(np.int64), trainable=False)
            self.user_vocab, self.user_to_id, self.id_to_user = text_tables(user_vocab_file)
            self.item_vocab, self.item_to_id, self.id_to_item = text_tables(item_vocab_file)

        def _top(self, q, targets, seen_coords, k, max_age=None):
            """Top ``k[b]`` targets of each query row ``q[b]`` (batched, module doc); with
            ``max_age`` (one per instance, targets = items) only items of age ≤ ``max_age[b]``
            (every item where ``max_age[b] < 0``)."""
            tf.debugging.assert_equal(
                tf.shape(k)[0], tf.shape(q)[0], message="k must hold one value per instance"
            )
            tf.debugging.assert_positive(k, message="k must be >= 1")
            kmax = tf.maximum(tf.reduce_max(tf.concat([k, [1]], 0)), 1)
            n = tf.minimum(kmax, tf.shape(targets, out_type=tf.int32)[0])
            s = tf.linalg.matmul(q, targets, transpose_b=True)
            s = tf.tensor_scatter_nd_update(s, seen_coords, tf.fill([tf.shape(seen_coords)[0]], ninf))
            if max_age is not None:
                tf.debugging.assert_equal(tf.shape(max_age)[0], tf.shape(q)[0],
                                          message="max_age_days must hold one value per instance")
                limit = tf.cast(max_age, tf.int64)[:, None]
                fresh = tf.logical_or(limit < 0, self.item_age[None, :] <= limit)
                s = tf.where(fresh, s, ninf)
            vals, ids = tf.math.top_k(s, k=n, sorted=True)
            zero = tf.reduce_all(tf.equal(q, 0.0), axis=1, keepdims=True)
            within = tf.range(n)[None, :] < k[:, None]
            ok = tf.logical_and(tf.logical_not(tf.logical_or(tf.equal(vals, ninf), zero)), within)
            ids = tf.where(ok, tf.cast(ids, tf.int64), tf.constant(-1, tf.int64))
            vals = tf.where(ok, vals, tf.zeros_like(vals))
            return ids, vals, tf.reduce_sum(tf.cast(ok, tf.int32), axis=1)

        def _by_id(self, raw, to_id, factors, splits, seen, targets, to_name, k, max_age=None):
            rows = to_id.lookup(raw)
            known = rows >= 0
            safe = tf.maximum(rows, 0)
            q = tf.gather(factors, safe) * tf.cast(known, tf.float32)[:, None]
            seen_r = tf.gather(tf.RaggedTensor.from_row_splits(seen, splits, validate=False), safe)
            coords = tf.stack([seen_r.value_rowids(), seen_r.flat_values], axis=1)
            ids, vals, count = self._top(q, targets, coords, k, max_age)
            return to_name.lookup(ids), vals, count, known

        def _similar(self, raw, to_id, units, to_name, k, max_age=None):
            rows = to_id.lookup(raw)
            known = rows >= 0
            safe = tf.maximum(rows, 0)
            q = tf.gather(units, safe) * tf.cast(known, tf.float32)[:, None]
            # the query itself is left out (and zero-factor targets: 0/0, never listed)
            empty = tf.reduce_all(tf.equal(units, 0.0), axis=1)
            n_b = tf.shape(rows, out_type=tf.int64)[0]
            zero_t = tf.where(empty)[:, 0]
            b_z = tf.repeat(tf.range(n_b), tf.size(zero_t, out_type=tf.int64))
            t_z = tf.tile(zero_t, [n_b])
            coords = tf.concat(
                [tf.stack([tf.range(n_b), safe], axis=1), tf.stack([b_z, t_z], axis=1)], axis=0
            )
            ids, vals, count = self._top(q, units, coords, k, max_age)
            return to_name.lookup(ids), vals, count, known

        @tf.function(input_signature=[ids_spec, k_spec])
        def recommend_items(self, visitor_ids, k):
            names, vals, count, known = self._by_id(
                visitor_ids, self.user_to_id, self.user_factors, self.user_seen_splits,
                self.user_seen, self.item_factors, self.id_to_item, k,
            )
            return {"content_ids": names, "scores": vals, "count": count, "known": known}

        @tf.function(input_signature=[ids_spec, k_spec])
        def recommend_users(self, content_ids, k):
            names, vals, count, known = self._by_id(
                content_ids, self.item_to_id, self.item_factors, self.item_seen_splits,
                self.item_seen, self.user_factors, self.id_to_user, k,
            )
            return {"visitor_ids": names, "scores": vals, "count": count, "known": known}

        @tf.function(input_signature=[ids_spec, k_spec])
        def similar_items(self, content_ids, k):
            names, vals, count, known = self._similar(
                content_ids, self.item_to_id, self.item_units, self.id_to_item, k
            )
            return {"content_ids": names, "scores": vals, "count": count, "known": known}

        @tf.function(input_signature=[ids_spec, k_spec])
        def similar_users(self, visitor_ids, k):
            names, vals, count, known = self._similar(
                visitor_ids, self.user_to_id, self.user_units, self.id_to_user, k
            )
            return {"visitor_ids": names, "scores": vals, "count": count, "known": known}

        @tf.function(
            input_signature=[
                tf.TensorSpec([None, None], tf.string),
                tf.TensorSpec([None, None], tf.float32),
                k_spec,
            ]
        )
        def fold_in(self, content_ids, ratings, k):
            return self._fold_in(content_ids, ratings, k)

        def _fold_in(self, content_ids, ratings, k, max_age=None):
            tf.debugging.assert_equal(
                tf.shape(content_ids), tf.shape(ratings),
                message="content_ids and ratings must have the same shape",
            )
            # the returned tensors are used, so the checks can never be pruned from the graph
            ratings = tf.debugging.assert_all_finite(ratings, "fold_in: NaN/inf ratings refused")
            tf.debugging.assert_non_negative(
                ratings, message="fold_in: negative ratings refused (ratings are >= 0)"
            )
            nb = tf.shape(content_ids, out_type=tf.int64)[0]
            ids = self.item_to_id.lookup(content_ids)  # (B, L)
            known = ids >= 0
            pad = tf.equal(content_ids, "")
            unknown = tf.reduce_sum(
                tf.cast(tf.logical_not(tf.logical_or(known, pad)), tf.int32), axis=1
            )
            row = tf.broadcast_to(tf.range(nb)[:, None], tf.shape(ids, out_type=tf.int64))
            # one key per (instance, item): repeated items of an instance are summed
            uniq, pos = tf.unique(tf.boolean_mask(row * nitems + ids, known))
            r = tf.math.unsorted_segment_sum(
                # float64 sum: float32 maxima summed do not overflow to inf
                tf.cast(tf.boolean_mask(ratings, known), tf.float64), pos, tf.size(uniq)
            )
            owner, item = uniq // nitems, uniq % nitems
            clipped = tf.math.unsorted_segment_sum(tf.cast(r > cap, tf.int32), owner, nb)
            r = tf.minimum(r, cap)  # the range the model was trained on (module doc)
            if objective == "wals":
                w = w0 + tf.cast(tf.gather(self.col_weights, item), tf.float64)
                a = r
            else:
                f = r if conf == "linear" else tf.math.log1p(r / eps)
                w = 1.0 + alpha * f
                a = tf.cast(r > 0, tf.float64)
            # float64: with large confidences a float32 Cholesky loses positive definiteness
            x = tf.cast(tf.gather(self.item_factors, item), tf.float64)  # (S, F)
            nf = tf.shape(self.item_factors)[1]
            outer = x[:, :, None] * x[:, None, :] * (w - w0)[:, None, None]  # (S, F, F)
            m = (
                w0 * self.item_gram
                + lam * tf.eye(nf, dtype=tf.float64)
                + tf.math.unsorted_segment_sum(outer, owner, nb)
            )
            b = tf.math.unsorted_segment_sum(x * (w * a)[:, None], owner, nb)  # (B, F)
            u64 = tf.linalg.cholesky_solve(tf.linalg.cholesky(m), b[:, :, None])[:, :, 0]
            u = tf.cast(u64, tf.float32)
            u = tf.debugging.assert_all_finite(u, "fold_in: the solve gave a non-finite embedding")
            coords = tf.stack([owner, item], axis=1)
            ids_k, vals, count = self._top(u, self.item_factors, coords, k, max_age)
            return {
                "embedding": u,
                "content_ids": self.id_to_item.lookup(ids_k),
                "scores": vals,
                "count": count,
                "unknown_items": unknown,
                "clipped_ratings": clipped,
            }

    if item_ages is None:
        return Recommender()
    ages = np.asarray(item_ages, np.int64)
    if ages.shape != (nitems,):
        raise ValueError(f"item_ages has shape {ages.shape}, expected {(nitems,)}")
    age_spec = tf.TensorSpec([None], tf.int32)

    class FreshRecommender(Recommender):
        """:class:`Recommender` plus the max_age_days signatures (module doc)."""

        def __init__(self) -> None:
            super().__init__()
            self.item_age = tf.Variable(ages, trainable=False)  # newest − last seen, days

        @tf.function(input_signature=[ids_spec, k_spec, age_spec])
        def recommend_items_fresh(self, visitor_ids, k, max_age_days):
            names, vals, count, known = self._by_id(
                visitor_ids, self.user_to_id, self.user_factors, self.user_seen_splits,
                self.user_seen, self.item_factors, self.id_to_item, k, max_age_days,
            )
            return {"content_ids": names, "scores": vals, "count": count, "known": known}

        @tf.function(input_signature=[ids_spec, k_spec, age_spec])
        def similar_items_fresh(self, content_ids, k, max_age_days):
            names, vals, count, known = self._similar(
                content_ids, self.item_to_id, self.item_units, self.id_to_item, k, max_age_days
            )
            return {"content_ids": names, "scores": vals, "count": count, "known": known}

        @tf.function(
            input_signature=[
                tf.TensorSpec([None, None], tf.string),
                tf.TensorSpec([None, None], tf.float32),
                k_spec,
                age_spec,
            ]
        )
        def fold_in_fresh(self, content_ids, ratings, k, max_age_days):
            return self._fold_in(content_ids, ratings, k, max_age_days)

    return FreshRecommender()


def signature_names(module: Any) -> tuple[str, ...]:
    """The signatures ``module`` serves: :data:`SIGNATURES`, plus :data:`FRESH_SIGNATURES` when
    it was built with item dates."""
    return SIGNATURES + (FRESH_SIGNATURES if hasattr(module, "item_age") else ())


def versions(export_base: str) -> list[int]:
    """The integer version folders under ``export_base`` (sorted; ``[]`` when there is none)."""
    import tensorflow as tf

    if not tf.io.gfile.isdir(export_base):
        return []
    names = [n.rstrip("/") for n in tf.io.gfile.listdir(export_base)]
    return sorted(int(n) for n in names if _VERSION.match(n))


def next_version(export_base: str) -> int:
    """The version a new export gets: the time in whole seconds, or 1 + the largest existing
    version when that is not smaller (clock steps, two exports within a second): versions
    only increase, so TF Serving, which serves the largest, picks up the newest."""
    have = versions(export_base)
    return max(int(time.time()), have[-1] + 1 if have else 0)


def export_saved_model(export_base: str, module: Any, version: int | None = None) -> str:
    """Writes the SavedModel to ``export_base/<version>/`` and returns that folder.

    Parameters
    ----------
    export_base : str
        The model's base path (``OUTPUT_DIR/export``; local or ``gs://``).
    module : tf.Module
        From :func:`build_module`.
    version : int, optional
        Default :func:`next_version`. A folder of that version already there is replaced.

    Returns
    -------
    str
        ``export_base/<version>``.
    """
    import tensorflow as tf

    if version is None:
        version = next_version(export_base)
    if isinstance(version, bool) or int(version) != version or version < 0:
        raise ValueError(f"version must be an integer >= 0, got {version!r}")
    export_dir = fileio.join(export_base, str(int(version)))
    if tf.io.gfile.exists(export_dir):
        tf.io.gfile.rmtree(export_dir)
    signatures = {name: getattr(module, name) for name in signature_names(module)}
    signatures["serving_default"] = module.recommend_items
    tf.saved_model.save(module, export_dir, signatures=signatures)
    log.info("exported SavedModel to %s", export_dir)
    return export_dir


def latest_export(path: str) -> str | None:
    """The SavedModel folder ``path`` names: ``path`` itself when it holds ``saved_model.pb``,
    else the largest version under ``path`` or ``path/export`` (so a trainer output dir, its
    ``export/`` and an ``export/<version>/`` all work); ``None`` when there is none."""
    import tensorflow as tf

    if tf.io.gfile.exists(fileio.join(path, "saved_model.pb")):
        return path
    for base in (path, fileio.join(path, "export")):
        for v in reversed(versions(base)):
            d = fileio.join(base, str(v))
            if tf.io.gfile.exists(fileio.join(d, "saved_model.pb")):
                return d
    return None


def write_vocabulary(path: str, names: list[str]) -> None:
    """One raw ID per line (the SavedModel's lookup tables read these files)."""
    fileio.write_text_atomic(path, "".join(n + "\n" for n in names))
