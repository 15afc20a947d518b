"""Names of the Beam metrics counters the pipeline keeps (namespace ``preprocess``).

Every row that does not make it into the output is counted under ``dropped_<reason>``;
``metadata.json`` and the final log line report them. ``DROP_REASONS`` documents each one.
"""
from __future__ import annotations

import apache_beam as beam

NAMESPACE = "preprocess"
DROPPED_PREFIX = "dropped_"

DROP_REASONS = {
    "invalid_utf8": "line of a text input that is not valid UTF-8",
    "malformed_json": "line is not a JSON object (or nests deeper than the JSON parser allows)",
    "malformed_hit": "GA360 hit whose customDimensions/product is not an array of objects, or page not an object",
    "malformed_csv": "CSV row with the wrong number of columns or unreadable quoting",
    "missing_visitor_id": "fullVisitorId / visitorId / user_pseudo_id (user_id) null or empty",
    "invalid_visitor_id": "visitor ID with a tab, line break or other control character, or not text",
    "missing_visit_number": "visitNumber null, empty or not an integer in [0, 2^63)",
    "missing_hits": "GA session without a hits array",
    "invalid_time": "hit time or GA4 event_timestamp null, non-numeric, negative, not finite or beyond INT64",
    "invalid_content_id": "content ID with a tab, line break or other control character, or not text",
    "hit_without_item": "hit (of the kept type) with no content ID; it still ends the previous hit's time",
    "other_hit_type": "hit whose hits.type is not --hit_type",
    "malformed_event": "GA4 event whose event_params or items is not an array of objects",
    "missing_session_id": "GA4 event without an INT64 ga_session_id event param",
    "other_event_name": "GA4 event whose event_name is not in --event_names",
    "event_without_item": "GA4 event with no item (--item_source); with --duration next_event it still ends the previous event's time",
    "invalid_engagement_time": "GA4 event whose engagement_time_msec is not an INT64 or is negative (--duration engagement_time)",
    "invalid_duration": "interactions_csv / query row whose session_duration is not a finite number",
    "nonpositive_duration": "(visitor, item) whose summed time is 0 or less",
    "duration_overflow": "(visitor, item) whose summed time overflows float64 (infinite)",
    "held_out_unseen_item": "held-out (test) interaction whose item has no training interaction",
}


def counter(name: str) -> beam.metrics.metric.Metrics.DelegatingCounter:
    return beam.metrics.Metrics.counter(NAMESPACE, name)


def dropped(reason: str) -> beam.metrics.metric.Metrics.DelegatingCounter:
    assert reason in DROP_REASONS, reason
    return counter(DROPPED_PREFIX + reason)
