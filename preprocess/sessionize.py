"""Hits -> (visitor, item) time-on-item, the Beam twin of ``schemas/ga360_interactions.sql``.

Within one session (fullVisitorId, visitNumber) let t_1 < t_2 < ... < t_n be the distinct hit
times. A hit at t_k lasted ``d_k = t_{k+1} - t_k`` (the SQL's
``LEAD(hit_time) OVER (PARTITION BY fullVisitorId, visitNumber ORDER BY hit_time) - hit_time``);
the last hit has no duration. Each distinct (t_k, item) of the session credits ``d_k`` to the
item, so duplicate rows count once and several items shown by one hit each get its time.
Finally ``session_duration(visitor, item) = sum of credits over all sessions``, kept if > 0.

Everything is grouped by visitor once (one GroupByKey), so a visitor's sessions, their
durations and the sum over sessions are computed in one place, without a second shuffle.
The output element is ``(visitorId, ((contentId, session_duration), ...))``; the tagged
output ``freshness.SEEN`` holds, for the same items, the first and last date of the visitor's
hits on each (a session fragment's day; the SQL's ``first_date`` / ``last_date``).
"""
from __future__ import annotations

import math
import zlib
from collections import defaultdict
from typing import Iterable, Optional, Sequence

import apache_beam as beam
import numpy as np

from preprocess import columns, counters, freshness

VisitorInteractions = tuple  # (visitorId, ((contentId, session_duration), ...)) sorted by contentId


def session_item_durations(hits: Iterable[tuple]) -> dict:
    """``{item: time credited}`` for one session's ``(time, item or None)`` hits."""
    hits = set(hits)
    times = sorted({time for time, _ in hits})
    next_time = dict(zip(times, times[1:]))
    durations: dict = {}
    for time, item in hits:
        if item is None:
            continue
        following = next_time.get(time)
        if following is not None:
            durations[item] = durations.get(item, 0) + (following - time)
    return durations


def positive_items(durations: dict, nonpositive_counter, overflow_counter) -> tuple:
    """Sorted ``((item, duration), ...)`` of the items with a positive, finite total; counts
    the rest (a float sum of finite durations can still overflow to infinity)."""
    kept = tuple(sorted((item, d) for item, d in durations.items() if 0 < d < math.inf))
    if len(kept) < len(durations):
        overflow = sum(1 for d in durations.values() if d == math.inf)
        if overflow:
            overflow_counter.inc(overflow)
        if len(durations) - len(kept) - overflow:
            nonpositive_counter.inc(len(durations) - len(kept) - overflow)
    return kept


class VisitorDurationsFn(beam.DoFn):
    """(visitor, [(visit, hits, day), ...]) -> (visitor, ((item, duration), ...)) over all
    sessions, and the items' date ranges (``freshness.SEEN``)."""

    def __init__(self) -> None:
        self.without_item = counters.dropped("hit_without_item")
        self.nonpositive = counters.dropped("nonpositive_duration")
        self.overflow = counters.dropped("duration_overflow")
        self.sessions = counters.counter("sessions")

    def process(self, element) -> Iterable[VisitorInteractions]:
        visitor, fragments = element
        sessions: dict = defaultdict(list)
        ranges: dict = {}
        for visit, hits, day in fragments:  # a session may arrive in several fragments (rows)
            sessions[visit].extend(hits)
            if day is not None:  # the fragment's (row's) own date
                for _, item in hits:
                    if item is not None:
                        freshness.widen(ranges, item, day, day)
        self.sessions.inc(len(sessions))
        totals: dict = defaultdict(int)
        for hits in sessions.values():
            missing = sum(1 for _, item in hits if item is None)
            if missing:
                self.without_item.inc(missing)
            for item, duration in session_item_durations(hits).items():
                totals[item] += duration
        kept = positive_items(totals, self.nonpositive, self.overflow)
        if kept:
            yield visitor, kept
            yield freshness.seen_output(visitor, kept, ranges)


