"""Hyperparameter search: choose the model on a validation split of the training data, then
train it on all the training data exactly as ``python -m trainer.task`` would.

    python -m trainer.tune --input_path DIR --output_dir DIR [--trials N] [--metric ndcg]
        [--eval_k 10] [--max_sweeps S] [--seed N] [--topk K] [any non-searched trainer.task flag]

Protocol
--------
1. *Validation carve-out, training records only.* The training matrix ``R`` (the
   ``items_for_user`` shards) is split once more with the pipeline's own held-out rule
   (``preprocess/split.py``, re-implemented here without Beam, :func:`uniform_hash`), applied
   per user on the raw IDs of the vocabularies with fraction ``--validation_fraction`` (0.2)
   and seed :data:`VALIDATION_SEED` (the pipeline's test split uses seed 0)::

       u(v, i) = BLAKE2b-64(str(seed) ‖ 0x1F ‖ v ‖ 0x1F ‖ i) / 2⁶⁴,   validation iff u < fraction

   except that a user with one training interaction keeps it, and a user whose every
   interaction drew ``u < fraction`` keeps the one with the largest ``u`` for fitting. So
   ``R = R_fit + R_val`` with disjoint cells. At most ``--validation_users`` (10000) validation
   users are scored: those with the smallest ``splitmix64(7 · 2³² + user)`` (a fixed subset).
   The held-out records (``test_items_for_user``) are not read during the search at all.
2. *Search.* Each trial trains :class:`trainer.wals.WALSModel` on ``R_fit`` for up to
   ``--max_sweeps`` sweeps and computes ``METRIC@eval_k`` on ``R_val`` after every sweep
   (``R_fit``'s items are never recommended; :func:`trainer.evaluation.evaluate`); it stops
   early after ``--trial_patience`` sweeps without improvement. A trial's value is its best
   sweep's (the first sweep with the highest value).
3. *Choice.* With one carve-out (``K = 1``) the chosen trial is the one with the highest value
   (the first on ties), and its best sweep is the number of sweeps retrained. On a small
   validation set one carve-out is a noisy judge (on the 801-user GA export it scores 704
   users: the standard error of a fold's NDCG@10 is about 0.008, the size of the differences
   between good configurations), so with ``--validation_folds K ≥ 2`` (``auto``: K = 5 when
   the carve-out scores fewer than 5,000 users and the fraction is the default 1/5) the
   ``--finalists`` (6) best trials are re-scored by K-fold validation (:func:`carve_folds`:
   fold ``f`` validates the cells with ``u ∈ [f/K, (f+1)/K)``, so every cell is validated
   once and fold 0 is the carve-out above; the K models advance in lockstep and stop on the
   fold-mean curve, :func:`run_trial`), and the one chosen is given by the
   one-standard-error rule (:func:`one_standard_error_rule`): among the finalists whose
   K-fold mean ``m`` reaches ``m_best − SE_best`` (``SE = sd over folds / √K``), the most
   strongly regularised (λ's position in its objective's log range); it is retrained for the
   best sweep of its fold-mean curve. Only the finalists are cross-validated, so the cost is
   ``trials + finalists · K`` fits of the fit part, not ``trials · K``; large data
   (≥ 5,000 scored users) keeps the single carve-out and its cost.
4. *Final model.* The chosen hyperparameters (``--objective``, ``--n_embeds``,
   ``--regularization``, ``--alpha`` or ``--unobserved_weight``, ``--num_epochs`` = the best
   sweep, every other flag as given) go through :func:`trainer.task.run` on all of ``R``: the
   same outputs as a plain ``trainer.task`` run with those flags (factors, vocabularies,
   ``training_summary.json``, ``metrics.json`` with the held-out metrics and the popularity
   baseline when test records exist, ``batch_pred.txt``, the SavedModel), then
   ``tuning.json`` (every trial: hyperparameters, validation metrics per sweep, seconds; for
   the finalists also ``cross_validation``: the per-fold curves, the fold values at the best
   sweep, their mean and standard error; the rule's threshold; the chosen trial; the search
   space; the seed) and ``tuning.png`` (when matplotlib is installed; it is not a trainer
   dependency).

Search strategy (deterministic given ``--seed``)
------------------------------------------------
A seeded space-filling design followed by model-based proposals, all from one
``numpy.random.default_rng(seed)``:

* trial 0 is the library's defaults (:data:`trainer.hparams.DEFAULTS`), so the search never
  returns something worse on validation than the untuned model;
* trials ``1 .. ceil(N/2) − 1`` are a Latin hypercube over the log-ranges
  (:func:`random_design`): ``k`` in ``[8, 96]`` and, per objective, ``λ`` and ``α``
  (implicit) or ``w0`` (wals) in :class:`SearchSpace`'s ranges, each range cut into as many
  strata as trials and each stratum used once; the objectives from ``--objectives`` dealt out
  evenly;
* the remaining trials are proposed by a Gaussian process fitted to the trials so far, one
  per objective, maximising expected improvement (:func:`model_config`,
  :mod:`trainer.bayesopt`): the search follows the response surface, e.g. the ridge of large
  ``k`` *with* large ``λ`` *and* large ``α`` on the GA export, which independent perturbations
  of the best point rarely reached. Until an objective has :data:`MODEL_MIN_TRIALS` scored
  trials (never with the default budget) a trial perturbs the best so far instead
  (:func:`refine_config`): ``k · 2^N(0, 0.5²)``, ``λ · e^N(0, 0.7²)``, ``α`` or ``w0``
  ``· e^N(0, 0.7²)``, clipped to the ranges.

Values are rounded to 3 significant digits (``k`` to an integer), so the chosen flags print
exactly. ``--seed`` also seeds every model's initial factors (the same ``--seed`` as
``trainer.task``'s). Given the seed, the data and the machine, the search is deterministic:
the models are (CPU, :meth:`trainer.wals.WALSModel.fit`), and so are the proposals that
depend on their validation values.

The default budget (24 trials of at most 20 sweeps; on small data 6 finalists × 5 folds more)
takes about 1.5 minutes on the bundled sample (about 300k interactions, one carve-out) and
10–20 seconds on the small GA export and ML-100k (figures in ``BENCHMARKS.md`` §7).
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import io
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Sequence

from trainer import fileio
from trainer.errors import TrainerInputError, run_command
from trainer.flags import build_parser, model_kwargs
from trainer.hparams import CHOICES, DEFAULTS, HyperparameterError, validate

if TYPE_CHECKING:
    import numpy as np

    from trainer.sparse import CSR

log = logging.getLogger("trainer.tune")

PROG = "python -m trainer.tune"
TUNING = "tuning.json"
PLOT = "tuning.png"
VALIDATION_SEED = 1  # the pipeline's test split uses seed 0
VALIDATION_FRACTION = 0.2
VALIDATION_MAX_USERS = 10000
SUBSET_SEED = 7  # which validation users are scored when there are more than the cap
AUTO_FOLDS = 5  # K of --validation_folds auto on small data: folds of 1/5 = VALIDATION_FRACTION
AUTO_FOLDS_BELOW_USERS = 5000  # ... when the single carve-out scores fewer users than this
FINALISTS = 6  # trials re-scored on all K folds
METRICS = ("ndcg", "map", "recall", "precision")
# trainer.task flags the search sets (not accepted on the command line)
SEARCHED_FLAGS = ("objective", "n_embeds", "regularization", "alpha", "unobserved_weight", "num_epochs")
# trainer.task flags that make no sense for a search
_REFUSED_FLAGS = {"resume": False, "eval_every": 0, "early_stopping_metric": None}
_SEPARATOR = b"\x1f"


# --------------------------------------------------------------------------- search space
@dataclass(frozen=True)
class SearchSpace:
    """The ranges searched (all sampled log-uniformly; ``k`` rounded to an integer)."""

    objectives: tuple[str, ...] = ("implicit", "wals")
    factors: tuple[int, int] = (8, 96)
    regularization_implicit: tuple[float, float] = (0.1, 1000.0)
    alpha: tuple[float, float] = (0.3, 1000.0)
    # wals: in the units of its own loss (weight w0 + 1 observed, w0 unobserved, target r)
    regularization_wals: tuple[float, float] = (0.001, 10.0)
    unobserved_weight: tuple[float, float] = (0.001, 1.0)
    max_sweeps: int = 20

    def to_json(self) -> dict:
        return {**asdict(self), "sampling": "log-uniform"}


def _round(x: float) -> float:
    """3 significant digits (the chosen value prints, and parses back, exactly)."""
    return float(f"{x:.3g}")


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return math.exp(rng.uniform(math.log(low), math.log(high)))


def _clip(x: float, bounds: tuple[float, float]) -> float:
    return min(max(x, bounds[0]), bounds[1])


def default_config() -> dict:
    """Trial 0: the library's defaults."""
    return {"objective": DEFAULTS.objective, "factors": DEFAULTS.factors,
            "regularization": DEFAULTS.regularization, "alpha": DEFAULTS.alpha}


