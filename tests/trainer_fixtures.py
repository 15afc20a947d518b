"""Test helpers for the trainer: small TFRecord datasets written straight from a dense matrix,
following the contract in ``schemas/records.py`` and ``schemas/metadata.md`` (independent of
the preprocessing pipeline), and NumPy reference solutions (the oracles)."""
from __future__ import annotations

import contextlib
import json
import pathlib
import sys
from typing import Iterable, Iterator, Sequence

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

from schemas import records  # noqa: E402

USER_VOCAB = "transform_output/transform_fn/assets/users"
ITEM_VOCAB = "transform_output/transform_fn/assets/items"


# --------------------------------------------------------------------------- devices
def visible_devices() -> list[str]:
    """One device name per device type TensorFlow sees: ``["/CPU:0"]``, plus ``"/GPU:0"`` on a
    machine with a GPU."""
    import tensorflow as tf

    kinds = dict.fromkeys(d.device_type for d in tf.config.list_logical_devices())
    return [f"/{kind}:0" for kind in ("CPU", "GPU") if kind in kinds]


@pytest.fixture(params=visible_devices())
def device(request) -> str:
    """Runs a test once per device type (import this fixture into the test module): the same
    contract on the CPU and, where TensorFlow sees one, the GPU — as ``implicit`` runs one test
    mixin over its CPU and GPU models."""
    return request.param


@contextlib.contextmanager
def cpu_only() -> Iterator[None]:
    """The trainer's default device is the CPU inside this block: for tests of bit-for-bit
    equality between runs, which only the CPU promises (GPU reductions may differ in the last
    bits)."""
    from trainer import device as device_policy

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(device_policy, "default_device", lambda: device_policy.CPU)
        yield


# --------------------------------------------------------------------------- data writers
def example(key: int, indices: Sequence[int], values: Sequence[float]) -> bytes:
    import tensorflow as tf

    f = tf.train.Feature
    return tf.train.Example(
        features=tf.train.Features(
            feature={
                records.KEY: f(int64_list=tf.train.Int64List(value=[int(key)])),
                records.INDICES: f(int64_list=tf.train.Int64List(value=[int(i) for i in indices])),
                records.VALUES: f(float_list=tf.train.FloatList(value=[float(v) for v in values])),
            }
        )
    ).SerializeToString()


def write_records(path: pathlib.Path, rows: Iterable[tuple[int, Sequence[int], Sequence[float]]]) -> None:
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(path)) as w:
        for key, idx, val in rows:
            w.write(example(key, idx, val))


def dense_rows(dense: np.ndarray) -> list[tuple[int, list[int], list[float]]]:
    """Non-empty rows of ``dense`` as (key, indices, values); indices in a shuffled order so the
    reader cannot rely on sorted records."""
    rng = np.random.default_rng(123)
    out = []
    for i in range(dense.shape[0]):
        idx = np.flatnonzero(dense[i])
        if idx.size:
            idx = rng.permutation(idx)
            out.append((i, idx.tolist(), dense[i, idx].tolist()))
    return out


