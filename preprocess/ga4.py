"""GA4 export events (BigQuery ``events_*`` or their NDJSON) -> per-visitor time on items.

The Beam twin of ``schemas/ga4_interactions.sql``; both give exactly the same
``(visitorId, contentId, session_duration)`` rows (tested with DuckDB running the SQL text).

* **visitor**: ``user_pseudo_id`` (``user_field="user_id"``: the site's own user ID);
* **session**: (visitor, the ``ga_session_id`` event param);
* **item** (``item_source``): ``page_location`` (the URL cut at the first ``?`` or ``#``),
  ``page_path`` (that URL without scheme and host), ``page_title``, ``event_param:KEY`` (a
  string or int param, ints as decimal text), or ``item_id`` (each ``items[].item_id``);
* **time on item** (``duration``), in milliseconds:

  - ``engagement_time``: ``Σ engagement_time_msec`` over the item's distinct events — GA4's
    own measure of foreground time, reported by the page with each event;
  - ``next_event``: over a session's distinct event times ``t_1 < … < t_n`` (µs) an event at
    ``t_k`` lasts ``d_k = t_{k+1} − t_k`` (the last has none) and each distinct
    ``(t_k, item)`` is credited ``d_k``; ``Σ d_k / 1000`` per (visitor, item) — the UA hit-gap
    semantics of ``preprocess/sessionize.py``, with events in the place of hits.

  Only positive sums are kept.

An event param is ``MAX`` of its values over the entries with that key (the export never
repeats a key). ``--event_names`` keeps only the named events. INT64 fields may be JSON
numbers or strings (BigQuery's own NDJSON export writes strings). Events without a visitor,
session or valid timestamp, with a non-numeric or negative engagement time (``engagement_time``
only), or malformed are counted (``preprocess:dropped_<reason>``) and, where malformed,
dead-lettered.

The pipeline reads blocks of lines (``ReadGa4EventsInBlocks``): a clean block is parsed by
Arrow's JSON reader, its rows made on columns; any doubt sends the block through
``ParseGa4EventFn`` line by line, the reference for every value, drop and dead letter.
"""
from __future__ import annotations

import io
import itertools
import json
import re
from collections import defaultdict
from typing import Any, Iterable, Optional, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyarrow import json as pa_json

import schemas
from preprocess import columns, counters, freshness, sessionize, sources
from preprocess.sources import INT64_MAX

SQL_FILE = "ga4_interactions.sql"
ITEM_SOURCES = ("page_location", "page_path", "page_title", "item_id")  # and event_param:KEY
EVENT_PARAM_PREFIX = "event_param:"
DURATIONS = ("engagement_time", "next_event")
USER_FIELDS = ("user_pseudo_id", "user_id")
NAME = re.compile(r"^[A-Za-z0-9_]+$")  # GA4 event and param names: letters, digits, underscores
_URL_HOST = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/]*")

# (visitor, (sessionId, event_time µs, event_name, contentId or None, engagement ms or None,
#            event_date as a day number or None))
Ga4Event = tuple


def check_item_source(item_source: str) -> None:
    """Raises ``ValueError`` unless ``item_source`` is one of GA4's item sources."""
    if item_source in ITEM_SOURCES:
        return
    if item_source.startswith(EVENT_PARAM_PREFIX) and NAME.match(item_source[len(EVENT_PARAM_PREFIX):]):
        return
    raise ValueError(
        f"--item_source for GA4 must be one of {', '.join(ITEM_SOURCES)} or event_param:KEY "
        f"(KEY of letters, digits, underscores), got {item_source!r}."
    )


# --------------------------------------------------------------------------- SQL


def _param_sql(key: str, value: str) -> str:
    return f"(SELECT MAX({value}) FROM UNNEST(e.event_params) AS p WHERE p.key = '{key}')"


def item_sql(item_source: str) -> tuple[str, str]:
    """Returns ``(item expression, join clause)`` for the GA4 SQL template."""
    check_item_source(item_source)
    location = f"REGEXP_EXTRACT({_param_sql('page_location', 'p.value.string_value')}, '^[^?#]*')"
    if item_source == "page_location":
        return location, ""
    if item_source == "page_path":
        return f"REGEXP_REPLACE({location}, '{_URL_HOST.pattern}', '')", ""
    if item_source == "page_title":
        return _param_sql("page_title", "p.value.string_value"), ""
    if item_source == "item_id":
        return "it.item_id", "LEFT JOIN UNNEST(e.items) AS it ON TRUE"
    key = item_source[len(EVENT_PARAM_PREFIX):]
    text = "COALESCE(p.value.string_value, CAST(p.value.int_value AS STRING))"
    return _param_sql(key, text), ""


