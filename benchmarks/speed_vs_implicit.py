r"""Seconds per WALS sweep and memory: this project's ``WALSModel`` against ``implicit``'s
``AlternatingLeastSquares`` on the same matrix, same objective, same threads, float32.

    .venv/bin/python -m benchmarks.speed_vs_implicit [--scale 1.0] [--ks 32 64 128] [--sweeps 4]
        [--pairs default exact] [--threads 2] [--alpha 10] [--regularization 0.1]
    .venv/bin/python -m benchmarks.speed_vs_implicit --scale 0.05      # smoke run, < 1 min

The matrix is :func:`benchmarks.synthetic.movielens_20m_like` (138,493 × 26,744, 8.63 M
ratings ``r ∈ {0.5, …, 5}`` at ``--scale 1``; users and items × ``scale`` otherwise).

The same objective on both sides (Hu, Koren & Volinsky)
------------------------------------------------------
::

    L(U, V) = Σ_{i,j} W_ij (A_ij − u_i·v_j)² + λ (‖U‖² + ‖V‖²)
    W_ij = 1 + α r_ij,  A_ij = 1   on observed cells;     W_ij = 1,  A_ij = 0   elsewhere

Ours: ``WALSModel(objective="implicit", alpha=α, confidence="linear")`` on the ratings.
``implicit`` uses the stored value ``c`` of a cell as the weight itself (its solvers add
``(c − 1) y yᵀ`` to ``YᵀY + λI`` and ``c y`` to the right-hand side), so it gets the same matrix
with values ``1 + α r`` and ``alpha=1``. Both regularize with plain ``λ I``. A ``check`` run at
a small scale starts both from the same factors and reports how far apart one sweep leaves them
(it is in the JSON), so "same objective" is tested, not assumed. After each fit the objective is
computed by one NumPy float64 function (:func:`objective`) for both libraries' factors.

Pairs (``--pairs``)
-------------------
* ``default``: each library as it comes — ours with its defaults
  (:data:`trainer.hparams.DEFAULTS`: 3 warm-started CG steps; on a CPU the Numba backend,
  :mod:`trainer.cpu_cg`; on a GPU TensorFlow) against ``implicit``'s default, ``use_cg=True``
  (3 warm-started conjugate-gradient steps).
* ``tf_cg``: our CG on the TensorFlow backend (``backend="tensorflow"``, the batched kernels a
  GPU runs) against ``use_cg=True``.
* ``exact``: our exact solver (TensorFlow: batched Cholesky / Woodbury) against
  ``use_cg=False`` (a per-row ``posv``).

What is measured
----------------
A *sweep* (our term) = an *iteration* (implicit's) = all user rows solved, then all item rows.
Both libraries run ``--sweeps`` (4) sweeps from their own seeded start; the figure is the median
of sweeps 2..N (our first sweep traces the ``tf.function``\ s), the objective is the one after
the last sweep.

* Ours: ``model.history[s]["seconds"]`` (from the start of the user half-sweep to the item
  factors being ready), the loss off (the library's default). ``implicit``: its callback's
  per-iteration seconds, measured around exactly its two solver calls.
* Memory: every run is its own worker process (so no run inherits another's allocations). The
  runtime is warmed up first by a one-sweep fit of the matrix's first 2,000 rows with the same
  settings (functions traced, thread pools and kernels made); then glibc's free memory is
  trimmed and the kernel's peak-RSS mark reset (``/proc/self/clear_refs``); the figure is the
  peak RSS during the fit minus the RSS at the reset ("above baseline"). The matrix itself is
  loaded before the reset in both processes. Our plans' device bytes per interaction are in the
  JSON (``plan_bytes``), counted from the plan's tensors after the measurement.
* Threads: ``implicit`` gets ``num_threads=--threads`` and one BLAS thread
  (``OPENBLAS_NUM_THREADS=1``, as implicit recommends: its own OpenMP loop is the parallelism);
  TensorFlow gets ``--threads`` intra-op and inter-op threads, the Numba backend ``--threads``
  Python threads (the process's CPU affinity is set to ``--threads`` cores). The load average before and
  after every run is recorded: other jobs on a shared machine make single numbers noisy.

Results: ``benchmarks/results/speed_vs_implicit.json`` (machine, versions, command, every raw
sweep time, medians, ratios, memory, objectives) and ``speed_vs_implicit.png`` (s/sweep vs k);
with ``--scale`` other than 1 the file names get a ``_scale<scale>`` suffix.

``--device gpu`` runs ours on TensorFlow's GPUs and implicit's ``implicit.gpu.als`` (when the
installed implicit has CUDA support).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

from benchmarks.common import REPO, RESULTS, machine, versions
from benchmarks.synthetic import describe, movielens_20m_like
from trainer.hparams import DEFAULTS
from trainer.sparse import CSR


# --------------------------------------------------------------------------- matrix file
def save_matrix(m: CSR, path: str) -> None:
    np.savez(path, indptr=m.indptr, indices=m.indices, values=m.values, shape=np.array(m.shape))


def load_matrix(path: str) -> CSR:
    z = np.load(path)
    return CSR(z["indptr"], z["indices"], z["values"], tuple(int(s) for s in z["shape"]))


def implicit_csr(m: CSR, alpha: float) -> Any:
    """The scipy CSR implicit fits: the same cells with values ``W = 1 + α r`` (float32)."""
    import scipy.sparse

    data = (1.0 + alpha * m.values.astype(np.float64)).astype(np.float32)
    return scipy.sparse.csr_matrix((data, m.indices, m.indptr), shape=m.shape)


def objective(m: CSR, u: np.ndarray, v: np.ndarray, alpha: float, lam: float) -> float:
    """The shared objective of the module docstring at factors ``u``, ``v``, in float64 NumPy
    (independent of both libraries' code), using ``Σ_all p² = Σ (UᵀU ⊙ VᵀV)``::

        L = Σ_Ω [(1 + α r)(1 − p)² − p²] + Σ (UᵀU ⊙ VᵀV) + λ (‖U‖² + ‖V‖²),   p = u_i·v_j
    """
    u = np.asarray(u, np.float64)
    v = np.asarray(v, np.float64)
    total = float(np.sum((u.T @ u) * (v.T @ v))) + lam * float(np.sum(u * u) + np.sum(v * v))
    rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    for s in range(0, m.nnz, 1 << 17):  # 128 Ki entries at a time: bounded temporaries
        e = slice(s, s + (1 << 17))
        p = np.einsum("ij,ij->i", u[rows[e]], v[m.indices[e]])
        c = 1.0 + alpha * m.values[e].astype(np.float64)
        total += float(np.sum(c * (1.0 - p) ** 2 - p * p))
    return total


def code_version() -> dict:
    """The commit measured and whether trainer/ or benchmarks/ differ from it."""
    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", *a], capture_output=True, text=True, cwd=REPO,
                                  timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    return {"commit": git("rev-parse", "HEAD"),
            "uncommitted_changes": git("status", "--porcelain", "--", "trainer", "benchmarks").splitlines()}


# --------------------------------------------------------------------------- workers
def _env(lib: str, threads: int, device: str) -> dict:
    env = dict(os.environ)
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    if lib == "implicit":
        env["OPENBLAS_NUM_THREADS"] = "1"
        env["MKL_NUM_THREADS"] = "1"
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for ln in f:
                if ln.startswith(field + ":"):
                    return int(ln.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Frees what glibc holds on to, then resets the kernel's peak-RSS mark (``VmHWM``) to
    the current RSS (Linux ≥ 4.0: write 5 to ``/proc/self/clear_refs``)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class _Memory:
    """RSS at the start of a measurement and its peak until :meth:`done`."""

    def __init__(self) -> None:
        self.resettable = _reset_peak_rss()
        self.rss_before = (_status_kib("VmRSS") or 0) * 1024

    def done(self) -> dict:
        peak = _status_kib("VmHWM") if self.resettable else None
        return {
            "rss_before_fit": self.rss_before,
            # VmHWM since the reset; without it, the process's lifetime peak (ru_maxrss)
            "peak_rss": peak * 1024 if peak is not None else
            int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024,
            "peak_rss_is_per_run": peak is not None,
        }


_MATRICES: dict[str, CSR] = {}


def _matrix(path: str) -> CSR:
    if path not in _MATRICES:
        _MATRICES.clear()
        _MATRICES[path] = load_matrix(path)
    return _MATRICES[path]


# pair name -> (ours run, implicit run); a run is (library, solver); ours' "cg_tf" is
# solver="cg" on backend="tensorflow", the other solvers run on the default backend
PAIRS = {
    "default": (("ours", DEFAULTS.solver), ("implicit", "cg")),  # implicit's default: use_cg=True
    "tf_cg": (("ours", "cg_tf"), ("implicit", "cg")),
    "exact": (("ours", "cholesky"), ("implicit", "cholesky")),
}
_OURS = {"cg_tf": ("cg", "tensorflow")}  # run name -> (solver, backend)


def run_ours(spec: dict) -> dict:
    """One ``WALSModel.fit`` of ``1 + repeats`` sweeps; per-sweep seconds from its history."""
    from trainer.device import default_device
    from trainer.wals import WALSModel

    m = _matrix(spec["matrix"])
    # the library's defaults but for the compared hyperparameters (loss off: it is computed
    # below, by the same NumPy function for both libraries, outside the measured window)
    solver, backend = _OURS.get(spec["solver"], (spec["solver"], DEFAULTS.backend))
    model = WALSModel(
        factors=spec["k"], regularization=spec["regularization"], objective="implicit",
        alpha=spec["alpha"], confidence="linear", solver=solver, random_state=0,
        iterations=spec["sweeps"], backend=backend,
    )
    # the runtime warmed up (functions traced, thread pools and kernels made) on a slice of
    # the matrix with the same settings, so that the memory above the baseline is this fit's
    warm = WALSModel(**{**model.hyperparameters(), "iterations": 1})
    warm.fit(m.slice_rows(0, min(m.shape[0], 2000)))
    del warm
    import tensorflow as tf

    gpus = [d for d in model.devices() if "GPU" in d.upper()]
    for d in gpus:  # device memory: TensorFlow's own peak counter, per GPU
        tf.config.experimental.reset_memory_stats(d.replace("/device:", ""))
    mem = _Memory()
    t0 = time.perf_counter()
    c0 = time.process_time()
    # no callback: one would get every sweep's factors copied (TrainingState), which implicit's
    # callback does not pay for; the per-sweep seconds are in the model's history
    model.fit(m)
    wall = time.perf_counter() - t0
    cpu_seconds = time.process_time() - c0
    memory = mem.done()
    if gpus:
        memory["gpu_peak_bytes"] = {
            d: tf.config.experimental.get_memory_info(d.replace("/device:", ""))["peak"]
            for d in gpus}
    sweeps = [float(h["seconds"]) for h in model.history]
    return {
        "sweep_seconds": sweeps,
        "timed_sweeps": sweeps[1:],
        "fit_cpu_seconds": cpu_seconds,
        "setup_seconds": wall - sum(sweeps),
        "fit_wall_seconds": wall,
        **memory,
        "devices": model.devices(),
        "backend": model.backend_in_use(),
        "objective": objective(m, model.user_factors, model.item_factors, spec["alpha"],
                               spec["regularization"]),
        "plan_bytes": _plan_bytes(model, m),
    }


def _plan_bytes(model: Any, m: CSR) -> dict:
    """What the two sweep plans hold on the device (built again after the measurement); on
    the Numba backend, the two orientations' arrays (the users × items one is the input CSR's
    own ``indptr`` / ``indices`` / float32 ratings: ``new_bytes`` leaves it out)."""
    if model.backend_in_use() == "numba":
        from trainer import cpu_cg

        users, items = cpu_cg.orientations(m, np.ones(m.shape[0]), np.ones(m.shape[1]),
                                           model.dtype)
        stored = users.nbytes + items.nbytes
        new = stored - sum(a.nbytes for a in (m.indptr, m.indices, m.values))
        return {"bytes": stored, "bytes_per_interaction": stored / m.nnz, "new_bytes": new,
                "new_bytes_per_interaction": new / m.nnz}
    user_plan, item_plan = model.prepare(m)
    stored = user_plan.stored_bytes() + item_plan.stored_bytes()
    return {"bytes": stored, "bytes_per_interaction": stored / m.nnz,
            "padded_entries": sum(b.shape[0] * b.shape[1] for p in (user_plan, item_plan)
                                  for b in p.batches),
            "batch_shapes": len({b.shape for p in (user_plan, item_plan) for b in p.batches})}


def run_implicit(spec: dict) -> dict:
    """One ``implicit`` fit of ``repeats`` iterations; per-iteration seconds from its
    callback."""
    kw = dict(
        factors=spec["k"], regularization=spec["regularization"], alpha=1.0,
        dtype=np.float32, use_cg=spec["solver"] == "cg", iterations=spec["sweeps"],
        calculate_training_loss=False, random_state=0,
    )
    if spec["device"] == "gpu":
        import implicit.gpu
        import implicit.gpu.als

        if not implicit.gpu.HAS_CUDA:
            return {"skipped": "the installed implicit has no CUDA support"}
        kw.pop("dtype")
        model = implicit.gpu.als.AlternatingLeastSquares(**kw)
        device = "implicit.gpu"
    else:
        from implicit.cpu.als import AlternatingLeastSquares

        model = AlternatingLeastSquares(num_threads=spec["threads"], **kw)
        device = "cpu"
    cui = implicit_csr(_matrix(spec["matrix"]), spec["alpha"])
    warm = type(model)(**{**kw, "iterations": 1}, **(
        {} if spec["device"] == "gpu" else {"num_threads": spec["threads"]}))
    warm.fit(cui[: min(cui.shape[0], 2000)], show_progress=False)  # as ours: a warmed-up runtime
    del warm
    mem = _Memory()
    times: list[float] = []
    cpu: list[float] = []
    t0, c0 = time.perf_counter(), time.process_time()

    def on_iteration(it: int, elapsed: float, loss: Any) -> None:
        times.append(float(elapsed))
        cpu.append(time.process_time())

    model.fit(cui, show_progress=False, callback=on_iteration)
    wall = time.perf_counter() - t0
    memory = mem.done()
    uf, vf = model.user_factors, model.item_factors
    if hasattr(uf, "to_numpy"):  # implicit.gpu matrices
        uf, vf = uf.to_numpy(), vf.to_numpy()
    return {
        "sweep_seconds": times,
        "timed_sweeps": times[1:],
        "cpu_seconds_between_callbacks": np.diff([c0, *cpu]).tolist(),
        "fit_wall_seconds": wall,
        "setup_seconds": wall - sum(times),
        **memory,
        "device": device,
        "objective": objective(_matrix(spec["matrix"]), uf, vf, spec["alpha"],
                               spec["regularization"]),
    }


def run_check(spec: dict) -> dict:
    """Both libraries, one sweep from the same initial factors (ours: ``initial_factors``),
    on ``spec["matrix"]``: max |difference| of the factors, relative to their largest entry."""
    from implicit.cpu.als import AlternatingLeastSquares

    from trainer.wals import WALSModel

    m = _matrix(spec["matrix"])
    out = {}
    for solver in ("cg", "cholesky"):
        ours = WALSModel(
            factors=spec["k"], regularization=spec["regularization"], objective="implicit",
            alpha=spec["alpha"], solver=solver, random_state=0, iterations=1,
        )
        u0, v0 = ours.initial_factors(*m.shape)
        ours.fit(m)
        theirs = AlternatingLeastSquares(
            factors=spec["k"], regularization=spec["regularization"], alpha=1.0,
            dtype=np.float32, use_cg=solver == "cg", iterations=1, num_threads=spec["threads"],
        )
        theirs.user_factors, theirs.item_factors = u0.copy(), v0.copy()
        theirs.fit(implicit_csr(m, spec["alpha"]), show_progress=False)
        out[solver] = {
            "user_factors_max_rel_diff": float(
                np.abs(ours.user_factors - theirs.user_factors).max()
                / np.abs(theirs.user_factors).max()
            ),
            "item_factors_max_rel_diff": float(
                np.abs(ours.item_factors - theirs.item_factors).max()
                / np.abs(theirs.item_factors).max()
            ),
        }
    return out


def serve(lib: str, threads: int) -> None:
    """Worker loop: a ``ready`` line (versions, import seconds), then one JSON result line per
    JSON request line on stdin, until stdin closes."""
    info: dict[str, Any] = versions(("numpy", "tensorflow") if lib == "ours" else ("numpy", "implicit", "scipy"))
    t = time.perf_counter()
    if lib == "ours":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
        # the Numba backend runs one thread per core it may use (trainer.cpu_cg.cpu_threads)
        cores = sorted(os.sched_getaffinity(0))
        if threads < len(cores):
            os.sched_setaffinity(0, cores[:threads])
        import trainer.wals  # noqa: F401
    else:
        import implicit.cpu.als  # noqa: F401
        import scipy  # noqa: F401
    info["import_seconds"] = time.perf_counter() - t
    print(json.dumps({"ready": info}), flush=True)
    handlers = {"ours": run_ours, "implicit": run_implicit, "check": run_check}
    for line in sys.stdin:
        req = json.loads(line)
        print(json.dumps(handlers[req.pop("run")](req)), flush=True)


class Worker:
    """A persistent ``serve`` subprocess for one library (imports once, keeps its own RSS)."""

    def __init__(self, lib: str, threads: int, device: str, log_path: str) -> None:
        self.lib = lib
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.speed_vs_implicit", "--serve", lib, str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, cwd=REPO,
            env=_env(lib, threads, device),
        )
        self.info = self._read()["ready"]

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.log.flush()
            with open(self.log.name) as f:
                raise RuntimeError(f"{self.lib} worker died:\n{f.read()[-4000:]}")
        return json.loads(line)

    def run(self, run: str, spec: dict) -> dict:
        before = os.getloadavg()[0]
        t = time.perf_counter()
        self.proc.stdin.write(json.dumps({"run": run, **spec}) + "\n")
        self.proc.stdin.flush()
        res = self._read()
        res["request_wall_seconds"] = time.perf_counter() - t
        res["load_average_before"] = before
        res["load_average_after"] = os.getloadavg()[0]
        return res

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
        self.log.close()


def _check(w: "Worker", spec: dict) -> dict:
    try:
        return w.run("check", spec)
    finally:
        w.close()


# --------------------------------------------------------------------------- plot
def plot(results: list[dict], ks: list[int], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    style = {("ours", "cg"): ("tab:blue", "-o"), ("implicit", "cg"): ("tab:orange", "-o"),
             ("ours", "cg_tf"): ("tab:green", ":o"),
             ("ours", "cholesky"): ("tab:blue", "--s"), ("implicit", "cholesky"): ("tab:orange", "--s")}
    for (lib, solver), (color, fmt) in style.items():
        pts = [(r["k"], r["median_seconds_per_sweep"]) for r in results
               if r["lib"] == lib and r["solver"] == solver and "median_seconds_per_sweep" in r]
        if not pts:
            continue
        name = {"cg": "CG (3 steps)", "cg_tf": "CG on TensorFlow", "cholesky": "exact"}[solver]
        label = f"{'WALSModel' if lib == 'ours' else 'implicit'} {name}"
        ax.plot([p[0] for p in pts], [p[1] for p in pts], fmt, color=color, label=label)
    ax.set_xlabel("k (factors)")
    ax.set_ylabel("seconds per sweep (median)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(ks)
    ax.set_xticklabels([str(k) for k in ks])
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve"]:
        serve(argv[1], int(argv[2]))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--ks", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--sweeps", type=int, default=4,
                   help="sweeps per fit (>= 2); the first is not timed, the objective is taken "
                   "after the last")
    p.add_argument("--pairs", nargs="+", choices=list(PAIRS), default=["default", "exact"],
                   help="default: each library's default solver; cg: both CG; exact: both exact")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--alpha", type=float, default=10.0)
    p.add_argument("--regularization", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--check_scale", type=float, default=0.01,
                   help="scale of the same-start agreement check (0: skip)")
    p.add_argument("--out", default=None, help="results JSON (default under benchmarks/results/)")
    p.add_argument("--plot", default=None, help="plot PNG (default beside the JSON)")
    args = p.parse_args(argv)
    if args.sweeps < 2:
        p.error("--sweeps must be >= 2")
    suffix = "" if args.scale == 1.0 else f"_scale{args.scale:g}"
    suffix += "" if args.device == "cpu" else f"_{args.device}"
    out = args.out or os.path.join(RESULTS, f"speed_vs_implicit{suffix}.json")
    png = args.plot or os.path.splitext(out)[0] + ".png"
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)

    t_start = time.perf_counter()
    report: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in [".venv/bin/python", "-m",
                                                     "benchmarks.speed_vs_implicit", *argv]),
        "args": vars(args),
        "machine": machine(),
        "code": code_version(),
    }
    print(f"machine: {report['machine']}", flush=True)
    results: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        # every run in a fresh worker (its memory is that run's alone; see module doc)
        def worker(lib: str) -> Worker:
            return Worker(lib, args.threads, args.device, os.path.join(tmp, f"{lib}.log"))

        workers: dict[str, Worker] = {}
        try:
            report["versions"] = {}
            for lib in ("ours", "implicit"):
                w = worker(lib)
                report["versions"][lib] = w.info
                w.close()
            print(f"versions: {report['versions']}", flush=True)
            t = time.perf_counter()
            m = movielens_20m_like(args.seed, args.scale)
            report["matrix"] = {
                "generator": f"movielens_20m_like(seed={args.seed}, scale={args.scale})",
                "generate_seconds": time.perf_counter() - t, **describe(m),
            }
            print(f"matrix: {report['matrix']}", flush=True)
            path = os.path.join(tmp, "matrix.npz")
            save_matrix(m, path)
            del m
            common = {"matrix": path, "threads": args.threads, "alpha": args.alpha,
                      "regularization": args.regularization, "device": args.device}
            runs = sorted({run for pair in args.pairs for run in PAIRS[pair]})
            for k in args.ks:
                for lib, solver in sorted(runs, key=lambda r: (r[1], r[0] != "ours")):
                    spec = {**common, "k": k, "solver": solver, "sweeps": args.sweeps}
                    workers[lib] = worker(lib)
                    r = {"lib": lib, "solver": solver, "k": k, **workers[lib].run(lib, spec)}
                    workers.pop(lib).close()
                    if "timed_sweeps" in r:
                        r["median_seconds_per_sweep"] = statistics.median(r["timed_sweeps"])
                    results.append(r)
                    print(
                        f"k={k:4d} {solver:8s} {lib:8s}: "
                        + (f"{r['median_seconds_per_sweep']:8.3f} s/sweep (sweeps "
                           + ", ".join(f"{s:.3f}" for s in r["sweep_seconds"])
                           + f"), above baseline {(r['peak_rss'] - r['rss_before_fit']) / 2**20:.0f}"
                           + f" MiB, objective {r['objective']:.6g}"
                           if "median_seconds_per_sweep" in r else str(r))
                        + f", load {r['load_average_before']:.1f}->{r['load_average_after']:.1f}",
                        flush=True,
                    )
            if args.check_scale > 0 and args.device == "cpu":  # last: timings stay unaffected
                cpath = os.path.join(tmp, "check.npz")
                save_matrix(movielens_20m_like(args.seed, args.check_scale), cpath)
                report["agreement_check"] = {
                    "what": "one sweep of each library from the same initial factors, k = 16, "
                            "max |ours - implicit| / max |implicit| per factor matrix",
                    "scale": args.check_scale, "k": 16,
                    **_check(worker("ours"), {**common, "matrix": cpath, "k": 16}),
                }
                print(f"agreement: {report['agreement_check']}", flush=True)
        finally:
            for w in workers.values():
                w.close()
    ratios = []
    for k in args.ks:
        for pair in args.pairs:
            o, i = (next(r for r in results if (r["lib"], r["solver"]) == run and r["k"] == k)
                    for run in PAIRS[pair])
            if "median_seconds_per_sweep" in o and "median_seconds_per_sweep" in i:
                above = [(r["peak_rss"] - r["rss_before_fit"]) / 2**20 for r in (o, i)]
                ratios.append({
                    "k": k, "pair": pair, "ours_solver": o["solver"], "implicit_solver": i["solver"],
                    "ours_s_per_sweep": o["median_seconds_per_sweep"],
                    "implicit_s_per_sweep": i["median_seconds_per_sweep"],
                    "ratio_ours_over_implicit": o["median_seconds_per_sweep"] / i["median_seconds_per_sweep"],
                    "ours_peak_above_baseline_mib": above[0],
                    "implicit_peak_above_baseline_mib": above[1],
                    "memory_ratio": above[0] / above[1] if above[1] > 0 else None,
                    "objective_ratio": o["objective"] / i["objective"],
                })
    report["results"] = results
    report["ratios"] = ratios
    report["total_seconds"] = time.perf_counter() - t_start
    report["machine"]["load_average_end"] = os.getloadavg()
    with open(out, "w") as f:
        json.dump(report, f, indent=1)
    mtx = report["matrix"]
    plot(results, args.ks, png,
         f"{mtx['shape'][0]:,} × {mtx['shape'][1]:,}, {mtx['nnz']:,} nnz; {args.threads} threads, "
         f"float32; median of sweeps 2..{args.sweeps}")
    print("\n  k  pair     ours s/sweep  implicit s/sweep  time ratio  MiB above baseline "
          "ours/implicit  memory ratio  objective ratio")
    for r in ratios:
        print(f"{r['k']:4d}  {r['pair']:7s}  {r['ours_s_per_sweep']:12.3f}  "
              f"{r['implicit_s_per_sweep']:16.3f}  {r['ratio_ours_over_implicit']:10.2f}  "
              f"{r['ours_peak_above_baseline_mib']:8.0f} / {r['implicit_peak_above_baseline_mib']:.0f}"
              f"{r['memory_ratio'] or float('nan'):18.2f}  {r['objective_ratio']:15.4f}")
    print(f"wrote {out} and {png} ({report['total_seconds']:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
