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
import re
import zipfile

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

    def load(
        self, shapes: tuple[tuple[int, int], tuple[int, int]] | None = None
    ) -> TrainingState | None:
        """The saved state, ``None`` if there is none.

        Parameters
        ----------
        shapes : ((nusers, k), (nitems, k)), optional
            The factor shapes this run needs; a checkpoint with others is refused.

        Raises
        ------
        TrainerInputError
            The checkpoint belongs to other hyperparameters or data, or is corrupt: state.json
            unreadable or not the expected object, a factors file that is missing, not an
            ``.npz`` of the two float factor matrices, of the wrong shape or not finite.
        """
        if not fileio.exists(self._json):
            return None

        def corrupt(why: str) -> TrainerInputError:
            return TrainerInputError(
                f"--resume: the checkpoint in {self.dir} is unusable ({why}); run without "
                "--resume to start over (this replaces the checkpoint)"
            )

        try:
            meta = json.loads(fileio.read_text(self._json))
        except (TrainerInputError, ValueError) as e:
            raise corrupt(f"{fileio.basename(self._json)}: {e}") from e
        if not isinstance(meta, dict):
            raise corrupt(f"{fileio.basename(self._json)} is not a JSON object")
        if meta.get("fingerprint") != self.fingerprint:
            raise TrainerInputError(
                f"{self._json} was written with other hyperparameters or data; "
                "use a fresh --output_dir or drop --resume"
            )
        sweeps, name, history = meta.get("sweeps_done"), meta.get("factors"), meta.get("history")
        if isinstance(sweeps, bool) or not isinstance(sweeps, int) or sweeps < 1:
            raise corrupt(f"sweeps_done = {sweeps!r}")
        # only a file this class writes, in this directory (never a path from the JSON)
        if not isinstance(name, str) or not re.fullmatch(r"factors-\d{5}\.npz", name):
            raise corrupt(f"factors = {name!r} is not a factors-NNNNN.npz name")
        if not isinstance(history, list) or len(history) != sweeps:
            raise corrupt("history length differs from sweeps_done")
        try:
            arrays = fileio.load_npz(fileio.join(self.dir, name))
        except TrainerInputError as e:  # missing, unreadable, a directory
            raise corrupt(str(e)) from e
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise corrupt(f"{name} is not a NumPy .npz file of factors") from e
        factors = []
        for i, key in enumerate(("user_factors", "item_factors")):
            a = arrays.get(key)
            if a is None or a.ndim != 2 or a.dtype.kind != "f":
                raise corrupt(f"{name} has no 2-D float {key}")
            if shapes is not None and a.shape != tuple(shapes[i]):
                raise corrupt(f"{name}: {key} has shape {a.shape}, this run needs {tuple(shapes[i])}")
            if not np.all(np.isfinite(a)):
                raise corrupt(f"{name}: {key} holds NaN/inf")
            factors.append(a)
        return TrainingState(sweeps, factors[0], factors[1], list(history))
