r"""Model-based proposals for the tuner (:mod:`trainer.tune`): a Gaussian process over the
search space's unit cube and the expected-improvement criterion, in NumPy.

Model
-----
Trials of one objective are points ``z ∈ [0, 1]^d`` (the log-scaled hyperparameters) with
validation values ``y``. ``y`` is standardised (``ỹ = (y − ȳ) / s_y``) and modelled as
``ỹ = f(z) + ε`` with ``f ~ GP(0, κ)``, ``ε ~ N(0, σ_n²)`` and the Matérn-5/2 kernel
(Rasmussen & Williams, *Gaussian Processes for Machine Learning*, 2006, eq. 4.17)::

    κ(z, z') = (1 + √5 r + 5r²/3) exp(−√5 r),   r = ‖z − z'‖₂ / ℓ

The length scale ``ℓ`` and noise ``σ_n²`` are the pair of a small grid with the highest log
marginal likelihood (R&W eq. 2.30)::

    log p(ỹ | Z) = −½ ỹᵀ K_y⁻¹ ỹ − Σ_i log L_ii − (n/2) log 2π,   K_y = K + σ_n² I = L Lᵀ

Posterior at candidates ``Z*`` (R&W eqs. 2.25–2.26)::

    μ* = K*ᵀ K_y⁻¹ ỹ,     σ*² = κ(0) − diag(K*ᵀ K_y⁻¹ K*)

Criterion
---------
Expected improvement over the best value so far ``ỹ⁺`` (Jones, Schonlau & Welch, J. Global
Optim. 13 (1998) 455), with a small margin ``ξ``::

    EI = (μ* − ỹ⁺ − ξ) Φ(t) + σ* φ(t),   t = (μ* − ỹ⁺ − ξ) / σ*

It is large where the model predicts a high value (exploitation) *or* is unsure
(exploration), so it moves along a ridge that the trials so far only touch — e.g. large ``k``
*with* large ``λ`` *and* large ``α`` — where independent perturbations of the best point
rarely land.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LENGTH_SCALES = (0.1, 0.2, 0.35, 0.6, 1.0)
NOISE_VARIANCES = (1e-4, 1e-2, 0.1, 0.3)  # in units of the standardised values' variance
XI = 0.01


def matern52(a: np.ndarray, b: np.ndarray, length_scale: float) -> np.ndarray:
    """``κ(a_i, b_j)`` (module docstring) for the rows of ``a`` and ``b``."""
    d2 = np.sum(a * a, 1)[:, None] + np.sum(b * b, 1)[None, :] - 2.0 * a @ b.T
    r = np.sqrt(np.maximum(d2, 0.0)) / length_scale
    s5 = math.sqrt(5.0) * r
    return (1.0 + s5 + s5 * s5 / 3.0) * np.exp(-s5)


@dataclass
class GaussianProcess:
    """A GP fitted to ``(z, y)``: hyperparameters chosen by marginal likelihood on the grid."""

    z: np.ndarray
    mean: float
    scale: float
    length_scale: float
    noise: float
    chol: np.ndarray
    alpha: np.ndarray  # K_y⁻¹ ỹ
    log_marginal_likelihood: float

    @classmethod
    def fit(cls, z: np.ndarray, y: np.ndarray) -> "GaussianProcess":
        z = np.asarray(z, np.float64)
        y = np.asarray(y, np.float64)
        mean = float(y.mean())
        scale = float(y.std()) or 1.0
        yt = (y - mean) / scale
        n = len(y)
        best = None
        for ell in LENGTH_SCALES:
            k = matern52(z, z, ell)
            for noise in NOISE_VARIANCES:
                try:
                    chol = np.linalg.cholesky(k + noise * np.eye(n))
                except np.linalg.LinAlgError:
                    continue
                alpha = np.linalg.solve(chol.T, np.linalg.solve(chol, yt))
                lml = (-0.5 * float(yt @ alpha) - float(np.sum(np.log(np.diag(chol))))
                       - 0.5 * n * math.log(2 * math.pi))
                if best is None or lml > best.log_marginal_likelihood:
                    best = cls(z, mean, scale, ell, noise, chol, alpha, lml)
        if best is None:
            raise np.linalg.LinAlgError("no kernel of the grid gave a positive definite K_y")
        return best

    def predict(self, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and standard deviation of ``f`` at ``candidates`` (standardised
        units)."""
        ks = matern52(self.z, np.asarray(candidates, np.float64), self.length_scale)
        mu = ks.T @ self.alpha
        v = np.linalg.solve(self.chol, ks)
        var = np.maximum(1.0 - np.sum(v * v, axis=0), 1e-12)
        return mu, np.sqrt(var)

    def standardise(self, y: float) -> float:
        return (y - self.mean) / self.scale


def expected_improvement(mu: np.ndarray, sigma: np.ndarray, best: float, xi: float = XI) -> np.ndarray:
    """EI (module docstring) of candidates with posterior ``mu``, ``sigma`` over ``best``."""
    gain = mu - best - xi
    t = gain / sigma
    cdf = 0.5 * (1.0 + np.vectorize(math.erf)(t / math.sqrt(2.0)))
    pdf = np.exp(-0.5 * t * t) / math.sqrt(2.0 * math.pi)
    return gain * cdf + sigma * pdf


def candidates(rng: np.random.Generator, z: np.ndarray, y: np.ndarray, n_uniform: int = 2048,
               n_local: int = 128, top: int = 3, spread: float = 0.08) -> np.ndarray:
    """Where EI is evaluated: ``n_uniform`` uniform points of the cube plus ``n_local``
    Gaussian perturbations (σ = ``spread``) of each of the ``top`` best points, clipped to it."""
    d = z.shape[1]
    parts = [rng.uniform(size=(n_uniform, d))]
    for i in np.argsort(-y, kind="stable")[:top]:
        parts.append(np.clip(z[i] + rng.normal(0.0, spread, size=(n_local, d)), 0.0, 1.0))
    return np.concatenate(parts)
