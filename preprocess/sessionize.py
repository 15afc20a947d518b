"""Hits -> (visitor, item) time-on-item, the Beam twin of ``schemas/ga360_interactions.sql``.

Within one session (fullVisitorId, visitNumber) let t_1 < t_2 < ... < t_n be the distinct hit
times. A hit at t_k lasted ``d_k = t_{k+1} - t_k`` (the SQL's
``LEAD(hit_time) OVER (PARTITION BY fullVisitorId, visitNumber ORDER BY hit_time) - hit_time``);
the last hit has no duration. Each distinct (t_k, item) of the session credits ``d_k`` to the
item, so duplicate rows count once and several items shown by one hit each get its time.
Finally ``session_duration(visitor, item) = sum of credits over all sessions``, kept if > 0.
"""
from __future__ import annotations

from typing import Iterable

import apache_beam as beam

from preprocess import counters


def session_item_durations(hits: Iterable[tuple]) -> dict:
    """``{item: seconds credited}`` for one session's ``(time, item or None)`` hits."""
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


class SessionDurationsFn(beam.DoFn):
    """((visitor, visit), hits) -> ((visitor, item), duration) per item timed in the session."""

    def __init__(self) -> None:
        self.without_item = counters.dropped("hit_without_item")
        self.sessions = counters.counter("sessions")

    def process(self, element) -> Iterable:
        (visitor, _visit), hits = element
        hits = list(hits)
        self.sessions.inc()
        missing = sum(1 for _, item in hits if item is None)
        if missing:
            self.without_item.inc(missing)
        for item, duration in session_item_durations(hits).items():
            yield (visitor, item), duration


class KeepPositive(beam.DoFn):
    """Drops (and counts) interactions whose summed duration is not positive."""

    def __init__(self) -> None:
        self.nonpositive = counters.dropped("nonpositive_duration")

    def process(self, interaction) -> Iterable:
        if interaction[1] > 0:
            yield interaction
        else:
            self.nonpositive.inc()


class SumDurations(beam.PTransform):
    """((visitor, item), duration) -> one interaction per (visitor, item), positive sums only."""

    def expand(self, pcoll):
        return (
            pcoll
            | "SumPerVisitorItem" >> beam.CombinePerKey(sum)
            | "KeepPositive" >> beam.ParDo(KeepPositive())
        )


class SessionizeHits(beam.PTransform):
    """Hits keyed by session -> interactions ((visitorId, contentId), session_duration)."""

    def expand(self, hits):
        return (
            hits
            | "GroupBySession" >> beam.GroupByKey()
            | "TimeOnItems" >> beam.ParDo(SessionDurationsFn())
            | "SumOverSessions" >> SumDurations()
        )