def write_dataset(
    root: pathlib.Path,
    dense: np.ndarray,
    user_names: Sequence[str] | None = None,
    item_names: Sequence[str] | None = None,
    nshards: int = 2,
    rating_cap: float | None = 1.0,
) -> pathlib.Path:
    """Writes ``metadata.json``, both shard sets and both vocabularies for ``dense`` (users ×
    items, 0 = unobserved) into ``root``; returns ``root``.

    ``rating_cap`` goes into the ``rating`` block as the preprocessing writes it (``None``:
    no ``rating`` block, as in outputs that predate it)."""
    root = pathlib.Path(root)
    root.mkdir(parents=True, exist_ok=True)
    nusers, nitems = dense.shape
    user_names = list(user_names or [f"visitor-{i:04d}" for i in range(nusers)])
    item_names = list(item_names or [f"content-{j:04d}" for j in range(nitems)])
    files = {}
    for prefix, mat in ((records.ITEMS_FOR_USER, dense), (records.USERS_FOR_ITEM, dense.T)):
        rows = dense_rows(mat)
        names = []
        for s in range(nshards):
            name = f"{prefix}-{s:05d}-of-{nshards:05d}{records.RECORD_SUFFIX}"
            # rows are dealt round-robin and reversed, so shards are not in key order
            write_records(root / name, reversed(rows[s::nshards]))
            names.append(name)
        files[prefix] = names
    for rel, names in ((USER_VOCAB, user_names), (ITEM_VOCAB, item_names)):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("".join(n + "\n" for n in names), encoding="utf-8")
    meta = {
        "format_version": 1,
        "nusers": nusers,
        "nitems": nitems,
        "ninteractions": int(np.count_nonzero(dense)),
        "median_duration": 1000.0,
        "user_vocabulary": USER_VOCAB,
        "item_vocabulary": ITEM_VOCAB,
        records.USERS_FOR_ITEM: files[records.USERS_FOR_ITEM],
        records.ITEMS_FOR_USER: files[records.ITEMS_FOR_USER],
        "record_compression": "NONE",
    }
    if rating_cap is not None:
        meta["rating"] = {"scale": 0.3, "cap": rating_cap,
                          "formula": "min(scale * session_duration / median_duration, cap)"}
    (root / records.METADATA_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return root


def write_test_split(root: pathlib.Path, test: np.ndarray, nshards: int = 1, **split) -> None:
    """Adds held-out ``test_items_for_user`` shards for ``test`` (same shape and dense IDs as
    the training matrix) and names them in ``metadata.json`` with a ``split`` block (``split``
    overrides or adds its keys)."""
    root = pathlib.Path(root)
    rows = dense_rows(test)
    names = []
    for s in range(nshards):
        name = f"{records.TEST_ITEMS_FOR_USER}-{s:05d}-of-{nshards:05d}{records.RECORD_SUFFIX}"
        write_records(root / name, rows[s::nshards])
        names.append(name)
    meta = json.loads((root / records.METADATA_FILE).read_text())
    meta[records.TEST_ITEMS_FOR_USER] = names
    meta["split"] = {"test_fraction": 0.2, "seed": 0, "method": "per_user_random",
                     "test_interactions": int(np.count_nonzero(test)),
                     "test_users": int((test != 0).any(axis=1).sum()),
                     "test_dropped_unseen_item": 0, **split}
    (root / records.METADATA_FILE).write_text(json.dumps(meta))


def random_ratings(nusers: int, nitems: int, density: float, seed: int) -> np.ndarray:
    """Dense matrix with ratings in (0, 1] at a random ``density`` of cells (float32-exact
    values in a float64 array, as the TFRecords store float32)."""
    rng = np.random.default_rng(seed)
    mask = rng.random((nusers, nitems)) < density
    vals = rng.uniform(0.05, 1.0, (nusers, nitems)).astype(np.float32).astype(np.float64)
    return np.where(mask, vals, 0.0)


# --------------------------------------------------------------------------- oracles
def dense_weights(dense: np.ndarray, w0: float, row_w: np.ndarray, col_w: np.ndarray) -> np.ndarray:
    """TF1 WALS weights: w0 + r_i c_j on observed cells, w0 elsewhere."""
    return np.where(dense != 0, w0 + np.outer(row_w, col_w), w0)


def numpy_solve_rows(fixed: np.ndarray, target: np.ndarray, weights: np.ndarray, lam: float) -> np.ndarray:
    """argmin_X Σ_ij W_ij (T_ij − x_i·f_j)² + λ‖X‖², one dense float64 solve per row."""
    fixed = fixed.astype(np.float64)
    k = fixed.shape[1]
    out = np.zeros((target.shape[0], k))
    for i in range(target.shape[0]):
        m = (fixed.T * weights[i]) @ fixed + lam * np.eye(k)
        out[i] = np.linalg.solve(m, fixed.T @ (weights[i] * target[i]))
    return out


def numpy_objective(u, v, target, weights, lam) -> float:
    u = u.astype(np.float64)
    v = v.astype(np.float64)
    return float((weights * (target - u @ v.T) ** 2).sum() + lam * ((u**2).sum() + (v**2).sum()))


def numpy_fold_in(
    item_factors: np.ndarray,
    items: Sequence[int],
    ratings: Sequence[float],
    objective: str,
    lam: float,
    w0: float = 0.0,
    alpha: float = 0.0,
    col_w: np.ndarray | None = None,
) -> np.ndarray:
    """A new user's factor by one dense float64 least-squares solve over *all* items (no
    Gramian shortcut): ``items`` distinct, ``ratings`` already merged and clipped.

    ``wals``: weight ``w0 + c_j`` and target ``r_j`` on the given items, ``w0`` / 0 elsewhere;
    ``implicit`` (linear confidence): weight ``1 + α r_j`` and target ``[r_j > 0]`` on them,
    1 / 0 elsewhere."""
    v = np.asarray(item_factors, np.float64)
    n, k = v.shape
    weights = np.full(n, 1.0 if objective == "implicit" else w0)
    target = np.zeros(n)
    for j, r in zip(items, ratings):
        if objective == "implicit":
            weights[j], target[j] = 1.0 + alpha * r, float(r > 0)
        else:
            weights[j], target[j] = w0 + (1.0 if col_w is None else col_w[j]), r
    m = (v.T * weights) @ v + lam * np.eye(k)
    return np.linalg.solve(m, v.T @ (weights * target))


def numpy_topk(scores: np.ndarray, seen: np.ndarray, n: int) -> list[list[int]]:
    """Reference top-n per row by ``np.argsort`` (descending), skipping ``seen`` cells."""
    out = []
    for i in range(scores.shape[0]):
        order = np.argsort(-scores[i], kind="stable")
        out.append([int(j) for j in order if not seen[i, j]][:n])
    return out


def taste_ratings(nusers: int, nitems: int, groups: int, rng: np.random.Generator) -> np.ndarray:
    """A users × items matrix with taste structure (0 = none): item j is in group j mod
    ``groups``, each user in a random group; a user reads each of its group's items with
    probability 0.35 and every other item with 0.03, ratings uniform in [0.1, 1) (float32-exact).
    Draws from ``rng``, which the caller may go on using."""
    group_of_item = np.arange(nitems) % groups
    group_of_user = rng.integers(groups, size=nusers)
    p = np.where(group_of_item[None, :] == group_of_user[:, None], 0.35, 0.03)
    observed = rng.random((nusers, nitems)) < p
    ratings = np.where(observed, rng.uniform(0.1, 1.0, (nusers, nitems)), 0.0)
    return ratings.astype(np.float32).astype(np.float64)


def write_item_dates(root: pathlib.Path, last_seen: Sequence[str | None], first_seen: Sequence[str | None] | None = None,
                     source: str = "test dates") -> None:
    """Adds item dates to a :func:`write_dataset` output as the preprocessing writes them
    (``schemas/metadata.md``): ``item_dates.tsv`` aligned with the item vocabulary and the
    ``dates`` block; ``last_seen[j]`` is ``YYYY-MM-DD`` or ``None`` (no date)."""
    root = pathlib.Path(root)
    items = (root / ITEM_VOCAB).read_text(encoding="utf-8").split("\n")[:-1]
    first_seen = list(first_seen) if first_seen is not None else list(last_seen)
    lines = [f"{item}\t{f or ''}\t{l or ''}\n" for item, f, l in zip(items, first_seen, last_seen, strict=True)]
    (root / "item_dates.tsv").write_text("".join(lines), encoding="utf-8")
    dated = [d for d in last_seen if d]
    meta = json.loads((root / records.METADATA_FILE).read_text())
    meta["dates"] = {"available": True, "source": source, "item_dates": "item_dates.tsv",
                     "oldest_date": min(d for d in first_seen if d), "newest_date": max(dated),
                     "items_with_dates": len(dated)}
    (root / records.METADATA_FILE).write_text(json.dumps(meta))