def _weight_key(objective: str) -> str:
    return "alpha" if objective == "implicit" else "unobserved_weight"


def _ranges(space: SearchSpace, objective: str) -> tuple[tuple[float, float], tuple[float, float]]:
    if objective == "implicit":
        return space.regularization_implicit, space.alpha
    return space.regularization_wals, space.unobserved_weight


def random_config(rng: np.random.Generator, space: SearchSpace) -> dict:
    """One independent draw (objective uniform, the rest log-uniform in their ranges)."""
    return _config_at(space, space.objectives[int(rng.integers(len(space.objectives)))],
                      rng.uniform(size=3))


def _config_at(space: SearchSpace, objective: str, z: Sequence[float]) -> dict:
    """The configuration at ``z ∈ [0, 1)³`` of ``objective``'s log-ranges (k, λ, α or w0)."""
    lam_range, w_range = _ranges(space, objective)

    def at(zi: float, bounds: tuple[float, float]) -> float:
        return math.exp(math.log(bounds[0]) + zi * (math.log(bounds[1]) - math.log(bounds[0])))

    return {"objective": objective, "factors": int(round(at(z[0], space.factors))),
            "regularization": _round(at(z[1], lam_range)), _weight_key(objective): _round(at(z[2], w_range))}


def random_design(rng: np.random.Generator, space: SearchSpace, n: int) -> list[dict]:
    """The random phase: ``n`` configurations by Latin hypercube sampling of the log-ranges.

    For each of the three log-scaled coordinates (k, λ, α or w0, each mapped to ``[0, 1)``)
    the ``n`` points take one stratum ``[s/n, (s+1)/n)`` each, in an independent random
    order, at a uniform position within it: ``z_d(i) = (π_d(i) + U_d(i)) / n``. The
    objectives are dealt out as evenly as possible in a random order. Every marginal is thus
    covered at resolution ``1/n`` (iid draws leave gaps of expected width ``≈ log n / n``), so
    11 points cannot all miss, say, the upper third of λ — what made two of three searches on
    the 801-user GA export stay in a low-λ corner."""
    import numpy as np

    if n <= 0:
        return []
    obj = [space.objectives[i % len(space.objectives)] for i in range(n)]
    obj = [obj[i] for i in rng.permutation(n)]
    z = (np.stack([rng.permutation(n) for _ in range(3)], axis=1) + rng.uniform(size=(n, 3))) / n
    return [_config_at(space, o, z[i]) for i, o in enumerate(obj)]


