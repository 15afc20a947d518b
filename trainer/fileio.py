"""Local and ``gs://`` file helpers built on ``tf.io.gfile`` (so one code path serves both),
and the claim on ``--output_dir`` (:func:`claim_output_dir`: ownership marker + lock).

Reading a file that is missing, unreadable or a directory raises
:class:`~trainer.errors.TrainerInputError` naming the path (the CLI's one-line error), not
TensorFlow's multi-line ``OpError``.
"""
from __future__ import annotations

import datetime
import errno
import io
import json
import logging
import os
import posixpath
import socket
import uuid
from typing import Any

import numpy as np

from trainer.errors import TrainerInputError, one_line

log = logging.getLogger(__name__)

# In --output_dir: the marker that says "this directory is the trainer's" (written at the
# first run; a non-empty directory without it is never written to), and the lock.
MARKER = ".wals_trainer_output"
LOCK = ".wals_trainer.lock"


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def _file_errors() -> tuple[type[Exception], ...]:
    """The ``tf.errors`` that mean "this path cannot be read as a file" (not transient)."""
    import tensorflow as tf

    return (tf.errors.NotFoundError, tf.errors.FailedPreconditionError,
            tf.errors.PermissionDeniedError)


def is_remote(path: str) -> bool:
    """True for URLs such as ``gs://bucket/x`` (``scheme://``)."""
    return "://" in path


def join(root: str, *parts: str) -> str:
    """``os.path.join`` for local paths, ``/``-joining for ``gs://`` URLs."""
    if is_remote(root):
        return posixpath.join(root, *parts)
    return os.path.join(root, *parts)


def resolve(root: str, path: str) -> str:
    """A path from ``metadata.json``: relative paths are taken relative to ``root``;
    absolute paths and URLs are kept."""
    if is_remote(path) or os.path.isabs(path):
        return path
    return join(root, path)


def dirname(path: str) -> str:
    if is_remote(path):
        return posixpath.dirname(path.rstrip("/"))
    return os.path.dirname(os.path.abspath(path))


def basename(path: str) -> str:
    return posixpath.basename(path.rstrip("/")) if is_remote(path) else os.path.basename(path)


def exists(path: str) -> bool:
    return _gfile().exists(path)


def isdir(path: str) -> bool:
    return _gfile().isdir(path)


def makedirs(path: str) -> None:
    _gfile().makedirs(path)


def listdir(path: str) -> list[str]:
    """Entry names of a directory (no trailing ``/``); ``[]`` if it does not exist."""
    if not exists(path):
        return []
    return [e.rstrip("/") for e in _gfile().listdir(path)]


def remove_path(path: str) -> bool:
    """Removes a file or a whole directory tree; returns whether there was anything."""
    g = _gfile()
    if not g.exists(path):
        return False
    if g.isdir(path):
        g.rmtree(path)
    else:
        g.remove(path)
    return True


def read_bytes(path: str) -> bytes:
    """The bytes of ``path``; a missing or unreadable path or a directory raises
    :class:`TrainerInputError` naming it."""
    try:
        with _gfile().GFile(path, "rb") as f:
            return f.read()
    except _file_errors() as e:
        raise TrainerInputError(f"cannot read {path}: {one_line(e.message)}") from e