def build_query(
    table: str,
    item_source: str = "page_location",
    duration: str = "engagement_time",
    user_field: str = "user_pseudo_id",
    event_names: Sequence[str] = (),
    start_date: Optional[str] = None,
    end_date: Optional[str] = None,
    include_intraday: bool = False,
) -> str:
    """``schemas/ga4_interactions.sql`` filled in for one table (``PROJECT.DATASET.events_*``,
    or any FROM-able expression, e.g. DuckDB's ``read_json(...)``)."""
    if duration not in DURATIONS:
        raise ValueError(f"unknown duration {duration!r}")
    if user_field not in USER_FIELDS:
        raise ValueError(f"unknown user field {user_field!r}")
    if any(not NAME.match(name) for name in event_names):
        raise ValueError(f"event names must be letters, digits and underscores: {list(event_names)}")
    item, item_join = item_sql(item_source)
    table_ref, wildcard = sources.table_reference(table)
    names = ", ".join(f"'{name}'" for name in event_names)
    return schemas.read_text(SQL_FILE).format(
        table=table_ref,
        table_filter=sources.wildcard_filter(wildcard, start_date, end_date, include_intraday),
        visitor=f"e.{user_field}",
        item=item,
        item_join=item_join,
        event_filter=f"e.event_name IN ({names})" if event_names else "TRUE",
        duration=duration,
    )


# --------------------------------------------------------------------------- NDJSON events


class MalformedEvent(ValueError):
    """A GA4 event field has the wrong JSON type; the argument names the field."""


def parse_int64(value: Any) -> Optional[int]:
    """An INT64 from a JSON number or numeric string, or None (null, other types, out of range)."""
    if type(value) is int:
        number = value
    elif isinstance(value, str) and re.fullmatch(r"\s*[+-]?[0-9]{1,19}\s*", value):
        number = int(value)
    else:
        return None
    return number if -INT64_MAX - 1 <= number <= INT64_MAX else None


def event_params(event: dict) -> dict:
    """``{key: [value record, ...]}`` of an event's ``event_params``."""
    params = event.get("event_params")
    if params is None:
        return {}
    if not isinstance(params, list):
        raise MalformedEvent("event_params")
    found: dict = defaultdict(list)
    for param in params:
        if not isinstance(param, dict) or not isinstance(param.get("value", {}), (dict, type(None))):
            raise MalformedEvent("event_params")
        if isinstance(param.get("key"), str) and param.get("value"):
            found[param["key"]].append(param["value"])
    return found


def int_param(params: dict, key: str) -> tuple[Optional[int], bool]:
    """``(MAX of the param's INT64 int_values, whether a non-null one was not an INT64)``."""
    values = [v.get("int_value") for v in params.get(key, ()) if v.get("int_value") is not None]
    numbers = [parse_int64(v) for v in values]
    valid = [n for n in numbers if n is not None]
    return (max(valid) if valid else None), len(valid) < len(numbers)


def string_param(params: dict, key: str, ints_as_text: bool = False) -> Any:
    """MAX of the param's string values (with ``ints_as_text``, int values as decimal text
    where the string value is null); a value of another JSON type is returned as it is, for
    the caller to reject as an invalid ID."""
    values = []
    for v in params.get(key, ()):
        text = v.get("string_value")
        if text is None and ints_as_text and v.get("int_value") is not None:
            number = parse_int64(v.get("int_value"))
            text = str(number) if number is not None else v.get("int_value")
        if text is not None:
            values.append(text)
    odd = [v for v in values if not isinstance(v, str)]
    if odd:
        return odd[0]
    return max(values) if values else None


def page_location(url: Any) -> Any:
    """The URL up to its first ``?`` or ``#`` (SQL: ``REGEXP_EXTRACT(url, '^[^?#]*')``)."""
    return re.match(r"[^?#]*", url).group(0) if isinstance(url, str) else url


def event_items(event: dict, params: dict, item_source: str) -> list:
    """The raw item values of one event (``[None]`` when it has none), as the SQL's item
    expression gives them."""
    if item_source in ("page_location", "page_path"):
        location = page_location(string_param(params, "page_location"))
        if item_source == "page_path" and isinstance(location, str):
            location = _URL_HOST.sub("", location, count=1)
        return [location]
    if item_source == "page_title":
        return [string_param(params, "page_title")]
    if item_source == "item_id":
        items = event.get("items")
        if items is None:
            return [None]
        if not isinstance(items, list) or not all(isinstance(it, dict) for it in items):
            raise MalformedEvent("items")
        return [it.get("item_id") for it in items] or [None]
    return [string_param(params, item_source[len(EVENT_PARAM_PREFIX):], ints_as_text=True)]


class _LazyText:
    """A line's text (``sources.decode_line``) made only when ``str()`` asks for it: a dead
    letter's record, rare next to the lines that parse."""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    def __str__(self) -> str:
        return sources.decode_line(self.raw)


