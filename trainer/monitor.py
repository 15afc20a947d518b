"""What a training run shows while it runs: the terminal progress bar, TensorBoard scalars,
and the one-line renderings of metrics the log uses.

TensorFlow is imported only by :class:`Scalars`.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Sequence

SWEEP_SCALARS = ("loss", "unregularized_loss", "rwse", "seconds")


class Progress:
    """A one-line progress bar on stderr, only when it is a terminal; a
    :data:`trainer.wals.ProgressFn`."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self._last = 0.0

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if done < total and now - self._last < 0.1:  # redraw at most 10 times a second
            return
        self._last = now
        width = 30
        fill = int(width * done / max(total, 1))
        sys.stderr.write(f"\r{stage} [{'#' * fill}{'.' * (width - fill)}] {done}/{total} batches")
        if done == total:
            sys.stderr.write("\r\033[K")
        sys.stderr.flush()


class Scalars:
    """TensorBoard scalars in ``log_dir``, written with the core ``tf.summary.write``
    (``tf.summary.scalar`` needs the ``tensorboard`` package, which a lean training image may
    not have)."""

    def __init__(self, log_dir: str) -> None:
        import tensorflow as tf
        from tensorflow.core.framework import summary_pb2

        self._tf = tf
        self._writer = tf.summary.create_file_writer(log_dir)
        self._meta = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
        )

    def write(self, values: dict[str, float], step: int) -> None:
        """One scalar per ``tag: value`` at ``step``, flushed."""
        tf = self._tf
        with self._writer.as_default(step=step):
            for tag, value in values.items():
                tf.summary.write(tag, tf.constant(value, tf.float32), step=step, metadata=self._meta)
        self._writer.flush()

    def sweep(self, entry: dict[str, Any]) -> None:
        """A :attr:`trainer.wals.WALSModel.history` entry: loss, RWSE (when computed), seconds."""
        self.write({tag: entry[tag] for tag in SWEEP_SCALARS if tag in entry}, entry["sweep"])

    def metrics(self, prefix: str, metrics: dict, step: int) -> None:
        """The ``name@k`` entries of ``metrics`` as ``prefix/name@k``; a
        :data:`trainer.heldout.MetricsSink`."""
        self.write({f"{prefix}/{name}": v for name, v in metrics.items() if "@" in name}, step)

    def close(self) -> None:
        self._writer.close()


def format_metrics(m: dict) -> str:
    """``ndcg@10=0.1234 map@10=...``: the ``name@k`` entries of ``m``."""
    return " ".join(f"{key}={val:.6g}" for key, val in m.items() if "@" in key)


def vs_baseline(
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