class SumVisitorInteractionsFn(beam.DoFn):
    """(visitor, [(item, duration, first_day, last_day), ...]) -> (visitor, ((item, summed
    duration), ...)), and the items' date ranges (``freshness.SEEN``)."""

    def __init__(self) -> None:
        self.nonpositive = counters.dropped("nonpositive_duration")
        self.overflow = counters.dropped("duration_overflow")

    def process(self, element) -> Iterable[VisitorInteractions]:
        visitor, rows = element
        totals: dict = defaultdict(float)
        ranges: dict = {}
        for item, duration, first, last in rows:
            totals[item] += duration
            freshness.widen(ranges, item, first, last)
        kept = positive_items(totals, self.nonpositive, self.overflow)
        if kept:
            yield visitor, kept
            yield freshness.seen_output(visitor, kept, ranges)


class SessionizeHits(beam.PTransform):
    """Session hits keyed by visitor -> one VisitorInteractions per visitor (``.interactions``)
    and its items' date ranges (``[freshness.SEEN]``)."""

    def expand(self, session_hits):
        return (
            session_hits
            | "GroupByVisitor" >> beam.GroupByKey()
            | "TimeOnItems" >> beam.ParDo(VisitorDurationsFn()).with_outputs(freshness.SEEN, main="interactions")
        )


class SumInteractions(beam.PTransform):
    """(visitor, (item, duration, first_day, last_day)) rows -> one VisitorInteractions per
    visitor, sums > 0 (``.interactions``), and the items' date ranges (``[freshness.SEEN]``)."""

    def expand(self, interactions):
        return (
            interactions
            | "GroupByVisitor" >> beam.GroupByKey()
            | "SumPerItem" >> beam.ParDo(SumVisitorInteractionsFn()).with_outputs(freshness.SEEN, main="interactions")
        )


# --------------------------------------------------------------------------- in buckets, on arrays
#
# The file readers hand over their hits as columns, one element per (block of input lines,
# visitor bucket) instead of one per session; a bucket is ``crc32(visitor) % buckets``, so
# all of a visitor's hits meet in one bucket after one GroupByKey, and the time on items is
# computed with NumPy over the whole bucket. A bucket holds about ``1 / buckets`` of the
# data (``bucket_count`` keeps that near ``BUCKET_BYTES`` of input), so no element grows
# with the data set, and one visitor's history is never more than part of one element.

NO_DAY = columns.NO_DAY  # a row without a (valid) date
EXACT_INT = 2**62  # int64 times below this are summed exactly on arrays (see BucketDurationsFn)
# Input bytes per bucket, about: few, fat elements in the shuffle, of bounded size. Each bucket
# becomes one record batch for tf.Transform, whose vocabulary step handles every distinct
# item once per batch: fewer, larger buckets mean fewer of those (measured, issue 13).
BUCKET_BYTES = 64 << 20

HitColumns = tuple  # (visitors, visits, days, hit counts, times, items): see pack_rows


