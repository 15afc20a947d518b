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
from collections import defaultdict
from typing import Iterable

import apache_beam as beam

from preprocess import counters, freshness

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
