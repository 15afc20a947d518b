"""Which device the trainer computes on, and what it does differently there.

The solver (:mod:`trainer.wals`) and top-k (:mod:`trainer.recommend`) ask this module instead
of testing device names themselves:

* :func:`resolve` — the device to use: the one asked for, else :func:`default_device` (the
  first GPU TensorFlow sees, else the CPU). Resolving to a GPU also turns TensorFloat-32 off
  (:func:`use_full_float32`).
* :func:`max_batch_floats` — the cap on the floats one solve batch gathers (``B·L·k``, and
  ``B·k²`` on the ``k × k`` path; see :mod:`trainer.wals`). On a CPU :data:`CPU_MAX_BATCH_FLOATS`
  (``2^21``, an 8 MB float32 block): larger blocks are fresh ``mmap`` pages every batch and
  the threads of every op meet less often than with small ones (docs/TRAINER.md, "Speed").
  On a GPU :data:`GPU_MAX_BATCH_FLOATS` (``2^24``), lowered on a device whose memory is known
  and small, so that one gathered block stays under ``1 / GPU_MEMORY_PER_BATCH`` of it.
* :func:`batches_in_flight` — batches solved at the same time, from that many Python threads
  (TensorFlow releases the GIL while it runs a batch): :data:`CPU_BATCHES_IN_FLIGHT` on a CPU,
  where the ops of one small batch cannot keep every core busy (each op splits into shards
  that meet at its end, and a shard whose thread the OS has parked stalls the op; a second
  batch gives the idle core work), and 1 on a GPU, which queues a batch's kernels
  asynchronously anyway. Every batch is independent, so the factors do not depend on it.

TensorFlow is imported only when a function needs it.
"""
from __future__ import annotations

import functools
import logging
from typing import Any, Sequence

log = logging.getLogger(__name__)

CPU = "/CPU:0"
GPU = "/GPU:0"
CPU_MAX_BATCH_FLOATS = 1 << 21
GPU_MAX_BATCH_FLOATS = 1 << 24
# one gathered block at most this fraction of the GPU's memory: a batch holds a few copies of
# it (the gather, the weighted copy, the products), and the plan and factors stay there too
GPU_MEMORY_PER_BATCH = 32
CPU_BATCHES_IN_FLIGHT = 2
GPU_BATCHES_IN_FLIGHT = 1


def _tf() -> Any:
    import tensorflow as tf

    return tf


def is_gpu(device: str) -> bool:
    """Whether a TensorFlow device name (``/GPU:0``, ``/job:localhost/.../device:GPU:0``)
    names a GPU."""
    return "GPU" in device.upper()


def default_device() -> str:
    """:data:`GPU` when TensorFlow sees a GPU, else :data:`CPU`."""
    return GPU if _tf().config.list_logical_devices("GPU") else CPU


def resolve(device: str | None = None) -> str:
    """``device``, or :func:`default_device` when it is ``None``; on a GPU, with TensorFloat-32
    off (:func:`use_full_float32`)."""
    chosen = device or default_device()
    if is_gpu(chosen):
        use_full_float32()
    return chosen


@functools.lru_cache(maxsize=None)
def use_full_float32() -> None:
    """Turns TensorFloat-32 off for this process (once).

    On NVIDIA GPUs since Ampere TensorFlow runs float32 matmuls in TF32 by default: inputs
    rounded to a 10-bit mantissa, unit roundoff ``u ≈ 2⁻¹¹`` instead of ``2⁻²⁴``. The
    solver's float32 error analysis (the forming and Cholesky bounds behind the tests, and the
    Woodbury path's limit (W3) in :mod:`trainer.wals`) assumes ``u = 2⁻²⁴``; with TF32 the
    normal equations lose about 13 bits before they are solved.
    """
    _tf().config.experimental.enable_tensor_float_32_execution(False)
    log.info("TensorFloat-32 turned off (the solver needs full float32 matmuls)")


@functools.lru_cache(maxsize=None)
def memory_bytes(device: str) -> int | None:
    """The memory TensorFlow may use on ``device`` (its ``memory_limit``), ``None`` when
    TensorFlow does not say."""
    try:
        from tensorflow.python.client import device_lib  # the only API that reports it

        wanted = device.upper().split("DEVICE:")[-1].lstrip("/")
        for d in device_lib.list_local_devices():
            if d.name.upper().endswith(wanted) and d.memory_limit > 0:
                return int(d.memory_limit)
    except Exception as e:  # noqa: BLE001 - an optional refinement; the default stands
        log.debug("no memory size for %s: %s", device, e)
    return None


def max_batch_floats(device: str, itemsize: int = 4) -> int:
    """The default cap on one batch's gathered floats on ``device`` (module docstring)."""
    if not is_gpu(device):
        return CPU_MAX_BATCH_FLOATS
    memory = memory_bytes(device)
    if memory is None:
        return GPU_MAX_BATCH_FLOATS
    return max(1, min(GPU_MAX_BATCH_FLOATS, memory // (GPU_MEMORY_PER_BATCH * itemsize)))


def batches_in_flight(device: str) -> int:
    """How many batches to solve at a time on ``device`` (module docstring)."""
    return GPU_BATCHES_IN_FLIGHT if is_gpu(device) else CPU_BATCHES_IN_FLIGHT


def compute_devices(device: str | Sequence[str] | None = None) -> list[str]:
    """The devices a fit spreads its row solves over, the first holding the factors.

    ``device`` as given (one name or several); ``None``: every GPU TensorFlow sees (with
    TensorFloat-32 off, :func:`use_full_float32`), else :data:`CPU`. A CPU is one device
    however many cores it has: its ops use every core already.
    """
    if device is None:
        gpus = [d.name for d in _tf().config.list_logical_devices("GPU")]
        return [resolve(g) for g in gpus] if gpus else [CPU]
    if isinstance(device, str):
        return [resolve(device)]
    return [resolve(d) for d in device]
