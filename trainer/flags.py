"""The command line's flags: parsing, checking, and their mapping onto the library's names.

Standard library only (no NumPy, no TensorFlow): ``run_training.sh`` checks a job's flags with
:func:`parse_args` before it submits anything, with any Python. The model's flags keep the
names of the original seed (``--n_embeds``, ``--num_epochs``, ``--seed``, ...);
:func:`model_kwargs` is the one place that maps them onto :class:`trainer.wals.WALSModel`'s
keywords, and the defaults and rules are the library's (:mod:`trainer.hparams`).
"""
from __future__ import annotations

import argparse
from typing import Any, NoReturn, Sequence

from trainer.errors import one_line
from trainer.hparams import CHOICES, DEFAULTS, HyperparameterError, validate

PROG = "python -m trainer.task"
BATCH_PRED = "batch_pred.txt"
BATCH_PRED_USERS = "batch_pred_users.txt"

# flags that are WALSModel keywords; those whose names differ are renamed by _RENAMED
MODEL_FLAGS = (
    "num_epochs", "n_embeds", "regularization", "unobserved_weight", "objective", "alpha",
    "confidence", "epsilon", "col_weights", "col_weight_factor", "col_weight_exp", "solver",
    "cg_steps", "backend", "batch_size", "seed", "dtype", "training_loss",
)
_RENAMED = {
    "num_epochs": "iterations", "n_embeds": "factors", "seed": "random_state",
    "training_loss": "calculate_training_loss",
}
# the command line's own integer flags (not the model's): smallest allowed value
_INT_FLAGS = (("topk", 1), ("eval_k", 1), ("eval_every", 0), ("early_stopping_patience", 1))


