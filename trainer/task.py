"""Command line: train WALS on the preprocessing output, write factors, predictions, SavedModel.

    python -m trainer.task --input_path DIR --output_dir DIR [--num_epochs N] [--n_embeds K] ...

``--input_path`` is the preprocessing output directory (holding ``metadata.json``) or the
``metadata.json`` file; both paths may be local or ``gs://``. See ``docs/TRAINER.md`` for the
flags and the files written to ``--output_dir``. Exit status 2 on bad input (the message says
what is wrong), 0 on success.
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
from typing import Sequence

from trainer import __version__, fileio
from trainer.errors import TrainerInputError

log = logging.getLogger("trainer")

ROW_FACTORS = "row_factors.npy"
COL_FACTORS = "col_factors.npy"
SUMMARY = "training_summary.json"
BATCH_PRED = "batch_pred.txt"
BATCH_PRED_USERS = "batch_pred_users.txt"
EXPORT_DIR = "export"
VOCAB_DIR = "vocab"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
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
    m.add_argument("--n_embeds", type=int, default=10, help="latent dimension k")
    m.add_argument("--regularization", type=float, default=0.07, help="λ (> 0)")
    m.add_argument("--unobserved_weight", type=float, default=0.01, help="w0, weight of every unobserved cell (objective wals)")
    m.add_argument("--objective", choices=["wals", "implicit"], default="wals",
                   help="wals: W = w0 + row_w*col_w on observed cells, target = rating; "
                   "implicit: confidence W = 1 + alpha*f(r), target 1, unobserved weight 1")
    m.add_argument("--alpha", type=float, default=1.0, help="implicit: confidence scale α")
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
    for name, minimum in (("num_epochs", 1), ("n_embeds", 1), ("topk", 1), ("batch_size", 1), ("cg_steps", 1)):
        if getattr(args, name) < minimum:
            p.error(f"--{name} must be >= {minimum}, got {getattr(args, name)}")
    if args.regularization <= 0:
        p.error(f"--regularization must be > 0, got {args.regularization}")
    if args.unobserved_weight < 0:
        p.error(f"--unobserved_weight must be >= 0, got {args.unobserved_weight}")
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


def run(args: argparse.Namespace) -> dict:
    """The whole job; returns the summary written to ``training_summary.json``."""
    import tensorflow as tf

    from trainer import checkpoint, export, recommend
    from trainer.data import load_training_data
    from trainer.metadata import load_metadata, read_vocabulary
    from trainer.wals import WALSModel, default_device
    from trainer.weights import Weighting

    t_start = time.perf_counter()
    md = load_metadata(args.input_path)
    users = read_vocabulary(md.user_vocabulary, md.nusers, "user")
    items = read_vocabulary(md.item_vocabulary, md.nitems, "item")
    data = load_training_data(md)
    t_read = time.perf_counter() - t_start
    log.info(
        "data: %d users x %d items, %d interactions (read in %.1f s)",
        md.nusers, md.nitems, data.user_items.nnz, t_read,
    )

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
    fileio.makedirs(out)
    hp = dict(model.hyperparameters(), num_epochs=args.num_epochs)
    fingerprint = checkpoint.config_fingerprint(
        {k: v for k, v in hp.items() if k != "num_epochs"},
        checkpoint.data_fingerprint(data.user_items),
    )
    ckpt = checkpoint.Checkpointer(out, fingerprint)
    state = None
    if args.resume:
        state = ckpt.load()
        if state is None:
            log.info("--resume: no checkpoint in %s, starting from scratch", ckpt.dir)
        else:
            log.info("--resume: continuing after sweep %d", state.sweeps_done)
            if state.sweeps_done > args.num_epochs:
                raise TrainerInputError(
                    f"checkpoint has {state.sweeps_done} sweeps, more than --num_epochs={args.num_epochs}"
                )

    tb_dir = args.tensorboard_dir or os.environ.get("AIP_TENSORBOARD_LOG_DIR") or fileio.join(out, "tensorboard")
    writer = tf.summary.create_file_writer(tb_dir)

    def on_sweep(st) -> None:
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

    t_fit = time.perf_counter()
    model.fit(
        data.user_items, data.item_users, args.num_epochs,
        state=state, callback=on_sweep, progress=_Progress(args.progress),
    )
    t_fit = time.perf_counter() - t_fit

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
            args.topk, exclude=data.user_items if args.filter_seen else None,
            batch_size=args.batch_size,
        )
    if args.predict_users_for_items:
        recommend.write_batch_predictions(
            fileio.join(out, BATCH_PRED_USERS), model.item_factors, model.user_factors, items,
            users, args.topk, exclude=data.item_users if args.filter_seen else None,
            batch_size=args.batch_size,
        )
    t_pred = time.perf_counter() - t_pred

    if args.export:
        module = export.build_module(
            model.user_factors, model.item_factors, user_vocab, item_vocab, data.user_items,
            model.col_weights, weighting, args.regularization,
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
        },
        "final": {k: final[k] for k in ("sweep", "loss", "unregularized_loss", "rwse", "sum_weights")},
        "history": model.history,
        "timing": {
            "read_seconds": t_read,
            "fit_seconds_this_run": t_fit,
            "mean_seconds_per_sweep": sum(swept) / len(swept),
            "predict_seconds": t_pred,
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
            "batch_pred_users": BATCH_PRED_USERS if args.predict_users_for_items else None,
            "export": EXPORT_DIR if args.export else None,
        },
    }
    fileio.write_json(fileio.join(out, SUMMARY), summary)
    log.info(
        "done: loss=%.6g rwse=%.6g after %d sweeps; outputs in %s",
        final["loss"], final["rwse"], final["sweep"], out,
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
        log.error("%s", e)
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
