"""``python -m trainer.tune`` (default budget, chosen on a validation carve-out of the training
records) against ``implicit``'s best of an 18-point grid chosen on the test set itself.

    .venv/bin/python -m benchmarks.tune_vs_implicit [--datasets ga_export bundled ml100k] [--seeds 0]

Data sets: the pipeline outputs that ``benchmarks/quality_vs_implicit.py`` caches under
``data/bench/NAME`` (run it first; each has ``test_items_for_user`` records, test fraction
0.2).

* *Ours.* ``python -m trainer.tune --input_path data/bench/NAME --seed S`` with its default
  budget, in a subprocess (wall seconds recorded); its ``training_summary.json`` gives the
  test metrics of the retrained chosen model. Also the untuned defaults
  (``python -m trainer.task`` with no model flag, same seed) for reference.
* *implicit* 0.7 (``implicit.cpu.als.AlternatingLeastSquares``: float32, its default
  conjugate gradient, 15 iterations, ``random_state=0``) on the same training matrix ``R``
  with values ``1 + α r`` and ``alpha=1`` (its stored value times ``alpha`` is the
  confidence; see ``benchmarks/quality_vs_implicit.py``), for every point of
  ``k ∈ {32, 64} × λ ∈ {0.1, 1, 10} × α ∈ {1, 10, 40}``. Its reported figure is the highest
  test NDCG@10 after the 15 iterations over the 18 points: chosen on the test set, an
  advantage the tuner does not get. Also recorded: the highest over the 18 points *and* over
  the iterations 1..15 (a still larger advantage).
* Both scored by :func:`trainer.evaluation.evaluate` (training items never recommended) on
  the same test matrix ``T``.

The figure of merit is ``ours / implicit`` (target ≥ 0.98). Output:
``benchmarks/results/tune_vs_implicit.json``.
"""
from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from benchmarks.common import REPO, RESULTS, machine, versions  # noqa: E402
from trainer.evaluation import evaluate  # noqa: E402
from trainer.sparse import CSR  # noqa: E402

DATASETS = ("ga_export", "bundled", "ml100k")
GRID = {"k": (32, 64), "lambda": (0.1, 1.0, 10.0), "alpha": (1.0, 10.0, 40.0)}
ITERATIONS = 15
NDCG = "ndcg@10"


def load(name: str) -> tuple[CSR, CSR]:
    """``R`` and ``T`` of ``data/bench/NAME``."""
    from trainer.data import load_test_data, load_training_data
    from trainer.metadata import load_metadata

    md = load_metadata(os.path.join(REPO, "data", "bench", name))
    train = load_training_data(md).user_items
    test = load_test_data(md, train)
    if test is None:
        raise SystemExit(f"data/bench/{name}: no test records")
    return train, test


def implicit_grid(train: CSR, test: CSR) -> list[dict]:
    """Every grid point: test NDCG@10 after each of the 15 iterations, and training seconds."""
    import scipy.sparse
    from implicit.cpu.als import AlternatingLeastSquares

    out = []
    for k, lam, alpha in itertools.product(GRID["k"], GRID["lambda"], GRID["alpha"]):
        data = (1.0 + alpha * train.values.astype(np.float64)).astype(np.float32)
        mat = scipy.sparse.csr_matrix((data, train.indices.copy(), train.indptr.copy()), shape=train.shape)
        model = AlternatingLeastSquares(
            factors=k, regularization=lam, alpha=1.0, dtype=np.float32, iterations=ITERATIONS,
            calculate_training_loss=False, random_state=0,
        )
        curve: list[float] = []
        seconds = [0.0]

        def cb(iteration: int, elapsed: float, loss: Any) -> None:
            seconds[0] += elapsed
            m = evaluate(np.asarray(model.user_factors), np.asarray(model.item_factors), train, test)
            curve.append(m[NDCG])

        model.fit(mat, show_progress=False, callback=cb)
        out.append({"k": k, "lambda": lam, "alpha": alpha, "test_ndcg_per_iteration": curve,
                    "test_ndcg": curve[-1], "train_seconds": seconds[0]})
        print(f"  implicit k={k} λ={lam:g} α={alpha:g}: test {NDCG} {curve[-1]:.4f} "
              f"(best iteration {1 + int(np.argmax(curve))}: {max(curve):.4f})", flush=True)
    return out