class ParseGa4EventFn(beam.DoFn):
    """One NDJSON line of a GA4 export (an event) -> its ``Ga4Event`` rows, one per item."""

    def __init__(self, item_source: str, duration: str, user_field: str, event_names: Sequence[str]) -> None:
        check_item_source(item_source)
        self.item_source = item_source
        self.engagement_only = duration == "engagement_time"
        self.user_field = user_field
        self.event_names = frozenset(event_names) or None
        self.events = counters.counter("events")
        self.other_event = counters.dropped("other_event_name")
        self.without_item = counters.dropped("event_without_item")
        self.bad_engagement = counters.dropped("invalid_engagement_time")
        self.no_session = counters.dropped("missing_session_id")
        self.no_visitor = counters.dropped("missing_visitor_id")

    def process(self, raw: bytes) -> Iterable:
        try:  # the common case (sources.loads); the line's text is only needed for dead letters
            event = sources.loads(raw)
            line = _LazyText(raw)
        except ValueError:
            line = sources.decode_line(raw)
            if line is None:
                yield sources.undecodable(raw)
                return
            if not line.strip():
                return
            try:
                event = json.loads(line)
            except (ValueError, RecursionError):
                yield sources.dead_letter("malformed_json", line)
                return
        if not isinstance(event, dict):
            yield sources.dead_letter("malformed_json", str(line))
            return
        self.events.inc()
        name = event.get("event_name")
        if self.event_names is not None and name not in self.event_names:
            self.other_event.inc()
            return
        visitor, problem = sources.visitor_id(event.get(self.user_field))
        if problem == "missing_visitor_id":  # normal for user_id (anonymous visits): count only
            self.no_visitor.inc()
            return
        if problem:
            yield sources.dead_letter(problem, str(line))
            return
        try:
            params = event_params(event)
            raw_items = event_items(event, params, self.item_source)
        except MalformedEvent:
            yield sources.dead_letter("malformed_event", str(line))
            return
        session, _ = int_param(params, "ga_session_id")
        if session is None:
            self.no_session.inc()
            return
        time = parse_int64(event.get("event_timestamp"))
        if time is None or time < 0:
            yield sources.dead_letter("invalid_time", str(line))
            return
        engagement, invalid = int_param(params, "engagement_time_msec")
        if self.engagement_only and (invalid or (engagement is not None and engagement < 0)):
            yield sources.dead_letter("invalid_engagement_time", str(line))
            return
        name = name if isinstance(name, str) else json.dumps(name)
        day = freshness.parse_export_day(event.get("event_date"))
        for raw_item in raw_items:
            item, problem = sources.content_id(raw_item)
            if problem:  # the event still ends the previous event's time (next_event)
                yield sources.dead_letter(problem, str(line))
            if item is None:
                self.without_item.inc()
            yield visitor, (session, time, name, item, engagement, day)


class _VisitorTimeFn(beam.DoFn):
    """A visitor's grouped Ga4Event rows -> their time on items; the counters both rules keep,
    and the items' date ranges (``freshness.SEEN``: every row of the item, its event_date)."""

    def __init__(self) -> None:
        self.sessions = counters.counter("sessions")
        self.nonpositive = counters.dropped("nonpositive_duration")
        self.overflow = counters.dropped("duration_overflow")

    @staticmethod
    def date_ranges(rows: Iterable[tuple]) -> dict:
        ranges: dict = {}
        for _, _, _, item, _, day in rows:
            if item is not None and day is not None:
                freshness.widen(ranges, item, day, day)
        return ranges


class EngagementTimeFn(_VisitorTimeFn):
    """(visitor, [Ga4Event row, ...]) -> (visitor, ((item, Σ engagement ms), ...))."""

    def process(self, element) -> Iterable[sessionize.VisitorInteractions]:
        visitor, rows = element
        rows = list(rows)
        distinct = {row[:5] for row in rows}  # an event is not its date: duplicates count once
        self.sessions.inc(len({row[0] for row in distinct}))
        totals: dict = defaultdict(int)
        for _, _, _, item, engagement in distinct:
            if item is not None:
                totals[item] += engagement or 0
        kept = sessionize.positive_items(totals, self.nonpositive, self.overflow)
        if kept:
            yield visitor, kept
            yield freshness.seen_output(visitor, kept, self.date_ranges(rows))


class NextEventTimeFn(_VisitorTimeFn):
    """(visitor, [Ga4Event row, ...]) -> (visitor, ((item, Σ gap ms), ...)), gaps as on UA hits."""

    def process(self, element) -> Iterable[sessionize.VisitorInteractions]:
        visitor, rows = element
        rows = list(rows)
        sessions: dict = defaultdict(list)
        for session, time, _, item, _, _ in rows:
            sessions[session].append((time, item))
        self.sessions.inc(len(sessions))
        totals: dict = defaultdict(int)  # microseconds, exact integers until the final division
        for hits in sessions.values():
            for item, gap in sessionize.session_item_durations(hits).items():
                totals[item] += gap
        kept = sessionize.positive_items(totals, self.nonpositive, self.overflow)
        if kept:
            yield visitor, tuple((item, gap / 1000) for item, gap in kept)
            yield freshness.seen_output(visitor, kept, self.date_ranges(rows))


class ReadGa4Events(beam.PTransform):
    """GA4 export NDJSON (local or gs://) -> Ga4Event rows keyed by visitor (+ dropped)."""

    def __init__(self, pattern: str, item_source: str, duration: str, user_field: str,
                 event_names: Sequence[str]) -> None:
        super().__init__()
        self.pattern = pattern
        self.parse = ParseGa4EventFn(item_source, duration, user_field, event_names)

    def expand(self, pbegin):
        sources.matched_files(self.pattern)  # the clear errors now: no file, only empty files
        return (
            pbegin
            | "ReadLineBlocks" >> sources.ReadLineBlocks(self.pattern)
            | "ParseEvents" >> beam.ParDo(ParseGa4EventBlockFn(self.parse)).with_outputs(
                sources.DROPPED, main="events")
        )