def refine_config(rng: np.random.Generator, space: SearchSpace, best: dict) -> dict:
    """A perturbation of ``best`` (same objective), clipped to the ranges."""
    objective = best["objective"]
    lam_range, w_range = _ranges(space, objective)
    wk = _weight_key(objective)
    k = int(round(_clip(best["factors"] * 2.0 ** rng.normal(0.0, 0.5), space.factors)))
    lam = _round(_clip(best["regularization"] * math.exp(rng.normal(0.0, 0.7)), lam_range))
    w = _round(_clip(best[wk] * math.exp(rng.normal(0.0, 0.7)), w_range))
    return {"objective": objective, "factors": k, "regularization": lam, wk: w}


def unit_point(space: SearchSpace, config: dict) -> list[float]:
    """The inverse of :func:`_config_at`: ``config``'s position in its objective's unit cube
    (k, λ, α or w0 on their log-ranges)."""
    lam_range, w_range = _ranges(space, config["objective"])

    def pos(x: float, bounds: tuple[float, float]) -> float:
        lo, hi = math.log(bounds[0]), math.log(bounds[1])
        return (math.log(x) - lo) / (hi - lo)

    return [pos(config["factors"], space.factors), pos(config["regularization"], lam_range),
            pos(config[_weight_key(config["objective"])], w_range)]


MODEL_MIN_TRIALS = 4  # scored trials of an objective before a GP models it


def model_config(rng: np.random.Generator, space: SearchSpace, trials: Sequence[dict]) -> dict | None:
    """The next configuration by expected improvement (:mod:`trainer.bayesopt`): per objective
    with at least :data:`MODEL_MIN_TRIALS` scored trials, a Gaussian process over its unit cube
    fitted to their values, EI over the best value of all trials evaluated on
    :func:`trainer.bayesopt.candidates`; the candidate with the highest EI (in the metric's
    units, so the objectives compare) that no trial has run yet. ``None`` when no objective
    has enough trials."""
    import numpy as np

    from trainer import bayesopt

    scored = [t for t in trials if t["value"] is not None]
    if not scored:
        return None
    best = max(t["value"] for t in scored)
    tried = [t["hyperparameters"] for t in trials]
    options: list[tuple[float, dict]] = []
    for objective in space.objectives:
        own = [t for t in scored if t["hyperparameters"]["objective"] == objective]
        if len(own) < MODEL_MIN_TRIALS:
            continue
        z = np.array([unit_point(space, t["hyperparameters"]) for t in own])
        y = np.array([t["value"] for t in own])
        gp = bayesopt.GaussianProcess.fit(z, y)
        cand = bayesopt.candidates(rng, z, y)
        mu, sd = gp.predict(cand)
        ei = bayesopt.expected_improvement(mu, sd, gp.standardise(best)) * gp.scale
        for i in np.argsort(-ei, kind="stable"):
            config = _config_at(space, objective, cand[i])
            if config not in tried:
                options.append((float(ei[i]), config))
                break
    if not options:
        return None
    return max(options, key=lambda o: o[0])[1]


# --------------------------------------------------------------------------- validation split
def uniform_hash(seed: int, user: str, item: str) -> float:
    """``BLAKE2b-64(str(seed) ‖ 0x1F ‖ user ‖ 0x1F ‖ item) / 2⁶⁴`` in [0, 1): the pipeline's
    held-out hash (``preprocess/split.py``)."""
    key = str(seed).encode() + _SEPARATOR + user.encode("utf-8") + _SEPARATOR + item.encode("utf-8")
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") / 18446744073709551616.0


def cell_draws(train: CSR, users: Sequence[str], items: Sequence[str],
               seed: int = VALIDATION_SEED) -> np.ndarray:
    """``u(v, i)`` (:func:`uniform_hash`) of every stored cell of ``train``, in CSR order."""
    import numpy as np

    rows = train.row_ids()
    return np.fromiter((uniform_hash(seed, users[i], items[j]) for i, j in zip(rows, train.indices)),
                       dtype=np.float64, count=train.nnz)


def interval_flags(train: CSR, u: np.ndarray, low: float, high: float) -> np.ndarray:
    """One bool per stored cell (CSR order): ``True`` = validation, i.e. ``low ≤ u < high``,
    except that a user with one cell keeps it and a user whose every cell drew
    ``low ≤ u < high`` keeps the one with the largest ``u`` for fitting (the pipeline's
    held-out rule with ``low = 0``, ``high = fraction``)."""
    import numpy as np

    flags = (u >= low) & (u < high)
    lens = train.row_lengths()
    flags[np.repeat(lens < 2, lens)] = False
    n_flagged = np.add.reduceat(flags.astype(np.int64), train.indptr[:-1]) if train.nnz else np.zeros(0)
    n_flagged = np.where(lens > 0, n_flagged, 0)
    for i in np.flatnonzero((lens >= 2) & (n_flagged == lens)):
        s, e = int(train.indptr[i]), int(train.indptr[i + 1])
        flags[s + int(np.argmax(u[s:e]))] = False
    return flags


