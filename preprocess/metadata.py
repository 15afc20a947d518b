"""``metadata.json``: what the trainer needs to know about a preprocessing run.

Assembled after the job from its outputs (vocabulary files, shards, the median file) and
its metrics counters. The keys, the format version and the output layout come from
``schemas/contract.py``; ``schemas/metadata.md`` describes them. Paths are relative to the
output folder so it can be moved between local disk and gs://.
"""
from __future__ import annotations

import json
import logging
import math
from typing import Optional

from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter

from preprocess import counters, freshness, split
from preprocess.options import PreprocessOptions, event_names, is_ga4, item_source
from schemas import contract
from schemas.contract import DatesKey, MetadataKey as K, RatingKey, SplitKey


class NoInteractionsError(RuntimeError):
    """The input held no usable interaction (empty, or every row dropped)."""


def counter_values(result) -> dict:
    """``{counter name: value}`` of the pipeline's own counters (committed when supported)."""
    found = result.metrics().query(MetricsFilter().with_namespace(counters.NAMESPACE))["counters"]
    values: dict = {}
    for item in found:
        try:
            value = item.committed
        except Exception:  # some runners only report attempted values
            value = None
        if value is None:
            value = item.attempted
        values[item.key.metric.name] = values.get(item.key.metric.name, 0) + int(value or 0)
    return values


def _read(path: str) -> bytes:
    with FileSystems.open(path) as handle:
        return handle.read()


def count_lines(path: str) -> int:
    data = _read(path)
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


def _relative(paths: list, output_dir: str) -> list:
    prefix = output_dir.rstrip("/") + "/"
    return sorted(p[len(prefix):] if p.startswith(prefix) else p for p in paths)


def _shards(output_dir: str, prefix: str) -> list:
    pattern = FileSystems.join(output_dir, f"{prefix}-*{contract.RECORD_SUFFIX}")
    return [m.path for m in FileSystems.match([pattern])[0].metadata_list]


def build_metadata(result, options: PreprocessOptions) -> dict:
    """The ``metadata.json`` document of a finished job: exactly ``contract.WRITTEN_KEYS``."""
    out = options.output_dir
    values = counter_values(result)
    dropped = {
        reason: values.get(counters.DROPPED_PREFIX + reason, 0) for reason in counters.DROP_REASONS
    }
    ninteractions = values.get("interactions", 0)
    if ninteractions == 0:
        raise NoInteractionsError(
            "No interactions survived preprocessing: the input is empty or every row was dropped "
            f"(dropped by reason: { {k: v for k, v in dropped.items() if v} })."
        )
    median_text = _read(FileSystems.join(out, contract.STATS_DIR, contract.MEDIAN_FILE)).decode()
    median: Optional[float] = json.loads(median_text)[K.MEDIAN_DURATION]
    if median is None or not math.isfinite(median) or median <= 0:  # ratings divide by it
        raise RuntimeError(f"The median duration is {median}: ratings would not be finite.")
    user_vocab = contract.USER_VOCABULARY_PATH
    item_vocab = contract.ITEM_VOCABULARY_PATH
    nusers = count_lines(FileSystems.join(out, user_vocab))
    nitems = count_lines(FileSystems.join(out, item_vocab))
    if values.get("user_records", 0) != nusers:  # the no-shuffle write of records.py relies on it
        raise RuntimeError(
            f"{values.get('user_records', 0)} items_for_user records for {nusers} users: a user's "
            "interactions were split across record batches."
        )
    return {
        K.FORMAT_VERSION: contract.FORMAT_VERSION,
        K.NUSERS: nusers,
        K.NITEMS: nitems,
        K.NINTERACTIONS: ninteractions,
        K.MEDIAN_DURATION: median,
        K.RATING: {
            RatingKey.SCALE: options.rating_scale,
            RatingKey.CAP: options.rating_cap,
            RatingKey.FORMULA: contract.RATING_FORMULA,
        },
        K.USER_VOCABULARY: user_vocab,
        K.ITEM_VOCABULARY: item_vocab,
        K.USERS_FOR_ITEM: _relative(_shards(out, contract.USERS_FOR_ITEM), out),
        K.ITEMS_FOR_USER: _relative(_shards(out, contract.ITEMS_FOR_USER), out),
        K.TEST_ITEMS_FOR_USER: _relative(_shards(out, contract.TEST_ITEMS_FOR_USER), out)
        if options.test_fraction > 0 else [],
        K.SPLIT: {
            SplitKey.TEST_FRACTION: options.test_fraction,
            SplitKey.SEED: options.split_seed,
            SplitKey.METHOD: split.METHOD,
            SplitKey.HELD_OUT_INTERACTIONS: values.get("held_out_interactions", 0),
            SplitKey.TEST_INTERACTIONS: values.get("test_interactions", 0),
            SplitKey.TEST_USERS: values.get("test_users", 0),
            SplitKey.TEST_DROPPED_UNSEEN_ITEM: dropped["held_out_unseen_item"],
        },
        K.RECORD_COMPRESSION: contract.RECORD_COMPRESSION,
        K.TRANSFORM_OUTPUT: contract.TRANSFORM_OUTPUT,
        K.DROPPED: dropped,
        K.SESSIONS: values.get("sessions", 0),
        K.EVENTS: values.get("events", 0),
        K.INPUT: _describe_input(options),
        K.DATES: dates_block(options, nitems),
    }