class ParseGa4EventBlockFn(beam.DoFn):
    """A block of GA4 NDJSON lines -> ``ParseGa4EventFn`` applied to each line in turn."""

    def __init__(self, parse: ParseGa4EventFn) -> None:
        self.parse = parse

    def process(self, lines: list) -> Iterable:
        for raw in lines:
            yield from self.parse.process(raw)


class TimeOnItems(beam.PTransform):
    """Ga4Event rows keyed by visitor -> one VisitorInteractions per visitor (``.interactions``)
    and its items' date ranges (``[freshness.SEEN]``)."""

    def __init__(self, duration: str) -> None:
        super().__init__()
        if duration not in DURATIONS:
            raise ValueError(f"unknown duration {duration!r}")
        self.duration = duration

    def expand(self, events):
        per_visitor = EngagementTimeFn() if self.duration == "engagement_time" else NextEventTimeFn()
        return (
            events
            | "GroupByVisitor" >> beam.GroupByKey()
            | "SumPerItem" >> beam.ParDo(per_visitor).with_outputs(freshness.SEEN, main="interactions")
        )


# --------------------------------------------------------------------------- in buckets, on arrays
#
# As for GA360 (sessionize.py, "in buckets"): the pipeline's file reader packs each block's
# event rows as columns per visitor bucket, and the time on items is computed per bucket on
# NumPy arrays, with the per-visitor DoFns above as the reference for what arrays cannot
# hold exactly.

Ga4Columns = tuple  # (visitors, sessions, times, names, items, engagements, days): lists, one per row


def pack_events(rows: Sequence[tuple]) -> Ga4Columns:
    """``[(visitor, Ga4Event), ...]`` -> column lists (Beam encodes lists of numbers and text
    without pickling; event names are arbitrary text, so they are not joined)."""
    return ([visitor for visitor, _ in rows], *([event[i] for _, event in rows] for i in range(6)))


# The GA4 export fields the Arrow block parser reads. INT64s are JSON numbers in some exports
# and strings in BigQuery's own NDJSON export: a block is read with one of the two forms (the
# first line decides), and a block that mixes them is refused by Arrow and read line by line.
_ARROW_READ = pa_json.ReadOptions(use_threads=False, block_size=64 << 20)  # one DoFn, one core
ARROW_ITEM_SOURCES = ("page_location", "page_title")  # and event_param:KEY; the rest: per line
_SURROGATE_ESCAPE = re.compile(rb"\\[uU][dD][89a-fA-F]")  # \uD800-\uDFFF (a pair or a lone one)
_TEXT_INT64 = re.compile(rb'"event_timestamp"\s*:\s*"')  # a first line with INT64s as strings
# INT64 text taken on columns: what ``parse_int64`` reads the same way and Arrow's cast cannot get
# wrong (no spaces or "+", at most 18 digits); any other text sends the block line by line.
_SAFE_INT64_TEXT = r"^-?[0-9]{1,18}$"


class _Doubt(Exception):
    """Raised inside the Arrow path when the per-line reader has to decide the block."""


def arrow_parse_options(user_field: str, int64: pa.DataType = pa.int64()) -> pa_json.ParseOptions:
    """Arrow's JSON options for one GA4 block: the fields ``ParseGa4EventFn`` reads, typed as
    the export types them (INT64s as ``int64``: JSON numbers, or ``string``: their text),
    everything else ignored."""
    value = pa.struct([("string_value", pa.string()), ("int_value", int64)])
    return pa_json.ParseOptions(
        explicit_schema=pa.schema([
            ("event_date", pa.string()), ("event_timestamp", int64), ("event_name", pa.string()),
            (user_field, pa.string()),
            ("event_params", pa.list_(pa.struct([("key", pa.string()), ("value", value)]))),
        ]),
        unexpected_field_behavior="ignore",
    )


def _as_int64(values: pa.Array) -> pa.Array:
    """An INT64 column as ``int64``: as it is, or from text that ``_SAFE_INT64_TEXT`` matches
    (``parse_int64``'s value for it); other text raises ``_Doubt``."""
    if values.type == pa.int64():
        return values
    if not pc.all(pc.fill_null(pc.match_substring_regex(values, _SAFE_INT64_TEXT), True)).as_py():
        raise _Doubt("INT64 text")
    return pc.cast(values, pa.int64())


def _param_entries(params: pa.ListArray, key: str) -> tuple[np.ndarray, pa.Array, pa.Array]:
    """The entries of ``params`` with ``key``: ``(event row of each, string_value, int_value)``,
    null values (``"value": null``) given as nulls in both."""
    flat = params.flatten()
    owner = pc.list_parent_indices(params).to_numpy()
    mine = pc.fill_null(pc.equal(flat.field("key"), key), False)
    value = flat.field("value").filter(mine)
    fields = value.flatten()  # the struct's own nulls carried into its fields
    return owner[mine.to_numpy(zero_copy_only=False)], fields[0], _as_int64(fields[1])