def validation_flags(
    train: CSR, users: Sequence[str], items: Sequence[str],
    fraction: float = VALIDATION_FRACTION, seed: int = VALIDATION_SEED,
) -> np.ndarray:
    """One bool per stored cell of ``train`` (CSR order): ``True`` = validation (module doc):
    :func:`interval_flags` on ``[0, fraction)``."""
    return interval_flags(train, cell_draws(train, users, items, seed), 0.0, fraction)


def fold_bounds(folds: int) -> list[tuple[float, float]]:
    """The K intervals ``[f/K, (f+1)/K)``, f = 0..K−1, of K-fold validation. Adjacent folds
    share the very same float bound, so the intervals partition ``[0, 1)`` exactly; fold 0
    of 5 is ``[0, 0.2)``, the single carve-out with the default fraction."""
    return [(f / folds, (f + 1) / folds) for f in range(folds)]


def scored_users(val: CSR, max_users: int, seed: int = SUBSET_SEED) -> np.ndarray:
    """Mask of the validation users scored: all when at most ``max_users`` have validation
    cells, else the ``max_users`` with the smallest ``splitmix64(seed · 2³² + user)``."""
    import numpy as np

    from trainer.evaluation import splitmix64

    rows = np.flatnonzero(val.row_lengths() > 0)
    mask = np.zeros(val.shape[0], dtype=bool)
    if rows.size <= max_users:
        mask[rows] = True
        return mask
    h = splitmix64(rows.astype(np.uint64) + np.uint64(seed << 32))
    mask[rows[np.argsort(h, kind="stable")[:max_users]]] = True
    return mask


@dataclass
class Carve:
    """``R = fit + (validation cells)``; ``val`` holds the scored users' validation cells."""

    fit: CSR
    val: CSR
    info: dict


def _carve_from_flags(train: CSR, held: np.ndarray, max_users: int, info: dict) -> Carve:
    from trainer.evaluation import keep_rows
    from trainer.sparse import CSR

    rows = train.row_ids()
    fit = CSR.from_coo(rows[~held], train.indices[~held], train.values[~held], train.shape)
    val_all = CSR.from_coo(rows[held], train.indices[held], train.values[held], train.shape)
    val = keep_rows(val_all, scored_users(val_all, max_users))
    info = {
        "rule": "preprocess/split.py's held_out_flags on raw IDs", **info,
        "seed": VALIDATION_SEED, "train_interactions": train.nnz, "fit_interactions": fit.nnz,
        "validation_interactions": val_all.nnz,
        "validation_users": int((val_all.row_lengths() > 0).sum()),
        "validation_users_scored": int((val.row_lengths() > 0).sum()),
        "validation_interactions_scored": val.nnz, "scored_subset_seed": SUBSET_SEED,
    }
    return Carve(fit, val, info)


def carve(train: CSR, users: Sequence[str], items: Sequence[str], fraction: float,
          max_users: int) -> Carve:
    """The single validation carve-out of the training matrix (module doc): ``u < fraction``."""
    held = validation_flags(train, users, items, fraction, VALIDATION_SEED)
    return _carve_from_flags(train, held, max_users, {"fraction": fraction})


def carve_folds(train: CSR, users: Sequence[str], items: Sequence[str], folds: int,
                max_users: int) -> list[Carve]:
    """K-fold carve-outs of the training matrix: fold ``f`` validates the cells with
    ``u ∈ [f/K, (f+1)/K)`` (:func:`fold_bounds`, :func:`interval_flags`) and fits on the
    rest of ``R``. Every cell is validated in exactly one fold, except a user's single cell and
    the one cell a user keeps in a fold that drew all of them (those are fitted everywhere).
    With ``K = 1/fraction`` fold 0 is :func:`carve`'s carve-out."""
    u = cell_draws(train, users, items, VALIDATION_SEED)
    return [_carve_from_flags(train, interval_flags(train, u, lo, hi), max_users,
                              {"fraction": hi - lo, "fold": f, "folds": folds, "interval": [lo, hi]})
            for f, (lo, hi) in enumerate(fold_bounds(folds))]


# --------------------------------------------------------------------------- trials
def _mean_curve(curves: list[list[dict]], n: int) -> list[dict]:
    """Sweeps ``1..n`` of the per-fold curves averaged metric by metric (fold-mean metrics)."""
    import numpy as np

    out = []
    for s in range(n):
        keys = [k for k in curves[0][s] if k != "sweep"]
        out.append({"sweep": s + 1, **{k: float(np.mean([c[s][k] for c in curves])) for k in keys}})
    return out


def standard_error(values: Sequence[float]) -> float | None:
    """``sd(values) / √K`` with the ``K − 1`` denominator (the standard error of a K-fold mean,
    as the one-standard-error rule uses it); ``None`` for fewer than two values."""
    import numpy as np

    if len(values) < 2:
        return None
    return float(np.std(np.asarray(values, dtype=np.float64), ddof=1) / math.sqrt(len(values)))


