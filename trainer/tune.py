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
   sweep's (the first sweep with the highest value); the chosen trial is the one with the
   highest value (the first on ties), and its best sweep is the number of sweeps retrained.
3. *Final model.* The chosen hyperparameters (``--objective``, ``--n_embeds``,
   ``--regularization``, ``--alpha`` or ``--unobserved_weight``, ``--num_epochs`` = the best
   sweep, every other flag as given) go through :func:`trainer.task.run` on all of ``R``: the
   same outputs as a plain ``trainer.task`` run with those flags (factors, vocabularies,
   ``training_summary.json``, ``metrics.json`` with the held-out metrics and the popularity
   baseline when test records exist, ``batch_pred.txt``, the SavedModel), then
   ``tuning.json`` (every trial: hyperparameters, validation metrics per sweep, seconds; the
   chosen trial; the search space; the seed) and ``tuning.png`` (when matplotlib is
   installed; it is not a trainer dependency).

Search strategy (deterministic given ``--seed``)
------------------------------------------------
A seeded random search followed by local refinement, all from one
``numpy.random.default_rng(seed)``:

* trial 0 is the library's defaults (:data:`trainer.hparams.DEFAULTS`), so the search never
  returns something worse on validation than the untuned model;
* trials ``1 .. ceil(N/2) − 1`` draw the objective uniformly from ``--objectives``, ``k``
  log-uniformly in ``[8, 96]`` and, per objective, ``λ`` and ``α`` (implicit) or ``w0``
  (wals) log-uniformly in :class:`SearchSpace`'s ranges;
* the remaining trials perturb the best trial so far (same objective): ``k · 2^N(0, 0.5²)``,
  ``λ · e^N(0, 0.7²)``, ``α`` or ``w0`` ``· e^N(0, 0.7²)``, clipped to the ranges.

Values are rounded to 3 significant digits (``k`` to an integer), so the chosen flags print
exactly. ``--seed`` also seeds every model's initial factors (the same ``--seed`` as
``trainer.task``'s). Given the seed, the data and the machine, the search is deterministic:
the models are (CPU, :meth:`trainer.wals.WALSModel.fit`), and so is the refinement that
depends on their validation values.

The default budget (24 trials of at most 20 sweeps) takes about 2 minutes on the bundled sample
(about 300k interactions; figures in ``BENCHMARKS.md``).
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
    """One draw of the random phase (always the same number of draws from ``rng``)."""
    objective = space.objectives[int(rng.integers(len(space.objectives)))]
    k = int(round(_log_uniform(rng, *space.factors)))
    lam_range, w_range = _ranges(space, objective)
    lam = _round(_log_uniform(rng, *lam_range))
    w = _round(_log_uniform(rng, *w_range))
    return {"objective": objective, "factors": k, "regularization": lam, _weight_key(objective): w}


def refine_config(rng: np.random.Generator, space: SearchSpace, best: dict) -> dict:
    """A perturbation of ``best`` (same objective), clipped to the ranges."""
    objective = best["objective"]
    lam_range, w_range = _ranges(space, objective)
    wk = _weight_key(objective)
    k = int(round(_clip(best["factors"] * 2.0 ** rng.normal(0.0, 0.5), space.factors)))
    lam = _round(_clip(best["regularization"] * math.exp(rng.normal(0.0, 0.7)), lam_range))
    w = _round(_clip(best[wk] * math.exp(rng.normal(0.0, 0.7)), w_range))
    return {"objective": objective, "factors": k, "regularization": lam, wk: w}


# --------------------------------------------------------------------------- validation split
def uniform_hash(seed: int, user: str, item: str) -> float:
    """``BLAKE2b-64(str(seed) ‖ 0x1F ‖ user ‖ 0x1F ‖ item) / 2⁶⁴`` in [0, 1): the pipeline's
    held-out hash (``preprocess/split.py``)."""
    key = str(seed).encode() + _SEPARATOR + user.encode("utf-8") + _SEPARATOR + item.encode("utf-8")
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") / 18446744073709551616.0


def validation_flags(
    train: CSR, users: Sequence[str], items: Sequence[str],
    fraction: float = VALIDATION_FRACTION, seed: int = VALIDATION_SEED,
) -> np.ndarray:
    """One bool per stored cell of ``train`` (CSR order): ``True`` = validation (module doc)."""
    import numpy as np

    rows = train.row_ids()
    u = np.fromiter((uniform_hash(seed, users[i], items[j]) for i, j in zip(rows, train.indices)),
                    dtype=np.float64, count=train.nnz)
    flags = u < fraction
    lens = train.row_lengths()
    flags[np.repeat(lens < 2, lens)] = False
    # users whose every cell drew u < fraction keep the one with the largest u
    n_flagged = np.add.reduceat(flags.astype(np.int64), train.indptr[:-1]) if train.nnz else np.zeros(0)
    n_flagged = np.where(lens > 0, n_flagged, 0)
    for i in np.flatnonzero((lens >= 2) & (n_flagged == lens)):
        s, e = int(train.indptr[i]), int(train.indptr[i + 1])
        flags[s + int(np.argmax(u[s:e]))] = False
    return flags


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