def _int_param_max(params: pa.ListArray, key: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``int_param`` on columns: ``(MAX of the key's int_values per event, whether it has one)``.
    Every int_value is an INT64 here (typed by Arrow, or plain-digit text by ``_as_int64``), so
    none is ``invalid``."""
    owner, _, ints = _param_entries(params, key)
    valid = ints.is_valid().to_numpy(zero_copy_only=False)
    owner = owner[valid]
    values = ints.filter(ints.is_valid()).to_numpy(zero_copy_only=False).astype(np.int64)
    best = np.full(n, np.iinfo(np.int64).min, np.int64)
    np.maximum.at(best, owner, values)
    has = np.zeros(n, bool)
    has[owner] = True
    return best, has


def _encode(column: Any) -> tuple[np.ndarray, list]:
    """``(code per row, distinct values)`` of an Arrow column; a null's code is -1, so
    ``lookup[code]`` with one more entry at the end for the null."""
    encoded = pc.dictionary_encode(column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column)
    return (pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64),
            encoded.dictionary.to_pylist())


class ParseGa4EventBlockBucketsFn(beam.DoFn):
    """A block of GA4 NDJSON lines -> ``ParseGa4EventFn``'s rows as ``Ga4Columns`` per visitor
    bucket (and its dead letters as they are).

    A clean block (every line one event that Arrow can type against the export's fields, no
    dead letter due, an item source read from event params) is parsed by Arrow's JSON reader
    and its rows made on columns (``arrow_columns``); any other block goes line by line
    through ``ParseGa4EventFn``, which decides every drop and dead letter. Both give the same
    ``Ga4Columns`` (tested), so which path a block takes changes nothing downstream.
    """

    def __init__(self, parse: ParseGa4EventFn, buckets: int, use_arrow: bool = True) -> None:
        self.parse = parse
        self.buckets = buckets
        self.use_arrow = use_arrow  # False: every block line by line (the reference, in tests)
        self.arrow_options = arrow_parse_options(parse.user_field)
        self.arrow_text_options = arrow_parse_options(parse.user_field, pa.string())

    def process(self, block: Any) -> Iterable:
        """``block``: a list of lines, or the text of whole lines (``ReadLineBlocks``' raw
        blocks), which is split into lines only when the Arrow path cannot take it."""
        if isinstance(block, bytes) and b"\r" not in block:  # with CRs, block_lines trims them first
            text = block[:-1] if block.endswith(b"\n") else block
            bucketed = self.arrow_block(text, compact=True) if self.use_arrow else None
            lines = sources.block_lines(block) if bucketed is None else []
        else:
            lines = sources.block_lines(block) if isinstance(block, bytes) else block
            bucketed = self.arrow_columns(lines, compact=True) if self.use_arrow else None
        if bucketed is not None:
            yield from bucketed
            return
        by_bucket: dict = defaultdict(list)
        for raw in lines:
            for out in self.parse.process(raw):
                if isinstance(out, beam.pvalue.TaggedOutput):
                    yield out
                else:
                    by_bucket[sessionize.visitor_bucket(out[0], self.buckets)].append(out)
        for bucket, rows in by_bucket.items():
            yield bucket, pack_events(rows)

    def item_key(self) -> Optional[str]:
        """The event param that holds the item, or None when the item source is not one."""
        source = self.parse.item_source
        if source.startswith(EVENT_PARAM_PREFIX):
            return source[len(EVENT_PARAM_PREFIX):]
        return source if source in ARROW_ITEM_SOURCES else None

    def arrow_columns(self, lines: list, compact: bool = False) -> Optional[list]:
        """The block's ``(bucket, Ga4Columns)`` from Arrow's JSON reader, or None when any line
        needs the per-line path.

        ``compact`` (with ``duration="engagement_time"``): of the rows that add nothing to a
        sum (no engagement, or 0), one per (visitor, session, item, date) is kept. What such a
        row tells ``BucketTimeFn`` is only that the session, the (visitor, item) pair and its
        date exist, so the results and counters are the same, from about two thirds of the
        rows on the bundled sample's GA4 form (a page_view and a scroll per article read carry
        no engagement). Without it the rows are exactly the per-line reader's (tested).

        Arrow refuses what ``json`` and the per-line checks would read otherwise: an INT64 in
        the other form than the first line's (number or text), a fraction or exponent, one
        out of range, a key given twice in a typed object, a raw control character, a
        non-object line, a lone surrogate; INT64 text other than plain digits is refused
        here (``_as_int64``). Checked here: UTF-8
        (Arrow passes bad bytes through), escaped surrogates, two objects on one line, a null
        ``event_params`` entry (malformed_event), and on the rows that reach each check, the
        visitor, the timestamp, the engagement time and the item through ``ids.clean_id``. A
        dead letter due anywhere returns None, so only count-only drops are made here, and
        counted as the per-line reader counts them.
        """
        if not lines:
            return None
        return self.arrow_block(b"\n".join(lines), compact)

    def arrow_block(self, data: bytes, compact: bool = False) -> Optional[list]:
        """``arrow_columns`` of the lines joined by ``\\n`` (no ``\\r``): a block's text without its
        final newline."""
        key = self.item_key()
        if key is None or not data:
            return None
        if not data.isascii():  # ASCII is UTF-8; only other bytes need the decoder's check
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                return None
        # json keeps a lone surrogate as it is; leave pairs to it too (the regex only where
        # there is a backslash at all)
        if b"\\" in data and _SURROGATE_ESCAPE.search(data):
            return None
        first_end = data.find(b"\n")
        first = data if first_end < 0 else data[:first_end]
        options = self.arrow_text_options if _TEXT_INT64.search(first) else self.arrow_options
        try:
            table = pa_json.read_json(io.BytesIO(data), read_options=_ARROW_READ, parse_options=options)
        except Exception:  # any refusal of Arrow's: the per-line path says why
            return None
        try:
            return self.table_columns(table, data, key, compact)
        except _Doubt:
            return None

    def table_columns(self, table: pa.Table, data: bytes, key: str, compact: bool = False) -> Optional[list]:
        """``arrow_block`` once Arrow has read the block's text ``data`` into ``table``."""
        parse = self.parse
        n = table.num_rows
        if n == 0 or n != _nonblank_lines(data):  # two objects on a line, say
            return None
        params = table["event_params"].combine_chunks()
        if params.flatten().null_count:  # an entry that is not an object: malformed_event
            return None
        name_code, name_values = _encode(table["event_name"])
        visitor_code, visitor_values = _encode(table[parse.user_field])
        kept = np.ones(n, bool)
        if parse.event_names is not None:  # name not in the set (a null name never is)
            wanted = np.array([name in parse.event_names for name in name_values] + [False], bool)
            kept = wanted[name_code]
        other_event = n - int(kept.sum())
        cleaned = []
        for value in visitor_values:
            visitor, problem = sources.visitor_id(value)
            if problem not in (None, "missing_visitor_id"):
                return None  # invalid_visitor_id on an event that may reach the check
            cleaned.append(visitor)
        cleaned.append(None)  # code -1: a null visitor
        has_visitor = np.array([v is not None for v in cleaned], bool)[visitor_code]
        no_visitor = int((kept & ~has_visitor).sum())
        kept &= has_visitor
        session, has_session = _int_param_max(params, "ga_session_id", n)
        no_session = int((kept & ~has_session).sum())
        kept &= has_session
        times = _as_int64(table["event_timestamp"].combine_chunks())
        time = pc.fill_null(times, -1).to_numpy(zero_copy_only=False).astype(np.int64)
        if (time[kept] < 0).any():
            return None  # invalid_time
        engagement, has_engagement = _int_param_max(params, "engagement_time_msec", n)
        if parse.engagement_only and (engagement[kept & has_engagement] < 0).any():
            return None  # invalid_engagement_time
        rows = np.flatnonzero(kept)
        found = self.arrow_items(params, key, n, rows)
        if found is None:
            return None
        items, item_code = found
        without_item = int(np.equal(items[rows], None).sum())
        parse.events.inc(n)
        if other_event:
            parse.other_event.inc(other_event)
        if no_visitor:
            parse.no_visitor.inc(no_visitor)
        if no_session:
            parse.no_session.inc(no_session)
        if without_item:
            parse.without_item.inc(without_item)
        if not len(rows):
            return []
        date_code, date_values = _encode(table["event_date"])
        if compact and parse.engagement_only:
            rows = _one_per_silent_key(rows, (date_code, item_code, session, visitor_code),
                                       ~has_engagement | (engagement == 0))
        days = np.array([freshness.parse_export_day(value) for value in date_values] + [None], dtype=object)
        names = np.array([name if isinstance(name, str) else json.dumps(name) for name in name_values + [None]],
                         dtype=object)
        visitor_bucket = np.array([-1 if v is None else sessionize.visitor_bucket(v, self.buckets) for v in cleaned],
                                  np.int64)
        bucket = visitor_bucket[visitor_code[rows]]
        order = np.argsort(bucket, kind="stable")  # line order within each bucket
        bounds = np.flatnonzero(np.r_[True, bucket[order][1:] != bucket[order][:-1], True])
        engagement_or_none = engagement.astype(object)
        engagement_or_none[~has_engagement] = None
        columns_of = (np.array(cleaned, dtype=object)[visitor_code], session, time, names[name_code], items,
                      engagement_or_none, days[date_code])
        out = []
        for start, end in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
            mine = rows[order[start:end]]
            out.append((int(bucket[order[start]]), tuple(column[mine].tolist() for column in columns_of)))
        return out

    def arrow_items(self, params: pa.ListArray, key: str, n: int,
                    rows: np.ndarray) -> Optional[tuple[np.ndarray, np.ndarray]]:
        """The item of each event (``event_items`` then ``content_id``) as an object array, and
        the code of its raw value (-1: none; equal codes, equal items), or None when one of
        the kept ``rows`` needs a dead letter.

        ``string_param``: MAX of the key's string values, for ``event_param:KEY`` int values as
        decimal text where the string value is null. Arrow and Python order valid UTF-8 text
        alike (bytes and code points); the MAX is taken in Python only for the events with
        more than one value, and ``content_id`` once per distinct value."""
        owner, strings, ints = _param_entries(params, key)
        if self.parse.item_source.startswith(EVENT_PARAM_PREFIX):
            text = pc.if_else(strings.is_valid(), strings, pc.cast(ints, pa.string()))
        else:
            text = strings
        valid = text.is_valid()
        owner = owner[valid.to_numpy(zero_copy_only=False)]
        code_of_entry, values = _encode(text.filter(valid))
        code = np.full(n, -1, np.int64)
        code[owner] = code_of_entry  # one value per event: its code; more: settled below
        repeated = np.bincount(owner, minlength=n) > 1
        if repeated.any():
            best: dict = {}
            several = repeated[owner]
            for row, value_code in zip(owner[several].tolist(), code_of_entry[several].tolist()):
                current = best.get(row)
                if current is None or values[value_code] > values[current]:
                    best[row] = value_code
            for row, value_code in best.items():
                code[row] = value_code
        used = np.zeros(len(values) + 1, bool)
        used[code[rows]] = True
        item_of = [None] * (len(values) + 1)  # the last: no value (code -1)
        for value_code in np.flatnonzero(used[:-1]).tolist():
            value = values[value_code]
            if self.parse.item_source == "page_location":
                value = page_location(value)
            item, problem = sources.content_id(value)
            if problem:
                return None  # invalid_content_id
            item_of[value_code] = item
        return np.array(item_of, dtype=object)[code], code


_STRIPPED = np.zeros(256, bool)  # the bytes bytes.strip removes
_STRIPPED[list(b" \t\n\r\x0b\x0c")] = True


def _nonblank_lines(data: bytes) -> int:
    """The lines of ``data`` (split at ``\\n``) that hold more than whitespace: on the bytes
    as an array when every line starts with a byte ``bytes.strip`` keeps (NDJSON lines start
    with ``{``), line by line otherwise."""
    raw = np.frombuffer(data, np.uint8)
    if not len(raw):
        return 0
    breaks = np.flatnonzero(raw == 10)
    if _STRIPPED[raw[0]] or (len(breaks) and breaks[-1] == len(raw) - 1) or _STRIPPED[raw[breaks + 1]].any():
        return sum(map(bool, map(bytes.strip, data.split(b"\n"))))
    return len(breaks) + 1


def _hash_rows(keys: Sequence[np.ndarray]) -> np.ndarray:
    """A 64-bit hash of each row of the integer (or bool) columns ``keys`` (multiply-xorshift
    rounds, splitmix64's constants; wrapping uint64 arithmetic)."""
    h = np.full(len(keys[0]), 0x9E3779B97F4A7C15, np.uint64)
    for key in keys:
        h ^= key.view(np.uint64) if key.dtype == np.int64 else key.astype(np.uint64)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(31)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(29)
    return h


def distinct_rows(keys: Sequence[np.ndarray]) -> np.ndarray:
    """Indices of one row per distinct combination of ``keys`` (equal-length int64 or bool
    arrays), in no particular order. Rows are sorted by a hash of all keys; a row whose hash
    no other row shares is distinct for certain, and only the rows in runs of equal hashes
    (the duplicates, and any collisions) are compared key by key. One sort of one array instead
    of a ``lexsort`` over every key."""
    n = len(keys[0])
    if n < 2:
        return np.arange(n)
    hashes = _hash_rows(keys)
    order = np.argsort(hashes)
    hashes = hashes[order]
    same = hashes[1:] == hashes[:-1]
    if not same.any():
        return order
    in_run = np.zeros(len(order), bool)
    in_run[1:] |= same
    in_run[:-1] |= same
    candidates = order[in_run]
    ordered = candidates[np.lexsort(tuple(key[candidates] for key in keys))]
    first = np.r_[True, np.any([key[ordered][1:] != key[ordered][:-1] for key in keys], axis=0)]
    return np.concatenate([order[~in_run], ordered[first]])


def _one_per_silent_key(rows: np.ndarray, keys: tuple, silent: np.ndarray) -> np.ndarray:
    """``rows`` with, among the ``silent`` ones, one of each combination of ``keys`` (arrays
    over all events), in their original order."""
    quiet = rows[silent[rows]]
    if len(quiet) < 2:
        return rows
    kept = quiet[distinct_rows(tuple(key[quiet] for key in keys))]
    return np.sort(np.concatenate([rows[~silent[rows]], kept]))


class BucketTimeFn(beam.DoFn):
    """(bucket, [Ga4Columns, ...]) -> ``columns.VisitorColumns`` (and ``SeenColumns`` on
    ``freshness.SEEN``) with the values, counters and dates of ``EngagementTimeFn`` /
    ``NextEventTimeFn`` for each visitor of the bucket."""

    def __init__(self, duration: str) -> None:
        self.duration = duration
        self.reference = EngagementTimeFn() if duration == "engagement_time" else NextEventTimeFn()
        self.gaps = sessionize.BucketDurationsFn(self.reference, divisor=1000, count_without_item=False)
        self.sessions = counters.counter("sessions")
        self.nonpositive = counters.dropped("nonpositive_duration")

    def process(self, element) -> Iterable:
        _, parts = element
        visitors, sessions, times, names, items, engagements, days = (
            list(itertools.chain.from_iterable(part[i] for part in parts)) for i in range(7))
        n = len(visitors)
        time = np.asarray(times, dtype=np.int64)
        if self.duration == "next_event":  # a sum of gaps is at most n × the time span
            bound = int(time.max()) - int(time.min()) if n else 0
        else:
            bound = max((abs(e) for e in engagements if e is not None), default=0)
        if bound * max(n, 1) >= 2**62:  # sums that int64 might not hold: the reference, exactly
            yield from self.by_visitor(visitors, list(zip(sessions, times, names, items, engagements, days)))
            return
        if self.duration == "next_event":
            hit_columns = ("\n".join(visitors).encode("utf-8"), np.asarray(sessions, np.int64).tobytes(),
                           np.array([columns.NO_DAY if d is None else d for d in days], np.int64).tobytes(),
                           np.ones(n, np.int64).tobytes(), time.tobytes(),
                           "\n".join(item or "" for item in items).encode("utf-8"))
            yield from self.gaps.on_arrays([hit_columns], time)
            return
        yield from self.engagement(visitors, np.asarray(sessions, np.int64), time, names, items, engagements, days)

    def by_visitor(self, visitors: list, rows: list) -> Iterable:
        grouped: dict = defaultdict(list)
        for visitor, row in zip(visitors, rows):
            grouped[visitor].append(row)
        interactions, seen = [], []
        for visitor in sorted(grouped):
            for out in self.reference.process((visitor, grouped[visitor])):
                (seen.append(out.value) if isinstance(out, beam.pvalue.TaggedOutput) else interactions.append(out))
        if interactions:
            yield columns.from_visitors(interactions)
            yield beam.pvalue.TaggedOutput(freshness.SEEN, columns.from_seen(seen))

    def engagement(self, visitors, session, time, names, items, engagements, days) -> Iterable:
        """``EngagementTimeFn`` on arrays: Σ engagement over distinct events per (visitor, item)."""
        visitor, visitor_names = _codes(visitors)
        name, _ = _codes(names)
        item, item_names = _codes(items, none=True)
        has, engagement = _int_column(engagements, 0)
        _, day = _int_column(days, columns.NO_DAY)
        # An event is not its date: duplicates of (session, time, name, item, engagement) count once.
        rows = distinct_rows((engagement, has, item, name, time, session, visitor))
        self.sessions.inc(len(distinct_rows((session, visitor))))
        rows = rows[item[rows] >= 0]
        nitems = max(len(item_names), 1)
        keys_, where = np.unique(visitor[rows] * nitems + item[rows], return_inverse=True)
        totals = np.zeros(len(keys_), np.int64)
        np.add.at(totals, where, engagement[rows])
        positive = totals > 0
        if not positive.all():
            self.nonpositive.inc(int((~positive).sum()))
        yield from sessionize.visitor_columns(keys_[positive], totals[positive], nitems, visitor_names, item_names,
                                              visitor, item, day)


def _codes(values: list, none: bool = False) -> tuple[np.ndarray, list]:
    """``(code per value, the distinct values in order of first appearance)``; with ``none`` a
    None's code is -1 and None is not among the values. Arrow's dictionary encoder does it in
    C; anything it cannot take as text (or a None without ``none``) goes through a dict."""
    try:
        encoded = pc.dictionary_encode(pa.array(values, pa.string()))
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        encoded = None
    if encoded is not None and (none or not encoded.null_count):
        return (pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64),
                encoded.dictionary.to_pylist())
    found: dict = {None: -1} if none else {}
    start = len(found)
    code = np.fromiter((found.setdefault(v, len(found) - start) for v in values), np.int64, len(values))
    return code, [v for v in found if not (none and v is None)]