def run_module(module: str, args: list[str], out_dir: str) -> tuple[dict, float]:
    """``python -m MODULE ARGS --output_dir OUT_DIR``: its training_summary.json and wall s."""
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", module, *args, "--output_dir", out_dir, "--no_export",
                    "--no_batch_pred", "--no_progress", "--log_level", "WARNING"],
                   cwd=REPO, check=True)
    wall = time.perf_counter() - t
    with open(os.path.join(out_dir, "training_summary.json")) as f:
        return json.load(f), wall


def bench(name: str, seeds: list[int]) -> dict:
    print(f"[{name}]", flush=True)
    train, test = load(name)
    inp = ["--input_path", os.path.join("data", "bench", name)]
    ours = []
    with tempfile.TemporaryDirectory() as tmp:
        for s in seeds:
            summ, wall = run_module("trainer.tune", [*inp, "--seed", str(s)], os.path.join(tmp, f"tune{s}"))
            with open(os.path.join(tmp, f"tune{s}", "tuning.json")) as f:
                tuning = json.load(f)
            ours.append({"seed": s, "test": summ["evaluation"]["metrics"], "wall_seconds": wall,
                         "chosen": tuning["chosen"], "search_seconds": tuning["timing"]["search_seconds"],
                         "timing": tuning["timing"], "budget": tuning["budget"],
                         "validation": tuning["validation"],
                         "cross_validation": tuning.get("cross_validation")})
            print(f"  tuned (seed {s}): test {NDCG} {summ['evaluation']['metrics'][NDCG]:.4f}, "
                  f"{wall:.0f} s, chosen {tuning['chosen']['task_flags']}", flush=True)
        dsum, dwall = run_module("trainer.task", [*inp, "--seed", str(seeds[0])], os.path.join(tmp, "default"))
    default = {"test": dsum["evaluation"]["metrics"], "wall_seconds": dwall,
               "popularity": dsum["evaluation"]["baselines"]["popularity"]}
    grid = implicit_grid(train, test)
    best = max(grid, key=lambda g: g["test_ndcg"])
    best_any = max(max(g["test_ndcg_per_iteration"]) for g in grid)
    ours_mean = float(np.mean([o["test"][NDCG] for o in ours]))
    res = {
        "nusers": train.shape[0], "nitems": train.shape[1], "train_interactions": train.nnz,
        "test_interactions": test.nnz, "ours_tuned": ours, "ours_tuned_mean_test_ndcg": ours_mean,
        "ours_defaults": default, "implicit_grid": grid,
        "implicit_best_on_test": {k: best[k] for k in ("k", "lambda", "alpha", "test_ndcg")},
        "implicit_best_on_test_any_iteration": best_any,
        "ratio_tuned_over_implicit_best": ours_mean / best["test_ndcg"],
        "ratio_tuned_over_implicit_best_any_iteration": ours_mean / best_any,
        "ratio_defaults_over_implicit_best": default["test"][NDCG] / best["test_ndcg"],
    }
    print(f"[{name}] tuned {ours_mean:.4f} / implicit best-on-test {best['test_ndcg']:.4f} = "
          f"{res['ratio_tuned_over_implicit_best']:.3f} (defaults {default['test'][NDCG]:.4f})", flush=True)
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.tune_vs_implicit")
    p.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--out", default=os.path.join(RESULTS, "tune_vs_implicit.json"))
    args = p.parse_args(argv)
    started = machine()
    results = {name: bench(name, args.seeds) for name in args.datasets}
    out = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.executable), "-m", "benchmarks.tune_vs_implicit", *(argv or sys.argv[1:])]),
        "machine_at_start": started, "machine_at_end": machine(),
        "versions": versions(("implicit", "tensorflow", "numpy", "scipy")),
        "grid": GRID, "implicit_iterations": ITERATIONS, "seeds": args.seeds, "datasets": results,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
