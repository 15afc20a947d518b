"""WALS recommender trainer (TensorFlow 2, no Beam / tf.Transform).

``from trainer import WALSModel`` is the library (:class:`trainer.wals.WALSModel`);
``python -m trainer.task`` is the command line. Modules, one concern each:

* :mod:`trainer.errors`     the exception raised for bad input.
* :mod:`trainer.hparams`    the model's hyperparameters: names, defaults and rules.
* :mod:`trainer.flags`      the command line's flags and their mapping onto the library's names.
* :mod:`trainer.device`     which device computes, and the per-device policy (batch sizes,
                            batches in flight, TensorFloat-32 off on GPUs).
* :mod:`trainer.sparse`     :class:`~trainer.sparse.CSR`, the in-memory sparse rating matrix.
* :mod:`trainer.metadata`   reads and validates ``metadata.json`` and the vocabularies.
* :mod:`trainer.data`       reads the ``items_for_user`` / ``users_for_item`` TFRecord shards
                            through ``tf.data`` into :class:`~trainer.sparse.CSR` matrices.
* :mod:`trainer.weights`    the observation weights and targets (WALS and implicit forms).
* :mod:`trainer.wals`       the solver: batched alternating least squares, the loss, and the
                            :class:`~trainer.wals.WALSModel` interface.
* :mod:`trainer.recommend`  batched top-k with seen-item filtering and ``batch_pred.txt``.
* :mod:`trainer.evaluation` held-out ranking metrics (precision/recall/NDCG/MAP@k, coverage).
* :mod:`trainer.heldout`    evaluation during and after training, and early stopping.
* :mod:`trainer.checkpoint` per-sweep checkpoints (factors and evaluation state) for ``--resume``.
* :mod:`trainer.monitor`    progress bar, TensorBoard scalars, metric log lines.
* :mod:`trainer.export`     the serving SavedModel (lookup by raw ID, fold-in).
* :mod:`trainer.freshness`  item dates and the ``--max_age_days`` / ``max_age_days`` filter.
* :mod:`trainer.fileio`     local / ``gs://`` file helpers (``tf.io.gfile``).
* :mod:`trainer.task`       the command line (``python -m trainer.task``).

Heavy imports (NumPy, TensorFlow) happen inside the modules that need them; importing the
package itself is cheap (``WALSModel`` is loaded on first use).
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["WALSModel", "__version__"]


def __getattr__(name: str) -> Any:
    """``trainer.WALSModel`` imports :mod:`trainer.wals` (NumPy) only when first asked for."""
    if name == "WALSModel":
        from trainer.wals import WALSModel

        return WALSModel
    raise AttributeError(f"module 'trainer' has no attribute {name!r}")
