"""Per-sweep checkpoints so ``--resume`` continues a killed run to the same result.

``OUTPUT_DIR/checkpoint/factors-NNNNN.npz`` holds the factors after sweep ``NNNNN`` and
``state.json`` names the latest of them, with the sweep number, the loss history and a
fingerprint of the hyperparameters and the data. Each file is written atomically; the new
factors file is written before ``state.json`` points to it and the older one is deleted after,
so a kill at any moment leaves a consistent checkpoint. A resume with different hyperparameters or data is
refused. The training is deterministic on CPU, so resumed and uninterrupted runs give the
same factors (on a GPU, reductions may differ in the last bits).
"""
from __future__ import annotations

import hashlib
import json
import logging

import numpy as np

from trainer import fileio
from trainer.errors import TrainerInputError
from trainer.sparse import CSR
from trainer.wals import TrainingState

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"


def data_fingerprint(user_items: CSR) -> str:
    """SHA-256 over the matrix shape, structure and values."""
    h = hashlib.sha256()
    h.update(np.asarray(user_items.shape, np.int64).tobytes())
    for a in (user_items.indptr, user_items.indices, user_items.values):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def config_fingerprint(hyperparameters: dict, data_hash: str) -> str:
    blob = json.dumps({"hp": hyperparameters, "data": data_hash}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


class Checkpointer:
    def __init__(self, output_dir: str, fingerprint: str) -> None:
        self.dir = fileio.join(output_dir, CHECKPOINT_DIR)
        self.fingerprint = fingerprint

    def _npz(self, sweep: int) -> str:
        return fileio.join(self.dir, f"factors-{sweep:05d}.npz")

    @property
    def _json(self) -> str:
        return fileio.join(self.dir, "state.json")

    def save(self, state: TrainingState) -> None:
        import tensorflow as tf

        fileio.makedirs(self.dir)
        name = self._npz(state.sweeps_done)
        fileio.save_npz(name, user_factors=state.user_factors, item_factors=state.item_factors)
        fileio.write_json(
            self._json,
            {
                "sweeps_done": state.sweeps_done,
                "factors": fileio.basename(name),
                "fingerprint": self.fingerprint,
                "history": state.history,
            },
        )
        for old in tf.io.gfile.glob(fileio.join(self.dir, "factors-*.npz")):
            if fileio.basename(old) != fileio.basename(name):
                tf.io.gfile.remove(old)

    def load(self) -> TrainingState | None:
        """The saved state, ``None`` if there is none; raises if it belongs to another config."""
        if not fileio.exists(self._json):
            return None
        meta = json.loads(fileio.read_text(self._json))
        if meta.get("fingerprint") != self.fingerprint:
            raise TrainerInputError(
                f"{self._json} was written with other hyperparameters or data; "
                "use a fresh --output_dir or drop --resume"
            )
        arrays = fileio.load_npz(fileio.join(self.dir, meta["factors"]))
        state = TrainingState(
            int(meta["sweeps_done"]),
            arrays["user_factors"],
            arrays["item_factors"],
            list(meta["history"]),
        )
        if len(state.history) != state.sweeps_done:
            raise TrainerInputError(f"{self._json} is inconsistent (history length)")
        return state