def run_trial(args: argparse.Namespace, config: dict, folds: Sequence[Carve], key: str) -> dict:
    """Trains ``config`` on each fold's fit part, evaluating on its validation part after every
    sweep, and scores the trial by the fold-mean curve.

    The K fold models advance in lockstep: in rounds of ``--trial_patience`` sweeps each model
    continues from its saved state (:class:`trainer.wals.TrainingState`; resuming gives the
    same factors as an uninterrupted fit), then the fold-mean curve
    ``m(s) = (1/K) Σ_f metric_f(s)`` decides early stopping exactly as a sweep-by-sweep loop
    would: the trial stops at the first sweep ``s`` with ``--trial_patience`` sweeps since the
    best of ``m(1..s)``, and sweeps computed past ``s`` in the last round are dropped. With one
    fold there is one round (the callback stops the fit). The trial's value is ``max_s m(s)``
    at the first such sweep ``s*`` (its best sweep), ``fold_values`` are ``metric_f(s*)`` and
    ``standard_error`` is :func:`standard_error` of them.
    """
    import numpy as np

    from trainer.evaluation import best_index, evaluate, evaluations_since_best
    from trainer.wals import WALSModel

    kw = {k: v for k, v in model_kwargs(args).items() if k not in _SEARCHED_KEYWORDS}
    kw.update(config)
    kw["iterations"] = args.max_sweeps
    kw["calculate_training_loss"] = False
    n = len(folds)
    models = [WALSModel(**kw) for _ in folds]
    states: list[Any] = [None] * n
    curves: list[list[dict]] = [[] for _ in folds]
    eval_seconds = [0.0]
    stop_at: int | None = None  # the sweep after which the fold-mean curve stops the trial
    horizon = 0
    t0 = time.perf_counter()
    while stop_at is None and horizon < args.max_sweeps:
        horizon = args.max_sweeps if n == 1 else min(args.max_sweeps, horizon + args.trial_patience)
        for f, (model, data) in enumerate(zip(models, folds)):
            curve = curves[f]

            def on_sweep(st: Any, data: Carve = data, curve: list = curve, f: int = f) -> bool:
                t = time.perf_counter()
                m = evaluate(st.user_factors, st.item_factors, data.fit, data.val, k=args.eval_k,
                             batch_size=args.batch_size)
                eval_seconds[0] += time.perf_counter() - t
                curve.append({"sweep": st.sweeps_done, **{k: float(v) for k, v in m.items()}})
                states[f] = st
                if n == 1:
                    return evaluations_since_best(curve, key) >= args.trial_patience
                return st.sweeps_done >= horizon

            model.fit(data.fit, state=states[f], callback=on_sweep)
        done = min(len(c) for c in curves)
        mean = _mean_curve(curves, done)
        for s in range(1, done + 1):
            if evaluations_since_best(mean[:s], key) >= args.trial_patience:
                stop_at = s
                break
        if done < horizon:  # one fold stopped by itself (K = 1)
            stop_at = stop_at or done
    seconds = time.perf_counter() - t0
    done = min(len(c) for c in curves) if stop_at is None else stop_at
    curves = [c[:done] for c in curves]
    mean = _mean_curve(curves, done)
    b = best_index(mean, key)
    value = mean[b][key] if b is not None and np.isfinite(mean[b][key]) else None
    fold_values = [c[b][key] for c in curves] if b is not None else []
    return {
        "hyperparameters": config, "validation": mean,
        "best_sweep": None if value is None else mean[b]["sweep"], "value": value,
        "fold_values": fold_values, "standard_error": standard_error(fold_values),
        "fold_validation": curves if n > 1 else None,
        "seconds": seconds, "train_seconds": float(sum(
            h["seconds"] for m in models for h in m.history)),
        "evaluation_seconds": eval_seconds[0],
    }


_SEARCHED_KEYWORDS = ("objective", "factors", "regularization", "alpha", "unobserved_weight", "iterations")


def choose(trials: list[dict]) -> int:
    """Index of the first trial with the highest value (trials without a value never win)."""
    best, best_value = -1, -math.inf
    for i, t in enumerate(trials):
        if t["value"] is not None and t["value"] > best_value:
            best, best_value = i, t["value"]
    return best


def finalists(trials: Sequence[dict], m: int) -> list[int]:
    """Indices of the ``m`` trials with the highest values (distinct hyperparameters; the
    earlier of equal configurations, the earlier trial on equal values), best first."""
    order = sorted((i for i, t in enumerate(trials) if t["value"] is not None),
                   key=lambda i: (-trials[i]["value"], i))
    out: list[int] = []
    seen: list[dict] = []
    for i in order:
        if trials[i]["hyperparameters"] not in seen:
            seen.append(trials[i]["hyperparameters"])
            out.append(i)
        if len(out) == m:
            break
    return out


def regularization_strength(config: dict, space: SearchSpace) -> float:
    """``(log λ − log λ_lo) / (log λ_hi − log λ_lo)`` in the objective's own λ range: how
    strongly the configuration is regularised, comparable across the two objectives (their λ
    are in different units)."""
    lo, hi = _ranges(space, config["objective"])[0]
    return (math.log(config["regularization"]) - math.log(lo)) / (math.log(hi) - math.log(lo))


