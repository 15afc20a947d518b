"""The TFRecord contract between ``preprocess`` and ``trainer``.

Each record is a ``tf.train.Example`` holding one row (or column) of the sparse
users x items rating matrix:

* ``key``     int64[1]   the dense ID of the row: an itemId in ``users_for_item-*``,
                         a userId in ``items_for_user-*``.
* ``indices`` int64[n]   dense IDs on the other side (userIds, resp. itemIds).
* ``values``  float[n]   the ratings, aligned with ``indices``.

Dense ID ``i`` is line ``i`` (0-based) of the vocabulary file named in ``metadata.json``.
"""
from __future__ import annotations

KEY = "key"
INDICES = "indices"
VALUES = "values"

# Shard name prefixes inside OUTPUT_DIR and their suffix.
USERS_FOR_ITEM = "users_for_item"
ITEMS_FOR_USER = "items_for_user"
TEST_ITEMS_FOR_USER = "test_items_for_user"
RECORD_SUFFIX = ".tfrecord"
METADATA_FILE = "metadata.json"


def feature_spec() -> dict:
    """``tf.io.parse_example`` spec for one record (imports TensorFlow lazily)."""
    import tensorflow as tf

    return {
        KEY: tf.io.FixedLenFeature([1], tf.int64),
        INDICES: tf.io.VarLenFeature(tf.int64),
        VALUES: tf.io.VarLenFeature(tf.float32),
    }
