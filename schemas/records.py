"""The TFRecord contract between ``preprocess`` and ``trainer``.

Each record is a ``tf.train.Example`` holding one row (or column) of the sparse
users x items rating matrix:

* ``key``     int64[1]   the dense ID of the row: an itemId in ``users_for_item-*``,
                         a userId in ``items_for_user-*``.
* ``indices`` int64[n]   dense IDs on the other side (userIds, resp. itemIds).
* ``values``  float[n]   the ratings, aligned with ``indices``.

Dense ID ``i`` is line ``i`` (0-based) of the vocabulary file named in ``metadata.json``.
Shard names, the metadata keys and the rest of the output layout: ``schemas/contract.py``.
"""
from __future__ import annotations

# The shard names and metadata.json's file name are part of the output layout
# (schemas/contract.py); re-exported here for the modules that read records.
from schemas.contract import (  # noqa: F401
    ITEMS_FOR_USER,
    METADATA_FILE,
    RECORD_SUFFIX,
    TEST_ITEMS_FOR_USER,
    USERS_FOR_ITEM,
)

KEY = "key"
INDICES = "indices"
VALUES = "values"


def feature_spec() -> dict:
    """``tf.io.parse_example`` spec for one record (imports TensorFlow lazily)."""
    import tensorflow as tf

    return {
        KEY: tf.io.FixedLenFeature([1], tf.int64),
        INDICES: tf.io.VarLenFeature(tf.int64),
        VALUES: tf.io.VarLenFeature(tf.float32),
    }
