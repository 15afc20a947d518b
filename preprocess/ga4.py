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
"""
from __future__ import annotations

import json
import re
from collections import defaultdict
from typing import Any, Iterable, Optional, Sequence

import apache_beam as beam
import numpy as np

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


class ParseGa4EventBlockBucketsFn(beam.DoFn):
    """A block of GA4 NDJSON lines -> ``ParseGa4EventFn``'s rows as ``Ga4Columns`` per visitor
    bucket (and its dead letters as they are)."""

    def __init__(self, parse: ParseGa4EventFn, buckets: int) -> None:
        self.parse = parse
        self.buckets = buckets

    def process(self, lines: list) -> Iterable:
        by_bucket: dict = defaultdict(list)
        for raw in lines:
            for out in self.parse.process(raw):
                if isinstance(out, beam.pvalue.TaggedOutput):
                    yield out
                else:
                    by_bucket[sessionize.visitor_bucket(out[0], self.buckets)].append(out)
        for bucket, rows in by_bucket.items():
            yield bucket, pack_events(rows)


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
            [value for part in parts for value in part[i]] for i in range(7))
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
        def codes(values: list, none: bool = False) -> tuple[np.ndarray, list]:
            found: dict = {None: -1} if none else {}
            start = len(found)
            code = np.fromiter((found.setdefault(v, len(found) - start) for v in values), np.int64, len(values))
            return code, [v for v in found if not (none and v is None)]

        visitor, visitor_names = codes(visitors)
        name, _ = codes(names)
        item, item_names = codes(items, none=True)
        has = np.fromiter((e is not None for e in engagements), bool, len(engagements))
        engagement = np.fromiter((e or 0 for e in engagements), np.int64, len(engagements))
        day = np.fromiter((columns.NO_DAY if d is None else d for d in days), np.int64, len(days))
        # An event is not its date: duplicates of (session, time, name, item, engagement) count once.
        keys = (engagement, has, item, name, time, session, visitor)
        order = np.lexsort(keys)
        distinct = (np.r_[True, np.any([key[order][1:] != key[order][:-1] for key in keys], axis=0)]
                    if len(order) else np.zeros(0, bool))
        rows = order[distinct]
        pairs = np.lexsort((session, visitor))
        self.sessions.inc(int(np.r_[True, (visitor[pairs][1:] != visitor[pairs][:-1])
                                    | (session[pairs][1:] != session[pairs][:-1])].sum()) if len(pairs) else 0)
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


class ReadGa4EventsInBlocks(beam.PTransform):
    """GA4 export NDJSON (local or gs://) -> ``Ga4Columns`` keyed by visitor bucket (``.events``,
    for ``TimeOnItemBuckets``) and dead letters: ``ReadGa4Events``' rows, checks and counters,
    a block of lines at a time; the bucket count follows the input size."""

    def __init__(self, pattern: str, item_source: str, duration: str, user_field: str,
                 event_names: Sequence[str]) -> None:
        super().__init__()
        self.pattern = pattern
        buckets = sessionize.bucket_count(sources.input_bytes(pattern))
        self.parse = ParseGa4EventBlockBucketsFn(
            ParseGa4EventFn(item_source, duration, user_field, event_names), buckets)

    def expand(self, pbegin):
        return (
            pbegin
            | "ReadLineBlocks" >> sources.ReadLineBlocks(self.pattern)
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
