"""Local and ``gs://`` file helpers built on ``tf.io.gfile`` (so one code path serves both)."""
from __future__ import annotations

import io
import json
import os
import posixpath
from typing import Any

import numpy as np


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


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


def read_bytes(path: str) -> bytes:
    with _gfile().GFile(path, "rb") as f:
        return f.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


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
