"""Dense user and item IDs with tf.Transform vocabularies.

``preprocessing_fn`` is pure TensorFlow (no Beam): it maps raw ``visitorId`` / ``contentId``
strings to dense int64 IDs with ``tft.compute_and_apply_vocabulary`` and passes the rating
through. The vocabularies are written as assets of the ``transform_fn``; line i of
``users`` / ``items`` is the raw ID of dense ID i (most frequent first), the reverse mapping
the trainer uses. Data enters and leaves TFT as Arrow record batches (TFXIO), several times
faster than instance dicts on the local runner.
"""
from __future__ import annotations

from typing import Iterable

import apache_beam as beam
import numpy as np
import pyarrow as pa
import tensorflow as tf
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
from tensorflow_transform.tf_metadata import schema_utils
from tfx_bsl.tfxio import tensor_adapter, tensor_representation_util

VISITOR_ID, CONTENT_ID, RATING = "visitorId", "contentId", "rating"
USER_ID, ITEM_ID = "userId", "itemId"
USER_VOCABULARY, ITEM_VOCABULARY = "users", "items"

RAW_FEATURE_SPEC = {
    VISITOR_ID: tf.io.FixedLenFeature([], tf.string),
    CONTENT_ID: tf.io.FixedLenFeature([], tf.string),
    RATING: tf.io.FixedLenFeature([], tf.float32),
}

_ARROW_SCHEMA = pa.schema(
    [
        (VISITOR_ID, pa.large_list(pa.large_binary())),
        (CONTENT_ID, pa.large_list(pa.large_binary())),
        (RATING, pa.large_list(pa.float32())),
    ]
)


def preprocessing_fn(inputs: dict) -> dict:
    """Raw IDs -> dense IDs; the rating passes through unchanged."""
    return {
        USER_ID: tft.compute_and_apply_vocabulary(inputs[VISITOR_ID], vocab_filename=USER_VOCABULARY),
        ITEM_ID: tft.compute_and_apply_vocabulary(inputs[CONTENT_ID], vocab_filename=ITEM_VOCABULARY),
        RATING: inputs[RATING],
    }


def tensor_adapter_config() -> tensor_adapter.TensorAdapterConfig:
    schema = schema_utils.schema_from_feature_spec(RAW_FEATURE_SPEC)
    return tensor_adapter.TensorAdapterConfig(
        _ARROW_SCHEMA, tensor_representation_util.InferTensorRepresentationsFromSchema(schema)
    )


def _one_per_row(values: pa.Array) -> pa.LargeListArray:
    return pa.LargeListArray.from_arrays(pa.array(np.arange(len(values) + 1, dtype=np.int64)), values)


def to_record_batch(rows: list) -> pa.RecordBatch:
    """[(visitorId, contentId, rating), ...] -> one Arrow record batch in the raw schema."""
    visitors, contents, ratings = zip(*rows)
    return pa.RecordBatch.from_arrays(
        [
            _one_per_row(pa.array([v.encode("utf-8") for v in visitors], pa.large_binary())),
            _one_per_row(pa.array([c.encode("utf-8") for c in contents], pa.large_binary())),
            _one_per_row(pa.array(np.asarray(ratings, dtype=np.float32))),
        ],
        schema=_ARROW_SCHEMA,
    )


def from_record_batch(batch_and_passthrough) -> Iterable[tuple]:
    """Transformed record batch -> (userId, itemId, rating) tuples of Python scalars."""
    batch = batch_and_passthrough[0]
    columns = {name: batch.column(i).flatten().to_numpy() for i, name in enumerate(batch.schema.names)}
    return zip(columns[USER_ID].tolist(), columns[ITEM_ID].tolist(), columns[RATING].tolist())


class ApplyVocabularies(beam.PTransform):
    """(visitorId, contentId, rating) -> ((userId, itemId, rating), transform_fn)."""

    def __init__(self, temp_dir: str) -> None:
        super().__init__()
        self.temp_dir = temp_dir

    def expand(self, ratings):
        with tft_beam.Context(temp_dir=self.temp_dir):
            batches = (
                ratings
                | "Batch" >> beam.BatchElements(min_batch_size=2000, max_batch_size=50000)
                | "ToRecordBatches" >> beam.Map(to_record_batch)
            )
            (transformed, _), transform_fn = (
                batches,
                tensor_adapter_config(),
            ) | "AnalyzeAndTransform" >> tft_beam.AnalyzeAndTransformDataset(
                preprocessing_fn, output_record_batches=True
            )
        dense = transformed | "ToTuples" >> beam.FlatMap(from_record_batch)
        return dense, transform_fn