def bucket_count(input_bytes: int) -> int:
    """Buckets for an input of ``input_bytes``: about ``BUCKET_BYTES`` each, at least one."""
    return max(1, -(-input_bytes // BUCKET_BYTES))


def visitor_bucket(visitor: str, buckets: int) -> int:
    """The bucket of a visitor: CRC-32 of its UTF-8 bytes (the same in every process, unlike
    ``hash``), modulo ``buckets``."""
    return zlib.crc32(visitor.encode("utf-8")) % buckets


def pack_rows(rows: Sequence[tuple]) -> HitColumns:
    """``[(visitor, visit, ((time, item or None), ...), day or None), ...]`` -> columns.

    Text columns are ``\\n``-joined UTF-8 (IDs never hold a line break: ``ids.clean_id``;
    an item ``None`` is the empty text, which is never an ID), numbers raw int64 bytes: Beam
    encodes bytes without pickling. Times that are not all integers below ``EXACT_INT`` stay
    a list of Python numbers, and that bucket takes the reference path.
    """
    n = len(rows)
    visitors = "\n".join(row[0] for row in rows).encode("utf-8")
    visits = np.fromiter((row[1] for row in rows), np.int64, n).tobytes()
    days = np.fromiter((NO_DAY if row[3] is None else row[3] for row in rows), np.int64, n).tobytes()
    counts = np.fromiter((len(row[2]) for row in rows), np.int64, n).tobytes()
    times = [time for row in rows for time, _ in row[2]]
    items = "\n".join(item or "" for row in rows for _, item in row[2]).encode("utf-8")
    if all(type(t) is int and t < EXACT_INT for t in times):
        times = np.asarray(times, dtype=np.int64).tobytes()
    return visitors, visits, days, counts, times, items


def bucketed_columns(rows: Sequence[tuple], buckets: int) -> Iterable[tuple]:
    """Session rows of one block -> ``(bucket, HitColumns)``, one per bucket present."""
    by_bucket: dict = defaultdict(list)
    for row in rows:
        by_bucket[visitor_bucket(row[0], buckets)].append(row)
    for bucket, mine in by_bucket.items():
        yield bucket, pack_rows(mine)


def bucketed_arrays(visitors: list, visits: np.ndarray, days: list, hit_row: np.ndarray, times: np.ndarray,
                    items: list, buckets: int) -> list:
    """``bucketed_columns`` from arrays: session rows (``visitors``, ``visits``, ``days``)
    and their kept hits (``hit_row`` the row of each, in row order; ``times``; ``items``).
    Rows without a kept hit are left out, as the per-line reader leaves them."""
    counts = np.bincount(hit_row, minlength=len(visitors)).astype(np.int64)
    rows = np.flatnonzero(counts)
    row_bucket = np.fromiter((visitor_bucket(visitors[r], buckets) for r in rows.tolist()), np.int64, len(rows))
    bucket_of_row = np.full(len(visitors), -1, np.int64)
    bucket_of_row[rows] = row_bucket
    hit_bucket = bucket_of_row[hit_row]
    row_order = rows[np.argsort(row_bucket, kind="stable")]
    hit_order = np.argsort(hit_bucket, kind="stable")  # keeps rows, and hits within rows, in order
    row_bounds = np.searchsorted(bucket_of_row[row_order], np.arange(buckets + 1))
    hit_bounds = np.searchsorted(hit_bucket[hit_order], np.arange(buckets + 1))
    visitor_array, item_array = np.array(visitors, dtype=object), np.array(items, dtype=object)
    day_array = np.array([NO_DAY if d is None else d for d in days], dtype=np.int64)
    exact = not len(times) or int(times.max()) < EXACT_INT
    out = []
    for bucket in np.flatnonzero(np.diff(row_bounds)).tolist():
        mine = row_order[row_bounds[bucket]:row_bounds[bucket + 1]]
        hits = hit_order[hit_bounds[bucket]:hit_bounds[bucket + 1]]
        bucket_times = times[hits].astype(np.int64)
        out.append((bucket, (
            "\n".join(visitor_array[mine].tolist()).encode("utf-8"),
            visits[mine].astype(np.int64).tobytes(),
            day_array[mine].tobytes(),
            counts[mine].tobytes(),
            bucket_times.tobytes() if exact else bucket_times.tolist(),
            "\n".join(item or "" for item in item_array[hits].tolist()).encode("utf-8"),
        )))
    return out


def unpack_rows(columns: HitColumns) -> Iterable[tuple]:
    """``pack_rows`` undone: ``(visitor, (visit, hits, day))`` per session row."""
    visitors, visits, days, counts, times, items = columns
    visitors = visitors.decode("utf-8").split("\n")
    visits = np.frombuffer(visits, np.int64).tolist()
    days = [None if d == NO_DAY else d for d in np.frombuffer(days, np.int64).tolist()]
    counts = np.frombuffer(counts, np.int64).tolist()
    times = np.frombuffer(times, np.int64).tolist() if isinstance(times, bytes) else times
    items = [item or None for item in items.decode("utf-8").split("\n")]
    start = 0
    for visitor, visit, day, count in zip(visitors, visits, days, counts):
        yield visitor, (visit, tuple(zip(times[start:start + count], items[start:start + count])), day)
        start += count


def _groups(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Starts and ends of the runs of equal values in a sorted array."""
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else np.zeros(0, np.int64)
    return starts, np.r_[starts[1:], len(keys)].astype(np.int64)


class BucketDurationsFn(beam.DoFn):
    """(bucket, [HitColumns, ...]) -> what ``VisitorDurationsFn`` gives for each of its
    visitors, as one ``columns.VisitorColumns`` (and its ``columns.SeenColumns`` on
    ``freshness.SEEN``), computed on arrays: the same rule (module doc), counters and values.

    Integer times whose every possible sum fits in int64 (``max time × hits < 2^63``) are
    exact on arrays, as Python's integers are; any other bucket (float or huge times: only
    hostile input has them) goes through ``VisitorDurationsFn`` itself, visitor by visitor.
    """

    def __init__(self, reference: Optional[beam.DoFn] = None, divisor: Optional[int] = None,
                 count_without_item: bool = True) -> None:
        # GA4's next_event rule is this one with sessions = ga_session_id, times in µs (divisor
        # 1000) and NextEventTimeFn as the reference; its reader counts item-less events itself.
        self.reference = reference or VisitorDurationsFn()
        self.divisor = divisor
        self.count_without_item = count_without_item
        self.without_item = counters.dropped("hit_without_item")
        self.nonpositive = counters.dropped("nonpositive_duration")
        self.sessions = counters.counter("sessions")

    def process(self, element) -> Iterable:
        _, parts = element
        parts = list(parts)
        times = None
        if all(isinstance(part[4], bytes) for part in parts):
            times = np.concatenate([np.frombuffer(part[4], np.int64) for part in parts])
            if len(times) and int(times.max()) * len(times) >= 2**63:
                times = None
        if times is not None:
            yield from self.on_arrays(parts, times)
            return
        interactions, seen = [], []
        for out in self.by_visitor(parts):
            if isinstance(out, beam.pvalue.TaggedOutput):
                seen.append(out.value)
            else:
                interactions.append(out)
        if interactions:
            yield columns.from_visitors(interactions)
            yield beam.pvalue.TaggedOutput(freshness.SEEN, columns.from_seen(seen))

    def by_visitor(self, parts: list) -> Iterable:
        fragments: dict = defaultdict(list)
        for part in parts:
            for visitor, fragment in unpack_rows(part):
                fragments[visitor].append(fragment)
        for visitor in sorted(fragments):
            yield from self.reference.process((visitor, fragments[visitor]))

    def on_arrays(self, parts: list, times: np.ndarray) -> Iterable:
        row_visitors = b"\n".join(part[0] for part in parts).decode("utf-8").split("\n")
        visits = np.concatenate([np.frombuffer(part[1], np.int64) for part in parts])
        days = np.concatenate([np.frombuffer(part[2], np.int64) for part in parts])
        counts = np.concatenate([np.frombuffer(part[3], np.int64) for part in parts])
        item_text = b"\n".join(part[5] for part in parts).decode("utf-8").split("\n")

        visitor_codes: dict = {}
        row_visitor = np.fromiter((visitor_codes.setdefault(v, len(visitor_codes)) for v in row_visitors),
                                  np.int64, len(row_visitors))
        visitor_names = list(visitor_codes)
        item_codes: dict = {"": -1}
        item = np.fromiter((item_codes.setdefault(i, len(item_codes) - 1) for i in item_text), np.int64, len(item_text))
        item_names = list(item_codes)[1:]
        nitems = max(len(item_names), 1)

        # Sessions: distinct (visitor, visitNumber) over the rows (a session may span rows).
        order = np.lexsort((visits, row_visitor))
        new = np.r_[True, (row_visitor[order][1:] != row_visitor[order][:-1]) | (visits[order][1:] != visits[order][:-1])]
        row_session = np.empty(len(order), np.int64)
        row_session[order] = np.cumsum(new) - 1
        self.sessions.inc(int(new.sum()))
        hit_row = np.repeat(np.arange(len(counts)), counts)
        session, visitor, day = row_session[hit_row], row_visitor[hit_row], days[hit_row]
        if self.count_without_item:
            self.without_item.inc(int((item < 0).sum()))

        # Distinct (session, time); the next one in the same session ends it (LEAD).
        order = np.lexsort((times, session))
        s, t = session[order], times[order]
        new = np.r_[True, (s[1:] != s[:-1]) | (t[1:] != t[:-1])]
        group = np.empty(len(order), np.int64)
        group[order] = np.cumsum(new) - 1
        group_session, group_time, group_visitor = s[new], t[new], visitor[order][new]
        has_next = np.r_[group_session[1:] == group_session[:-1], False]
        gap = np.r_[group_time[1:] - group_time[:-1], 0]

        # One credit per distinct (session, time, item) that has a next time.
        credited = (item >= 0) & has_next[group]
        pairs = np.unique(group[credited] * nitems + item[credited])
        pair_group, pair_item = pairs // nitems, pairs % nitems
        keys, where = np.unique(group_visitor[pair_group] * nitems + pair_item, return_inverse=True)
        totals = np.zeros(len(keys), np.int64)
        np.add.at(totals, where, gap[pair_group])
        positive = totals > 0
        if not positive.all():
            self.nonpositive.inc(int((~positive).sum()))
        keys, totals = keys[positive], totals[positive]

        yield from visitor_columns(keys, totals, nitems, visitor_names, item_names, visitor, item, day,
                                   self.divisor)


def visitor_columns(keys: np.ndarray, totals: np.ndarray, nitems: int, visitor_names: list, item_names: list,
                    visitor: np.ndarray, item: np.ndarray, day: np.ndarray, divisor: Optional[int] = None) -> Iterable:
    """The kept ``(visitor, item)`` pairs (``keys`` = visitor code × nitems + item code, their
    ``totals``) -> one ``columns.VisitorColumns`` and its ``columns.SeenColumns`` (on
    ``freshness.SEEN``), items of a visitor in text order; the date range of a pair spans every
    dated row of it (``visitor``, ``item``, ``day`` per row). ``divisor``: values are
    ``total / divisor`` (Python's exact int division)."""
    # Date range of each (visitor, item) over its dated rows (credited or not).
    dated = (item >= 0) & (day != NO_DAY)
    dated_keys = visitor[dated] * nitems + item[dated]
    order = np.argsort(dated_keys, kind="stable")
    dated_keys, dated_days = dated_keys[order], day[dated][order]
    starts, ends = _groups(dated_keys)
    range_keys = dated_keys[starts]
    firsts = np.minimum.reduceat(dated_days, starts) if len(starts) else dated_days[:0]
    lasts = np.maximum.reduceat(dated_days, starts) if len(starts) else dated_days[:0]
    at = np.searchsorted(range_keys, keys)
    found = at < len(range_keys)
    found[found] = range_keys[at[found]] == keys[found]
    at = np.where(found, at, 0)

    # Per visitor, items in text order: the VisitorDurationsFn element shapes.
    rank = np.empty(nitems, np.int64)
    rank[np.array(sorted(range(len(item_names)), key=item_names.__getitem__), dtype=np.int64)] = \
        np.arange(len(item_names))
    key_visitor, key_item = keys // nitems, keys % nitems
    visitor_rank = np.empty(len(visitor_names), np.int64)
    visitor_rank[np.array(sorted(range(len(visitor_names)), key=visitor_names.__getitem__), dtype=np.int64)] = \
        np.arange(len(visitor_names))
    order = np.lexsort((rank[key_item], visitor_rank[key_visitor]))
    key_visitor, key_item, totals = key_visitor[order], key_item[order], totals[order]
    found, at = found[order], at[order]
    firsts = np.where(found, firsts[at] if len(firsts) else 0, NO_DAY)
    lasts = np.where(found, lasts[at] if len(lasts) else 0, NO_DAY)
    starts, ends = _groups(key_visitor)
    if not len(starts):
        return
    visitors = [visitor_names[v] for v in key_visitor[starts].tolist()]
    counts = (ends - starts).astype(np.int64)
    items = [item_names[i] for i in key_item.tolist()]
    values = totals if divisor is None else np.array([t / divisor for t in totals.tolist()], dtype=np.float64)
    yield columns.VisitorColumns(visitors, counts, items, values)
    yield beam.pvalue.TaggedOutput(freshness.SEEN, columns.SeenColumns(visitors, counts, items, firsts, lasts))


class SessionizeHitBuckets(beam.PTransform):
    """``(bucket, HitColumns)`` from the file readers -> ``columns.VisitorColumns``
    (``.interactions``) and their items' date ranges (``[freshness.SEEN]``,
    ``columns.SeenColumns``): the values ``SessionizeHits`` gives from session rows, one
    batch per bucket."""

    def expand(self, bucketed_hits):
        return (
            bucketed_hits
            | "GroupByBucket" >> beam.GroupByKey()
            | "TimeOnItems" >> beam.ParDo(BucketDurationsFn()).with_outputs(freshness.SEEN, main="interactions")
        )
