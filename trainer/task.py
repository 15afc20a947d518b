"""Command line: train WALS on the preprocessing output, write factors, predictions, SavedModel.

    python -m trainer.task --input_path DIR --output_dir DIR [--num_epochs N] [--n_embeds K] ...

``--input_path`` is the preprocessing output directory (holding ``metadata.json``) or the
``metadata.json`` file; both paths may be local or ``gs://``. See ``docs/TRAINER.md`` for the
flags and the files written to ``--output_dir``. Exit status 2 on bad input, with one
``error:`` line saying what is wrong and where; 0 on success.

A run is :func:`load` (metadata, vocabularies) → :func:`build` (model, checkpoint, held-out
evaluation) → :func:`fit` → :func:`write` → :func:`summarise`; the work of each step lives in
its own module (flags: :mod:`trainer.flags`, solver: :mod:`trainer.wals`, evaluation and early
stopping: :mod:`trainer.heldout`, checkpoints: :mod:`trainer.checkpoint`, TensorBoard and the
progress bar: :mod:`trainer.monitor`).

``--output_dir`` is the trainer's own: it is marked at the first run, a non-empty directory
without the mark is refused, the directory is locked for the whole run
(:func:`trainer.fileio.claim_output_dir`), and the outputs of an earlier run are removed at
the start (:func:`_remove_earlier_outputs`), so every file there belongs to this run.
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from trainer import __version__, fileio
from trainer.errors import TrainerInputError, run_command
from trainer.flags import BATCH_PRED, BATCH_PRED_USERS, model_kwargs, parse_args

if TYPE_CHECKING:  # annotations only: --help stays cheap
    from trainer.checkpoint import Checkpoint, Checkpointer
    from trainer.data import TrainingData
    from trainer.freshness import ItemDates
    from trainer.heldout import HeldOut
    from trainer.metadata import Metadata
    from trainer.monitor import Scalars
    from trainer.sparse import CSR
    from trainer.wals import TrainingState, WALSModel

__all__ = ["main", "parse_args", "run"]  # parse_args: trainer.flags's, kept importable here

log = logging.getLogger("trainer")

ROW_FACTORS = "row_factors.npy"
COL_FACTORS = "col_factors.npy"
SUMMARY = "training_summary.json"
EXPORT_DIR = "export"
VOCAB_DIR = "vocab"
METRICS = "metrics.json"
TENSORBOARD_DIR = "tensorboard"
CHECKPOINT_DIR = "checkpoint"  # = trainer.checkpoint.CHECKPOINT_DIR (not imported: --help stays cheap)


@dataclass
class Inputs:
    """What :func:`load` checks before the output dir is claimed."""

    md: Metadata
    users: list[str]
    items: list[str]
    topk_items: int
    topk_users: int | None
    dates: ItemDates | None = None  # the items' first/last seen dates, when the input has them


@dataclass
class Job:
    """What :func:`build` sets up for :func:`fit` and the steps after it."""

    model: WALSModel
    hyperparameters: dict
    device: str
    ckpt: Checkpointer
    resumed: Checkpoint | None
    heldout: HeldOut | None
    scalars: Scalars
    rating_cap: float
    rating_cap_source: str
    timing: dict[str, Any] = field(default_factory=dict)
    evaluation: dict | None = None  # metrics.json, once evaluated
    export_path: str | None = None  # OUTPUT_DIR/export/<version>, once exported


# --------------------------------------------------------------------------- entry points
def main(argv: Sequence[str] | None = None) -> int:
    return run_command(parse_args, run, argv)


def run(args: argparse.Namespace) -> dict:
    """The whole job; returns the summary written to ``training_summary.json``.

    Checks metadata.json and the vocabularies, claims ``--output_dir`` (marker + lock, held
    until the end), removes an earlier run's outputs there, then reads, trains and writes.
    """
    t_start = time.perf_counter()
    inputs = load(args)
    # before the long read: a second trainer on this dir stops here, at once
    with fileio.claim_output_dir(args.output_dir, args.break_lock) as lock:
        _remove_earlier_outputs(args.output_dir, args.resume)
        data, test = read(args, inputs.md)
        read_seconds = time.perf_counter() - t_start
        log.info("data: %d users x %d items, %d interactions (read in %.1f s)",
                 inputs.md.nusers, inputs.md.nitems, data.user_items.nnz, read_seconds)
        job = build(args, inputs.md, data, test)
        job.timing["read_seconds"] = read_seconds
        fit(args, job, data, lock)
        lock.check()
        evaluate(args, job)
        write(args, job, inputs, data)
        job.timing["total_seconds_this_run"] = time.perf_counter() - t_start
        return summarise(args, job, inputs, data)


# --------------------------------------------------------------------------- load
def load(args: argparse.Namespace) -> Inputs:
    """metadata.json, the vocabularies and the item dates, and the flags that depend on them."""
    from trainer.freshness import load_item_dates, require_item_dates
    from trainer.metadata import load_metadata, read_vocabulary

    md = load_metadata(args.input_path)
    if args.early_stopping_metric is not None and not md.test_items_for_user:
        raise _no_test_records(md)  # before the long read; empty test shards are caught later
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
    # before anything is claimed or read: --max_age_days on an input without dates is refused
    dates = (require_item_dates(md, items, "--max_age_days") if args.max_age_days is not None
             else load_item_dates(md, items))
    if dates is not None:
        log.info("item dates: %d of %d items, newest %s (%s)", int(dates.has_date.sum()),
                 md.nitems, dates.newest_date, dates.source)
    return Inputs(md, users, items, topk_items, topk_users, dates)


def _no_test_records(md: Metadata) -> TrainerInputError:
    return TrainerInputError(
        "--early_stopping_metric needs held-out test records (test_items_for_user shards in "
        f"{md.path}); this input has none"
    )


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


def read(args: argparse.Namespace, md: Metadata) -> tuple[TrainingData, CSR | None]:
    """The training matrices and the held-out one (``None`` without test records)."""
    from trainer.data import load_test_data, load_training_data

    data = load_training_data(md)
    test = load_test_data(md, data.user_items)
    if test is None or test.nnz == 0:
        log.info("no held-out split: skipping evaluation" if test is None else
                 "held-out split without test records: skipping evaluation")
        if args.early_stopping_metric is not None:
            raise _no_test_records(md)
        return data, None
    log.info("held-out split: %d test interactions of %d users",
             test.nnz, int((test.row_lengths() > 0).sum()))
    return data, test


# --------------------------------------------------------------------------- build
def build(args: argparse.Namespace, md: Metadata, data: TrainingData, test: CSR | None) -> Job:
    """The model, the TensorBoard log, the held-out evaluation and the checkpoint (resumed
    with ``--resume``)."""
    import tensorflow as tf

    from trainer.checkpoint import Checkpointer, config_fingerprint, data_fingerprint
    from trainer.monitor import Scalars
    from trainer.wals import WALSModel

    model = WALSModel(**model_kwargs(args))
    devices = model.devices()  # every visible GPU, else the CPU (trainer.device)
    device = devices[0]
    log.info("devices: %s (GPUs visible: %s)", ", ".join(devices),
             tf.config.list_physical_devices("GPU"))
    hp = model.hyperparameters()
    tb_dir = (args.tensorboard_dir or os.environ.get("AIP_TENSORBOARD_LOG_DIR")
              or fileio.join(args.output_dir, TENSORBOARD_DIR))
    scalars = Scalars(tb_dir)
    heldout = None if test is None else _heldout(args, md, data.user_items, test, scalars)
    fingerprint = config_fingerprint(
        {k: v for k, v in hp.items() if k != "iterations"},  # more sweeps may follow a resume
        data_fingerprint(data.user_items), heldout.settings() if heldout else None,
    )
    ckpt = Checkpointer(args.output_dir, fingerprint)
    resumed = _resume(args, md, ckpt, model, heldout) if args.resume else None
    return Job(model, hp, device, ckpt, resumed, heldout, scalars, *_rating_cap(md, data.user_items))


def _heldout(args: argparse.Namespace, md: Metadata, train: CSR, test: CSR, scalars: Scalars) -> HeldOut:
    from trainer.heldout import HeldOut

    return HeldOut(
        train, test, k=args.eval_k, iterations=args.num_epochs, every=args.eval_every,
        early_stopping=args.early_stopping_metric, patience=args.early_stopping_patience,
        batch_size=args.batch_size, split=md.split, sink=scalars.metrics,
    )


def _resume(
    args: argparse.Namespace, md: Metadata, ckpt: Checkpointer, model: WALSModel,
    heldout: HeldOut | None,
) -> Checkpoint | None:
    """The checkpoint to continue from (``None``: there is none), with the held-out
    evaluation restored; a run early stopping had already ended trains no further sweep."""
    k = model.factors
    saved = ckpt.load(((md.nusers, k), (md.nitems, k)))
    if saved is None:
        log.info("--resume: no checkpoint in %s, starting from scratch", ckpt.dir)
        return None
    done = saved.training.sweeps_done
    log.info("--resume: continuing after sweep %d", done)
    if done > args.num_epochs:
        raise TrainerInputError(f"checkpoint has {done} sweeps, more than --num_epochs={args.num_epochs}")
    if heldout is not None:
        heldout.restore(saved.evaluation)
        if heldout.stop_now():
            model.iterations = done
            log.info("--resume: early stopping had ended the run after sweep %d", done)
    return saved


def _rating_cap(md: Metadata, user_items: CSR) -> tuple[float, str]:
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


# --------------------------------------------------------------------------- fit
def fit(args: argparse.Namespace, job: Job, data: TrainingData, lock: fileio.OutputDirLock) -> None:
    """Trains; after every sweep: log, TensorBoard, held-out evaluation when due, checkpoint."""
    from trainer.monitor import Progress

    def on_sweep(st: TrainingState) -> bool:
        lock.check()  # gs://: stop before writing if another run took the dir over
        _log_sweep(st.history[-1], args.num_epochs)
        job.scalars.sweep(st.history[-1])
        stop = job.heldout is not None and job.heldout.after_sweep(st)
        job.ckpt.save(st, job.heldout.state() if job.heldout else None)
        return stop

    t = time.perf_counter()
    job.model.fit(
        data.user_items, item_users=data.item_users,
        state=job.resumed.training if job.resumed else None,
        callback=on_sweep, progress=Progress(args.progress),
    )
    job.timing["fit_seconds_this_run"] = time.perf_counter() - t


def _log_sweep(h: dict, sweeps: int) -> None:
    if "loss" in h:
        log.info("sweep %d/%d: loss=%.6g rwse=%.6g (%.2f s)",
                 h["sweep"], sweeps, h["loss"], h["rwse"], h["seconds"])
    else:
        log.info("sweep %d/%d (%.2f s)", h["sweep"], sweeps, h["seconds"])


def evaluate(args: argparse.Namespace, job: Job) -> None:
    """The final held-out evaluation into ``metrics.json`` (with early stopping the model
    then holds the best sweep's factors); closes the TensorBoard log."""
    if job.heldout is not None:
        t = time.perf_counter()
        m = job.model
        result = job.heldout.finish(m.user_factors, m.item_factors, m.history[-1]["sweep"])
        m.user_factors, m.item_factors = result.user_factors, result.item_factors
        fileio.write_json(fileio.join(args.output_dir, METRICS), result.metrics)
        job.evaluation = result.metrics
        job.timing["final_evaluation_seconds"] = time.perf_counter() - t  # baseline included
        job.timing["baseline_seconds"] = result.baseline_seconds
    job.scalars.close()  # the event file is complete before the lock is given up


# --------------------------------------------------------------------------- write
def write(args: argparse.Namespace, job: Job, inputs: Inputs, data: TrainingData) -> None:
    """Factors, vocabularies, batch predictions and the SavedModel."""
    from trainer import export

    out, model = args.output_dir, job.model
    fileio.save_npy(fileio.join(out, ROW_FACTORS), model.user_factors.astype("float32"))
    fileio.save_npy(fileio.join(out, COL_FACTORS), model.item_factors.astype("float32"))
    vocab_dir = fileio.join(out, VOCAB_DIR)
    fileio.makedirs(vocab_dir)
    user_vocab, item_vocab = fileio.join(vocab_dir, "users.txt"), fileio.join(vocab_dir, "items.txt")
    export.write_vocabulary(user_vocab, inputs.users)
    export.write_vocabulary(item_vocab, inputs.items)
    t = time.perf_counter()
    _write_predictions(args, model, inputs, data)
    job.timing["predict_seconds"] = time.perf_counter() - t
    if args.export:
        module = export.build_module(
            model.user_factors, model.item_factors, user_vocab, item_vocab, data.user_items,
            model.col_weights, model.weighting, model.regularization, job.rating_cap,
            item_ages=None if inputs.dates is None else inputs.dates.ages(),
        )
        job.export_path = export.export_saved_model(fileio.join(out, EXPORT_DIR), module)


def _write_predictions(args: argparse.Namespace, model: WALSModel, inputs: Inputs, data: TrainingData) -> None:
    from trainer.recommend import write_batch_predictions

    u, v, out = model.user_factors, model.item_factors, args.output_dir
    if args.batch_pred:
        fresh = None
        if args.max_age_days is not None:  # load() made sure the dates are there
            fresh = inputs.dates.fresh(args.max_age_days)
            log.info("--max_age_days %d: %d of %d items last seen on or after %s", args.max_age_days,
                     int(fresh.sum()), len(fresh), _day_text(inputs.dates.newest_day - args.max_age_days))
        write_batch_predictions(
            fileio.join(out, BATCH_PRED), u, v, inputs.users, inputs.items, inputs.topk_items,
            exclude=data.user_items if args.filter_seen else None, batch_size=args.batch_size,
            candidates=fresh,
        )
    if args.predict_users_for_items:
        write_batch_predictions(
            fileio.join(out, BATCH_PRED_USERS), v, u, inputs.items, inputs.users, inputs.topk_users,
            exclude=data.item_users if args.filter_seen else None, batch_size=args.batch_size,
        )


# --------------------------------------------------------------------------- summarise
_FINAL_KEYS = ("sweep", "loss", "unregularized_loss", "rwse", "sum_weights")
_EVALUATION_KEYS = ("k", "metrics", "baselines", "lift", "users", "factors", "sweep", "early_stopping")


def summarise(args: argparse.Namespace, job: Job, inputs: Inputs, data: TrainingData) -> dict:
    """Writes ``training_summary.json`` (last: when it is there, the run finished) and logs the
    ``done:`` line; returns the summary."""
    import tensorflow as tf

    history, ev = job.model.history, job.evaluation
    final = history[-1]
    summary = {
        "trainer_version": __version__,
        "hyperparameters": job.hyperparameters,
        "data": _data_block(args, inputs, data, job),
        "final": {k: final[k] for k in _FINAL_KEYS if k in final},
        "history": history,
        "factors_from_sweep": ev["sweep"] if ev else final["sweep"],
        "evaluation": None if ev is None else {key: ev[key] for key in _EVALUATION_KEYS},
        "timing": _timing_block(job),
        "environment": {"device": job.device, "devices": job.model.devices(),
                        "tensorflow": tf.__version__,
                        "python": platform.python_version()},
        "outputs": _outputs_block(args, inputs, ev is not None, job.export_path),
    }
    fileio.write_json(fileio.join(args.output_dir, SUMMARY), summary)
    log.info("done: %s after %d sweeps%s;%s outputs in %s",
             _loss_text(final), final["sweep"],
             "" if summary["factors_from_sweep"] == final["sweep"]
             else f" (outputs hold the factors of sweep {summary['factors_from_sweep']})",
             _evaluation_text(ev), args.output_dir)
    return summary


def _data_block(args: argparse.Namespace, inputs: Inputs, data: TrainingData, job: Job) -> dict:
    md = inputs.md
    return {
        "input_path": args.input_path,
        "metadata": md.path,
        "nusers": md.nusers,
        "nitems": md.nitems,
        "ninteractions": data.user_items.nnz,
        "rating_cap": job.rating_cap,  # fold-in clips ratings to it
        "rating_cap_source": job.rating_cap_source,
        "dates": _dates_block(args, inputs),
    }


def _day_text(day: int) -> str:
    from trainer.freshness import day_text

    return day_text(day)


def _dates_block(args: argparse.Namespace, inputs: Inputs) -> dict:
    """Item freshness: the input's dates and what ``--max_age_days`` kept."""
    d = inputs.dates
    if d is None:
        return {"available": False}
    out = {"available": True, "newest_date": d.newest_date, "items_with_dates": int(d.has_date.sum()),
           "max_age_days": args.max_age_days, "fresh_items": None}
    if args.max_age_days is not None:
        out["fresh_items"] = int(d.fresh(args.max_age_days).sum())
    return out


def _timing_block(job: Job) -> dict:
    swept = [h["seconds"] for h in job.model.history]
    t = job.timing
    return {
        "read_seconds": t["read_seconds"],
        "fit_seconds_this_run": t["fit_seconds_this_run"],
        "mean_seconds_per_sweep": sum(swept) / len(swept),
        "predict_seconds": t["predict_seconds"],
        "final_evaluation_seconds": t.get("final_evaluation_seconds"),  # baseline included
        "baseline_seconds": t.get("baseline_seconds"),
        "total_seconds_this_run": t["total_seconds_this_run"],
    }


def _outputs_block(args: argparse.Namespace, inputs: Inputs, evaluated: bool,
                   export_path: str | None) -> dict:
    return {
        "row_factors": ROW_FACTORS,
        "col_factors": COL_FACTORS,
        "batch_pred": BATCH_PRED if args.batch_pred else None,
        "topk": inputs.topk_items,  # --topk, clamped to the number of items
        "batch_pred_users": BATCH_PRED_USERS if args.predict_users_for_items else None,
        # export/<version>: the SavedModel (export/ is TF Serving's --model_base_path)
        "export": None if export_path is None
        else f"{EXPORT_DIR}/{export_path.rstrip('/').rsplit('/', 1)[-1]}",
        "metrics": METRICS if evaluated else None,
    }


def _loss_text(final: dict) -> str:
    if "loss" not in final:
        return "training loss not computed (--no_training_loss)"
    return f"loss={final['loss']:.6g} rwse={final['rwse']:.6g}"


def _evaluation_text(ev: dict | None) -> str:
    if ev is None:
        return ""
    from trainer.monitor import vs_baseline

    return " held-out " + vs_baseline(ev["metrics"], ev["baselines"]["popularity"], ev["lift"],
                                      ev["k"], names=("ndcg",)) + ";"


if __name__ == "__main__":
    sys.exit(main())