def one_standard_error_rule(candidates: Sequence[dict], space: SearchSpace) -> tuple[int, float]:
    """The one-standard-error rule (Breiman et al. 1984; Hastie, Tibshirani & Friedman, *The
    Elements of Statistical Learning*, §7.10) on K-fold validation scores.

    ``candidates``: dicts with ``value`` (the K-fold mean ``m_c``), ``standard_error``
    (``SE_c = sd_f / √K``) and ``hyperparameters``. With ``b = argmax_c m_c``, every candidate
    with ``m_c ≥ m_b − SE_b`` is statistically indistinguishable from the best at the
    resolution the folds give; among those the rule takes the most strongly regularised
    (:func:`regularization_strength`; then the higher mean, then the earlier candidate), the
    model whose validation score is least inflated by fitting the carve-out's noise. Returns
    (the index in ``candidates``, the threshold ``m_b − SE_b``).
    """
    scored = [i for i, c in enumerate(candidates) if c["value"] is not None]
    if not scored:
        return -1, math.nan
    b = min(scored, key=lambda i: (-candidates[i]["value"], i))
    threshold = candidates[b]["value"] - (candidates[b]["standard_error"] or 0.0)
    eligible = [i for i in scored if candidates[i]["value"] >= threshold]
    pick = min(eligible, key=lambda i: (-regularization_strength(candidates[i]["hyperparameters"], space),
                                        -candidates[i]["value"], i))
    return pick, threshold


def resolve_folds(requested: str, fraction_given: bool, users_scored: int) -> int:
    """K for ``--validation_folds``: an integer as given; ``auto`` = :data:`AUTO_FOLDS` when
    the single carve-out scores fewer than :data:`AUTO_FOLDS_BELOW_USERS` users (and the
    fraction is the default 1/5, so fold 0 is that carve-out), else 1."""
    if requested != "auto":
        return int(requested)
    if fraction_given or users_scored >= AUTO_FOLDS_BELOW_USERS:
        return 1
    return AUTO_FOLDS


def search(args: argparse.Namespace, folds: Sequence[Carve], space: SearchSpace) -> list[dict]:
    """Every trial of the strategy (module doc), in order."""
    import numpy as np

    key = f"{args.metric}@{args.eval_k}"
    rng = np.random.default_rng(args.seed)
    n_random = max(1, math.ceil(args.trials / 2))
    with_defaults = DEFAULTS.objective in space.objectives
    design = random_design(rng, space, n_random - (1 if with_defaults else 0))
    trials: list[dict] = []
    for t in range(args.trials):
        if t == 0 and with_defaults:
            config, phase = default_config(), "defaults"
        elif t < n_random:
            config, phase = design[t - (1 if with_defaults else 0)], "random"
        elif choose(trials) < 0:
            config, phase = random_config(rng, space), "random"
        else:
            config, phase = model_config(rng, space, trials), "model"
            if config is None:  # no objective has enough scored trials to model
                config, phase = refine_config(rng, space, trials[choose(trials)]["hyperparameters"]), "refine"
        result = {"trial": t, "phase": phase, **run_trial(args, config, folds, key)}
        trials.append(result)
        log.info("trial %d/%d (%s) %s: %s=%s at sweep %s (%.1f s)", t + 1, args.trials, phase,
                 _config_text(config), key,
                 "n/a" if result["value"] is None else f"{result['value']:.5f}",
                 result["best_sweep"], result["seconds"])
    return trials


def _config_text(c: dict) -> str:
    w = f"alpha={c['alpha']:g}" if c["objective"] == "implicit" else f"w0={c['unobserved_weight']:g}"
    return f"{c['objective']} k={c['factors']} lambda={c['regularization']:g} {w}"


def task_flags(config: dict, sweeps: int) -> list[str]:
    """The ``trainer.task`` flags of a chosen configuration."""
    flags = ["--objective", config["objective"], "--n_embeds", str(config["factors"]),
             "--regularization", repr(float(config["regularization"])), "--num_epochs", str(sweeps)]
    wk = _weight_key(config["objective"])
    return flags + [f"--{wk}", repr(float(config[wk]))]


def final_args(args: argparse.Namespace, config: dict, sweeps: int) -> argparse.Namespace:
    """``args`` with the chosen hyperparameters, as :func:`trainer.task.run` takes them."""
    ns = copy.copy(args)
    ns.objective, ns.n_embeds, ns.regularization = config["objective"], config["factors"], config["regularization"]
    ns.alpha = config.get("alpha", DEFAULTS.alpha)
    ns.unobserved_weight = config.get("unobserved_weight", DEFAULTS.unobserved_weight)
    ns.num_epochs = sweeps
    for name, value in _REFUSED_FLAGS.items():
        setattr(ns, name, value)
    return ns


