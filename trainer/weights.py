r"""Observation weights ``W_ij`` and targets ``A_ij`` of the weighted objective.

Every objective the trainer offers is a special case of

.. math::

    L(U, V) = \sum_{i,j} W_{ij} (A_{ij} - u_i \cdot v_j)^2 + \lambda (\|U\|_F^2 + \|V\|_F^2)

with one weight ``w0`` for every unobserved cell (where the target is 0) and a per-entry weight
and target on the observed cells ``(i, j) ∈ Ω``. This module computes ``w0`` and, for the
observed entries, ``W_ij`` and ``A_ij``:

``objective="wals"`` (the objective TF1's ``WALSModel`` documented)
    ``A_ij = r_ij`` (the rating), ``W_ij = w0 + ρ_i γ_j`` on Ω, ``W_ij = w0`` elsewhere, with
    ``w0 = unobserved_weight``, row weights ``ρ_i`` (1 here) and column weights ``γ_j``:

    * ``col_weights="uniform"``:         ``γ_j = 1``
    * ``col_weights="inverse_linear"``:  ``γ_j = col_weight_factor / n_j``
    * ``col_weights="inverse_power"``:   ``γ_j = n_j ** (-col_weight_exp)``

    where ``n_j`` is the number of positive ratings of item ``j`` (``γ_j = 0`` when ``n_j = 0``).
    The two inverse-popularity forms are the per-item weights of Google Cloud's 2017 WALS
    recommendation solution (its ``LINEAR_RATINGS`` and ``LOG_RATINGS`` weight types; defaults
    130 and 0.08 are its defaults).

``objective="implicit"`` (Hu, Koren & Volinsky 2008; ``implicit``, Spark ALS, BigQuery ML;
the default of :class:`trainer.wals.WALSModel` and ``python -m trainer.task``)
    preference ``A_ij = 1 if r_ij > 0 else 0``, confidence ``W_ij = 1 + α r_ij``
    (``confidence="linear"``) or ``W_ij = 1 + α log(1 + r_ij / ε)`` (``confidence="log"``) on Ω
    and ``W_ij = w0 = 1`` elsewhere (``unobserved_weight`` does not apply).

Which to use: measured on held-out interactions by ``benchmarks/quality_vs_implicit.py``
(every held-out interaction counts as relevant, whatever its rating; k = 32, the best of the
same nine (λ, α) configurations for each objective, ``wals`` in the same units: ``w0 = 1/α``,
``λ_wals = λ/α``), validation NDCG@10 for ``implicit`` / ``wals``: real GA export 0.629 /
0.573, bundled sample 0.0872 / 0.0868 (its generator has no per-user taste: both reduce to
popularity), MovieLens-shaped synthetic 0.271 / 0.280 (its ratings carry the same taste signal
as the choice of items). Fitting the rating as the target (``wals``) treats a short visit (a
low rating) almost like no visit; the confidence form keeps every visit a positive and uses the
rating only as its weight, which is why ``python -m trainer.task`` defaults to it.

The solver needs ``W_ij ≥ w0`` on Ω (so each normal-equation matrix is positive definite with
``λ > 0``); :func:`observed` checks it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from trainer.errors import TrainerInputError
from trainer.hparams import DEFAULTS, ColWeights, Confidence, Objective, validate
from trainer.sparse import CSR


@dataclass(frozen=True)
class Weighting:
    """Hyperparameters that define ``W`` and ``A`` (see the module docstring): the part of
    :class:`trainer.wals.WALSModel`'s keywords it builds this from, with the same defaults
    and rules (:mod:`trainer.hparams`)."""

    objective: Objective = DEFAULTS.objective
    unobserved_weight: float = DEFAULTS.unobserved_weight
    alpha: float = DEFAULTS.alpha
    confidence: Confidence = DEFAULTS.confidence
    epsilon: float = DEFAULTS.epsilon
    col_weights: ColWeights = DEFAULTS.col_weights
    col_weight_factor: float = DEFAULTS.col_weight_factor
    col_weight_exp: float = DEFAULTS.col_weight_exp

    def __post_init__(self) -> None:
        validate(**asdict(self))

    @property
    def w0(self) -> float:
        """Weight of every unobserved cell."""
        return 1.0 if self.objective == "implicit" else float(self.unobserved_weight)

    def to_dict(self) -> dict:
        return asdict(self)

    def column_weights(self, item_counts: np.ndarray) -> np.ndarray:
        """``γ_j`` from ``n_j`` (positive ratings per item), float64."""
        n = np.asarray(item_counts, dtype=np.float64)
        if self.col_weights == "uniform":
            return np.ones_like(n)
        with np.errstate(divide="ignore"):
            inv = np.where(n > 0, 1.0 / np.maximum(n, 1.0), 0.0)
        if self.col_weights == "inverse_linear":
            return self.col_weight_factor * inv
        return np.where(n > 0, inv**self.col_weight_exp, 0.0)


def item_positive_counts(user_items: CSR) -> np.ndarray:
    """``n_j``: number of users with a positive rating of item ``j``."""
    return np.bincount(
        user_items.indices[user_items.values > 0], minlength=user_items.shape[1]
    ).astype(np.int64)


def observed(
    weighting: Weighting,
    values: np.ndarray,
    row_weight: np.ndarray | float,
    col_weight: np.ndarray | float,
) -> tuple[np.ndarray, np.ndarray]:
    """``(W, A)`` (float64) for observed entries with ratings ``values``.

    ``row_weight`` / ``col_weight`` are ``ρ_i`` / ``γ_j`` already gathered per entry (arrays of
    the same length as ``values``, or scalars). Only used by ``objective="wals"``.
    """
    r = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(r)):
        raise TrainerInputError("NaN/inf ratings refused")
    if weighting.objective == "wals":
        extra = np.asarray(row_weight, np.float64) * np.asarray(col_weight, np.float64)
        if np.any(extra < 0) or not np.all(np.isfinite(extra)):
            raise TrainerInputError("row/column weights must be finite and >= 0")
        w = weighting.w0 + extra * np.ones_like(r)
        return w, r
    if np.any(r < 0):
        raise TrainerInputError("objective='implicit' needs ratings >= 0 (confidences)")
    if weighting.confidence == "linear":
        w = 1.0 + weighting.alpha * r
    else:
        w = 1.0 + weighting.alpha * np.log1p(r / weighting.epsilon)
    return w, (r > 0).astype(np.float64)


def observed_tf(
    objective: str,
    confidence: str,
    r: Any,
    rho: Any,
    gamma: Any,
    alpha: Any,
    epsilon: Any,
    w0: Any,
) -> tuple[Any, Any]:
    """``(W − w0, W·A)`` for observed entries, in TensorFlow, in the dtype of ``r``: the
    equations of :func:`observed` (module docstring), for the solver's batches.

    ``rho`` / ``gamma`` are ``ρ_i`` / ``γ_j`` broadcastable to ``r``; the objective's scalars
    are tensors so that one trace serves every value. Computed as the solver uses them, without
    forming ``W`` first::

        wals:      W − w0 = ρ_i γ_j,              W·A = (w0 + ρ_i γ_j) r_ij
        implicit:  W − w0 = α r  or  α log(1 + r/ε),   W·A = (1 + W − w0) · [r > 0]

    (``w0 = 1`` for ``implicit``). The inputs are validated on the host by :func:`observed`
    before a plan is built (:mod:`trainer.plan`).
    """
    import tensorflow as tf

    if objective == "wals":
        extra = rho * gamma * tf.ones_like(r)
        return extra, (w0 + extra) * r
    if confidence == "linear":
        extra = alpha * r
    else:
        extra = alpha * tf.math.log1p(r / epsilon)
    return extra, tf.where(r > 0, 1.0 + extra, tf.zeros_like(r))