def _int_column(values: list, missing: int) -> tuple[np.ndarray, np.ndarray]:
    """``(whether each value is there, the values as int64 with None → missing)``."""
    column = pa.array(values, pa.int64())
    return (column.is_valid().to_numpy(zero_copy_only=False),
            pc.fill_null(column, missing).to_numpy(zero_copy_only=False).astype(np.int64))


class ReadGa4EventsInBlocks(beam.PTransform):
    """GA4 export NDJSON (local or gs://) -> ``Ga4Columns`` keyed by visitor bucket (``.events``,
    for ``TimeOnItemBuckets``) and dead letters: ``ReadGa4Events``' rows, checks and counters,
    a block of lines at a time; the bucket count follows the input size."""

    def __init__(self, pattern: str, item_source: str, duration: str, user_field: str,
                 event_names: Sequence[str], block_bytes: int = sources.BLOCK_BYTES, use_arrow: bool = True) -> None:
        super().__init__()
        self.pattern = pattern
        self.block_bytes = block_bytes
        buckets = sessionize.bucket_count(sources.input_bytes(pattern))
        self.parse = ParseGa4EventBlockBucketsFn(
            ParseGa4EventFn(item_source, duration, user_field, event_names), buckets, use_arrow)

    def expand(self, pbegin):
        return (
            pbegin
            | "ReadLineBlocks" >> sources.ReadLineBlocks(self.pattern, self.block_bytes, raw=True)
            | "ParseEvents" >> beam.ParDo(self.parse).with_outputs(sources.DROPPED, main="events")
        )


class TimeOnItemBuckets(beam.PTransform):
    """``(bucket, Ga4Columns)`` -> ``columns.VisitorColumns`` (``.interactions``) and
    ``columns.SeenColumns`` (``[freshness.SEEN]``): ``TimeOnItems``' values, per bucket."""

    def __init__(self, duration: str) -> None:
        super().__init__()
        if duration not in DURATIONS:
            raise ValueError(f"unknown duration {duration!r}")
        self.duration = duration

    def expand(self, events):
        return (
            events
            | "GroupByBucket" >> beam.GroupByKey()
            | "SumPerItem" >> beam.ParDo(BucketTimeFn(self.duration)).with_outputs(freshness.SEEN, main="interactions")
        )
