"""``tf.data`` input: the pipeline's TFRecord shards → in-memory :class:`~trainer.sparse.CSR`.

Each record is one row (``key``) with its ``indices`` / ``values`` (``schemas/records.py``).
The optional held-out ``test_items_for_user`` shards have the same schema and dense IDs
(:func:`load_test_data`).
Rows are placed by their own ``key``; the shards are read once, in parallel, and the whole
matrix is then held in memory (the solver gathers from it every half-sweep, so re-reading
files each sweep would only cost time).

Checks (each raises :class:`~trainer.errors.TrainerInputError` with the file set named):
no records at all, unreadable/corrupt records, a shard that cannot be read (missing, a
directory, no permission), ``key`` or ``indices`` out of range, a key that
appears twice, ``indices``/``values`` of different lengths, a repeated index within a row,
NaN/inf ratings, and (in :func:`load_training_data`) a ``users_for_item`` matrix that is not
the transpose of ``items_for_user`` or an entry count different from ``ninteractions``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from schemas import records
from schemas.contract import SplitKey

from trainer.errors import TrainerInputError, one_line
from trainer.metadata import Metadata
from trainer.sparse import CSR

log = logging.getLogger(__name__)

_READ_BATCH = 1024


def read_shards(
    files: Sequence[str],
    nrows: int,
    ncols: int,
    compression: str = "",
    what: str = "shards",
    allow_empty: bool = False,
) -> CSR:
    """Reads ``files`` (TFRecords of ``tf.train.Example``) into an ``nrows × ncols`` CSR.

    No records at all is an error unless ``allow_empty`` (then an empty matrix)."""
    import tensorflow as tf

    spec = records.feature_spec()

    def parse(serialized: tf.Tensor) -> tuple[tf.Tensor, ...]:
        ex = tf.io.parse_example(serialized, spec)
        idx = tf.RaggedTensor.from_sparse(ex[records.INDICES])
        val = tf.RaggedTensor.from_sparse(ex[records.VALUES])
        # from_sparse gives one row per record up to the last non-empty one: pad to batch size
        n = tf.shape(serialized, out_type=tf.int64)[0]
        idx_len = tf.pad(idx.row_lengths(), [[0, n - idx.nrows()]])
        val_len = tf.pad(val.row_lengths(), [[0, n - val.nrows()]])
        return ex[records.KEY][:, 0], idx_len, val_len, idx.flat_values, val.flat_values

    ds = tf.data.Dataset.from_tensor_slices(list(files))
    ds = ds.interleave(
        lambda f: tf.data.TFRecordDataset(f, compression_type=compression),
        cycle_length=max(1, min(len(files), 8)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    ds = ds.batch(_READ_BATCH).map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.prefetch(tf.data.AUTOTUNE)

    keys, idx_lens, val_lens, idxs, vals = [], [], [], [], []
    try:
        for k, il, vl, i, v in ds.as_numpy_iterator():
            keys.append(k)
            idx_lens.append(il)
            val_lens.append(vl)
            idxs.append(i)
            vals.append(v)
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
        raise TrainerInputError(
            f"{what}: unreadable or malformed record in {list(files)[:3]}...: {one_line(e.message)}"
        ) from e
    except (tf.errors.NotFoundError, tf.errors.FailedPreconditionError,
            tf.errors.PermissionDeniedError) as e:  # e.g. a shard that is a directory
        raise TrainerInputError(f"{what}: cannot read a shard: {one_line(e.message)}") from e
    if not keys and allow_empty:
        log.info("read %s: no records in %d shard(s)", what, len(files))
        return CSR(np.zeros(nrows + 1, np.int64), np.zeros(0), np.zeros(0), (nrows, ncols))
    if not keys:
        raise TrainerInputError(f"{what}: no records in {len(files)} shard(s) {list(files)[:3]}")

    key = np.concatenate(keys)
    idx_len = np.concatenate(idx_lens)
    val_len = np.concatenate(val_lens)
    if not np.array_equal(idx_len, val_len):
        r = int(np.flatnonzero(idx_len != val_len)[0])
        raise TrainerInputError(
            f"{what}: record with key {key[r]} has {idx_len[r]} indices but {val_len[r]} values"
        )
    if key.size and (key.min() < 0 or key.max() >= nrows):
        bad = key[(key < 0) | (key >= nrows)][0]
        raise TrainerInputError(f"{what}: key {bad} out of range [0, {nrows})")
    counts = np.bincount(key, minlength=nrows)
    if counts.max(initial=0) > 1:
        raise TrainerInputError(
            f"{what}: key {int(np.argmax(counts))} appears in {counts.max()} records"
        )
    rows = np.repeat(key, idx_len)
    cols = np.concatenate(idxs) if idxs else np.zeros(0, np.int64)
    values = np.concatenate(vals) if vals else np.zeros(0, np.float32)
    csr = CSR.from_coo(rows, cols, values, (nrows, ncols), what=what)
    log.info("read %s: %d records, %d entries from %d shard(s)", what, key.size, csr.nnz, len(files))
    return csr


@dataclass(frozen=True)
class TrainingData:
    """Both orientations of the training matrix (they hold the same entries)."""

    user_items: CSR  # nusers × nitems, from items_for_user-*
    item_users: CSR  # nitems × nusers, from users_for_item-*


def load_training_data(md: Metadata) -> TrainingData:
    """Reads both shard sets named in ``metadata.json`` and checks they agree."""
    ui = read_shards(
        md.items_for_user, md.nusers, md.nitems, md.compression, what=records.ITEMS_FOR_USER
    )
    iu = read_shards(
        md.users_for_item, md.nitems, md.nusers, md.compression, what=records.USERS_FOR_ITEM
    )
    if ui.nnz != md.ninteractions:
        raise TrainerInputError(
            f"{records.ITEMS_FOR_USER} holds {ui.nnz} entries, metadata.json says "
            f"ninteractions={md.ninteractions}"
        )
    if not iu.same_entries_as_transpose_of(ui):
        raise TrainerInputError(
            f"{records.USERS_FOR_ITEM} is not the transpose of {records.ITEMS_FOR_USER} "
            f"({iu.nnz} vs {ui.nnz} entries, or different coordinates/values)"
        )
    return TrainingData(ui, iu)


def load_test_data(md: Metadata, train_user_items: CSR | None = None) -> CSR | None:
    """The held-out ``test_items_for_user`` shards as an ``nusers × nitems`` CSR (the training
    shape and dense IDs), or ``None`` when ``metadata.json`` names none.

    Checks the entry and user counts against ``metadata.json``'s ``split`` when it gives them.
    With ``train_user_items``, warns about test entries that are also training entries (they
    can never be hit: training items are never recommended) and test users without training
    interactions (their factor is 0, so they get no recommendations).
    """
    if not md.test_items_for_user:
        return None
    what = records.TEST_ITEMS_FOR_USER
    test = read_shards(
        md.test_items_for_user, md.nusers, md.nitems, md.compression, what=what, allow_empty=True
    )
    split = md.split or {}
    for name, got in (
        (SplitKey.TEST_INTERACTIONS, test.nnz),
        (SplitKey.TEST_USERS, int(np.count_nonzero(test.row_lengths()))),
    ):
        want = split.get(name)
        if isinstance(want, int) and not isinstance(want, bool) and want != got:
            raise TrainerInputError(
                f"{what} holds {got} {name.split('_')[1]}, metadata.json split says {name}={want}"
            )
    if train_user_items is not None and test.nnz:
        nitems = max(md.nitems, 1)
        both = np.intersect1d(
            test.row_ids() * nitems + test.indices,
            train_user_items.row_ids() * nitems + train_user_items.indices,
        )
        if both.size:
            log.warning(
                "%d held-out entries are also training entries: they can never be hit", both.size
            )
        cold = (test.row_lengths() > 0) & (train_user_items.row_lengths() == 0)
        if cold.any():
            log.warning(
                "%d held-out users have no training interactions: they get no recommendations",
                int(cold.sum()),
            )
    return test
