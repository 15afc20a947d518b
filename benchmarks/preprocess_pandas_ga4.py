"""The GA4 preprocessing job in pandas + NumPy: the benchmark peer of the pipeline on GA4 events.

Same transformation as ``python -m preprocess --input_format ga4_json --item_source
event_param:article_id`` with the other flags at their defaults (``--duration engagement_time``,
``--user_id_field user_pseudo_id``, every event name): the command ``benchmarks.preprocess_speed
--schema ga4`` measures. The semantics are those of ``schemas/ga4_interactions.sql`` (the
``engagement_time`` branch) and of its Beam twin ``preprocess/ga4.py``:

1. read the newline-delimited GA4 export events with Arrow's streaming JSON reader
   (``pyarrow.json.open_json``, a few MiB at a time), typed by an explicit schema of the four
   fields the job reads (``user_pseudo_id``, ``event_timestamp``, ``event_name``,
   ``event_params``); each block is reduced at once, on its Arrow columns, to what steps 2-3 need;
2. per event: visitor = ``user_pseudo_id``; session = MAX(``int_value``) of the ``ga_session_id``
   params; item = MAX(COALESCE(``string_value``, ``int_value`` as decimal text)) of the
   ``article_id`` params (``--item_source page_title``: MAX(``string_value``); ``page_location``:
   the same, cut at the first ``?`` or ``#``); engagement = MAX(``int_value``) of the
   ``engagement_time_msec`` params. Dropped and counted in the pipeline's order: a null or blank
   visitor (``missing_visitor_id``), no session (``missing_session_id``), a null or negative
   timestamp (``invalid_time``), a negative engagement (``invalid_engagement_time``), no item or
   a blank one (``event_without_item``);
3. time on item: duplicate events (same visitor, session, timestamp, name, item and engagement)
   count once; the sum of ``engagement_time_msec`` over a (visitor, item)'s events, in ms (an
   event without the param adds 0); pairs whose sum is 0 (an item whose page sent no engagement,
   such as a session's last page) are dropped and counted (``nonpositive_duration``);
4. to 6. as ``benchmarks/preprocess_pandas.py`` (its ``write_outputs``): exact median, rating =
   min(scale * d / median, cap) as float32, tf.Transform's vocabulary order, the two TFRecord
   files, the vocabularies and ``metadata.json``.

Clean input assumed, as for the GA360 peer: every line one JSON event of the export schema, its
INT64 fields all JSON numbers or all JSON strings of digits (the first line decides, as in
BigQuery's own NDJSON export, which writes strings); a line Arrow cannot type against the schema
(malformed JSON, an ``event_params`` that is not a list of objects, a mix of the INT64 forms)
makes the reader fail, and IDs with control characters are not rejected (the pipeline
dead-letters those lines). An event param key appears once per event in the export; MAX makes a
repeated one well defined and is honoured.

    .venv/bin/python -m benchmarks.preprocess_pandas_ga4 --input data/ga_sample/ga4_events_sample.ndjson \\
        --output_dir output/preprocess_pandas_ga4 [--timings_json stages.json]
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pyarrow import json as pa_json

from benchmarks.preprocess_pandas import StageTimer, input_paths, write_outputs
from schemas.contract import CONTENT_ID, SESSION_DURATION, VISITOR_ID, MetadataKey as K

ITEM_SOURCES = ("page_location", "page_title")  # and event_param:KEY
EVENT_PARAM_PREFIX = "event_param:"
BLOCK_BYTES = 4 << 20  # Arrow parses 4 MiB of lines per batch (less CPU and memory than bigger blocks)
_INT64_AS_TEXT = re.compile(rb'"event_timestamp"\s*:\s*"')
DROP_REASONS = ("missing_visitor_id", "missing_session_id", "invalid_time", "invalid_engagement_time",
                "event_without_item", "nonpositive_duration")


def item_param(item_source: str) -> str:
    """The event param that holds the item of ``item_source``."""
    if item_source in ITEM_SOURCES:
        return item_source
    key = item_source[len(EVENT_PARAM_PREFIX):]
    if item_source.startswith(EVENT_PARAM_PREFIX) and re.fullmatch(r"[A-Za-z0-9_]+", key):
        return key
    raise ValueError(f"item_source must be one of {', '.join(ITEM_SOURCES)} or event_param:KEY, got {item_source!r}")


# --------------------------------------------------------------------------- reading


def int64_type(path: str) -> pa.DataType:
    """How the file writes INT64s: ``int64`` (JSON numbers) or ``string`` (BigQuery's export),
    from its first line."""
    with open(path, "rb") as handle:
        for line in handle:
            if line.strip():
                return pa.string() if _INT64_AS_TEXT.search(line) else pa.int64()
    return pa.int64()


def parse_options(int64: pa.DataType) -> pa_json.ParseOptions:
    """The export's fields the job reads, typed as the export types them; the rest ignored."""
    value = pa.struct([("string_value", pa.string()), ("int_value", int64)])
    schema = pa.schema([
        ("user_pseudo_id", pa.string()), ("event_timestamp", int64), ("event_name", pa.string()),
        ("event_params", pa.list_(pa.struct([("key", pa.string()), ("value", value)]))),
    ])
    return pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")


def _int64(values: pa.Array) -> pa.Array:
    return values if values.type == pa.int64() else pc.cast(values, pa.int64())


def per_event_max(owner: pa.Array, values: pa.Array, n: int) -> pa.Array:
    """MAX of ``values`` per event (``owner``: each value's event row, ascending), null where an
    event has none: the SQL's ``(SELECT MAX(...) FROM UNNEST(event_params) WHERE key = ...)``."""
    valid = values.is_valid()
    owner, values = owner.filter(valid), values.filter(valid)
    rows = owner.to_numpy()
    if len(rows) > 1 and not (rows[1:] > rows[:-1]).all():  # a repeated key: MAX decides
        best = pa.table({"event": owner, "value": values}).group_by("event").aggregate([("value", "max")])
        rows, values = best["event"].to_numpy(), best["value_max"].combine_chunks()
    position = np.full(n, -1, np.int64)
    position[rows] = np.arange(len(rows))
    return values.take(pa.array(position, mask=position < 0))


class BlockReducer:
    """A batch of events -> (the (visitor, item) of each kept event, the kept events with a
    positive engagement: visitor, session, time, name, item, engagement); counts the drops."""

    def __init__(self, item_source: str, dropped: dict) -> None:
        self.item_key = item_param(item_source)
        self.item_source = item_source
        self.dropped = dropped
        self.events = 0
        for reason in DROP_REASONS:
            dropped.setdefault(reason, 0)

    def count(self, reason: str, mask: np.ndarray) -> None:
        self.dropped[reason] += int(np.count_nonzero(mask))

    def __call__(self, batch: pa.RecordBatch) -> tuple[pa.Table, pa.Table]:
        n = batch.num_rows
        self.events += n
        params = batch.column("event_params")
        entries = params.flatten()
        parents = pc.list_parent_indices(params)
        keys, values = entries.field("key"), entries.field("value")

        def param(key: str) -> tuple[pa.Array, pa.Array, pa.Array]:
            mine = pc.equal(keys, key)
            string_value, int_value = values.filter(mine).flatten()  # the struct's nulls carried into both
            return parents.filter(mine), string_value, _int64(int_value)

        def mask(array: pa.Array) -> np.ndarray:
            return pc.fill_null(array, False).to_numpy(zero_copy_only=False)

        visitor = batch.column("user_pseudo_id")
        ok = mask(pc.not_equal(pc.utf8_trim_whitespace(visitor), ""))
        self.count("missing_visitor_id", ~ok)
        owner, _, ints = param("ga_session_id")
        session = per_event_max(owner, ints, n)
        has_session = session.is_valid().to_numpy(zero_copy_only=False)
        self.count("missing_session_id", ok & ~has_session)
        ok &= has_session
        time = _int64(batch.column("event_timestamp"))
        good_time = mask(pc.greater_equal(time, 0))
        self.count("invalid_time", ok & ~good_time)
        ok &= good_time
        owner, _, ints = param("engagement_time_msec")
        engagement = per_event_max(owner, ints, n)
        negative = mask(pc.less(engagement, 0))
        self.count("invalid_engagement_time", ok & negative)
        ok &= ~negative

        owner, strings, ints = param(self.item_key)
        if self.item_source.startswith(EVENT_PARAM_PREFIX):
            strings = pc.coalesce(strings, pc.cast(ints, pa.string()))
        item = per_event_max(owner, strings, n)
        if self.item_source == "page_location":
            item = pc.replace_substring_regex(item, r"(?s)[?#].*", "", max_replacements=1)
        has_item = mask(pc.not_equal(pc.utf8_trim_whitespace(item), ""))
        self.count("event_without_item", ok & ~has_item)
        ok &= has_item

        # Every kept event's (visitor, item) makes a pair (to count the pairs whose sum is 0);
        # only events with a positive engagement add to a sum, so only they are kept whole.
        kept = pa.array(ok)
        pairs = pa.table({"v": visitor.filter(kept), "i": item.filter(kept)})
        engaged = pa.array(ok & mask(pc.greater(engagement, 0)))
        timed = pa.table({
            "v": visitor.filter(engaged), "session": session.filter(engaged), "time": time.filter(engaged),
            "name": batch.column("event_name").filter(engaged), "i": item.filter(engaged),
            "e": engagement.filter(engaged),
        })
        return pairs, timed


def read_events(paths: Sequence[str], item_source: str, dropped: dict,
                block_bytes: int = BLOCK_BYTES) -> tuple[pa.Table, pa.Table, int]:
    """GA4 NDJSON files -> (``(v, i)`` of every kept event, the kept events with a positive
    engagement, the number of events read)."""
    reduce = BlockReducer(item_source, dropped)
    pairs, timed = [], []
    for path in paths:
        reader = pa_json.open_json(path, read_options=pa_json.ReadOptions(block_size=block_bytes),
                                   parse_options=parse_options(int64_type(path)))
        for batch in reader:
            p, t = reduce(batch)
            pairs.append(p)
            timed.append(t)
    if not pairs:
        raise ValueError("The input holds no event.")
    return pa.concat_tables(pairs), pa.concat_tables(timed), reduce.events


# --------------------------------------------------------------------------- time on item


def engagement_time_on_items(pairs: pa.Table, timed: pa.Table, dropped: dict) -> pd.DataFrame:
    """(visitorId, contentId, session_duration): Σ engagement ms over each (visitor, item)'s
    distinct events, the positive sums; the (visitor, item) pairs with none counted."""
    events = timed.to_pandas(types_mapper=pd.ArrowDtype).drop_duplicates()
    summed = events.groupby(["v", "i"], sort=False)["e"].sum()
    touched = len(pairs.to_pandas(types_mapper=pd.ArrowDtype).drop_duplicates())
    dropped["nonpositive_duration"] = touched - len(summed)  # every sum here is positive
    return pd.DataFrame({
        VISITOR_ID: summed.index.get_level_values(0).to_numpy(dtype=object),
        CONTENT_ID: summed.index.get_level_values(1).to_numpy(dtype=object),
        SESSION_DURATION: summed.to_numpy(dtype=np.int64),
    })


# --------------------------------------------------------------------------- the job


def run(input_pattern: str, output_dir: str, item_source: str = "event_param:article_id",
        rating_scale: float = 0.3, rating_cap: float = 1.0, timer: Optional[StageTimer] = None) -> dict:
    """Runs the whole transformation and returns the metadata it wrote."""
    timer = timer or StageTimer()
    paths = input_paths(input_pattern)
    dropped: dict = {}
    pairs, timed, events = read_events(paths, item_source, dropped)
    timer.done("read_and_reduce_events")
    interactions = engagement_time_on_items(pairs, timed, dropped)
    del pairs, timed
    timer.done("time_on_item")
    described = {"source": "ga4_json", "pattern": input_pattern, "item_source": item_source,
                 "duration": "engagement_time", "user_id_field": "user_pseudo_id", "event_names": [],
                 "implementation": "benchmarks.preprocess_pandas_ga4"}
    return write_outputs(interactions, output_dir, rating_scale, rating_cap, dropped, described, timer,
                         extra={K.EVENTS: events})


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="GA4 events NDJSON file or glob pattern (local)")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--item_source", default="event_param:article_id",
                   help="event_param:KEY (default event_param:article_id), page_location or page_title")
    p.add_argument("--rating_scale", type=float, default=0.3)
    p.add_argument("--rating_cap", type=float, default=1.0)
    p.add_argument("--timings_json", default=None, help="write the seconds per stage here")
    args = p.parse_args(argv)
    timer = StageTimer()
    meta = run(args.input, args.output_dir, args.item_source, args.rating_scale, args.rating_cap, timer)
    if args.timings_json:
        with open(args.timings_json, "w") as handle:
            json.dump(timer.seconds, handle, indent=2)
    print(f"preprocess_pandas_ga4: {meta[K.NINTERACTIONS]} interactions, {meta[K.NUSERS]} users, "
          f"{meta[K.NITEMS]} items, median {meta[K.MEDIAN_DURATION]} -> {args.output_dir}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
