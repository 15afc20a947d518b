r"""Recommendation quality: this project's WALS trainer against ``implicit``'s ALS, same data,
same split, same metric code, same hyperparameter search budget; and the trainer's defaults.

    .venv/bin/python -m benchmarks.quality_vs_implicit [--datasets ga_export bundled ml100k] [--quick]

Data sets (each through the project's own pipeline, ``python -m preprocess --runner
FnApiRunner ... --test_fraction 0.2``; outputs cached under the gitignored ``data/bench/NAME``
and rebuilt when the pipeline command changes):

* ``ga_export``: the real GA export ``../shared/data/ga_sessions_20170801.csv``
  (``--input_format hits_csv --item_field productSKU``);
* ``bundled``: the bundled GA360 sample ``data/ga_sample/ga_sessions_sample.json``
  (``--input_format ga_json``; generated with ``python -m preprocess.sample_data`` if absent or
  older than its generator). Its generator gives each visitor a few preferred sections (topics)
  and draws reads by taste, popularity within the section and recency, dwell rising with the
  taste (see its docstring), so a per-user model can beat a popularity ranking there;
* ``ml100k``: :func:`benchmarks.synthetic.movielens_100k_like` (seed 0, per-user rank-8
  taste) written by ``python -m benchmarks.synthetic --dataset 100k`` (``--input_format
  interactions_csv``).

Protocol
--------
Both libraries get the identical training matrix ``R`` (``items_for_user`` shards, ratings in
(0, 1]) and test matrix ``T`` (``test_items_for_user``), read with ``trainer.data``.

1. *Validation carve-out (training data only).* ``R`` is split once more with the pipeline's
   own rule, :func:`preprocess.split.held_out_flags`, per user on the raw IDs (from the
   vocabularies), fraction 0.2, seed :data:`VALIDATION_SEED` (the test split used seed 0):
   ``R = R_fit + R_val``. At most :data:`VALIDATION_MAX_USERS` validation users are scored (a
   fixed hash-chosen subset; only the bundled sample has more). ``T`` is never used to choose
   anything, not even to filter: a user's test items stay candidates during validation and
   count as misses there, which is why validation NDCG@10 is well below test NDCG@10 (by the
   same mechanism for both libraries).
2. *Search, same budget.* Each library trains every configuration of its grid (:func:`grids`:
   ``k × λ × α``, the same values and the same number of configurations for both) on ``R_fit``
   for ``S`` sweeps (``--sweeps``, the same for both) and after every sweep computes NDCG@10 on
   ``R_val`` (training items of ``R_fit`` filtered). Identical rule for both: a configuration's
   best sweep is the first sweep with its highest validation NDCG@10; the selected
   configuration is the one with the highest such value (first in grid order on ties).
3. *Test.* The selected configuration is retrained on all of ``R`` for each of ``--seeds``;
   seed 0 is evaluated on ``T`` after every sweep (the plot), and every seed after the selected
   sweep count (chosen on validation). Reported: the seed mean (and spread) of those.
4. *Metric code.* Both models' factors go through :func:`trainer.evaluation.evaluate`
   (precision/recall/NDCG/MAP@10, coverage@10; the user's training items never recommended).
   A popularity ranking (score = number of training users of the item) is scored the same
   way as a baseline.

The two models (the same objective: Hu, Koren & Volinsky)
---------------------------------------------------------
``L = Σ_ij C_ij (P_ij − u_i·v_j)² + λ(‖U‖² + ‖V‖²)`` with ``P = 1, C = 1 + α r`` on observed
cells and ``P = 0, C = 1`` elsewhere.

* Ours: :class:`trainer.wals.WALSModel`, ``WALSModel(objective="implicit", alpha=α)``,
  the library's default solver, float32 (3 warm-started CG steps per row since 2026-12-01;
  BENCHMARKS.md §1's table was measured with the exact batched Cholesky solve, the default
  then).
* ``implicit`` 0.7.3: ``implicit.cpu.als.AlternatingLeastSquares`` (float32, its default
  conjugate gradient, 3 steps per row, ``random_state`` set). Its convention, read from its
  source (``implicit/cpu/als.py``): the stored value ``c`` of a cell, times its ``alpha``
  argument, *is* the confidence (the solver adds ``(c − 1) y yᵀ`` to ``YᵀY + λI`` and ``c y``
  to the right-hand side); so it gets the matrix with values ``1 + α r`` and ``alpha=1``.
  Both regularize with plain ``λ I``. Sweeps are the iterations of one ordinary
  ``fit(iterations=S, callback=...)``; the callback only reads the factors
  (:func:`check_implicit_callback` verifies, per data set, that the factors equal those of a
  fit without callback bit for bit; the result is in the JSON).

Objective study and defaults
----------------------------
* ``ours_wals``: the trainer's other objective (TF1 ``WALSModel``'s: target = the rating,
  weight ``w0 + 1`` on observed cells, ``w0`` elsewhere) on the k = 32 slice of the grid in
  the same units (dividing its loss by ``w0``: ``w0 = 1/α``, ``λ_wals = λ/α``), against the
  same slice of ``ours``: same budget, validation-selected, test-scored.
* Defaults: over ``ours``' validation curves on all data sets, the (configuration, sweep count)
  with the highest mean of ``validation NDCG@10 / best validation NDCG@10 of that data set``;
  then scored on ``T`` next to the previous defaults (:data:`PREVIOUS_DEFAULTS`) and the
  defaults ``trainer/task.py`` had when the benchmark ran (when they differ from both).

Timing is recorded (training seconds per configuration, evaluation excluded) but the machine
is shared, so only the quality numbers are meant to be compared.

Outputs: ``benchmarks/results/quality_vs_implicit.json`` (date, machine, versions, command,
grids, every validation curve, the selections, test metrics, ratios ours/implicit) and
``benchmarks/results/quality_ndcg_per_sweep.png``; ``--quick`` (smaller grid, fewer sweeps,
one seed) writes ``..._quick.json`` / ``..._quick.png``.
"""
from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # implicit's advice: its OpenMP loop is the parallelism
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from benchmarks.common import REPO, RESULTS, machine, versions  # noqa: E402
from trainer.evaluation import evaluate, keep_rows, splitmix64  # noqa: E402
from trainer.sparse import CSR  # noqa: E402