def read_text(path: str) -> str:
    """``path`` decoded as UTF-8 (anything else raises :class:`TrainerInputError`)."""
    data = read_bytes(path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TrainerInputError(f"{path} is not UTF-8 text ({e})") from e


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Writes ``path`` through a temporary file and a rename, so a killed writer never
    leaves a half-written file under the final name."""
    tmp = path + ".tmp"
    with _gfile().GFile(tmp, "wb") as f:
        f.write(data)
    _gfile().rename(tmp, path, overwrite=True)


def write_text_atomic(path: str, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json(path: str, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_npy(path: str, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    write_bytes_atomic(path, buf.getvalue())


def load_npy(path: str) -> np.ndarray:
    return np.load(io.BytesIO(read_bytes(path)), allow_pickle=False)


def save_npz(path: str, **arrays: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_bytes_atomic(path, buf.getvalue())


def load_npz(path: str) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(read_bytes(path)), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


# --------------------------------------------------------------------------- the output dir
def _holder() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "run_id": uuid.uuid4().hex,
    }


def _describe(raw: bytes | None) -> str:
    """``pid N on host H since T`` from a lock file's content (it may be empty or garbled:
    the holder writes it just after taking the lock)."""
    try:
        h = json.loads((raw or b"").decode("utf-8"))
        return f"pid {h['pid']} on host {h['host']} since {h['started']}"
    except (ValueError, KeyError, TypeError):
        return "a holder that has not written its pid yet"


class OutputDirLock:
    """The claim on ``--output_dir`` held by one run (:func:`claim_output_dir`).

    Local directories: an exclusive ``fcntl.flock`` on ``OUTPUT_DIR/.wals_trainer.lock``,
    held through an open file descriptor; the OS drops it when the process ends, however it
    ends. URLs (``gs://``): a lock *object* with the holder's pid, host, start time and a run
    ID — advisory, since object stores have no ``flock``: :meth:`check` (called after every
    sweep and before the outputs are written) stops this run if another one replaced it.
    Use as a context manager or call :meth:`release`.
    """

    def __init__(self, output_dir: str, path: str, holder: dict[str, Any], fd: int | None) -> None:
        self.output_dir, self.path, self.holder, self._fd = output_dir, path, holder, fd
        self.released = False

    def check(self) -> None:
        """Raises :class:`TrainerInputError` if a remote lock object no longer names this run."""
        if self.released or self._fd is not None:
            return  # a held flock cannot be taken away
        try:
            raw: bytes | None = read_bytes(self.path)
        except TrainerInputError:
            raw = None
        if raw is None or _run_id(raw) != self.holder["run_id"]:
            raise TrainerInputError(
                f"--output_dir {self.output_dir} was taken over: its lock object {self.path} "
                f"now names {_describe(raw) if raw is not None else 'no holder (deleted)'}; "
                "stopping so that two runs do not mix their outputs"
            )

    def release(self) -> None:
        """Gives the directory up (a remote lock object is deleted only if it is still ours)."""
        if self.released:
            return
        self.released = True
        if self._fd is not None:
            os.close(self._fd)  # drops the flock; the file stays (deleting it would race)
            return
        try:
            if _run_id(read_bytes(self.path)) == self.holder["run_id"]:
                _gfile().remove(self.path)
        except (TrainerInputError, *_file_errors()):
            pass  # already gone

    def __enter__(self) -> "OutputDirLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _run_id(raw: bytes) -> str | None:
    try:
        return json.loads(raw.decode("utf-8")).get("run_id")
    except (ValueError, AttributeError):
        return None


def claim_output_dir(output_dir: str, break_lock: bool = False) -> OutputDirLock:
    """Makes ``output_dir`` this run's: checks it is the trainer's, marks it, locks it.

    * A path that is a file, or a non-empty directory without the :data:`MARKER` file, is
      refused (the trainer never writes into, let alone deletes from, a directory it did not
      make). An empty or new directory gets the marker.
    * Then the lock (:class:`OutputDirLock`): a second trainer on the same directory is
      refused at once, with the holder's pid, host and start time in the message. A remote
      lock object left by a killed job is replaced only with ``break_lock``.

    Parameters
    ----------
    output_dir : str
        Local path or URL (``gs://``).
    break_lock : bool
        Remote directories only: replace an existing lock object (its job is known dead).

    Returns
    -------
    OutputDirLock
        Held until :meth:`OutputDirLock.release` (or the end of a ``with`` block).

    Raises
    ------
    TrainerInputError
        The directory is not the trainer's, or another run holds it.
    """
    if exists(output_dir) and not isdir(output_dir):
        raise TrainerInputError(f"--output_dir {output_dir} is a file, not a directory")
    names = set(listdir(output_dir))
    # the lock file and a marker being written are the trainer's own: they do not count
    foreign = sorted(names - {LOCK, MARKER + ".tmp", MARKER})
    if foreign and MARKER not in names:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise TrainerInputError(
            f"--output_dir {output_dir} is not empty ({len(foreign)} entries: {shown}) and has no "
            f"{MARKER} marker, so this trainer did not make it; refusing to write or delete "
            f"anything there: use a new or empty directory (or, if it is an older trainer output, "
            f"create the file {join(output_dir, MARKER)} to hand it over)"
        )
    makedirs(output_dir)
    if MARKER not in names:
        write_json(join(output_dir, MARKER), {"tool": "trainer.task", "note":
                   "this directory belongs to the WALS trainer, which deletes its own outputs here "
                   "at the start of every run"})
    holder = _holder()
    path = join(output_dir, LOCK)
    if not is_remote(output_dir):
        try:
            import fcntl
        except ImportError:  # no flock on this platform: the object lock below
            fcntl = None
        if fcntl is not None:
            return _lock_local(output_dir, path, holder, fcntl)
    return _lock_remote(output_dir, path, holder, break_lock)


def _lock_local(output_dir: str, path: str, holder: dict[str, Any], fcntl: Any) -> OutputDirLock:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        raw = os.pread(fd, 4096, 0)
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise TrainerInputError(
                f"--output_dir {output_dir} is in use by another trainer ({_describe(raw)}; lock "
                f"file {path}): wait for it to end or use another --output_dir"
            ) from e
        raise TrainerInputError(f"cannot lock {path}: {e}") from e
    data = json.dumps(holder).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    return OutputDirLock(output_dir, path, holder, fd)


def _lock_remote(output_dir: str, path: str, holder: dict[str, Any], break_lock: bool) -> OutputDirLock:
    if exists(path):
        try:
            raw: bytes | None = read_bytes(path)
        except TrainerInputError:
            raw = None
        if not break_lock:
            raise TrainerInputError(
                f"--output_dir {output_dir} is locked by {_describe(raw)} (lock object {path}): "
                "another trainer may be writing there. A lock object outlives a killed job: if "
                "that job is gone, rerun with --break_lock (and --resume to continue its checkpoint)"
            )
        log.warning("--break_lock: replacing the lock object %s of %s", path, _describe(raw))
        remove_path(path)  # not overwritten in place: some file systems (ram://) append
    with _gfile().GFile(path, "wb") as f:  # an object appears whole when closed
        f.write(json.dumps(holder).encode())
    lock = OutputDirLock(output_dir, path, holder, None)
    lock.check()  # two runs that started together: the later writer wins, the other stops
    return lock