def carve(train: CSR, users: Sequence[str], items: Sequence[str], fraction: float,
          max_users: int) -> Carve:
    """The validation carve-out of the training matrix (module doc)."""
    from trainer.evaluation import keep_rows
    from trainer.sparse import CSR

    held = validation_flags(train, users, items, fraction, VALIDATION_SEED)
    rows = train.row_ids()
    fit = CSR.from_coo(rows[~held], train.indices[~held], train.values[~held], train.shape)
    val_all = CSR.from_coo(rows[held], train.indices[held], train.values[held], train.shape)
    val = keep_rows(val_all, scored_users(val_all, max_users))
    info = {
        "rule": "preprocess/split.py's held_out_flags on raw IDs", "fraction": fraction,
        "seed": VALIDATION_SEED, "train_interactions": train.nnz, "fit_interactions": fit.nnz,
        "validation_interactions": val_all.nnz,
        "validation_users": int((val_all.row_lengths() > 0).sum()),
        "validation_users_scored": int((val.row_lengths() > 0).sum()),
        "validation_interactions_scored": val.nnz, "scored_subset_seed": SUBSET_SEED,
    }
    return Carve(fit, val, info)


# --------------------------------------------------------------------------- trials
def run_trial(args: argparse.Namespace, config: dict, data: Carve, key: str) -> dict:
    """Trains ``config`` on ``data.fit``, evaluating on ``data.val`` after every sweep."""
    import numpy as np

    from trainer.evaluation import best_index, evaluate, evaluations_since_best
    from trainer.wals import WALSModel

    kw = {k: v for k, v in model_kwargs(args).items() if k not in _SEARCHED_KEYWORDS}
    kw.update(config)
    kw["iterations"] = args.max_sweeps
    kw["calculate_training_loss"] = False
    model = WALSModel(**kw)
    curve: list[dict] = []
    eval_seconds = [0.0]

    def on_sweep(st: Any) -> bool:
        t = time.perf_counter()
        m = evaluate(st.user_factors, st.item_factors, data.fit, data.val, k=args.eval_k,
                     batch_size=args.batch_size)
        eval_seconds[0] += time.perf_counter() - t
        curve.append({"sweep": st.sweeps_done, **{k: float(v) for k, v in m.items()}})
        return evaluations_since_best(curve, key) >= args.trial_patience

    t0 = time.perf_counter()
    model.fit(data.fit, callback=on_sweep)
    seconds = time.perf_counter() - t0
    b = best_index(curve, key)
    value = curve[b][key] if b is not None and np.isfinite(curve[b][key]) else None
    return {
        "hyperparameters": config, "validation": curve,
        "best_sweep": None if value is None else curve[b]["sweep"], "value": value,
        "seconds": seconds, "train_seconds": float(sum(h["seconds"] for h in model.history)),
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


def search(args: argparse.Namespace, data: Carve, space: SearchSpace) -> list[dict]:
    """Every trial of the strategy (module doc), in order."""
    import numpy as np

    key = f"{args.metric}@{args.eval_k}"
    rng = np.random.default_rng(args.seed)
    n_random = max(1, math.ceil(args.trials / 2))
    trials: list[dict] = []
    for t in range(args.trials):
        if t == 0 and DEFAULTS.objective in space.objectives:
            config, phase = default_config(), "defaults"
        elif t < n_random or choose(trials) < 0:
            config, phase = random_config(rng, space), "random"
        else:
            config, phase = refine_config(rng, space, trials[choose(trials)]["hyperparameters"]), "refine"
        result = {"trial": t, "phase": phase, **run_trial(args, config, data, key)}
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
    g.add_argument("--validation_fraction", type=float, default=VALIDATION_FRACTION,
                   help="share of each user's training interactions carved out for validation")
    g.add_argument("--validation_users", type=int, default=VALIDATION_MAX_USERS,
                   help="most validation users scored (a fixed hash-chosen subset)")
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
                          ("validation_users", 1), ("topk", 1), ("eval_k", 1)):
        if getattr(args, name) < minimum:
            p.error(f"--{name} must be >= {minimum}, got {getattr(args, name)}")
    if not 0.0 < args.validation_fraction < 1.0:
        p.error(f"--validation_fraction must be in (0, 1), got {args.validation_fraction:g}")
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
    space = SearchSpace(objectives=tuple(args.objectives), max_sweeps=args.max_sweeps)
    key = f"{args.metric}@{args.eval_k}"
    t = time.perf_counter()
    trials = search(args, data, space)
    search_seconds = time.perf_counter() - t
    chosen = choose(trials)
    if chosen < 0:
        raise TrainerInputError("no trial gave a finite validation metric")
    best = trials[chosen]
    flags = task_flags(best["hyperparameters"], best["best_sweep"])
    log.info("chosen: trial %d, %s, %d sweeps (%s=%.5f); training it on all the data: %s",
             chosen, _config_text(best["hyperparameters"]), best["best_sweep"], key,
             best["value"], " ".join(flags))
    summary = task.run(final_args(args, best["hyperparameters"], best["best_sweep"]))
    out = {
        "metric": key, "seed": args.seed, "strategy": "random search, then local refinement "
        "around the best (trial 0: the defaults); see trainer/tune.py",
        "search_space": space.to_json(), "budget": {
            "trials": args.trials, "max_sweeps": args.max_sweeps, "trial_patience": args.trial_patience},
        "validation": data.info, "trials": trials,
        "chosen": {"trial": chosen, "hyperparameters": best["hyperparameters"],
                   "sweeps": best["best_sweep"], "value": best["value"], "task_flags": flags},
        "final": {"evaluation": summary.get("evaluation"), "training_summary": task.SUMMARY},
        "timing": {"search_seconds": search_seconds,
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