BENCH_DATA = os.path.join(REPO, "data", "bench")
VALIDATION_FRACTION = 0.2
VALIDATION_SEED = 1  # the pipeline's test split uses seed 0
VALIDATION_MAX_USERS = 3000
SUBSAMPLE_SEED = 7
EVAL_K = 10
LIBRARIES = ("implicit", "tensorflow", "numpy", "scipy")  # versions recorded
NDCG = f"ndcg@{EVAL_K}"

# trainer/task.py's defaults before this benchmark (TF1 tutorial objective)
PREVIOUS_DEFAULTS = {"k": 10, "lambda": 0.07, "objective": "wals", "w0": 0.01, "sweeps": 10}

Config = dict[str, Any]
SweepFn = Callable[[int, np.ndarray, np.ndarray], "dict | None"]


# --------------------------------------------------------------------------- data sets
@dataclass(frozen=True)
class DataSet:
    name: str
    description: str
    input_path: str  # relative to the repo
    pipeline_flags: tuple[str, ...]
    make_input: tuple[str, ...] | None = None  # command that creates input_path when missing
    generator: str | None = None  # make_input's source (repo path): an older input is made again


DATASETS: dict[str, DataSet] = {
    "ga_export": DataSet(
        "ga_export",
        "real GA export ../shared/data/ga_sessions_20170801.csv (productSKU items)",
        "../shared/data/ga_sessions_20170801.csv",
        ("--input_format", "hits_csv", "--item_field", "productSKU"),
    ),
    "bundled": DataSet(
        "bundled",
        "bundled GA360 sample (preprocess.sample_data: section tastes, popularity, recency)",
        "data/ga_sample/ga_sessions_sample.json",
        ("--input_format", "ga_json"),
        ("-m", "preprocess.sample_data", "--output", "data/ga_sample/ga_sessions_sample.json"),
        "preprocess/sample_data.py",
    ),
    "ml100k": DataSet(
        "ml100k",
        "MovieLens-100k-shaped synthetic (benchmarks.synthetic.movielens_100k_like, seed 0)",
        "data/bench/ml100k_like.csv",
        ("--input_format", "interactions_csv"),
        ("-m", "benchmarks.synthetic", "--dataset", "100k", "--seed", "0",
         "--out", "data/bench/ml100k_like.csv"),
    ),
}


