"""Seconds per WALS sweep on a synthetic matrix (default: 1M interactions, skewed like real
usage data), for several k and both solvers.

    python -m benchmarks.trainer_speed                       # k = 10 64 128, cholesky and cg
    python -m benchmarks.trainer_speed --k 64 --solvers cg --sweeps 3
    python -m benchmarks.trainer_speed --json out.json
    python -m benchmarks.trainer_speed --input_path output/   # a real preprocessing output

The matrix (:func:`benchmarks.synthetic.zipf_matrix`): ``--users × --items`` with ``--nnz``
distinct (user, item) pairs, item popularity and user activity both Zipf-like (exponent
``--skew``), ratings uniform in [0.05, 1). A sweep is
timed from the start of the row half-sweep to the column factors being ready (the loss, which
the trainer computes once per sweep for logging, is timed separately). The first sweep includes
the one-off ``tf.function`` tracing; the reported number is the median of the later sweeps.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np

from benchmarks.common import machine, versions
from benchmarks.synthetic import zipf_matrix


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--items", type=int, default=20_000)
    p.add_argument("--nnz", type=int, default=1_000_000)
    p.add_argument("--skew", type=float, default=0.8)
    p.add_argument("--k", type=int, nargs="+", default=[10, 64, 128])
    p.add_argument("--solvers", nargs="+", default=["cholesky", "cg"])
    p.add_argument("--cg_steps", type=int, default=3)
    p.add_argument("--sweeps", type=int, default=3)
    p.add_argument("--batch_size", type=int, default=4096)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--input_path", default=None,
                   help="benchmark on this preprocessing output (metadata.json + shards) instead")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()

    import tensorflow as tf

    from trainer.device import default_device
    from trainer.wals import WALSModel, compute_loss, solve_half_sweep

    host = machine()  # before the sweeps: its load average is the one they started under
    t = time.perf_counter()
    if args.input_path:
        from trainer.data import load_training_data
        from trainer.metadata import load_metadata

        m = load_training_data(load_metadata(args.input_path)).user_items
    else:
        m = zipf_matrix(args.users, args.items, args.nnz, args.skew, args.seed)
    lens = m.row_lengths()
    print(
        f"matrix {m.shape[0]} x {m.shape[1]}, nnz {m.nnz} (built in {time.perf_counter() - t:.1f} s); "
        f"row length max {lens.max()}, item popularity max {np.bincount(m.indices).max()}",
        flush=True,
    )
    print(
        f"device {default_device()}, TF {tf.__version__}, CPUs {os.cpu_count()}, "
        f"load average at start {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    results = []
    for solver in args.solvers:
        for k in args.k:
            model = WALSModel(
                factors=k, regularization=0.1, objective="wals", unobserved_weight=0.1,
                solver=solver, cg_steps=args.cg_steps, batch_size=args.batch_size,
            )
            t = time.perf_counter()
            up, ip = model.prepare(m)
            t_plan = time.perf_counter() - t
            u0, v0 = model.initial_factors(*m.shape)
            with tf.device(model._device()):
                u, v = tf.constant(u0), tf.constant(v0)
                times, loss_times, losses = [], [], []
                for _ in range(args.sweeps):
                    t = time.perf_counter()
                    u = solve_half_sweep(v, up, 0.1, 0.1, solver, args.cg_steps, previous=u)
                    v = solve_half_sweep(u, ip, 0.1, 0.1, solver, args.cg_steps, previous=v)
                    v.numpy()
                    times.append(time.perf_counter() - t)
                    t = time.perf_counter()
                    losses.append(compute_loss(u, v, up, 0.1, 0.1)["loss"])
                    loss_times.append(time.perf_counter() - t)
            steady = statistics.median(times[1:]) if len(times) > 1 else times[0]
            r = {
                "solver": solver, "k": k, "seconds_per_sweep": steady, "first_sweep": times[0],
                "all_sweeps": times, "loss_seconds": statistics.median(loss_times),
                "plan_seconds": t_plan, "batches": len(up.batches) + len(ip.batches),
                "losses": losses,
            }
            r["load_average_after"] = os.getloadavg()[0]
            results.append(r)
            print(
                f"{solver:8s} k={k:4d}: {steady:7.2f} s/sweep (first {times[0]:.2f} s incl. tracing), "
                f"loss {r['loss_seconds']:.2f} s, plan {t_plan:.2f} s, {r['batches']} batches, "
                f"loss {losses[0]:.1f} -> {losses[-1]:.1f}",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"args": vars(args), "machine": host, "versions": versions(("tensorflow", "numpy")),
                 "device": default_device(), "results": results},
                f, indent=2,
            )


if __name__ == "__main__":
    main()
