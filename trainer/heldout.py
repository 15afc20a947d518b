"""Held-out evaluation during and after training, and early stopping.

Without early stopping every evaluation uses all held-out users and the reported metrics are
those of the final factors. With early stopping the held-out users are split by
:func:`trainer.evaluation.validation_mask`: the validation half picks the sweep (the first with
the highest metric; the run stops after ``patience`` evaluations without a strictly higher
value) and only the untouched test half is reported, for the restored best factors.

The evaluations and the best factors go into the run's checkpoint
(:class:`trainer.checkpoint.EvaluationState`, saved with the sweep's factors), so ``--resume``
makes the same decisions as an uninterrupted run.

The reported users are also scored by the most-popular baseline
(:func:`trainer.evaluation.evaluate_popularity`), and ``metrics.json`` gets its figures
(``baselines.popularity``) and the model / baseline ratios (``lift``).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from trainer import checkpoint
from trainer.checkpoint import EvaluationState, SweepFactors
from trainer.errors import TrainerInputError
from trainer.evaluation import (
    VALIDATION_SEED,
    best_index,
    evaluate,
    evaluate_popularity,
    evaluations_since_best,
    keep_rows,
    lift,
    metric_key,
    validation_mask,
)
from trainer.monitor import format_metrics, vs_baseline
from trainer.sparse import CSR
from trainer.wals import TrainingState

log = logging.getLogger(__name__)

# ``(prefix, metrics, sweep)``: where the metrics go besides the log (TensorBoard)
MetricsSink = Callable[[str, dict, int], None]


@dataclass
class Result:
    """What :meth:`HeldOut.finish` reports: the content of ``metrics.json``, the factors it
    describes (the best sweep's with early stopping) and the baseline's seconds."""

    metrics: dict
    user_factors: np.ndarray
    item_factors: np.ndarray
    baseline_seconds: float


class HeldOut:
    """Evaluates the factors on held-out interactions (module docstring).

    Parameters
    ----------
    train, test : CSR
        The training and held-out ``nusers × nitems`` matrices.
    k : int
        The ``k`` of every metric@k.
    iterations : int
        The sweeps the run trains (the last one is always evaluated when ``every > 0``).
    every : int
        Evaluate after every ``every`` sweeps (0: only after training; 1 with early stopping).
    early_stopping : {"ndcg", "map", "recall", "precision"}, optional
        Stop when this metric@k on the validation half stops improving (default: no).
    patience : int
        Evaluations without a strictly higher value before stopping.
    batch_size : int
        Users scored per top-k block.
    split : dict, optional
        ``metadata.json``'s split block, copied into ``metrics.json``.
    sink : callable, optional
        Also given every set of metrics (TensorBoard).
    """

    def __init__(
        self, train: CSR, test: CSR, *, k: int, iterations: int, every: int = 0,
        early_stopping: str | None = None, patience: int = 3, batch_size: int = 4096,
        split: dict | None = None, sink: MetricsSink | None = None,
    ) -> None:
        self.train, self.k, self.iterations, self.batch_size = train, k, iterations, batch_size
        self.split, self.sink = split, sink
        self.early = early_stopping is not None
        self.key = metric_key(early_stopping, k) if self.early else None
        self.patience = patience
        self.every = every or (1 if self.early else 0)
        has_test = test.row_lengths() > 0
        self.held_out = {"users": int(has_test.sum()), "interactions": test.nnz}
        self.validation, self.test, self.halves = self._halves(test, has_test)
        self._test_fingerprint = checkpoint.data_fingerprint(test)
        self.evaluations: list[dict] = []
        self.best: SweepFactors | None = None

    def _halves(self, test: CSR, has_test: np.ndarray) -> tuple[CSR | None, CSR, dict | None]:
        """``(validation, reported, halves)``: with early stopping the two halves of the
        held-out users and their sizes, else ``(None, test, None)``."""
        if not self.early:
            return None, test, None
        val = validation_mask(np.arange(test.shape[0])) & has_test
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
        halves = {"seed": VALIDATION_SEED, "validation_users": nval, "test_users": ntest}
        return keep_rows(test, val), keep_rows(test, has_test & ~val), halves

    def settings(self) -> dict:
        """What a resumed run must share with the checkpoint's (part of its fingerprint)."""
        return {"k": self.k, "every": self.every, "metric": self.key, "patience": self.patience,
                "test": self._test_fingerprint}

    # ------------------------------------------------------------------ during training
    def _due(self, sweep: int) -> bool:
        return self.every > 0 and (sweep % self.every == 0 or sweep == self.iterations)

    def _report(self, prefix: str, metrics: dict, sweep: int) -> None:
        if self.sink is not None:
            self.sink(prefix, metrics, sweep)

    def stop_now(self) -> bool:
        """Whether early stopping has ended the run."""
        return self.early and evaluations_since_best(self.evaluations, self.key) >= self.patience

    def after_sweep(self, st: TrainingState) -> bool:
        """Evaluates when due; returns ``True`` when early stopping ends the run."""
        sweep = st.sweeps_done
        if not self._due(sweep) or any(e["sweep"] == sweep for e in self.evaluations):
            return False
        which = "validation" if self.early else "test"
        m = evaluate(st.user_factors, st.item_factors, self.train,
                     self.validation if self.early else self.test, self.k, self.batch_size)
        self.evaluations.append({"sweep": sweep, "set": which, **m})
        log.info("eval after sweep %d (%s, %d users): %s", sweep, which, m["users"], format_metrics(m))
        self._report("validation" if self.early else "eval", m, sweep)
        if self.early and best_index(self.evaluations, self.key) == len(self.evaluations) - 1:
            self.best = SweepFactors(sweep, st.user_factors.copy(), st.item_factors.copy())
        if self.stop_now():
            b = self.evaluations[best_index(self.evaluations, self.key)]
            log.info(
                "early stopping after sweep %d: validation %s has not improved for %d "
                "evaluation(s) since sweep %d (%.6g)",
                sweep, self.key, self.patience, b["sweep"], b[self.key],
            )
            return True
        return False

    def state(self) -> EvaluationState:
        """What the checkpoint keeps (:meth:`restore` takes it back)."""
        return EvaluationState(list(self.evaluations), self.best)

    def restore(self, saved: EvaluationState | None) -> None:
        """Continues from a checkpoint's evaluation state (``None``: the checkpoint has none,
        which its fingerprint only allows when nothing was due before it)."""
        if saved is None:
            return
        if self.early and not all(isinstance(e.get(self.key), (int, float)) for e in saved.evaluations):
            raise TrainerInputError(
                f"--resume: the checkpoint's evaluations lack {self.key}; run without --resume "
                "to start over (this replaces the checkpoint)"
            )
        if self.early and saved.evaluations and saved.best is None:
            raise TrainerInputError(
                "--resume: the checkpoint has evaluations but no best factors; run without "
                "--resume to start over (this replaces the checkpoint)"
            )
        self.evaluations, self.best = list(saved.evaluations), saved.best
        log.info("--resume: %d earlier evaluation(s) restored", len(self.evaluations))

    # ------------------------------------------------------------------ after training
    def finish(self, user_factors: np.ndarray, item_factors: np.ndarray, last_sweep: int) -> Result:
        """Evaluates the reported users on the final factors of sweep ``last_sweep`` (with
        early stopping: on the best factors, which the result then holds) and the
        most-popular baseline on the same users."""
        sweep, factors, early = last_sweep, "final", None
        if self.early and self.best is not None:
            early = self._early_stopping_block(last_sweep)
            sweep, factors = self.best.sweep, "best"
            user_factors = self.best.user_factors.astype(np.float32)
            item_factors = self.best.item_factors.astype(np.float32)
        m = self._final_metrics(user_factors, item_factors, sweep)
        log.info("held-out evaluation of the %s factors (sweep %d, %d test users): %s",
                 factors, sweep, m["users"], format_metrics(m))
        base, seconds = self._baseline(sweep)
        lifts = lift(m, base, self.k)
        log.info("held-out %s", vs_baseline(m, base, lifts, self.k))
        metrics = {
            "k": self.k, "metrics": m, "baselines": {"popularity": base}, "lift": lifts,
            "users": m["users"], "factors": factors, "sweep": sweep, "sweeps_run": last_sweep,
            "held_out": self.held_out, "split": self.split, "early_stopping": early,
            "evaluations": self.evaluations,
        }
        return Result(metrics, user_factors, item_factors, seconds)

    def _early_stopping_block(self, last_sweep: int) -> dict:
        """``metrics.json``'s ``early_stopping`` (and the log line saying what was kept)."""
        b = self.evaluations[best_index(self.evaluations, self.key)]
        stopped = self.stop_now() and last_sweep < self.iterations
        log.info(
            "early stopping: %s %d sweep(s); restored the factors of sweep %d (best "
            "validation %s = %.6g)",
            "stopped after" if stopped else "ran all", last_sweep, self.best.sweep, self.key,
            b[self.key],
        )
        return {
            "metric": self.key, "patience": self.patience, "every": self.every,
            "best_sweep": self.best.sweep, "best_validation": b[self.key],
            "stopped_early": stopped, "last_sweep": last_sweep, **self.halves,
        }

    def _final_metrics(self, user_factors: np.ndarray, item_factors: np.ndarray, sweep: int) -> dict:
        """The reported users' metrics for sweep ``sweep`` (an evaluation of that sweep on
        them is reused)."""
        reused = [e for e in self.evaluations if e["sweep"] == sweep and e["set"] == "test"]
        if reused:
            return {key: val for key, val in reused[0].items() if key not in ("sweep", "set")}
        m = evaluate(user_factors, item_factors, self.train, self.test, self.k, self.batch_size)
        self._report("eval", m, sweep)
        return m

    def _baseline(self, sweep: int) -> tuple[dict, float]:
        """The most-popular baseline on exactly the reported users (the test half with early
        stopping), so that the two sets of figures and their ratio are comparable."""
        t = time.perf_counter()
        base = evaluate_popularity(self.train, self.test, self.k)
        seconds = time.perf_counter() - t
        self._report("baseline/popularity", base, sweep)
        log.info("most-popular baseline (%d test users, %.2f s): %s",
                 base["users"], seconds, format_metrics(base))
        return base, seconds
