"""Group dense interactions both ways and write them as sharded TFRecords.

``users_for_item-*``: key = itemId, indices = userIds, values = ratings (one column of A);
``items_for_user-*``: key = userId, indices = itemIds, values = ratings (one row of A).
The feature names are the contract in ``schemas/records.py``. Indices are sorted so the
output is the same on every runner.
"""
from __future__ import annotations

from typing import Iterable

import apache_beam as beam
import tensorflow as tf
from apache_beam.io.filesystems import FileSystems

from preprocess import counters
from schemas import records as contract


def encode_example(key: int, pairs: Iterable[tuple]) -> bytes:
    """Serialized ``tf.train.Example`` for one row (or column) of the rating matrix."""
    pairs = sorted(pairs)
    feature = {
        contract.KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=[key])),
        contract.INDICES: tf.train.Feature(int64_list=tf.train.Int64List(value=[i for i, _ in pairs])),
        contract.VALUES: tf.train.Feature(float_list=tf.train.FloatList(value=[v for _, v in pairs])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


class WriteGroupedRecords(beam.PTransform):
    """(key, index, rating) triples -> TFRecord shards ``prefix-SSSSS-of-NNNNN.tfrecord``.

    Returns the PCollection of written file names.
    """

    def __init__(self, prefix: str, num_shards: int = 0) -> None:
        super().__init__()
        self.prefix = prefix
        self.num_shards = num_shards

    def expand(self, triples):
        return (
            triples
            | "KeyByRow" >> beam.Map(lambda t: (t[0], (t[1], t[2])))
            | "GroupByRow" >> beam.GroupByKey()
            | "ToExample" >> beam.MapTuple(encode_example)
            | "WriteTFRecords"
            >> beam.io.WriteToTFRecord(
                self.prefix,
                file_name_suffix=contract.RECORD_SUFFIX,
                num_shards=self.num_shards,
            )
        )


def _count_interaction(triple: tuple) -> tuple:
    _INTERACTIONS.inc()
    return triple


_INTERACTIONS = counters.counter("interactions")


class WriteInteractionRecords(beam.PTransform):
    """(userId, itemId, rating) -> both record sets under ``output_dir``."""

    def __init__(self, output_dir: str, num_shards: int = 0) -> None:
        super().__init__()
        self.output_dir = output_dir
        self.num_shards = num_shards

    def expand(self, dense):
        by_item = dense | "ByItem" >> beam.Map(lambda t: (t[1], t[0], t[2])) | (
            "WriteUsersForItem"
            >> WriteGroupedRecords(
                FileSystems.join(self.output_dir, contract.USERS_FOR_ITEM), self.num_shards
            )
        )
        by_user = dense | "CountInteractions" >> beam.Map(_count_interaction) | "WriteItemsForUser" >> WriteGroupedRecords(
            FileSystems.join(self.output_dir, contract.ITEMS_FOR_USER), self.num_shards
        )
        return by_item, by_user
