"""WALS recommender trainer (TensorFlow 2, no Beam / tf.Transform).

Modules, one concern each:

* :mod:`trainer.errors`     the exception raised for bad input.
* :mod:`trainer.sparse`     :class:`~trainer.sparse.CSR`, the in-memory sparse rating matrix.
* :mod:`trainer.metadata`   reads and validates ``metadata.json`` and the vocabularies.
* :mod:`trainer.data`       reads the ``items_for_user`` / ``users_for_item`` TFRecord shards
                            through ``tf.data`` into :class:`~trainer.sparse.CSR` matrices.
* :mod:`trainer.weights`    the observation weights and targets (WALS and implicit forms).
* :mod:`trainer.wals`       the solver: batched alternating least squares, the loss, and the
                            :class:`~trainer.wals.WALSModel` interface.
* :mod:`trainer.recommend`  batched top-k with seen-item filtering and ``batch_pred.txt``.
* :mod:`trainer.evaluation` held-out ranking metrics (precision/recall/NDCG/MAP@k, coverage).
* :mod:`trainer.export`     the serving SavedModel (lookup by raw ID, fold-in).
* :mod:`trainer.checkpoint` per-sweep checkpoints for ``--resume``.
* :mod:`trainer.fileio`     local / ``gs://`` file helpers (``tf.io.gfile``).
* :mod:`trainer.task`       the command line (``python -m trainer.task``).

Heavy imports (TensorFlow) happen inside the modules that need them; importing the package
itself is cheap.
"""
from __future__ import annotations

__version__ = "0.1.0"