# --------------------------------------------------------------------------- outputs
def plot(path: str, trials: list[dict], chosen: int, key: str) -> bool:
    """``tuning.png``: validation metric per sweep of every trial, and each trial's value in
    order with the running best. ``False`` (and a log line) without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib is not installed: no %s", PLOT)
        return False
    colors = {"implicit": "tab:blue", "wals": "tab:orange"}
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, t in enumerate(trials):
        xs = [e["sweep"] for e in t["validation"]]
        ys = [e[key] for e in t["validation"]]
        a.plot(xs, ys, color=colors.get(t["hyperparameters"]["objective"], "gray"),
               lw=2.5 if i == chosen else 0.8, alpha=1.0 if i == chosen else 0.6)
    a.set_xlabel("sweep")
    a.set_ylabel(f"validation {key}")
    a.set_title("every trial (bold: chosen; blue implicit, orange wals)", fontsize=9)
    running, best = [], -math.inf
    for i, t in enumerate(trials):
        v = t["value"] if t["value"] is not None else math.nan
        b.scatter([i], [v], color=colors.get(t["hyperparameters"]["objective"], "gray"),
                  marker="*" if i == chosen else "o", s=120 if i == chosen else 25, zorder=3)
        best = max(best, v) if math.isfinite(v) else best
        running.append(best if math.isfinite(best) else math.nan)
    b.step(range(len(trials)), running, where="post", color="black", lw=1)
    b.set_xlabel("trial")
    b.set_ylabel(f"best validation {key} of the trial")
    b.set_title("search order (line: best so far)", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    fileio.write_bytes_atomic(path, buf.getvalue())
    return True


# --------------------------------------------------------------------------- command line
def build_tune_parser() -> argparse.ArgumentParser:
    """``trainer.task``'s parser (its non-searched flags pass through) plus the search's."""
    p = build_parser()
    p.prog = PROG
    p.description = ("Choose WALS hyperparameters on a validation split of the training records, "
                     "then train the chosen model on all of them (the outputs of trainer.task "
                     "plus tuning.json and tuning.png).")
    p.set_defaults(**{name: None for name in SEARCHED_FLAGS})
    g = p.add_argument_group("search")
    g.add_argument("--trials", type=int, default=24, help="configurations tried (the first: the defaults)")
    g.add_argument("--max_sweeps", type=int, default=SearchSpace.max_sweeps,
                   help="most sweeps per trial (evaluated after each)")
    g.add_argument("--trial_patience", type=int, default=3,
                   help="a trial stops after this many sweeps without improvement")
    g.add_argument("--metric", choices=METRICS, default="ndcg", help="validation metric (@--eval_k)")
    g.add_argument("--objectives", nargs="+", choices=CHOICES["objective"],
                   default=list(SearchSpace.objectives), help="objectives searched")
    g.add_argument("--validation_fraction", type=float, default=None,
                   help="share of each user's training interactions carved out for validation")
    g.add_argument("--validation_users", type=int, default=VALIDATION_MAX_USERS,
                   help="most validation users scored (a fixed hash-chosen subset)")
    g.add_argument("--validation_folds", default="auto", metavar="auto|K",
                   help="K-fold validation of the finalists (K >= 2: fold f validates the cells "
                   "with hash in [f/K, (f+1)/K)); auto: 5 when the carve-out scores fewer than "
                   f"{AUTO_FOLDS_BELOW_USERS} users, else 1 (the single carve-out)")
    g.add_argument("--finalists", type=int, default=FINALISTS,
                   help="with K >= 2 folds: the best trials of the search re-scored on all K "
                   "folds, one chosen by the one-standard-error rule")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, checked before anything is read (one line and exit 2 when bad)."""
    p = build_tune_parser()
    args = p.parse_args(argv)
    for name in SEARCHED_FLAGS:
        if getattr(args, name) is not None:
            p.error(f"--{name} is chosen by the search; trainer.tune does not take it")
    for name, value in _REFUSED_FLAGS.items():
        if getattr(args, name) != value:
            p.error(f"--{name} is not available with trainer.tune")
    for name, minimum in (("trials", 1), ("max_sweeps", 1), ("trial_patience", 1),
                          ("validation_users", 1), ("topk", 1), ("eval_k", 1), ("finalists", 1)):
        if getattr(args, name) < minimum:
            p.error(f"--{name} must be >= {minimum}, got {getattr(args, name)}")
    args.fraction_given = args.validation_fraction is not None
    if not args.fraction_given:
        args.validation_fraction = VALIDATION_FRACTION
    if not 0.0 < args.validation_fraction < 1.0:
        p.error(f"--validation_fraction must be in (0, 1), got {args.validation_fraction:g}")
    if args.validation_folds != "auto":
        try:
            folds = int(args.validation_folds)
        except ValueError:
            p.error(f"--validation_folds must be auto or an integer, got {args.validation_folds!r}")
        if folds < 1:
            p.error(f"--validation_folds must be >= 1, got {folds}")
        if folds > 1 and args.fraction_given and args.validation_fraction != 1.0 / folds:
            p.error(f"--validation_fraction {args.validation_fraction:g} does not fit "
                    f"--validation_folds {folds} (each fold validates 1/{folds})")
        if folds > 1:
            args.validation_fraction = 1.0 / folds
    if args.col_weights != "uniform" and "implicit" in args.objectives:
        p.error("--col_weights other than uniform needs --objectives wals")
    args.objectives = list(dict.fromkeys(args.objectives))
    fixed = {k: v for k, v in model_kwargs(args).items() if k not in _SEARCHED_KEYWORDS}
    try:
        validate(**fixed)
    except HyperparameterError as e:
        p.error(e.message(e.name))
    return args