def model_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`trainer.wals.WALSModel` keywords given by the flags (``--n_embeds`` →
    ``factors``, ``--num_epochs`` → ``iterations``, ``--seed`` → ``random_state``,
    ``--no_training_loss`` → ``calculate_training_loss=False``; the others keep their names)."""
    return {_RENAMED.get(flag, flag): getattr(args, flag) for flag in MODEL_FLAGS}


def _flag_for(keyword: str) -> str:
    """``factors`` → ``--n_embeds``: the inverse of :func:`model_kwargs`, for error messages."""
    flag = {kw: f for f, kw in _RENAMED.items()}.get(keyword, keyword)
    return "--no_training_loss" if flag == "training_loss" else f"--{flag}"


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (argparse's own prints the multi-line usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see --help)\n")


def _paths(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("paths")
    g.add_argument("--input_path", required=True, help="preprocessing output dir or its metadata.json (local or gs://)")
    g.add_argument("--output_dir", required=True, help="where factors, predictions and the SavedModel go (local or gs://)")
    g.add_argument("--tensorboard_dir", default=None, help="TensorBoard log dir (default: $AIP_TENSORBOARD_LOG_DIR or OUTPUT_DIR/tensorboard)")


def _model(p: argparse.ArgumentParser) -> None:
    d = DEFAULTS
    g = p.add_argument_group("model")
    g.add_argument("--num_epochs", type=int, default=d.iterations, help="sweeps (each: all rows, then all columns)")
    g.add_argument("--n_embeds", type=int, default=d.factors, help="latent dimension k")
    g.add_argument("--regularization", type=float, default=d.regularization, help="λ (> 0)")
    g.add_argument("--unobserved_weight", type=float, default=d.unobserved_weight,
                   help="w0, weight of every unobserved cell (objective wals)")
    g.add_argument("--objective", choices=CHOICES["objective"], default=d.objective,
                   help="wals: W = w0 + row_w*col_w on observed cells, target = rating; "
                   "implicit: confidence W = 1 + alpha*f(r), target 1, unobserved weight 1")
    g.add_argument("--alpha", type=float, default=d.alpha, help="implicit: confidence scale α")
    g.add_argument("--confidence", choices=CHOICES["confidence"], default=d.confidence,
                   help="implicit: f(r) = r or log(1 + r/epsilon)")
    g.add_argument("--epsilon", type=float, default=d.epsilon, help="implicit, log confidence: ε")
    g.add_argument("--col_weights", choices=CHOICES["col_weights"], default=d.col_weights,
                   help="wals: per-item weights γ_j: 1, factor/n_j, or n_j^-exp (n_j = item popularity)")
    g.add_argument("--col_weight_factor", type=float, default=d.col_weight_factor, help="γ_j = factor / n_j (inverse_linear)")
    g.add_argument("--col_weight_exp", type=float, default=d.col_weight_exp, help="γ_j = n_j ** -exp (inverse_power)")


def _solver(p: argparse.ArgumentParser) -> None:
    d = DEFAULTS
    g = p.add_argument_group("solver")
    g.add_argument("--solver", choices=CHOICES["solver"], default=d.solver,
                   help="warm-started conjugate gradient (cg_steps per half-sweep), or exact batched Cholesky")
    g.add_argument("--backend", choices=CHOICES["backend"], default=d.backend,
                   help="auto: Numba's compiled CG loop on a CPU-only machine with --solver cg, "
                        "else TensorFlow (GPUs, the Cholesky solver)")
    g.add_argument("--cg_steps", type=int, default=d.cg_steps, help="CG iterations per half-sweep (solver cg)")
    g.add_argument("--batch_size", type=int, default=d.batch_size, help="max rows per solve batch and per top-k block")
    g.add_argument("--seed", type=int, default=d.random_state, help="seed of the initial factors")
    g.add_argument("--dtype", choices=CHOICES["dtype"], default=d.dtype, help="solver precision (outputs are float32)")
    g.add_argument("--no_training_loss", dest="training_loss", action="store_false",
                   help="skip the loss after each sweep (log, TensorBoard, training_summary.json)")
    g.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoint (same flags and data required)")
    g.add_argument("--break_lock", action="store_true",
                   help="gs:// only: take over an output dir whose lock object a killed job left behind")


def _evaluation(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("held-out evaluation (when metadata.json names test_items_for_user shards)")
    g.add_argument("--eval_k", type=int, default=10, help="k of precision/recall/NDCG/MAP@k and coverage@k")
    g.add_argument("--eval_every", type=int, default=0,
                   help="also evaluate after every N sweeps (0: only after training; 1 with early stopping)")
    g.add_argument("--early_stopping_metric", choices=["ndcg", "map", "recall", "precision"], default=None,
                   help="stop when this metric@eval_k on a validation half of the held-out users stops "
                   "improving, keep the best sweep's factors and report the other half (default: off)")
    g.add_argument("--early_stopping_patience", type=int, default=3,
                   help="evaluations without improvement before stopping")


def _outputs(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("outputs")
    g.add_argument("--topk", type=int, default=10, help="recommendations per user in batch_pred.txt")
    g.add_argument("--no_filter_seen", dest="filter_seen", action="store_false",
                   help="keep items the user already has in batch_pred.txt")
    g.add_argument("--max_age_days", type=int, default=None,
                   help=f"{BATCH_PRED} recommends only items last seen within this many days of the "
                   "newest date in the training data (needs an input with item dates; default: no filter)")
    g.add_argument("--predict_users_for_items", action="store_true",
                   help=f"also write {BATCH_PRED_USERS}: top --topk users per item (targeting)")
    g.add_argument("--no_batch_pred", dest="batch_pred", action="store_false", help=f"skip {BATCH_PRED}")
    g.add_argument("--no_export", dest="export", action="store_false", help="skip the SavedModel")
    g.add_argument("--no_progress", dest="progress", action="store_false", help="no progress bar on a terminal")
    g.add_argument("--log_level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``python -m trainer.task`` (unchecked values)."""
    p = _Parser(
        prog=PROG,
        description="Train a WALS recommender on the preprocessing output (metadata.json + "
        "TFRecord shards).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        # A misspelt or shortened flag is an error, not a guess: --num_epoch would otherwise
        # mean --num_epochs, and a flag added later could change what a short form means.
        allow_abbrev=False,
    )
    for group in (_paths, _model, _solver, _evaluation, _outputs):
        group(p)
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, checked before anything is read: the model's flags by the library's
    own rules (:func:`trainer.hparams.validate`), the others here; a bad value gives one line
    on stderr and exit status 2."""
    p = build_parser()
    return check_args(p, p.parse_args(argv))


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """:func:`parse_args`'s checks of parsed flags (``p.error`` on the first bad one); also
    used by parsers built on :func:`build_parser` (``python -m trainer.hypertune``)."""
    for name, minimum in _INT_FLAGS:
        if getattr(args, name) < minimum:
            p.error(f"--{name} must be >= {minimum}, got {getattr(args, name)}")
    if args.max_age_days is not None:
        if args.max_age_days < 0:
            p.error(f"--max_age_days must be >= 0, got {args.max_age_days}")
        if not args.batch_pred:
            p.error(f"--max_age_days filters {BATCH_PRED}, which --no_batch_pred turns off")
    try:
        validate(**model_kwargs(args))
    except HyperparameterError as e:
        p.error(e.message(_flag_for(e.name)))
    return args
