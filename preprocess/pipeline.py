"""The preprocessing pipeline graph, in one place.

    Read GA360 sessions (blocks of lines) ─► hit columns per visitor bucket ─► SessionizeHits
        (GroupByKey by bucket, time on items on NumPy arrays) ─────────────────────────────┐
    Read GA4 events (blocks of lines) ─► event columns per visitor bucket ─► TimeOnItems ──┤
    BigQuery SQL / interactions CSV ─► SumInteractions ─► ToColumns ───────────────────────┤
    hits CSV ─► SessionizeHits ─► ToColumns ───────────────────────────────────────────────┴►
    VisitorColumns batches (preprocess.columns): visitors, items, durations; a visitor in one batch
        ├─► MedianDuration (CombineGlobally, exact) ──┐ side input
        └─► ScaleToRatings ◄──────────────────────────┘
              └─► MarkHeldOut (per-user hash split, --test_fraction)
                    └─► ApplyVocabularies (tf.Transform, one record batch per column batch;
                        vocabularies from training rows) ─► (userIds, itemIds, ratings, heldOut)
                          ├─► users_for_item-*.tfrecord       (training, grouped by item)
                          ├─► items_for_user-*.tfrecord       (training, whole rows per batch)
                          ├─► test_items_for_user-*.tfrecord  (held out, whole rows per batch)
                          └─► transform_output/ (transform_fn + vocabularies)
    SeenColumns batches: (visitor, item, first day, last day) (the readers' SEEN output)
        └─► WriteItemDates (training rows, min/max per item) ─► item_dates.tsv (vocabulary order)
    dropped rows ─► dropped/rows-*.jsonl             (dead letters, with the reason)

Where one element holds much: a GA360 bucket (``sessionize.BUCKET_BYTES`` of input, about)
and a column batch hold many visitors' whole histories, by design (a visitor's sessions must
meet in one place, and a user's record is one row); the bucket count grows with the input,
so their size does not. Whole-data-set elements: only the median's histogram accumulator
(distinct durations) and tf.Transform's vocabularies, which are the data set's by definition.

``metadata.json`` is written by the launcher (``preprocess.__main__``) once the job is done,
from the job's outputs and its metrics counters.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import apache_beam as beam
import tensorflow_transform.beam as tft_beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import GoogleCloudOptions

from preprocess import columns, freshness, ga4, rating, records, sessionize, sources, split, transform
from preprocess.options import PreprocessOptions, event_names, item_source
from schemas.contract import DROPPED_DIR, MEDIAN_FILE, STATS_DIR, TRANSFORM_OUTPUT  # output layout


@dataclass
class PipelineHandles:
    """The PCollections a caller (or a test) may want to look at."""

    interactions: beam.PCollection  # columns.VisitorColumns: visitors, counts, items, durations
    seen: beam.PCollection  # columns.SeenColumns: the same visitors and items, first and last days
    median: beam.PCollection  # one float
    dense_batches: beam.PCollection  # (userIds, itemIds, ratings, heldOut) NumPy arrays
    dropped: beam.PCollection  # JSON text of dead-lettered rows


def read_interactions(pipeline: beam.Pipeline, options: PreprocessOptions):
    """The chosen source -> (``columns.VisitorColumns`` batches, the same visitors' items'
    date ranges as ``columns.SeenColumns``, dropped rows). The GA360 file reader gives a
    batch per visitor bucket; the per-visitor steps of the other sources are batched here."""
    o = options
    if o.bq_table or o.ga4_table or o.query:
        query = bigquery_query(o)
        read = pipeline | "ReadFromBigQuery" >> sources.ReadInteractionsFromBigQuery(query)
        per_visitor = read.interactions | "SumInteractions" >> sessionize.SumInteractions()
    elif o.input_format == "interactions_csv":
        read = pipeline | "ReadInteractionsCsv" >> sources.ReadInteractionsCsv(o.input)
        per_visitor = read.interactions | "SumInteractions" >> sessionize.SumInteractions()
    elif o.input_format == "ga4_json":
        read = pipeline | "ReadGa4Events" >> ga4.ReadGa4EventsInBlocks(
            o.input, item_source(o), o.duration, o.user_id_field, event_names(o)
        )
        batches = read.events | "TimeOnItems" >> ga4.TimeOnItemBuckets(o.duration)
        return batches.interactions, batches[freshness.SEEN], read[sources.DROPPED]
    elif o.input_format == "ga_json":
        read = pipeline | "ReadGaSessions" >> sources.ReadGaSessionsInBlocks(
            o.input, item_source(o), o.content_dimension_index, o.hit_type
        )
        batches = read.hits | "SessionizeHits" >> sessionize.SessionizeHitBuckets()
        return batches.interactions, batches[freshness.SEEN], read[sources.DROPPED]
    else:
        read = pipeline | "ReadHitsCsv" >> sources.ReadHitsCsv(o.input, o.item_field)
        per_visitor = read.hits | "SessionizeHits" >> sessionize.SessionizeHits()
    return (per_visitor.interactions | "ToColumns" >> ToColumns(columns.from_visitors),
            per_visitor[freshness.SEEN] | "SeenToColumns" >> ToColumns(columns.from_seen),
            read[sources.DROPPED])


class ToColumns(beam.PTransform):
    """Per-visitor elements -> column batches (``preprocess.columns``) of up to 20,000
    visitors: the batched steps downstream, and tf.Transform, take one batch per call."""

    def __init__(self, to_columns) -> None:
        super().__init__()
        self.to_columns = to_columns

    def expand(self, per_visitor):
        return (
            per_visitor
            | "BatchVisitors" >> beam.BatchElements(min_batch_size=500, max_batch_size=20000)
            | "Columns" >> beam.Map(self.to_columns)
        )


def bigquery_query(options: PreprocessOptions) -> str:
    """The standard-SQL query a BigQuery read runs: ``--query``, or the project's SQL of the
    GA4 (``--ga4_table``) or GA360 (``--bq_table``) export filled in from the flags."""
    o = options
    if o.query:
        return o.query
    if o.ga4_table:
        return ga4.build_query(o.ga4_table, item_source(o), o.duration, o.user_id_field, event_names(o),
                               o.start_date, o.end_date, o.include_intraday)
    return sources.build_query(o.bq_table, item_source(o), o.content_dimension_index, o.hit_type,
                               o.start_date, o.end_date, o.include_intraday)


def temp_dir(options: PreprocessOptions) -> str:
    return options.view_as(GoogleCloudOptions).temp_location or FileSystems.join(
        options.output_dir, "tmp"
    )


def build_pipeline(pipeline: beam.Pipeline, options: PreprocessOptions) -> PipelineHandles:
    """Adds the whole preprocessing graph to ``pipeline``."""
    out = options.output_dir
    interactions, seen, dropped = read_interactions(pipeline, options)

    median = interactions | "MedianDuration" >> rating.MedianDuration(batched=True)
    ratings = interactions | "ScaleToRatings" >> rating.ScaleToRatings(
        median, options.rating_scale, options.rating_cap, batched=True
    )
    marked = ratings | "MarkHeldOut" >> split.MarkHeldOut(options.test_fraction, options.split_seed, batched=True)
    dense_batches, transform_fn = marked | "ApplyVocabularies" >> transform.ApplyVocabularies(
        temp_dir(options), batched=True
    )
    _ = transform_fn | "WriteTransformFn" >> tft_beam.WriteTransformFn(
        FileSystems.join(out, TRANSFORM_OUTPUT)
    )
    _ = dense_batches | "WriteRecords" >> records.WriteInteractionRecords(
        out, options.num_shards, write_test=options.test_fraction > 0
    )
    if freshness.date_source(options)[0] is not None:
        _ = seen | "WriteItemDates" >> freshness.WriteItemDates(
            out, transform_fn, options.test_fraction, options.split_seed, batched=True
        )

    _ = (
        median
        | "MedianToJson" >> beam.Map(lambda m: json.dumps({"median_duration": m}))
        | "WriteMedian"
        >> beam.io.WriteToText(FileSystems.join(out, STATS_DIR, MEDIAN_FILE), shard_name_template="")
    )
    _ = dropped | "WriteDeadLetters" >> beam.io.WriteToText(
        FileSystems.join(out, DROPPED_DIR, "rows"), file_name_suffix=".jsonl"
    )
    return PipelineHandles(interactions, seen, median, dense_batches, dropped)
