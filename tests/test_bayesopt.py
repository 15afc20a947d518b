"""The tuner's Gaussian-process proposals (trainer/bayesopt.py, trainer.tune.model_config)
against closed forms, a Monte-Carlo estimate and a toy response surface."""
from __future__ import annotations

import math

import numpy as np
import pytest

from trainer import bayesopt
from trainer import tune


def test_matern52_at_hand_computed_distances():
    a = np.array([[0.0, 0.0]])
    b = np.array([[0.0, 0.0], [0.3, 0.4], [3.0, 4.0]])  # distances 0, 0.5, 5
    got = bayesopt.matern52(a, b, length_scale=0.5)[0]
    for r, g in zip([0.0, 1.0, 10.0], got):
        s = math.sqrt(5) * r
        assert g == pytest.approx((1 + s + s * s / 3) * math.exp(-s), rel=1e-12)


def test_posterior_and_likelihood_equal_the_dense_formulas():
    """μ*, σ*² and log p(ỹ|Z) of the chosen kernel against the same quantities computed with
    an explicit inverse and log-determinant (no Cholesky)."""
    rng = np.random.default_rng(0)
    z = rng.uniform(size=(9, 3))
    y = np.sin(4 * z[:, 0]) + z[:, 1] ** 2 - z[:, 2]
    gp = bayesopt.GaussianProcess.fit(z, y)
    yt = (y - y.mean()) / y.std()
    ky = bayesopt.matern52(z, z, gp.length_scale) + gp.noise * np.eye(9)
    inv = np.linalg.inv(ky)
    sign, logdet = np.linalg.slogdet(ky)
    lml = -0.5 * yt @ inv @ yt - 0.5 * logdet - 4.5 * math.log(2 * math.pi)
    assert sign > 0 and gp.log_marginal_likelihood == pytest.approx(lml, rel=1e-9, abs=1e-9)
    zs = rng.uniform(size=(5, 3))
    ks = bayesopt.matern52(z, zs, gp.length_scale)
    mu, sd = gp.predict(zs)
    np.testing.assert_allclose(mu, ks.T @ inv @ yt, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(sd**2, 1.0 - np.einsum("ij,ik,kj->j", ks, inv, ks), rtol=1e-7, atol=1e-10)
    # the chosen pair is the grid's best
    for ell in bayesopt.LENGTH_SCALES:
        for noise in bayesopt.NOISE_VARIANCES:
            k = bayesopt.matern52(z, z, ell) + noise * np.eye(9)
            other = -0.5 * yt @ np.linalg.solve(k, yt) - 0.5 * np.linalg.slogdet(k)[1] - 4.5 * math.log(2 * math.pi)
            assert other <= gp.log_marginal_likelihood + 1e-9


def test_expected_improvement_equals_a_monte_carlo_estimate():
    rng = np.random.default_rng(1)
    mu = np.array([-1.0, 0.0, 0.4, 2.0])
    sd = np.array([0.5, 1.0, 0.05, 0.3])
    got = bayesopt.expected_improvement(mu, sd, best=0.3, xi=0.01)
    draws = rng.normal(mu, sd, size=(400_000, 4))
    gain = np.maximum(draws - 0.3 - 0.01, 0.0)
    want, se = gain.mean(0), gain.std(0) / math.sqrt(len(draws))
    assert np.all(np.abs(got - want) <= 5 * se + 1e-12), (got, want, se)


def test_model_proposals_climb_a_ridge_that_perturbations_of_the_best_miss():
    """A toy response shaped like the GA export's: high only where k, λ and α are all large
    together. From the same 11-point Latin hypercube, 13 GP proposals get closer to the top
    than 13 perturbations of the best point."""
    space = tune.SearchSpace(objectives=("implicit",))

    def value(c: dict) -> float:
        z = np.array(tune.unit_point(space, c))
        on_ridge = -8.0 * float(np.var(z))  # 0 when the three coordinates are equal
        return float(np.exp(on_ridge) * (0.5 + 0.5 * z.mean()))  # rising along the ridge

    def run(strategy: str) -> float:
        rng = np.random.default_rng(3)
        trials = []
        for c in tune.random_design(rng, space, 11):
            trials.append({"hyperparameters": c, "value": value(c)})
        for _ in range(13):
            if strategy == "model":
                c = tune.model_config(rng, space, trials)
            else:
                c = tune.refine_config(rng, space, trials[tune.choose(trials)]["hyperparameters"])
            trials.append({"hyperparameters": c, "value": value(c)})
        assert strategy != "model" or len({str(t["hyperparameters"]) for t in trials}) == 24
        return max(t["value"] for t in trials)

    model, refine = run("model"), run("refine")
    assert model > refine and model > 0.9, (model, refine)


def test_unit_point_inverts_config_at():
    space = tune.SearchSpace()
    for objective in space.objectives:
        c = tune._config_at(space, objective, [0.25, 0.5, 0.75])
        z = tune.unit_point(space, c)
        assert tune._config_at(space, objective, z) == c