def dates_block(options: PreprocessOptions, nitems: int) -> dict:
    """The ``dates`` object (``contract.DatesKey``) from ``item_dates.tsv``: whether the items
    have dates, from which column, and the training data's oldest and newest date. A source
    with a date column whose rows held no valid date has none: its empty table is removed."""
    source, reason = freshness.date_source(options)
    none = {DatesKey.AVAILABLE: False, DatesKey.ITEM_DATES: None, DatesKey.OLDEST: None,
            DatesKey.NEWEST: None, DatesKey.ITEMS_WITH_DATES: 0}
    if source is None:
        return {**none, DatesKey.SOURCE: reason}
    path = FileSystems.join(options.output_dir, contract.ITEM_DATES_FILE)
    lines = _read(path).decode("utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) != nitems:  # the table is written from the vocabulary itself
        raise RuntimeError(f"{path} has {len(lines)} lines for {nitems} items.")
    dated = [line.split("\t")[1:] for line in lines]
    dated = [(first, last) for first, last in dated if first]
    if not dated:
        FileSystems.delete([path])
        return {**none, DatesKey.SOURCE: f"{source}: no training interaction has a valid date"}
    return {
        DatesKey.AVAILABLE: True,
        DatesKey.SOURCE: source,
        DatesKey.ITEM_DATES: contract.ITEM_DATES_FILE,
        DatesKey.OLDEST: min(first for first, _ in dated),  # YYYY-MM-DD sorts as dates do
        DatesKey.NEWEST: max(last for _, last in dated),
        DatesKey.ITEMS_WITH_DATES: len(dated),
    }


def _describe_input(options: PreprocessOptions) -> dict:
    o = options
    items = item_source(o)
    if is_ga4(o):
        described = {"item_source": items, "duration": o.duration, "user_id_field": o.user_id_field,
                     "event_names": event_names(o)}
        if o.ga4_table:
            return {"source": "bigquery_ga4", "table": o.ga4_table, **described, "start_date": o.start_date,
                    "end_date": o.end_date, "include_intraday": o.include_intraday}
        return {"source": "ga4_json", "pattern": o.input, **described}
    if o.bq_table or o.query:
        return {"source": "bigquery", "table": o.bq_table, "custom_query": bool(o.query),
                "item_source": items, "content_dimension_index": o.content_dimension_index,
                "hit_type": o.hit_type, "start_date": o.start_date, "end_date": o.end_date,
                "include_intraday": o.include_intraday}
    described = {"source": o.input_format, "pattern": o.input}
    if o.input_format == "ga_json":
        described.update(item_source=items, content_dimension_index=o.content_dimension_index,
                         hit_type=o.hit_type)
    if o.input_format == "hits_csv":
        described["item_field"] = o.item_field
    return described


def write_metadata(metadata: dict, output_dir: str) -> str:
    """Writes ``output_dir/metadata.json``; returns its path."""
    path = FileSystems.join(output_dir, contract.METADATA_FILE)
    with FileSystems.create(path) as handle:
        # allow_nan=False: a non-finite number must fail here, not reach the trainer.
        handle.write(json.dumps(metadata, indent=2, sort_keys=True, allow_nan=False).encode("utf-8"))
    return path


def log_summary(metadata: dict) -> None:
    dropped = {k: v for k, v in metadata[K.DROPPED].items() if v}
    logging.info(
        "Wrote %d interactions: %d users x %d items, median duration %s.",
        metadata[K.NINTERACTIONS], metadata[K.NUSERS], metadata[K.NITEMS], metadata[K.MEDIAN_DURATION],
    )
    held_out = metadata[K.SPLIT]
    if held_out[SplitKey.TEST_FRACTION] > 0:
        logging.info(
            "Held out %d interactions of %d users for evaluation (test_fraction=%s, seed=%d).",
            held_out[SplitKey.TEST_INTERACTIONS], held_out[SplitKey.TEST_USERS],
            held_out[SplitKey.TEST_FRACTION], held_out[SplitKey.SEED],
        )
    dates = metadata[K.DATES]
    if dates[DatesKey.AVAILABLE]:
        logging.info("Item dates: %d of %d items seen from %s to %s (%s).",
                     dates[DatesKey.ITEMS_WITH_DATES], metadata[K.NITEMS], dates[DatesKey.OLDEST],
                     dates[DatesKey.NEWEST], dates[DatesKey.SOURCE])
    else:
        logging.info("No item dates: %s.", dates[DatesKey.SOURCE])
    if dropped:
        logging.info(
            "Dropped %d rows/hits: %s", sum(dropped.values()),
            ", ".join(f"{reason}={count} ({counters.DROP_REASONS[reason]})" for reason, count in dropped.items()),
        )
    else:
        logging.info("Dropped 0 rows.")