def pipeline_command(ds: DataSet) -> list[str]:
    return [
        ".venv/bin/python", "-m", "preprocess", "--runner", "FnApiRunner", "--input", ds.input_path,
        *ds.pipeline_flags, "--output_dir", f"data/bench/{ds.name}", "--test_fraction", "0.2",
    ]


def prepare(ds: DataSet) -> tuple[str, list[str]]:
    """Runs the pipeline for ``ds`` unless ``data/bench/NAME`` already holds the output of the
    same command on the current input; returns the output dir and the command."""
    out = os.path.join(BENCH_DATA, ds.name)
    cmd = pipeline_command(ds)
    stamp = os.path.join(BENCH_DATA, f"{ds.name}.command.json")
    input_path = os.path.join(REPO, ds.input_path)
    stale_input = ds.make_input is not None and (
        not os.path.exists(input_path)
        or (ds.generator is not None
            and os.path.getmtime(input_path) < os.path.getmtime(os.path.join(REPO, ds.generator))))
    meta = os.path.join(out, "metadata.json")
    cached = (not stale_input and os.path.exists(meta) and os.path.exists(stamp)
              and (not os.path.exists(input_path) or os.path.getmtime(meta) >= os.path.getmtime(input_path)))
    if cached:  # an output older than its input was made from an older input
        with open(stamp) as f:
            if json.load(f) == cmd:
                return out, cmd
    os.makedirs(BENCH_DATA, exist_ok=True)
    if stale_input:
        print(f"[{ds.name}] creating the input: {shlex.join(ds.make_input)}", flush=True)
        subprocess.run([sys.executable, *ds.make_input], cwd=REPO, check=True)
    print(f"[{ds.name}] preprocessing: {shlex.join(cmd)}", flush=True)
    t = time.perf_counter()
    subprocess.run([sys.executable, *cmd[1:]], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    print(f"[{ds.name}] preprocessed in {time.perf_counter() - t:.0f} s", flush=True)
    with open(stamp, "w") as f:
        json.dump(cmd, f)
    return out, cmd


@dataclass
class Split:
    train: CSR  # R: everything a model may train on
    test: CSR  # T
    fit: CSR  # R_fit (selection)
    val: CSR  # R_val (selection), at most VALIDATION_MAX_USERS users
    info: dict = field(default_factory=dict)


def cap_users(m: CSR, max_users: int, seed: int = SUBSAMPLE_SEED) -> CSR:
    """``m`` with only ``max_users`` of its non-empty rows kept (those with the smallest
    SplitMix64 hash of ``seed · 2³² + row``: a fixed, order-independent subset)."""
    rows = np.flatnonzero(m.row_lengths() > 0)
    if rows.size <= max_users:
        return m
    h = splitmix64(rows.astype(np.uint64) + np.uint64(seed << 32))
    mask = np.zeros(m.shape[0], dtype=bool)
    mask[rows[np.argsort(h, kind="stable")[:max_users]]] = True
    return keep_rows(m, mask)


def load_split(out_dir: str) -> Split:
    """``R``, ``T`` from the pipeline output and the validation carve-out of ``R`` (module doc)."""
    from preprocess.split import held_out_flags
    from trainer.data import load_test_data, load_training_data
    from trainer.metadata import load_metadata, read_vocabulary

    md = load_metadata(out_dir)
    train = load_training_data(md).user_items
    test = load_test_data(md, train)
    if test is None:
        raise SystemExit(f"{out_dir}: no held-out split (run the pipeline with --test_fraction)")
    users = read_vocabulary(md.user_vocabulary, md.nusers, "user")
    items = read_vocabulary(md.item_vocabulary, md.nitems, "item")
    held = np.zeros(train.nnz, dtype=bool)
    lens = train.row_lengths()
    for u in np.flatnonzero(lens >= 2):
        s, e = int(train.indptr[u]), int(train.indptr[u + 1])
        held[s:e] = held_out_flags(
            users[u], [items[j] for j in train.indices[s:e]], VALIDATION_FRACTION, VALIDATION_SEED
        )
    rows = train.row_ids()
    fit = CSR.from_coo(rows[~held], train.indices[~held], train.values[~held], train.shape)
    val_all = CSR.from_coo(rows[held], train.indices[held], train.values[held], train.shape)
    val = cap_users(val_all, VALIDATION_MAX_USERS)
    info = {
        "nusers": train.shape[0], "nitems": train.shape[1], "train_interactions": train.nnz,
        "test_interactions": test.nnz, "test_users": int((test.row_lengths() > 0).sum()),
        "fit_interactions": fit.nnz, "validation_interactions": val_all.nnz,
        "validation_users": int((val_all.row_lengths() > 0).sum()),
        "validation_users_scored": int((val.row_lengths() > 0).sum()),
        "median_items_per_user": float(np.median(lens)),
        "rating_quantiles_10_50_90": [round(float(q), 4) for q in np.quantile(train.values, [0.1, 0.5, 0.9])],
    }
    return Split(train, test, fit, val, info)


# --------------------------------------------------------------------------- the models
def train_ours(
    cfg: Config, train: CSR, sweeps: int, on_sweep: SweepFn, seed: int = 0, threads: int = 0
) -> tuple[list, float]:
    """:class:`trainer.wals.WALSModel` for ``sweeps`` sweeps, ``on_sweep(s, U, V)`` after each;
    returns the per-sweep results and the training seconds (evaluation excluded)."""
    from trainer.wals import WALSModel

    if cfg["objective"] == "implicit":
        weights = dict(objective="implicit", alpha=cfg["alpha"], confidence=cfg.get("confidence", "linear"))
    else:
        weights = dict(objective="wals", unobserved_weight=cfg["w0"],
                       col_weights=cfg.get("col_weights", "uniform"))
    model = WALSModel(
        factors=cfg["k"], regularization=cfg["lambda"], iterations=sweeps, random_state=seed, **weights
    )
    curve: list = []
    model.fit(
        train,
        callback=lambda st: curve.append(on_sweep(st.sweeps_done, st.user_factors, st.item_factors)),
    )
    return curve, float(sum(h["seconds"] for h in model.history))


def implicit_matrix(m: CSR, alpha: float) -> Any:
    """The scipy CSR given to implicit: the same cells with confidence ``1 + α r`` (float32)."""
    import scipy.sparse

    data = (1.0 + alpha * m.values.astype(np.float64)).astype(np.float32)
    return scipy.sparse.csr_matrix((data, m.indices.copy(), m.indptr.copy()), shape=m.shape)


def implicit_model(cfg: Config, sweeps: int, seed: int, threads: int) -> Any:
    from implicit.cpu.als import AlternatingLeastSquares

    return AlternatingLeastSquares(
        factors=cfg["k"], regularization=cfg["lambda"], alpha=1.0, dtype=np.float32, use_cg=True,
        iterations=sweeps, calculate_training_loss=False, num_threads=threads, random_state=seed,
    )


def train_implicit(
    cfg: Config, train: CSR, sweeps: int, on_sweep: SweepFn, seed: int = 0, threads: int = 0
) -> tuple[list, float]:
    """One ordinary ``fit(iterations=sweeps)``; its per-iteration callback evaluates."""
    model = implicit_model(cfg, sweeps, seed, threads)
    curve: list = []
    seconds = [0.0]

    def cb(iteration: int, elapsed: float, loss: Any) -> None:
        seconds[0] += elapsed  # implicit times its two solver calls only
        curve.append(on_sweep(iteration + 1, np.asarray(model.user_factors), np.asarray(model.item_factors)))

    model.fit(implicit_matrix(train, cfg["alpha"]), show_progress=False, callback=cb)
    return curve, seconds[0]


def check_implicit_callback(train: CSR, cfg: Config, sweeps: int, threads: int) -> dict:
    """The evaluating callback must not change what implicit computes: the final factors of
    ``fit`` with it and without it must be identical. (Also reported: ``fit`` called ``sweeps``
    times with ``iterations=1``, which continues from the stored factors; not what we use.)"""
    mat = implicit_matrix(train, cfg["alpha"])
    ref = implicit_model(cfg, sweeps, 0, threads)
    ref.fit(mat, show_progress=False)
    with_cb = implicit_model(cfg, sweeps, 0, threads)
    calls: list[int] = []
    with_cb.fit(
        mat, show_progress=False,
        callback=lambda it, el, loss: calls.append(evaluate(
            np.asarray(with_cb.user_factors), np.asarray(with_cb.item_factors), train,
            cap_users(train, 500), k=EVAL_K,
        )["users"]),
    )
    stepwise = implicit_model(cfg, 1, 0, threads)
    for _ in range(sweeps):
        stepwise.fit(mat, show_progress=False)
    diff = max(np.abs(ref.user_factors - stepwise.user_factors).max(),
               np.abs(ref.item_factors - stepwise.item_factors).max())
    return {
        "config": cfg, "sweeps": sweeps, "callbacks": len(calls),
        "callback_fit_identical_to_plain_fit": bool(
            np.array_equal(ref.user_factors, with_cb.user_factors)
            and np.array_equal(ref.item_factors, with_cb.item_factors)
        ),
        "repeated_single_iteration_fits_max_abs_diff": float(diff),
    }


TRAINERS: dict[str, Callable[..., tuple[list, float]]] = {
    "ours": train_ours,
    "implicit": train_implicit,
    "ours_wals": train_ours,
}


def popularity_metrics(split: Split) -> dict:
    """Score = number of training users of the item, for every user (same metric code)."""
    counts = np.bincount(split.train.indices, minlength=split.train.shape[1]).astype(np.float32)
    u = np.ones((split.train.shape[0], 1), np.float32)
    return evaluate(u, counts[:, None], split.train, split.test, k=EVAL_K)


# --------------------------------------------------------------------------- grids
def grids(quick: bool) -> dict[str, list[Config]]:
    """``ours`` and ``implicit``: the same ``k × λ × α`` values (same count). ``ours_wals``:
    the middle-``k`` slice (k = 32) in the same units (module doc)."""
    if quick:
        ks, lams, alphas, wals_k = [16], [10.0, 100.0], [1.0], 16
    else:
        ks, lams, alphas, wals_k = [16, 32, 64], [1.0, 10.0, 100.0], [1.0, 10.0, 100.0], 32
    combos = list(itertools.product(ks, lams, alphas))
    return {
        "ours": [{"k": k, "lambda": lam, "objective": "implicit", "alpha": a} for k, lam, a in combos],
        "implicit": [{"k": k, "lambda": lam, "alpha": a} for k, lam, a in combos],
        "ours_wals": [
            {"k": k, "lambda": lam / a, "objective": "wals", "w0": 1.0 / a, "grid_lambda": lam, "grid_alpha": a}
            for k, lam, a in combos if k == wals_k
        ],
    }


# --------------------------------------------------------------------------- protocol
def best_sweep(values: Sequence[float]) -> int:
    """1-based index of the first sweep with the highest value (NaN never wins)."""
    vals = [v if np.isfinite(v) else -np.inf for v in values]
    return int(np.argmax(vals)) + 1


def search(lib: str, configs: list[Config], split: Split, sweeps: int, threads: int) -> list[dict]:
    def on_sweep(s: int, u: np.ndarray, v: np.ndarray) -> float:
        return evaluate(u, v, split.fit, split.val, k=EVAL_K)[NDCG]

    rows = []
    for i, cfg in enumerate(configs):
        curve, secs = TRAINERS[lib](cfg, split.fit, sweeps, on_sweep, threads=threads)
        b = best_sweep(curve)
        rows.append({
            "config": cfg, "validation_ndcg": [round(float(c), 6) for c in curve],
            "best_sweep": b, "best_validation_ndcg": float(curve[b - 1]),
            "train_seconds": round(secs, 3),
        })
        print(f"  {lib:9s} {i + 1:2d}/{len(configs)} {_cfg_text(cfg)}: val {NDCG} "
              f"{curve[b - 1]:.4f} @ sweep {b} ({secs:.1f} s)", flush=True)
    return rows


def select(rows: list[dict]) -> dict:
    """The first row with the highest best validation NDCG@10."""
    vals = [r["best_validation_ndcg"] if np.isfinite(r["best_validation_ndcg"]) else -np.inf for r in rows]
    return rows[int(np.argmax(vals))]


def test_run(
    lib: str, cfg: Config, split: Split, sweeps: int, seeds: Sequence[int], threads: int,
    curve_sweeps: int | None = None,
) -> dict:
    """Retrains ``cfg`` on all of ``R`` for ``sweeps`` sweeps per seed and scores it on ``T``;
    with ``curve_sweeps`` the first seed runs that many sweeps, scored after each."""
    per_seed = []
    for n, seed in enumerate(seeds):
        total = curve_sweeps if (curve_sweeps and n == 0) else sweeps

        def on_sweep(s: int, u: np.ndarray, v: np.ndarray) -> dict | None:
            if s == sweeps or (curve_sweeps and n == 0):
                return evaluate(u, v, split.train, split.test, k=EVAL_K)
            return None

        curve, secs = TRAINERS[lib](cfg, split.train, total, on_sweep, seed=seed, threads=threads)
        rec = {"seed": seed, "metrics": curve[sweeps - 1], "train_seconds": round(secs, 3)}
        if curve_sweeps and n == 0:
            rec["test_ndcg_per_sweep"] = [round(c[NDCG], 6) for c in curve]
        per_seed.append(rec)
    keys = [k for k in per_seed[0]["metrics"] if k != "users"]
    return {
        "config": cfg, "sweeps": sweeps, "seeds": list(seeds),
        "mean": {k: float(np.mean([p["metrics"][k] for p in per_seed])) for k in keys},
        "std": {k: float(np.std([p["metrics"][k] for p in per_seed])) for k in keys},
        "users": per_seed[0]["metrics"]["users"], "per_seed": per_seed,
    }


def choose_defaults(searches: dict[str, list[dict]]) -> dict:
    """Over ``ours``' validation curves on every data set: the (configuration, sweeps) with the
    highest mean of NDCG@10 / (best NDCG@10 of that data set)."""
    names = list(searches)
    configs = [r["config"] for r in searches[names[0]]]
    nsweeps = len(searches[names[0]][0]["validation_ndcg"])
    rel = np.zeros((len(names), len(configs), nsweeps))
    for d, name in enumerate(names):
        vals = np.array([r["validation_ndcg"] for r in searches[name]])
        rel[d] = vals / np.nanmax(vals)
    mean = rel.mean(axis=0)
    order = np.argsort(-mean, axis=None, kind="stable")
    top = []
    for flat in order[:8]:
        c, s = np.unravel_index(flat, mean.shape)
        top.append({"config": configs[c], "sweeps": int(s) + 1, "mean_relative": float(mean[c, s]),
                    "min_relative": float(rel[:, c, s].min()),
                    "relative": {n: float(rel[d, c, s]) for d, n in enumerate(names)}})
    return {"rule": "argmax over (config, sweeps) of mean over data sets of validation NDCG@10 / "
                    "best validation NDCG@10 of the data set", "datasets": names,
            "chosen": top[0], "top": top}


def task_defaults() -> Config:
    """The defaults ``python -m trainer.task`` has now (read from its argument parser)."""
    from trainer import task

    a = task.parse_args(["--input_path", "x", "--output_dir", "y"])
    cfg: Config = {"k": a.n_embeds, "lambda": a.regularization, "objective": a.objective}
    if a.objective == "implicit":
        cfg["alpha"] = a.alpha
        if a.confidence != "linear":
            cfg["confidence"] = a.confidence  # (log confidence's epsilon is not passed on)
    else:
        cfg["w0"] = a.unobserved_weight
        if a.col_weights != "uniform":
            cfg["col_weights"] = a.col_weights  # (with the Weighting defaults of its parameters)
    return {**cfg, "sweeps": a.num_epochs}


# --------------------------------------------------------------------------- report
def _cfg_text(cfg: Config) -> str:
    if cfg.get("objective") == "wals":
        return f"wals k={cfg['k']} λ={cfg['lambda']:g} w0={cfg['w0']:g}"
    return f"k={cfg['k']} λ={cfg['lambda']:g} α={cfg['alpha']:g}"


def plot(report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["datasets"])
    fig, axes = plt.subplots(1, len(names), figsize=(5.0 * len(names), 4.3), squeeze=False)
    for ax, name in zip(axes[0], names):
        d = report["datasets"][name]
        for lib, color in (("ours", "tab:blue"), ("implicit", "tab:orange")):
            t = d["test"][lib]
            y = t["per_seed"][0]["test_ndcg_per_sweep"]
            x = np.arange(1, len(y) + 1)
            ax.plot(x, y, color=color, marker="o", ms=3,
                    label=f"{'ours (WALSModel)' if lib == 'ours' else 'implicit'}: {_cfg_text(t['config'])}")
            ax.axvline(t["sweeps"], color=color, ls=":", lw=1.2)
        ax.axhline(d["popularity"][NDCG], color="gray", ls="--", lw=1, label="popularity")
        ax.set_title(f"{name} ({d['data']['nusers']:,} users × {d['data']['nitems']:,} items)", fontsize=10)
        ax.set_xlabel("sweep (ALS iteration)")
        ax.set_ylabel(f"test NDCG@{EVAL_K}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("Test NDCG@10 per sweep (seed 0) of the configuration each library selected on "
                 "validation; dotted: the selected sweep count", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    p.add_argument("--quick", action="store_true", help="smaller grid, fewer sweeps, one seed (< 3 min)")
    p.add_argument("--sweeps", type=int, default=None, help="max sweeps per configuration (both libraries)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds of the test retraining")
    p.add_argument("--threads", type=int, default=0, help="implicit num_threads (0: all cores)")
    args = p.parse_args(argv)
    sweeps = args.sweeps or (4 if args.quick else 10)
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    suffix = "_quick" if args.quick else ""
    grid = grids(args.quick)
    assert len(grid["ours"]) == len(grid["implicit"])
    t_start = time.perf_counter()
    report: dict[str, Any] = {
        "benchmark": "quality_vs_implicit",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([".venv/bin/python", "-m", "benchmarks.quality_vs_implicit",
                               *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine(), "versions": versions(LIBRARIES),
        "protocol": {
            "metric": NDCG, "max_sweeps": sweeps, "test_seeds": list(seeds),
            "configs_per_library": len(grid["ours"]),
            "validation": f"preprocess.split.held_out_flags on the training matrix, fraction "
                          f"{VALIDATION_FRACTION}, seed {VALIDATION_SEED}; at most "
                          f"{VALIDATION_MAX_USERS} validation users scored",
            "selection": "per config: first sweep with the highest validation NDCG@10; config: the "
                         "highest such value; retrained on the full training matrix, test metrics "
                         "after the selected sweep count, mean over seeds",
            "ours": "trainer.wals.WALSModel, Weighting(objective='implicit', alpha), cholesky, float32",
            "implicit": "implicit.cpu.als.AlternatingLeastSquares(use_cg=True, dtype=float32, "
                        "alpha=1) on values 1 + alpha*r (confidence C = 1 + alpha r)",
        },
        "grids": grid, "datasets": {},
    }
    splits: dict[str, Split] = {}
    for name in args.datasets:
        ds = DATASETS[name]
        out_dir, cmd = prepare(ds)
        t = time.perf_counter()
        split = splits[name] = load_split(out_dir)
        print(f"[{name}] loaded in {time.perf_counter() - t:.0f} s: {split.info}", flush=True)
        entry: dict[str, Any] = {"description": ds.description, "pipeline_command": shlex.join(cmd),
                                 "data": split.info, "popularity": popularity_metrics(split),
                                 "search": {}, "selected": {}, "test": {}, "seconds": {}}
        for lib in ("ours", "implicit", "ours_wals"):
            t = time.perf_counter()
            rows = entry["search"][lib] = search(lib, grid[lib], split, sweeps, args.threads)
            sel = select(rows)
            entry["selected"][lib] = {"config": sel["config"], "sweeps": sel["best_sweep"],
                                      "validation_ndcg": sel["best_validation_ndcg"]}
            curve = sweeps if lib != "ours_wals" else None
            entry["test"][lib] = test_run(lib, sel["config"], split, sel["best_sweep"], seeds,
                                          args.threads, curve_sweeps=curve)
            entry["seconds"][lib] = round(time.perf_counter() - t, 1)
            print(f"[{name}] {lib}: selected {_cfg_text(sel['config'])} @ {sel['best_sweep']} "
                  f"sweeps (val {sel['best_validation_ndcg']:.4f}); test {NDCG} "
                  f"{entry['test'][lib]['mean'][NDCG]:.4f} ({entry['seconds'][lib]:.0f} s)", flush=True)
        # the objective study: ours_wals against the same k slice of ours (same budget)
        wk = grid["ours_wals"][0]["k"]
        same = select([r for r in entry["search"]["ours"] if r["config"]["k"] == wk])
        entry["objective_study"] = {
            "k": wk, "configs_each": len(grid["ours_wals"]),
            "implicit_objective": {"config": same["config"], "sweeps": same["best_sweep"],
                                   "validation_ndcg": same["best_validation_ndcg"]},
            "wals_objective": entry["selected"]["ours_wals"],
        }
        o, i = entry["test"]["ours"]["mean"][NDCG], entry["test"]["implicit"]["mean"][NDCG]
        entry["ratio_ours_over_implicit_ndcg@10"] = o / i if i > 0 else float("nan")
        entry["implicit_callback_check"] = check_implicit_callback(
            split.fit, grid["implicit"][0], 3, args.threads
        )
        report["datasets"][name] = entry

    # defaults: chosen on validation curves of all data sets, then scored on test
    defaults = choose_defaults({n: d["search"]["ours"] for n, d in report["datasets"].items()})
    chosen = {**defaults["chosen"]["config"], "sweeps": defaults["chosen"]["sweeps"]}
    current = task_defaults()
    candidates = {"chosen": chosen, "previous": PREVIOUS_DEFAULTS, "trainer_task_at_run_time": current}
    defaults["test"] = {}
    for name, split in splits.items():
        defaults["test"][name] = {}
        for label, cfg in candidates.items():
            if label == "trainer_task_at_run_time" and cfg in (chosen, PREVIOUS_DEFAULTS):
                continue
            c = {k: v for k, v in cfg.items() if k != "sweeps"}
            r = test_run("ours", c, split, cfg["sweeps"], seeds, args.threads)
            defaults["test"][name][label] = {"config": cfg, "mean": r["mean"], "std": r["std"]}
            print(f"[defaults] {name} {label} {cfg}: test {NDCG} {r['mean'][NDCG]:.4f}", flush=True)
    defaults["trainer_task_at_run_time"] = current
    report["defaults"] = defaults

    report["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    report["total_seconds"] = round(time.perf_counter() - t_start, 1)
    os.makedirs(RESULTS, exist_ok=True)
    jpath = os.path.join(RESULTS, f"quality_vs_implicit{suffix}.json")
    with open(jpath, "w") as f:
        json.dump(report, f, indent=1)
    ppath = os.path.join(RESULTS, f"quality_ndcg_per_sweep{suffix}.png")
    plot(report, ppath)
    print(f"wrote {jpath} and {ppath} ({report['total_seconds']:.0f} s)")
    for name, d in report["datasets"].items():
        print(f"{name}: test {NDCG} ours {d['test']['ours']['mean'][NDCG]:.4f} implicit "
              f"{d['test']['implicit']['mean'][NDCG]:.4f} ratio "
              f"{d['ratio_ours_over_implicit_ndcg@10']:.3f}; wals objective "
              f"{d['test']['ours_wals']['mean'][NDCG]:.4f}; popularity {d['popularity'][NDCG]:.4f}")
    print(f"defaults chosen: {chosen}")


if __name__ == "__main__":
    main()