def run(args: argparse.Namespace) -> dict:
    """Carve-out, search, final training (:func:`trainer.task.run`), ``tuning.json`` and the
    plot; returns what ``tuning.json`` holds."""
    from trainer import task
    from trainer.data import load_training_data
    from trainer.metadata import load_metadata, read_vocabulary

    t_start = time.perf_counter()
    md = load_metadata(args.input_path)
    if args.eval_k > md.nitems:
        raise TrainerInputError(f"--eval_k {args.eval_k} is more than the {md.nitems} items")
    users = read_vocabulary(md.user_vocabulary, md.nusers, "user")
    items = read_vocabulary(md.item_vocabulary, md.nitems, "item")
    # before the long search: a dir the trainer may not write to fails now, and an earlier
    # tuning's files go (trainer.task.run removes its own outputs when it claims the dir)
    with fileio.claim_output_dir(args.output_dir, args.break_lock):
        for name in (TUNING, PLOT):
            fileio.remove_path(fileio.join(args.output_dir, name))
    train = load_training_data(md).user_items
    data = carve(train, users, items, args.validation_fraction, args.validation_users)
    if data.val.nnz == 0:
        raise TrainerInputError(
            f"{md.path}: no validation interactions (no user has 2 or more training "
            "interactions): nothing to choose hyperparameters on")
    log.info("validation carve-out: %d fit interactions, %d validation interactions of %d "
             "users (%d scored)", data.fit.nnz, data.info["validation_interactions"],
             data.info["validation_users"], data.info["validation_users_scored"])
    n_folds = resolve_folds(args.validation_folds, args.fraction_given,
                            data.info["validation_users_scored"])
    space = SearchSpace(objectives=tuple(args.objectives), max_sweeps=args.max_sweeps)
    key = f"{args.metric}@{args.eval_k}"
    t = time.perf_counter()
    trials = search(args, [data], space)
    search_seconds = time.perf_counter() - t
    cross: dict | None = None
    if n_folds > 1:
        t = time.perf_counter()
        folds = carve_folds(train, users, items, n_folds, args.validation_users)
        log.info("small validation set (%d users scored): the %d best trials re-scored on %d "
                 "folds", data.info["validation_users_scored"], args.finalists, n_folds)
        final_ids = finalists(trials, args.finalists)
        candidates = []
        for i in final_ids:
            cv = run_trial(args, trials[i]["hyperparameters"], folds, key)
            cv.pop("hyperparameters")
            trials[i]["cross_validation"] = cv
            candidates.append({"trial": i, "hyperparameters": trials[i]["hyperparameters"], **cv})
            log.info("finalist trial %d %s: %d-fold %s=%s ± %s at sweep %s (%.1f s)", i,
                     _config_text(trials[i]["hyperparameters"]), n_folds, key,
                     "n/a" if cv["value"] is None else f"{cv['value']:.5f}",
                     "n/a" if cv["standard_error"] is None else f"{cv['standard_error']:.5f}",
                     cv["best_sweep"], cv["seconds"])
        pick, threshold = one_standard_error_rule(candidates, space)
        if pick < 0:
            raise TrainerInputError("no finalist gave a finite validation metric")
        best_cv = candidates[int(max(range(len(candidates)), key=lambda j: (
            -math.inf if candidates[j]["value"] is None else candidates[j]["value"], -j)))]
        chosen = candidates[pick]["trial"]
        value, sweeps = candidates[pick]["value"], candidates[pick]["best_sweep"]
        cross = {
            "folds": n_folds, "finalists": final_ids,
            "rule": "one standard error: among the finalists whose K-fold mean is at least the "
                    "best mean minus its standard error, the most strongly regularised",
            "best_trial": best_cv["trial"], "best_value": best_cv["value"],
            "best_standard_error": best_cv["standard_error"], "threshold": threshold,
            "carve_outs": [f.info for f in folds], "seconds": time.perf_counter() - t,
        }
    else:
        chosen = choose(trials)
        if chosen < 0:
            raise TrainerInputError("no trial gave a finite validation metric")
        value, sweeps = trials[chosen]["value"], trials[chosen]["best_sweep"]
    best = trials[chosen]
    flags = task_flags(best["hyperparameters"], sweeps)
    log.info("chosen: trial %d, %s, %d sweeps (%s=%.5f); training it on all the data: %s",
             chosen, _config_text(best["hyperparameters"]), sweeps, key, value, " ".join(flags))
    summary = task.run(final_args(args, best["hyperparameters"], sweeps))
    out = {
        "metric": key, "seed": args.seed, "strategy": "Latin-hypercube random search, then "
        "Gaussian-process expected-improvement proposals (trial 0: the defaults); with K >= 2 folds the "
        "finalists re-scored by K-fold validation and chosen by the one-standard-error rule; "
        "see trainer/tune.py",
        "search_space": space.to_json(), "budget": {
            "trials": args.trials, "max_sweeps": args.max_sweeps, "trial_patience": args.trial_patience,
            "validation_folds": n_folds, "finalists": args.finalists if n_folds > 1 else 0},
        "validation": data.info, "cross_validation": cross, "trials": trials,
        "chosen": {"trial": chosen, "hyperparameters": best["hyperparameters"],
                   "sweeps": sweeps, "value": value, "search_value": best["value"],
                   "standard_error": None if cross is None else best["cross_validation"]["standard_error"],
                   "task_flags": flags},
        "final": {"evaluation": summary.get("evaluation"), "training_summary": task.SUMMARY},
        "timing": {"search_seconds": search_seconds,
                   "cross_validation_seconds": None if cross is None else cross["seconds"],
                   "total_seconds": time.perf_counter() - t_start},
    }
    fileio.write_json(fileio.join(args.output_dir, TUNING), out)
    plot(fileio.join(args.output_dir, PLOT), trials, chosen, key)
    log.info("tuning done in %.0f s (search %.0f s): %s", out["timing"]["total_seconds"],
             search_seconds, fileio.join(args.output_dir, TUNING))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
