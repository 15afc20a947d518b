"""Command line: train WALS on the preprocessing output, write factors, predictions, SavedModel.

    python -m trainer.task --input_path DIR --output_dir DIR [--num_epochs N] [--n_embeds K] ...

``--input_path`` is the preprocessing output directory (holding ``metadata.json``) or the
``metadata.json`` file; both paths may be local or ``gs://``. See ``docs/TRAINER.md`` for the
flags and the files written to ``--output_dir``. Exit status 2 on bad input, with one
``error:`` line saying what is wrong and where; 0 on success.

``--output_dir`` is the trainer's own: it is marked at the first run, a non-empty directory
without the mark is refused, the directory is locked for the whole run
(:func:`trainer.fileio.claim_output_dir`), and the outputs of an earlier run are removed at
the start (:func:`_remove_earlier_outputs`), so every file there belongs to this run.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import platform
import sys
import time
import zipfile
from typing import TYPE_CHECKING, Any, NoReturn, Sequence

import numpy as np

from trainer import __version__, fileio
from trainer.errors import TrainerInputError, one_line

if TYPE_CHECKING:  # annotations only: task.py stays cheap to import for --help
    from trainer.checkpoint import Checkpointer
    from trainer.sparse import CSR
    from trainer.wals import TrainingState, WALSModel

log = logging.getLogger("trainer")

ROW_FACTORS = "row_factors.npy"
COL_FACTORS = "col_factors.npy"
SUMMARY = "training_summary.json"
BATCH_PRED = "batch_pred.txt"
BATCH_PRED_USERS = "batch_pred_users.txt"
EXPORT_DIR = "export"
VOCAB_DIR = "vocab"
METRICS = "metrics.json"
TENSORBOARD_DIR = "tensorboard"
CHECKPOINT_DIR = "checkpoint"  # = trainer.checkpoint.CHECKPOINT_DIR (not imported: --help stays cheap)
EVAL_STATE = "evaluation.json"  # in OUTPUT_DIR/checkpoint: evaluations so far, for --resume
BEST_FACTORS = "best_factors-{:05d}.npz"  # in OUTPUT_DIR/checkpoint: early stopping's best sweep


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (argparse's own prints the multi-line usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see --help)\n")


# float flags: (name, lowest allowed, whether the lowest itself is allowed); all must be finite
_FLOAT_FLAGS = (
    ("regularization", 0.0, False), ("unobserved_weight", 0.0, True), ("alpha", 0.0, True),
    ("epsilon", 0.0, False), ("col_weight_factor", 0.0, True), ("col_weight_exp", -math.inf, True),
)
_INT_FLAGS = (
    ("num_epochs", 1), ("n_embeds", 1), ("topk", 1), ("batch_size", 1), ("cg_steps", 1),
    ("eval_k", 1), ("eval_every", 0), ("early_stopping_patience", 1), ("seed", 0),
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, checked: every numeric flag finite and in range (else one line on
    stderr and exit status 2, before anything is read)."""
    p = _Parser(
        prog="python -m trainer.task",
        description="Train a WALS recommender on the preprocessing output (metadata.json + "
        "TFRecord shards).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    io = p.add_argument_group("paths")
    io.add_argument("--input_path", required=True, help="preprocessing output dir or its metadata.json (local or gs://)")
    io.add_argument("--output_dir", required=True, help="where factors, predictions and the SavedModel go (local or gs://)")
    io.add_argument("--tensorboard_dir", default=None, help="TensorBoard log dir (default: $AIP_TENSORBOARD_LOG_DIR or OUTPUT_DIR/tensorboard)")

    m = p.add_argument_group("model")
    m.add_argument("--num_epochs", type=int, default=10, help="sweeps (each: all rows, then all columns)")
    m.add_argument("--n_embeds", type=int, default=16, help="latent dimension k")
    m.add_argument("--regularization", type=float, default=10.0, help="λ (> 0)")
    m.add_argument("--unobserved_weight", type=float, default=0.01, help="w0, weight of every unobserved cell (objective wals)")
    m.add_argument("--objective", choices=["wals", "implicit"], default="implicit",
                   help="wals: W = w0 + row_w*col_w on observed cells, target = rating; "
                   "implicit: confidence W = 1 + alpha*f(r), target 1, unobserved weight 1")
    m.add_argument("--alpha", type=float, default=10.0, help="implicit: confidence scale α")
    m.add_argument("--confidence", choices=["linear", "log"], default="linear", help="implicit: f(r) = r or log(1 + r/epsilon)")
    m.add_argument("--epsilon", type=float, default=1.0, help="implicit, log confidence: ε")
    m.add_argument("--col_weights", choices=["uniform", "inverse_linear", "inverse_power"], default="uniform",
                   help="wals: per-item weights γ_j: 1, factor/n_j, or n_j^-exp (n_j = item popularity)")
    m.add_argument("--col_weight_factor", type=float, default=130.0, help="γ_j = factor / n_j (inverse_linear)")
    m.add_argument("--col_weight_exp", type=float, default=0.08, help="γ_j = n_j ** -exp (inverse_power)")

    s = p.add_argument_group("solver")
    s.add_argument("--solver", choices=["cholesky", "cg"], default="cholesky", help="exact batched Cholesky, or warm-started conjugate gradient")
    s.add_argument("--cg_steps", type=int, default=3, help="CG iterations per half-sweep (solver cg)")
    s.add_argument("--batch_size", type=int, default=4096, help="max rows per solve batch and per top-k block")
    s.add_argument("--seed", type=int, default=0, help="seed of the initial factors")
    s.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="solver precision (outputs are float32)")
    s.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoint (same flags and data required)")
    s.add_argument("--break_lock", action="store_true",
                   help="gs:// only: take over an output dir whose lock object a killed job left behind")

    e = p.add_argument_group("held-out evaluation (when metadata.json names test_items_for_user shards)")
    e.add_argument("--eval_k", type=int, default=10, help="k of precision/recall/NDCG/MAP@k and coverage@k")
    e.add_argument("--eval_every", type=int, default=0,
                   help="also evaluate after every N sweeps (0: only after training; 1 with early stopping)")
    e.add_argument("--early_stopping_metric", choices=["ndcg", "map", "recall", "precision"], default=None,
                   help="stop when this metric@eval_k on a validation half of the held-out users stops "
                   "improving, keep the best sweep's factors and report the other half (default: off)")
    e.add_argument("--early_stopping_patience", type=int, default=3,
                   help="evaluations without improvement before stopping")

    o = p.add_argument_group("outputs")
    o.add_argument("--topk", type=int, default=10, help="recommendations per user in batch_pred.txt")
    o.add_argument("--no_filter_seen", dest="filter_seen", action="store_false",
                   help="keep items the user already has in batch_pred.txt")
    o.add_argument("--predict_users_for_items", action="store_true",
                   help=f"also write {BATCH_PRED_USERS}: top --topk users per item (targeting)")
    o.add_argument("--no_batch_pred", dest="batch_pred", action="store_false", help=f"skip {BATCH_PRED}")
    o.add_argument("--no_export", dest="export", action="store_false", help="skip the SavedModel")
    o.add_argument("--no_progress", dest="progress", action="store_false", help="no progress bar on a terminal")
    o.add_argument("--log_level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = p.parse_args(argv)
    for name, minimum in _INT_FLAGS:
        if getattr(args, name) < minimum:
            p.error(f"--{name} must be >= {minimum}, got {getattr(args, name)}")
    for name, low, inclusive in _FLOAT_FLAGS:
        v = getattr(args, name)
        if not math.isfinite(v):
            p.error(f"--{name} must be a finite number, got {v}")
        if v < low or (v == low and not inclusive):
            p.error(f"--{name} must be {'>=' if inclusive else '>'} {low:g}, got {v:g}")
    return args


class _Progress:
    """A one-line progress bar on stderr, only when it is a terminal."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self._last = 0.0

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if done < total and now - self._last < 0.1:
            return
        self._last = now
        width = 30
        fill = int(width * done / max(total, 1))
        sys.stderr.write(f"\r{stage} [{'#' * fill}{'.' * (width - fill)}] {done}/{total} batches")
        if done == total:
            sys.stderr.write("\r\033[K")
        sys.stderr.flush()


def _scalar_summary(tag: str, value: float, step: int) -> None:
    """A TensorBoard scalar via the core ``tf.summary.write`` (``tf.summary.scalar`` needs the
    ``tensorboard`` package, which a lean training image may not have)."""
    import tensorflow as tf
    from tensorflow.core.framework import summary_pb2

    meta = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
    )
    tf.summary.write(tag, tf.constant(value, tf.float32), step=step, metadata=meta)


class _HeldOut:
    """Held-out evaluation during and after training (``--eval_*``, ``--early_stopping_*``).

    Without early stopping every evaluation uses all held-out users and the reported metrics
    are those of the final factors. With early stopping the held-out users are split by
    :func:`trainer.evaluation.validation_mask`: the validation half picks the sweep (the first
    with the highest metric; the run stops after ``patience`` evaluations without a strictly
    higher value) and only the untouched test half is reported, for the restored best factors.
    The evaluations and the best factors are kept in the checkpoint directory, so ``--resume``
    makes the same decisions as an uninterrupted run.

    The reported users are also scored by the most-popular baseline
    (:func:`trainer.evaluation.evaluate_popularity`), and ``metrics.json`` gets its figures
    (``baselines.popularity``) and the model / baseline ratios (``lift``).
    """

    def __init__(
        self, args: argparse.Namespace, train: CSR, test: CSR, split: dict | None,
        ckpt: Checkpointer, writer: Any,
    ) -> None:
        from trainer import checkpoint
        from trainer.evaluation import VALIDATION_SEED, keep_rows, metric_key, validation_mask

        self.k = args.eval_k
        self.num_epochs = args.num_epochs
        self.batch_size = args.batch_size
        self.train, self.split, self.writer = train, split, writer
        self.early = args.early_stopping_metric is not None
        self.key = metric_key(args.early_stopping_metric, self.k) if self.early else None
        self.patience = args.early_stopping_patience
        self.every = args.eval_every or (1 if self.early else 0)
        has_test = test.row_lengths() > 0
        self.held_out = {"users": int(has_test.sum()), "interactions": test.nnz}
        if self.early:
            val = validation_mask(np.arange(test.shape[0])) & has_test
            self.validation, self.test = keep_rows(test, val), keep_rows(test, has_test & ~val)
            nval, ntest = int(val.sum()), int((has_test & ~val).sum())
            if nval == 0 or ntest == 0:
                raise TrainerInputError(
                    f"early stopping splits the {int(has_test.sum())} held-out users into a "
                    f"validation and a test half; got {nval} and {ntest}: too few held-out users"
                )
            log.info(
                "early stopping on validation %s (patience %d, evaluated every %d sweep(s)): "
                "%d validation users, %d test users reported",
                self.key, self.patience, self.every, nval, ntest,
            )
            self.halves = {"seed": VALIDATION_SEED, "validation_users": nval, "test_users": ntest}
        else:
            self.validation, self.test, self.halves = None, test, None
        self.evaluations: list[dict] = []
        self.baseline_seconds: float | None = None  # set by finish()
        self.best: tuple[int, np.ndarray, np.ndarray] | None = None  # (sweep, U, V)
        self.ckpt_dir = ckpt.dir
        config = {"k": self.k, "every": self.every, "metric": self.key, "patience": self.patience,
                  "test": checkpoint.data_fingerprint(test), "training": ckpt.fingerprint}
        self.fingerprint = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()

    def start_fresh(self) -> None:
        """A run without --resume: an earlier run's evaluation state must not be picked up."""
        for path in [fileio.join(self.ckpt_dir, EVAL_STATE), *self._best_files()]:
            if fileio.exists(path):
                _remove(path)

    def _best_files(self) -> list[str]:
        import tensorflow as tf

        return tf.io.gfile.glob(fileio.join(self.ckpt_dir, BEST_FACTORS.replace("{:05d}", "*")))

    # ------------------------------------------------------------------ during training
    def _due(self, sweep: int) -> bool:
        return self.every > 0 and (sweep % self.every == 0 or sweep == self.num_epochs)

    def _log_scalars(self, prefix: str, metrics: dict, step: int) -> None:
        with self.writer.as_default(step=step):
            for name, value in metrics.items():
                if "@" in name:
                    _scalar_summary(f"{prefix}/{name}", value, step)
        self.writer.flush()

    def stop_now(self) -> bool:
        from trainer.evaluation import evaluations_since_best

        return self.early and evaluations_since_best(self.evaluations, self.key) >= self.patience

    def after_sweep(self, st: TrainingState) -> bool:
        """Evaluates when due; returns ``True`` when early stopping ends the run."""
        from trainer.evaluation import best_index, evaluate

        sweep = st.sweeps_done
        if not self._due(sweep) or any(e["sweep"] == sweep for e in self.evaluations):
            return False
        which = "validation" if self.early else "test"
        m = evaluate(st.user_factors, st.item_factors, self.train,
                     self.validation if self.early else self.test, self.k, self.batch_size)
        self.evaluations.append({"sweep": sweep, "set": which, **m})
        log.info("eval after sweep %d (%s, %d users): %s", sweep, which, m["users"], _fmt(m))
        self._log_scalars("validation" if self.early else "eval", m, sweep)
        fileio.makedirs(self.ckpt_dir)
        improved = self.early and best_index(self.evaluations, self.key) == len(self.evaluations) - 1
        best_file = fileio.join(self.ckpt_dir, BEST_FACTORS.format(sweep))
        if improved:
            self.best = (sweep, st.user_factors.copy(), st.item_factors.copy())
            # written before evaluation.json names this sweep the best, and the previous best
            # file removed only after: a kill at any moment leaves the named best on disk
            fileio.save_npz(best_file, user_factors=self.best[1], item_factors=self.best[2])
        fileio.write_json(fileio.join(self.ckpt_dir, EVAL_STATE),
                          {"fingerprint": self.fingerprint, "evaluations": self.evaluations})
        if improved:
            for old in self._best_files():
                if fileio.basename(old) != fileio.basename(best_file):
                    _remove(old)
        if self.stop_now():
            b = self.evaluations[best_index(self.evaluations, self.key)]
            log.info(
                "early stopping after sweep %d: validation %s has not improved for %d "
                "evaluation(s) since sweep %d (%.6g)",
                sweep, self.key, self.patience, b["sweep"], b[self.key],
            )
            return True
        return False

    def resume(self, st: TrainingState) -> None:
        """Restores the evaluations up to checkpointed sweep ``st.sweeps_done`` (and replays
        that sweep's evaluation if the run was killed between checkpoint and evaluation)."""
        from trainer.evaluation import best_index

        path = fileio.join(self.ckpt_dir, EVAL_STATE)
        if fileio.exists(path):
            try:
                saved = json.loads(fileio.read_text(path))
                ok = isinstance(saved, dict) and isinstance(saved.get("evaluations"), list) and all(
                    isinstance(e, dict) and isinstance(e.get("sweep"), int)
                    and (self.key is None or isinstance(e.get(self.key), (int, float)))
                    for e in saved["evaluations"])
            except (TrainerInputError, ValueError) as e:
                raise _corrupt_checkpoint(path, str(e)) from e
            if not ok:
                raise _corrupt_checkpoint(path, "not the expected object")
            if saved.get("fingerprint") != self.fingerprint:
                raise TrainerInputError(
                    f"{path} was written with other evaluation flags or held-out data; use a "
                    "fresh --output_dir or drop --resume"
                )
            self.evaluations = [e for e in saved["evaluations"] if e["sweep"] <= st.sweeps_done]
        elif any(self._due(s) for s in range(1, st.sweeps_done)):
            log.warning("--resume: no %s, the evaluations before sweep %d are unknown",
                        path, st.sweeps_done)
        if self.early and self.evaluations:
            b = self.evaluations[best_index(self.evaluations, self.key)]["sweep"]
            path = fileio.join(self.ckpt_dir, BEST_FACTORS.format(b))
            if not fileio.exists(path):
                raise TrainerInputError(f"missing {path} (factors of the best evaluated sweep)")
            try:
                arrays = fileio.load_npz(path)
                u, v = arrays["user_factors"], arrays["item_factors"]
            except TrainerInputError as e:
                raise _corrupt_checkpoint(path, str(e)) from e
            except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
                raise _corrupt_checkpoint(path, "not a NumPy .npz file of factors") from e
            if (u.shape != st.user_factors.shape or v.shape != st.item_factors.shape
                    or not (np.all(np.isfinite(u)) and np.all(np.isfinite(v)))):
                raise _corrupt_checkpoint(path, "wrong shapes or NaN/inf factors")
            self.best = (b, u, v)
        log.info("--resume: %d earlier evaluation(s) restored", len(self.evaluations))
        self.after_sweep(st)

    # ------------------------------------------------------------------ after training
    def finish(self, model: WALSModel) -> dict:
        """Restores the best factors (early stopping) into ``model``, evaluates the reported
        users and returns the content of ``metrics.json``."""
        from trainer.evaluation import best_index, evaluate, evaluate_popularity, lift

        last = model.history[-1]["sweep"]
        early = None
        if self.early and self.best is not None:
            sweep, u, v = self.best
            b = self.evaluations[best_index(self.evaluations, self.key)]
            stopped = self.stop_now()
            early = {
                "metric": self.key, "patience": self.patience, "every": self.every,
                "best_sweep": sweep, "best_validation": b[self.key],
                "stopped_early": stopped and last < self.num_epochs, "last_sweep": last,
                **self.halves,
            }
            model.user_factors = u.astype(np.float32)
            model.item_factors = v.astype(np.float32)
            factors = "best"
            log.info(
                "early stopping: %s %d sweep(s); restored the factors of sweep %d (best "
                "validation %s = %.6g)",
                "stopped after" if early["stopped_early"] else "ran all", last, sweep, self.key,
                b[self.key],
            )
        else:
            sweep, factors = last, "final"
        reused = [e for e in self.evaluations if e["sweep"] == sweep and e["set"] == "test"]
        if reused:
            m = {key: val for key, val in reused[0].items() if key not in ("sweep", "set")}
        else:
            m = evaluate(model.user_factors, model.item_factors, self.train, self.test, self.k,
                         self.batch_size)
            self._log_scalars("eval", m, sweep)
        log.info("held-out evaluation of the %s factors (sweep %d, %d test users): %s",
                 factors, sweep, m["users"], _fmt(m))
        # the most-popular baseline on exactly the reported users (the test half with early
        # stopping), so that the two sets of figures and their ratio are comparable
        t_base = time.perf_counter()
        base = evaluate_popularity(self.train, self.test, self.k)
        self.baseline_seconds = time.perf_counter() - t_base
        self._log_scalars("baseline/popularity", base, sweep)
        lifts = lift(m, base, self.k)
        log.info("most-popular baseline (%d test users, %.2f s): %s",
                 base["users"], self.baseline_seconds, _fmt(base))
        log.info("held-out %s", _vs_baseline(m, base, lifts, self.k))
        return {
            "k": self.k,
            "metrics": m,
            "baselines": {"popularity": base},
            "lift": lifts,
            "users": m["users"],
            "factors": factors,
            "sweep": sweep,
            "sweeps_run": last,
            "held_out": self.held_out,
            "split": self.split,
            "early_stopping": early,
            "evaluations": self.evaluations,
        }


def _corrupt_checkpoint(path: str, why: str) -> TrainerInputError:
    return TrainerInputError(
        f"--resume: {path} is unusable ({why}); run without --resume to start over "
        "(this replaces the checkpoint)"
    )


def _remove(path: str) -> None:
    import tensorflow as tf

    tf.io.gfile.remove(path)


def _fmt(m: dict) -> str:
    return " ".join(f"{key}={val:.6g}" for key, val in m.items() if "@" in key)


def _vs_baseline(
    m: dict, base: dict, lifts: dict, k: int,
    names: Sequence[str] = ("ndcg", "map", "precision", "recall"),
) -> str:
    """``ndcg@10 0.1234 (popularity 0.0500, lift 2.47x), map@10 ...``: the model's metric,
    the most-popular baseline's and their ratio (``n/a`` where undefined)."""
    parts = []
    for name in names:
        key = f"{name}@{k}"
        ratio = lifts.get(key)
        parts.append(f"{key} {m[key]:.4f} (popularity {base[key]:.4f}, "
                     f"lift {'n/a' if ratio is None else f'{ratio:.2f}x'})")
    return ", ".join(parts)


def run(args: argparse.Namespace) -> dict:
    """The whole job; returns the summary written to ``training_summary.json``.

    Checks metadata.json and the vocabularies, claims ``--output_dir`` (marker + lock, held
    until the end), removes an earlier run's outputs there, then reads, trains and writes.
    """
    from trainer.metadata import load_metadata, read_vocabulary

    t_start = time.perf_counter()
    md = load_metadata(args.input_path)
    if args.early_stopping_metric is not None and not md.test_items_for_user:
        raise TrainerInputError(  # before the long read; empty test shards are caught below
            "--early_stopping_metric needs held-out test records (test_items_for_user shards "
            f"in {md.path}); this input has none"
        )
    users = read_vocabulary(md.user_vocabulary, md.nusers, "user")
    items = read_vocabulary(md.item_vocabulary, md.nitems, "item")
    if md.test_items_for_user and args.eval_k > md.nitems:
        raise TrainerInputError(
            f"--eval_k {args.eval_k} is more than the {md.nitems} items: metrics@k are only "
            "defined for k <= nitems"
        )
    # a list cannot be longer than the catalogue, and the top-k buffers grow with k
    topk_items = _clamp_topk(args.topk, md.nitems, "items")
    topk_users = _clamp_topk(args.topk, md.nusers, "users") if args.predict_users_for_items else None

    # before the long read: a second trainer on this dir stops here, at once
    with fileio.claim_output_dir(args.output_dir, args.break_lock) as lock:
        _remove_earlier_outputs(args.output_dir, args.resume)
        return _train_and_write(args, md, users, items, topk_items, topk_users, lock, t_start)


def _clamp_topk(topk: int, n: int, what: str) -> int:
    """``min(topk, n)``, logging when it clamps (``n`` = the number of ``what``)."""
    if topk <= n:
        return topk
    log.info("--topk %d is more than the %d %s: clamped to %d", topk, n, what, n)
    return n


def _remove_earlier_outputs(out: str, resume: bool) -> None:
    """Removes what an earlier run wrote to ``out`` (the trainer's claimed dir), so that no
    output of it survives next to this run's: exactly the names this module writes, plus
    their half-written ``.tmp`` files; with ``--resume`` the checkpoint and the TensorBoard
    log (which the resumed run continues) stay. Other files in the dir are left alone."""
    names = [ROW_FACTORS, COL_FACTORS, SUMMARY, METRICS, BATCH_PRED, BATCH_PRED_USERS]
    names += [n + ".tmp" for n in names] + [EXPORT_DIR, VOCAB_DIR]
    if not resume:
        names += [CHECKPOINT_DIR, TENSORBOARD_DIR]
    removed = [n for n in names if fileio.remove_path(fileio.join(out, n))]
    if removed:
        log.info("removed the outputs of an earlier run in %s: %s", out, ", ".join(removed))


def _rating_cap(md: Any, user_items: CSR) -> tuple[float, str]:
    """The largest rating the model was trained on (fold-in clips to it), and its source."""
    top = float(user_items.values.max())
    if md.rating_cap is not None:
        if top > md.rating_cap:
            log.warning("training ratings reach %g, above metadata.json's rating cap %g: "
                        "using %g", top, md.rating_cap, top)
            return top, "largest training rating"
        return md.rating_cap, "metadata.json rating.cap"
    if not top > 0:
        raise TrainerInputError("every training rating is <= 0: the ratings are engagement "
                                "scores >= 0 with some > 0")
    return top, "largest training rating"


def _train_and_write(
    args: argparse.Namespace, md: Any, users: list[str], items: list[str], topk_items: int,
    topk_users: int | None, lock: fileio.OutputDirLock, t_start: float,
) -> dict:
    """:func:`run` once the output dir is claimed: read, train, write."""
    import tensorflow as tf

    from trainer import checkpoint, export, recommend
    from trainer.data import load_test_data, load_training_data
    from trainer.wals import WALSModel, default_device
    from trainer.weights import Weighting

    data = load_training_data(md)
    test = load_test_data(md, data.user_items)
    t_read = time.perf_counter() - t_start
    log.info(
        "data: %d users x %d items, %d interactions (read in %.1f s)",
        md.nusers, md.nitems, data.user_items.nnz, t_read,
    )
    if test is None or test.nnz == 0:
        log.info("no held-out split: skipping evaluation" if test is None else
                 "held-out split without test records: skipping evaluation")
        if args.early_stopping_metric is not None:
            raise TrainerInputError(
                "--early_stopping_metric needs held-out test records (test_items_for_user "
                f"shards in {md.path}); this input has none"
            )
        test = None
    else:
        log.info("held-out split: %d test interactions of %d users",
                 test.nnz, int(np.count_nonzero(test.row_lengths())))

    weighting = Weighting(
        objective=args.objective,
        unobserved_weight=args.unobserved_weight,
        alpha=args.alpha,
        confidence=args.confidence,
        epsilon=args.epsilon,
        col_weights=args.col_weights,
        col_weight_factor=args.col_weight_factor,
        col_weight_exp=args.col_weight_exp,
    )
    model = WALSModel(
        factors=args.n_embeds,
        regularization=args.regularization,
        weighting=weighting,
        solver=args.solver,
        cg_steps=args.cg_steps,
        batch_size=args.batch_size,
        random_state=args.seed,
        dtype=args.dtype,
    )
    device = default_device()
    log.info("device: %s (GPUs visible: %s)", device, tf.config.list_physical_devices("GPU"))

    out = args.output_dir
    rating_cap, rating_cap_source = _rating_cap(md, data.user_items)
    hp = dict(model.hyperparameters(), num_epochs=args.num_epochs)
    fingerprint = checkpoint.config_fingerprint(
        {k: v for k, v in hp.items() if k != "num_epochs"},
        checkpoint.data_fingerprint(data.user_items),
    )
    ckpt = checkpoint.Checkpointer(out, fingerprint)
    state = None
    if args.resume:
        state = ckpt.load(((md.nusers, args.n_embeds), (md.nitems, args.n_embeds)))
        if state is None:
            log.info("--resume: no checkpoint in %s, starting from scratch", ckpt.dir)
        else:
            log.info("--resume: continuing after sweep %d", state.sweeps_done)
            if state.sweeps_done > args.num_epochs:
                raise TrainerInputError(
                    f"checkpoint has {state.sweeps_done} sweeps, more than --num_epochs={args.num_epochs}"
                )

    tb_dir = args.tensorboard_dir or os.environ.get("AIP_TENSORBOARD_LOG_DIR") or fileio.join(out, TENSORBOARD_DIR)
    writer = tf.summary.create_file_writer(tb_dir)
    heldout = None if test is None else _HeldOut(args, data.user_items, test, md.split, ckpt, writer)
    if heldout is not None and state is None:
        heldout.start_fresh()
    elif heldout is not None:
        heldout.resume(state)
    epochs = args.num_epochs
    if heldout is not None and state is not None and heldout.stop_now():
        epochs = state.sweeps_done  # early stopping had already ended the resumed run
        log.info("--resume: early stopping had ended the run after sweep %d", epochs)

    def on_sweep(st: TrainingState) -> bool:
        lock.check()  # gs://: stop before writing if another run took the dir over
        h = st.history[-1]
        log.info(
            "sweep %d/%d: loss=%.6g rwse=%.6g (%.2f s)",
            h["sweep"], args.num_epochs, h["loss"], h["rwse"], h["seconds"],
        )
        with writer.as_default(step=h["sweep"]):
            for tag in ("loss", "unregularized_loss", "rwse", "seconds"):
                _scalar_summary(tag, h[tag], h["sweep"])
        writer.flush()
        ckpt.save(st)
        # after the checkpoint, so a resume can replay this sweep's evaluation (_HeldOut.resume)
        return heldout is not None and heldout.after_sweep(st)

    t_fit = time.perf_counter()
    model.fit(
        data.user_items, data.item_users, epochs,
        state=state, callback=on_sweep, progress=_Progress(args.progress),
    )
    t_fit = time.perf_counter() - t_fit

    lock.check()
    evaluation = None
    if heldout is not None:
        t_eval = time.perf_counter()
        evaluation = heldout.finish(model)  # with early stopping: model now has the best factors
        fileio.write_json(fileio.join(out, METRICS), evaluation)
        t_eval = time.perf_counter() - t_eval
    writer.close()  # the event file is complete before the lock is given up

    fileio.save_npy(fileio.join(out, ROW_FACTORS), model.user_factors.astype("float32"))
    fileio.save_npy(fileio.join(out, COL_FACTORS), model.item_factors.astype("float32"))
    vocab_dir = fileio.join(out, VOCAB_DIR)
    fileio.makedirs(vocab_dir)
    user_vocab = fileio.join(vocab_dir, "users.txt")
    item_vocab = fileio.join(vocab_dir, "items.txt")
    export.write_vocabulary(user_vocab, users)
    export.write_vocabulary(item_vocab, items)

    t_pred = time.perf_counter()
    if args.batch_pred:
        recommend.write_batch_predictions(
            fileio.join(out, BATCH_PRED), model.user_factors, model.item_factors, users, items,
            topk_items, exclude=data.user_items if args.filter_seen else None,
            batch_size=args.batch_size,
        )
    if args.predict_users_for_items:
        recommend.write_batch_predictions(
            fileio.join(out, BATCH_PRED_USERS), model.item_factors, model.user_factors, items,
            users, topk_users, exclude=data.item_users if args.filter_seen else None,
            batch_size=args.batch_size,
        )
    t_pred = time.perf_counter() - t_pred

    if args.export:
        module = export.build_module(
            model.user_factors, model.item_factors, user_vocab, item_vocab, data.user_items,
            model.col_weights, weighting, args.regularization, rating_cap,
        )
        export.export_saved_model(fileio.join(out, EXPORT_DIR), module)

    final = model.history[-1]
    swept = [h["seconds"] for h in model.history]
    summary = {
        "trainer_version": __version__,
        "hyperparameters": hp,
        "data": {
            "input_path": args.input_path,
            "metadata": md.path,
            "nusers": md.nusers,
            "nitems": md.nitems,
            "ninteractions": data.user_items.nnz,
            "rating_cap": rating_cap,  # fold-in clips ratings to it
            "rating_cap_source": rating_cap_source,
        },
        "final": {k: final[k] for k in ("sweep", "loss", "unregularized_loss", "rwse", "sum_weights")},
        "history": model.history,
        "factors_from_sweep": evaluation["sweep"] if evaluation else final["sweep"],
        "evaluation": None if evaluation is None else {
            key: evaluation[key]
            for key in ("k", "metrics", "baselines", "lift", "users", "factors", "sweep", "early_stopping")
        },
        "timing": {
            "read_seconds": t_read,
            "fit_seconds_this_run": t_fit,
            "mean_seconds_per_sweep": sum(swept) / len(swept),
            "predict_seconds": t_pred,
            "final_evaluation_seconds": t_eval if evaluation else None,  # baseline included
            "baseline_seconds": heldout.baseline_seconds if evaluation else None,
            "total_seconds_this_run": time.perf_counter() - t_start,
        },
        "environment": {
            "device": device,
            "tensorflow": tf.__version__,
            "python": platform.python_version(),
        },
        "outputs": {
            "row_factors": ROW_FACTORS,
            "col_factors": COL_FACTORS,
            "batch_pred": BATCH_PRED if args.batch_pred else None,
            "topk": topk_items,  # --topk, clamped to the number of items
            "batch_pred_users": BATCH_PRED_USERS if args.predict_users_for_items else None,
            "export": EXPORT_DIR if args.export else None,
            "metrics": METRICS if evaluation else None,
        },
    }
    fileio.write_json(fileio.join(out, SUMMARY), summary)
    log.info(
        "done: loss=%.6g rwse=%.6g after %d sweeps%s;%s outputs in %s",
        final["loss"], final["rwse"], final["sweep"],
        "" if summary["factors_from_sweep"] == final["sweep"]
        else f" (outputs hold the factors of sweep {summary['factors_from_sweep']})",
        "" if evaluation is None else " held-out " + _vs_baseline(
            evaluation["metrics"], evaluation["baselines"]["popularity"], evaluation["lift"],
            evaluation["k"], names=("ndcg",)) + ";",
        out,
    )
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        run(args)
    except TrainerInputError as e:
        # one line on stderr (not also a log record: the log goes to stderr too)
        print(f"error: {one_line(str(e))}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
