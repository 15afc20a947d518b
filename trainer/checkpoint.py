"""Per-sweep checkpoints so ``--resume`` continues a killed run to the same result.

The one place the trainer keeps state between runs. ``OUTPUT_DIR/checkpoint/`` holds:

* ``state.json`` — format :data:`VERSION`: the sweep number, the loss history, a fingerprint
  of everything the run's result depends on (hyperparameters, data, evaluation settings),
  the name of the factors file and the held-out evaluation's state (its evaluations so far and
  which sweep's factors early stopping keeps), or ``null`` without held-out data;
* ``factors-NNNNN.npz`` — the factors after sweep ``NNNNN``;
* ``best-NNNNN.npz`` — early stopping's best factors (of sweep ``NNNNN``), when there are any.

Each file is written atomically; the factors files are written before ``state.json`` names
them and the ones it no longer names are deleted after, so a kill at any moment leaves a
consistent checkpoint. A resume with different hyperparameters, data or evaluation settings
is refused, and so is a checkpoint of another format version (an older trainer's): both with
one line saying so. The training is deterministic on CPU, so resumed and uninterrupted runs
give the same factors (on a GPU, reductions may differ in the last bits).
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import zipfile
from dataclasses import dataclass
from typing import Any

import numpy as np

from trainer import fileio
from trainer.errors import TrainerInputError
from trainer.sparse import CSR
from trainer.wals import TrainingState

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"
STATE = "state.json"
# version 1: state.json without "version", the evaluations in evaluation.json and
# best_factors-NNNNN.npz beside it; 2: one state.json for both (this module)
VERSION = 2
_FACTORS = "factors-{:05d}.npz"
_BEST = "best-{:05d}.npz"

Shapes = tuple[tuple[int, int], tuple[int, int]]


@dataclass
class SweepFactors:
    """The factors after one sweep (early stopping's best)."""

    sweep: int
    user_factors: np.ndarray
    item_factors: np.ndarray


@dataclass
class EvaluationState:
    """What the held-out evaluation (:mod:`trainer.heldout`) needs to continue: its evaluations
    so far (one dict per evaluated sweep, with ``"sweep"``) and the best factors, if any."""

    evaluations: list[dict]
    best: SweepFactors | None = None


@dataclass
class Checkpoint:
    """A loaded checkpoint."""

    training: TrainingState
    evaluation: EvaluationState | None


def data_fingerprint(user_items: CSR) -> str:
    """SHA-256 over the matrix shape, structure and values."""
    h = hashlib.sha256()
    h.update(np.asarray(user_items.shape, np.int64).tobytes())
    for a in (user_items.indptr, user_items.indices, user_items.values):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def config_fingerprint(hyperparameters: dict, data_hash: str, evaluation: dict | None = None) -> str:
    """SHA-256 of what a resumed run must share with the checkpoint's run."""
    blob = json.dumps({"hp": hyperparameters, "data": data_hash, "evaluation": evaluation},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


class Checkpointer:
    """Writes and reads ``OUTPUT_DIR/checkpoint`` (module docstring)."""

    def __init__(self, output_dir: str, fingerprint: str) -> None:
        self.dir = fileio.join(output_dir, CHECKPOINT_DIR)
        self.fingerprint = fingerprint
        self._best_written: str | None = None  # the best file this run wrote or loaded

    def _path(self, name: str) -> str:
        return fileio.join(self.dir, name)

    # ------------------------------------------------------------------ writing
    def save(self, state: TrainingState, evaluation: EvaluationState | None = None) -> None:
        """Checkpoints ``state`` and the held-out ``evaluation`` state together."""
        fileio.makedirs(self.dir)
        name = _FACTORS.format(state.sweeps_done)
        fileio.save_npz(self._path(name), user_factors=state.user_factors,
                        item_factors=state.item_factors)
        best = self._save_best(evaluation.best if evaluation else None)
        fileio.write_json(self._path(STATE), {
            "version": VERSION,
            "fingerprint": self.fingerprint,
            "sweeps_done": state.sweeps_done,
            "factors": name,
            "history": state.history,
            "evaluation": None if evaluation is None else {
                "evaluations": evaluation.evaluations,
                "best": None if best is None else {"sweep": evaluation.best.sweep, "factors": best},
            },
        })
        self._remove_all_but({name, best})

    def _save_best(self, best: SweepFactors | None) -> str | None:
        """Writes the best factors unless this run already has (they change only when a
        later sweep evaluates higher); returns their file name."""
        if best is None:
            return None
        name = _BEST.format(best.sweep)
        if name != self._best_written:
            fileio.save_npz(self._path(name), user_factors=best.user_factors,
                            item_factors=best.item_factors)
            self._best_written = name
        return name

    def _remove_all_but(self, keep: set[str | None]) -> None:
        import tensorflow as tf

        for pattern in ("factors-*.npz", "best-*.npz"):
            for old in tf.io.gfile.glob(self._path(pattern)):
                if fileio.basename(old) not in keep:
                    tf.io.gfile.remove(old)

    # ------------------------------------------------------------------ reading
    def _corrupt(self, why: str) -> TrainerInputError:
        return TrainerInputError(
            f"--resume: the checkpoint in {self.dir} is unusable ({why}); run without "
            "--resume to start over (this replaces the checkpoint)"
        )

    def load(self, shapes: Shapes | None = None) -> Checkpoint | None:
        """The saved checkpoint, ``None`` if there is none.

        Parameters
        ----------
        shapes : ((nusers, k), (nitems, k)), optional
            The factor shapes this run needs; a checkpoint with others is refused.

        Raises
        ------
        TrainerInputError
            The checkpoint is of another format version, belongs to other hyperparameters,
            data or evaluation settings, or is corrupt: state.json unreadable or not the
            expected object, a factors file that is missing, not an ``.npz`` of the two float
            factor matrices, of the wrong shape or not finite.
        """
        if not fileio.exists(self._path(STATE)):
            return None
        meta = self._read_state()
        self._check_version_and_fingerprint(meta)
        sweeps, name, history = meta.get("sweeps_done"), meta.get("factors"), meta.get("history")
        if isinstance(sweeps, bool) or not isinstance(sweeps, int) or sweeps < 1:
            raise self._corrupt(f"sweeps_done = {sweeps!r}")
        if not isinstance(history, list) or len(history) != sweeps:
            raise self._corrupt("history length differs from sweeps_done")
        u, v = self._load_factors(name, _FACTORS, shapes)
        training = TrainingState(sweeps, u, v, list(history))
        return Checkpoint(training, self._evaluation(meta.get("evaluation"), sweeps, shapes))

    def _read_state(self) -> dict[str, Any]:
        try:
            meta = json.loads(fileio.read_text(self._path(STATE)))
        except (TrainerInputError, ValueError) as e:
            raise self._corrupt(f"{STATE}: {e}") from e
        if not isinstance(meta, dict):
            raise self._corrupt(f"{STATE} is not a JSON object")
        return meta

    def _check_version_and_fingerprint(self, meta: dict[str, Any]) -> None:
        version = meta.get("version", 1)
        if version != VERSION:
            raise TrainerInputError(
                f"--resume: the checkpoint in {self.dir} has format version {version!r}, this "
                f"trainer reads version {VERSION} only; run without --resume to start over "
                "(this replaces the checkpoint)"
            )
        if meta.get("fingerprint") != self.fingerprint:
            raise TrainerInputError(
                f"{self._path(STATE)} was written with other hyperparameters, evaluation "
                "settings or data; use a fresh --output_dir or drop --resume"
            )

    def _load_factors(self, name: Any, pattern: str, shapes: Shapes | None) -> tuple[np.ndarray, np.ndarray]:
        """The two factor matrices of file ``name``, which must match ``pattern`` (only a
        file this class writes, in this directory: never a path from the JSON)."""
        regex = re.escape(pattern.split("{")[0]) + r"\d{5}\.npz"
        if not isinstance(name, str) or not re.fullmatch(regex, name):
            raise self._corrupt(f"factors = {name!r} is not a {pattern.split('{')[0]}NNNNN.npz name")
        try:
            arrays = fileio.load_npz(self._path(name))
        except TrainerInputError as e:  # missing, unreadable, a directory
            raise self._corrupt(str(e)) from e
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise self._corrupt(f"{name} is not a NumPy .npz file of factors") from e
        factors = []
        for i, key in enumerate(("user_factors", "item_factors")):
            a = arrays.get(key)
            if a is None or a.ndim != 2 or a.dtype.kind != "f":
                raise self._corrupt(f"{name} has no 2-D float {key}")
            if shapes is not None and a.shape != tuple(shapes[i]):
                raise self._corrupt(f"{name}: {key} has shape {a.shape}, this run needs {tuple(shapes[i])}")
            if not np.all(np.isfinite(a)):
                raise self._corrupt(f"{name}: {key} holds NaN/inf")
            factors.append(a)
        return factors[0], factors[1]

    def _evaluation(self, block: Any, sweeps: int, shapes: Shapes | None) -> EvaluationState | None:
        """The ``evaluation`` block of state.json, checked (``None`` stays ``None``)."""
        if block is None:
            return None
        evaluations = block.get("evaluations") if isinstance(block, dict) else None
        if not isinstance(evaluations, list) or not all(
            isinstance(e, dict) and isinstance(e.get("sweep"), int) and 1 <= e["sweep"] <= sweeps
            for e in evaluations
        ):
            raise self._corrupt("its evaluation state is not a list of evaluated sweeps")
        best = block.get("best")
        if best is None:
            return EvaluationState(evaluations, None)
        if not isinstance(best, dict) or not isinstance(best.get("sweep"), int):
            raise self._corrupt("its best factors are not named with their sweep")
        u, v = self._load_factors(best.get("factors"), _BEST, shapes)
        self._best_written = best["factors"]
        return EvaluationState(evaluations, SweepFactors(best["sweep"], u, v))
