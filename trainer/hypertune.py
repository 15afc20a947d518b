"""One trial of a Vertex AI hyperparameter-tuning job:

    python -m trainer.hypertune --input_path DIR --output_dir DIR [--hypertune_metric ndcg]
        [any trainer.task flag but --resume, --early_stopping_metric, --eval_every]

(``run_training.sh --hptune`` runs it in every trial; Vertex AI appends the trial's values as
``--n_embeds=37 --regularization=12.5 ...``, read like any flag, the last value winning.)
A separate entry point, not a ``trainer.task`` flag: this module builds on :mod:`trainer.tune`,
which builds on :mod:`trainer.task`, so ``trainer.task`` must not depend on it.

A trial trains on the training records minus :mod:`trainer.tune`'s validation carve-out
(:func:`trainer.tune.carve` with its defaults: fraction :data:`trainer.tune.VALIDATION_FRACTION`,
seed :data:`trainer.tune.VALIDATION_SEED`, at most :data:`trainer.tune.VALIDATION_MAX_USERS`
scored users), for exactly ``--num_epochs`` sweeps, then computes ``METRIC@eval_k`` on the
carved-out validation cells **after the final sweep** (:func:`trainer.evaluation.evaluate`;
the fitted items are never recommended) and reports it the way the ``cloudml-hypertune``
package does (:func:`report`). The held-out test records (``test_items_for_user``) are never
read.

Outputs go to ``$AIP_MODEL_DIR`` when set (Vertex AI sets it to
``<baseOutputDirectory>/<trial id>/model/`` for a trial, so trials never share a directory or
its lock), else to ``--output_dir``: the factors trained on the fit part
(``row_factors.npy``, ``col_factors.npy``, float32) and ``hypertune.json`` (the value, all
metrics, the hyperparameters, the carve-out's counts). No predictions, no SavedModel: a trial's
model has not seen the validation cells; train the chosen flags with a plain run.

Selection. A trial is scored on the single carve-out, which is fold 0 of
:func:`trainer.tune.carve_folds` with 5 folds, i.e. exactly the carve-out the local tuner
searches on. Vertex AI then picks the trial with the highest reported value; it does not apply
``trainer.tune``'s K-fold re-scoring and one-standard-error rule, which the local tuner uses
when the carve-out scores fewer than 5,000 users. On such small data the local tuner runs in
a minute or two and is the better choice; otherwise the two choose alike.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from typing import Any, Sequence

from trainer.errors import TrainerInputError, run_command
from trainer.flags import build_parser, check_args, model_kwargs

log = logging.getLogger("trainer.hypertune")

METRIC_FILE_ENV = "CLOUD_ML_HP_METRIC_FILE"
TRIAL_ID_ENV = "CLOUD_ML_TRIAL_ID"
DEFAULT_METRIC_FILE = "/tmp/hypertune/output.metrics"
MODEL_DIR_ENV = "AIP_MODEL_DIR"
SUMMARY = "hypertune.json"
ROW_FACTORS = "row_factors.npy"  # = trainer.task's names
COL_FACTORS = "col_factors.npy"
PROG = "python -m trainer.hypertune"
HYPERTUNE_METRICS = ("ndcg", "map", "recall", "precision")  # = trainer.tune.METRICS
_REFUSED = {"resume": False, "early_stopping_metric": None, "eval_every": 0}


def report(tag: str, value: float, global_step: int = 0, path: str | None = None,
           trial: str | None = None) -> dict:
    """Appends one metric record to the hyperparameter-tuning metric file, in the
    ``cloudml-hypertune`` package's format: one JSON object per line (keys sorted) with
    ``timestamp`` (seconds since the epoch, a number), ``trial`` (``$CLOUD_ML_TRIAL_ID``, default
    ``"0"``), ``TAG`` (the value) and ``global_step``, the last three as strings. The file is
    ``$CLOUD_ML_HP_METRIC_FILE`` (default ``/tmp/hypertune/output.metrics``). Returns the
    record."""
    path = path or os.environ.get(METRIC_FILE_ENV) or DEFAULT_METRIC_FILE
    trial = trial if trial is not None else os.environ.get(TRIAL_ID_ENV, "0")
    record = {"timestamp": time.time(), "trial": str(trial), tag: str(float(value)),
              "global_step": str(int(global_step))}
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
    return record


def build_trial_parser() -> argparse.ArgumentParser:
    """``trainer.task``'s parser plus ``--hypertune_metric``."""
    p = build_parser()
    p.prog = PROG
    p.description = ("One Vertex AI hyperparameter-tuning trial: train on the training records "
                     "minus trainer.tune's validation carve-out, report METRIC@eval_k on it "
                     "(cloudml-hypertune metric file), write the factors and hypertune.json.")
    g = p.add_argument_group("trial")
    g.add_argument("--hypertune_metric", choices=HYPERTUNE_METRICS, default="ndcg",
                   help="the metric reported (@--eval_k; its name is the study's metricId)")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The trial's command line: ``trainer.task``'s checks (:func:`trainer.flags.parse_args`)
    plus the trial's; a bad flag gives one line on stderr and exit status 2. Standard library
    only (``run_training.sh`` checks a tuning job's flags with it)."""
    p = build_trial_parser()
    args = p.parse_args(argv)
    for name, off in _REFUSED.items():
        if getattr(args, name) != off:
            p.error(f"--{name} is not available in a tuning trial ({PROG})")
    return check_args(p, args)  # trainer.task's checks (the model's values by the library's rules)


def trial_output_dir(args: argparse.Namespace) -> str:
    """``$AIP_MODEL_DIR`` (one per Vertex AI trial) when set, else ``--output_dir``."""
    return os.environ.get(MODEL_DIR_ENV) or args.output_dir


def run(args: argparse.Namespace) -> dict:
    """The trial (module doc); returns what ``hypertune.json`` holds."""
    import numpy as np

    from trainer import fileio
    from trainer.data import load_training_data
    from trainer.evaluation import evaluate, metric_key
    from trainer.metadata import load_metadata, read_vocabulary
    from trainer.monitor import Progress
    from trainer.tune import VALIDATION_FRACTION, VALIDATION_MAX_USERS, carve
    from trainer.wals import WALSModel

    t0 = time.perf_counter()
    md = load_metadata(args.input_path)
    if args.eval_k > md.nitems:
        raise TrainerInputError(f"--eval_k {args.eval_k} is more than the {md.nitems} items: "
                                "metrics@k are only defined for k <= nitems")
    users = read_vocabulary(md.user_vocabulary, md.nusers, "user")
    items = read_vocabulary(md.item_vocabulary, md.nitems, "item")
    out = trial_output_dir(args)
    key = metric_key(args.hypertune_metric, args.eval_k)
    with fileio.claim_output_dir(out, args.break_lock) as lock:
        for name in (ROW_FACTORS, COL_FACTORS, SUMMARY):
            fileio.remove_path(fileio.join(out, name))
        train = load_training_data(md).user_items  # the test records are not read
        data = carve(train, users, items, VALIDATION_FRACTION, VALIDATION_MAX_USERS)
        if data.val.nnz == 0:
            raise TrainerInputError(
                f"{md.path}: no validation interactions (no user has 2 or more training "
                "interactions): a trial has nothing to report")
        log.info("trial: %d fit interactions, %d validation interactions of %d users scored",
                 data.fit.nnz, data.val.nnz, data.info["validation_users_scored"])
        model = WALSModel(**model_kwargs(args))

        def on_sweep(st: Any) -> bool:
            lock.check()
            return False

        model.fit(data.fit, callback=on_sweep, progress=Progress(args.progress))
        lock.check()
        u = np.asarray(model.user_factors, dtype=np.float32)
        v = np.asarray(model.item_factors, dtype=np.float32)
        metrics = evaluate(u, v, data.fit, data.val, k=args.eval_k, batch_size=args.batch_size)
        value = metrics[key]
        if not math.isfinite(value):
            raise TrainerInputError(f"the validation {key} is {value}: nothing to report")
        sweeps = int(model.history[-1]["sweep"])
        fileio.save_npy(fileio.join(out, ROW_FACTORS), u)
        fileio.save_npy(fileio.join(out, COL_FACTORS), v)
        record = report(args.hypertune_metric, value, sweeps)
        summary = {
            "metric": key, "value": value, "reported_as": args.hypertune_metric,
            "trial": record["trial"], "sweeps": sweeps,
            "metrics": {k: float(x) for k, x in metrics.items()},
            "hyperparameters": model.hyperparameters(), "validation": data.info,
            "metric_file": os.environ.get(METRIC_FILE_ENV) or DEFAULT_METRIC_FILE,
            "seconds": time.perf_counter() - t0,
        }
        fileio.write_json(fileio.join(out, SUMMARY), summary)
    log.info("trial %s: validation %s=%.6f after %d sweeps (reported as %r); outputs in %s",
             record["trial"], key, value, sweeps, args.hypertune_metric, out)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
