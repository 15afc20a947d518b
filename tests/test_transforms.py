"""Unit tests of the preprocessing graph's composite transforms, one at a time: Beam's
``TestPipeline`` (local FnApiRunner) + ``assert_that`` on small hand-made inputs, expected
outputs worked out by hand in the comments (or by an independent plain-Python/pandas rule)."""
from __future__ import annotations

import glob
import json
import pathlib

import apache_beam as beam
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from preprocess import counters, freshness, ga4, rating, records, sessionize, sources, split, transform
from schemas import contract, records as features
from tests.ga360_rows import page, session
from tests.split_reference import reference_split


def local_pipeline() -> test_pipeline.TestPipeline:
    """A test pipeline on the FnApiRunner (Beam's default local runner wants to fetch Prism)."""
    return test_pipeline.TestPipeline(runner="FnApiRunner")


def run_counting(p: beam.Pipeline) -> dict[str, int]:
    """Runs ``p`` (its ``assert_that`` checks raise here) and returns the ``preprocess``
    counters, summed over the steps that increment them."""
    result = p.run()
    result.wait_until_finish()
    found: dict[str, int] = {}
    query = result.metrics().query(MetricsFilter().with_namespace(counters.NAMESPACE))
    for counter in query["counters"]:
        found[counter.key.metric.name] = found.get(counter.key.metric.name, 0) + counter.committed
    return found


def reasons(dropped: beam.PCollection) -> beam.PCollection:
    """The ``reason`` of each dead letter (JSON text)."""
    return dropped | "Reasons" >> beam.Map(lambda text: json.loads(text)["reason"])


# --------------------------------------------------------------------------- rating


def test_scale_to_ratings_divides_by_the_side_input_median_and_caps():
    p = local_pipeline()
    visitors = p | "Visitors" >> beam.Create([
        ("v1", (("a", 30.0), ("b", 300.0))),
        ("v2", (("c", 15.0),)),
    ])
    median = p | "Median" >> beam.Create([60.0])
    rated = visitors | rating.ScaleToRatings(median, scale=0.5, cap=1.0)
    # 0.5 · 30/60 = 0.25; 0.5 · 300/60 = 2.5 -> cap 1.0; 0.5 · 15/60 = 0.125 (all exact binary)
    assert_that(rated, equal_to([("v1", (("a", 0.25), ("b", 1.0))), ("v2", (("c", 0.125),))]))
    p.run().wait_until_finish()


def test_scale_to_ratings_leaves_values_under_the_cap_unrounded():
    p = local_pipeline()
    visitors = p | "Visitors" >> beam.Create([("v", (("a", 1.0), ("b", 7.0)))])
    median = p | "Median" >> beam.Create([3.0])
    rated = visitors | rating.ScaleToRatings(median, scale=0.3, cap=2.0)
    assert_that(rated, equal_to([("v", (("a", 0.3 * 1.0 / 3.0), ("b", 0.3 * 7.0 / 3.0)))]))
    p.run().wait_until_finish()


def test_median_duration_is_the_median_over_all_visitors_interactions():
    p = local_pipeline()
    visitors = [
        ("v1", (("a", 1.0), ("b", 7.0))),
        ("v2", (("a", 3.0),)),
        ("v3", (("c", 10.0), ("d", 2.0), ("e", 7.0))),
    ]
    median = p | beam.Create(visitors) | rating.MedianDuration()
    # durations 1, 7, 3, 10, 2, 7 -> sorted 1 2 3 7 7 10 -> (3 + 7) / 2 = 5 (numpy agrees)
    durations = [d for _, interactions in visitors for _, d in interactions]
    assert float(np.median(durations)) == 5.0
    assert_that(median, equal_to([5.0]))
    p.run().wait_until_finish()


def test_median_duration_of_an_odd_count_and_of_nothing():
    p = local_pipeline()
    odd = p | "Odd" >> beam.Create([("v", (("a", 4.0), ("b", 9.0))), ("w", (("a", 1.0),))])
    assert_that(odd | "MedianOdd" >> rating.MedianDuration(), equal_to([4.0]), label="odd")
    empty = p | "Empty" >> beam.Create([]).with_output_types(tuple)
    assert_that(empty | "MedianEmpty" >> rating.MedianDuration(), equal_to([None]), label="empty")
    p.run().wait_until_finish()


# --------------------------------------------------------------------------- split


def test_mark_held_out_follows_the_documented_rule_and_keeps_ratings():
    visitors = [
        ("solo", (("only", 0.5),)),  # one interaction: always training
        ("many", tuple((f"item{i}", 0.125 * i) for i in range(12))),
        ("pair", (("x", 1.0), ("y", 0.25))),
    ]
    frame = pd.DataFrame(
        [(v, item) for v, interactions in visitors for item, _ in interactions],
        columns=["visitorId", "contentId"],
    )

    def expected(fraction: float, seed: int) -> list:
        flags = iter(reference_split(frame, fraction, seed).tolist())
        return [(v, tuple((item, r, next(flags)) for item, r in interactions)) for v, interactions in visitors]

    half, everything = expected(0.5, 3), expected(1.0, 3)
    many = dict(half)["many"]
    assert 0 < sum(flag for _, _, flag in many) < len(many)  # the inputs test both outcomes
    # fraction 1: every draw is below it, so each user keeps exactly one training interaction
    assert [sum(not flag for _, _, flag in rows) for _, rows in everything] == [1, 1, 1]

    p = local_pipeline()
    rows = p | beam.Create(visitors)
    assert_that(rows | "Half" >> split.MarkHeldOut(0.5, seed=3), equal_to(half), label="half")
    assert_that(rows | "All" >> split.MarkHeldOut(1.0, seed=3), equal_to(everything), label="all")
    assert_that(rows | "None" >> split.MarkHeldOut(0.0, seed=3),
                equal_to([(v, tuple((i, r, False) for i, r in xs)) for v, xs in visitors]), label="none")
    found = run_counting(p)
    held = sum(flag for rows_ in (half, everything) for _, xs in rows_ for _, _, flag in xs)
    assert found["held_out_interactions"] == held


# --------------------------------------------------------------------------- sessionize


def test_sessionize_hits_credits_gaps_to_items_across_fragments_and_sessions():
    p = local_pipeline()
    hits = p | beam.Create([
        # (visitor, (visit, hits, day of the row)); v1, visit 1, in two fragments (rows) on
        # days 10 and 11: distinct times 0, 1000, 5000, 7000
        ("v1", (1, ((0, "A"), (1000, "B"), (1000, "C")), 10)),
        ("v1", (1, ((1000, "B"), (5000, None), (7000, "A")), 11)),
        # v1, visit 2 (no date): B at 0 lasts until 500; the hit at 500 is the last one
        ("v1", (2, ((0, "B"), (500, "B")), None)),
        ("v2", (1, ((0, "X"),), 3)),  # one hit: no duration, no output
        # v3, visit 1: Z lasts 250; visit 3: the duplicate row counts once, Z lasts 300
        ("v3", (1, ((0, "Z"), (250, "Y")), 7)),
        ("v3", (3, ((100, "Z"), (100, "Z"), (400, None)), 5)),
    ])
    # v1: A 1000 (0 -> 1000; the A at 7000 is last); B 4000 (1000 -> 5000) + 500; C 4000
    expected = [("v1", (("A", 1000), ("B", 4500), ("C", 4000))), ("v3", (("Z", 550),))]
    out = hits | sessionize.SessionizeHits()
    assert_that(out.interactions, equal_to(expected))
    # dates of the kept items over all their hits: A on days 10 and 11 (its last hit counts
    # for the date, not the duration), B on 10, 11 and an undated visit, C on 10; Z on 5 and 7
    assert_that(out[freshness.SEEN], equal_to([
        ("v1", (("A", 10, 11), ("B", 10, 11), ("C", 10, 10))), ("v3", (("Z", 5, 7),))]), label="seen")
    found = run_counting(p)
    assert found["sessions"] == 5  # v1: 2, v2: 1, v3: 2
    assert found[counters.DROPPED_PREFIX + "hit_without_item"] == 2


def test_sum_interactions_sums_per_item_and_drops_nonpositive_and_infinite_sums():
    p = local_pipeline()
    rows = p | beam.Create([
        # (visitor, (item, duration, first day, last day))
        ("v1", ("a", 10.0, 3, 4)), ("v1", ("b", 5.0, None, None)), ("v1", ("a", 2.5, 1, 2)),
        ("v2", ("c", -3.0, 1, 1)), ("v2", ("c", 3.0, 1, 1)),  # sums to 0: dropped, and v2 has nothing left
        ("v3", ("d", -1.0, None, None)),
        ("v4", ("e", 1.0, 9, 9)), ("v4", ("f", 0.0, 9, 9)),
        ("v5", ("g", 1e308, 1, 1)), ("v5", ("g", 1e308, 1, 1)),  # overflows to inf: dropped
    ])
    expected = [("v1", (("a", 12.5), ("b", 5.0))), ("v4", (("e", 1.0),))]
    out = rows | sessionize.SumInteractions()
    assert_that(out.interactions, equal_to(expected))
    assert_that(out[freshness.SEEN], equal_to([("v1", (("a", 1, 4), ("b", None, None))), ("v4", (("e", 9, 9),))]),
                label="seen")
    found = run_counting(p)
    assert found[counters.DROPPED_PREFIX + "nonpositive_duration"] == 3  # c, d, f
    assert found[counters.DROPPED_PREFIX + "duration_overflow"] == 1  # g


# --------------------------------------------------------------------------- GA4

# (visitor, (session, event time µs, event name, item or None, engagement ms or None, day))
GA4_ROWS = [
    ("v1", (1, 1_000_000, "page_view", "A", 300, 20)),
    ("v1", (1, 1_000_000, "page_view", "A", 300, 20)),  # the same event twice counts once
    ("v1", (1, 3_000_000, "scroll", "A", 200, 21)),
    ("v1", (1, 4_000_000, "page_view", "B", None, None)),
    ("v1", (2, 0, "page_view", "B", 50, 25)),
    ("v1", (2, 10, "page_view", None, 999, 26)),  # no item: credits nothing, still ends B's time
    ("v2", (1, 5, "page_view", "C", 0, 1)),
    ("v2", (1, 9, "page_view", "D", None, 1)),
]


@pytest.mark.parametrize("duration,expected,seen", [
    # Σ engagement over distinct events: A 300 + 200; B 0 (None) + 50; v2: C 0, D 0 -> nothing
    ("engagement_time", [("v1", (("A", 500), ("B", 50)))], [("v1", (("A", 20, 21), ("B", 25, 25)))]),
    # gaps per session (µs) / 1000: v1 s1: A 1e6 -> 3e6 -> 4e6: A 2e6 + 1e6, B last;
    # s2: B 0 -> 10: 10 µs; v2: C 5 -> 9: 4 µs, D last
    ("next_event", [("v1", (("A", 3000.0), ("B", 0.01))), ("v2", (("C", 0.004),))],
     [("v1", (("A", 20, 21), ("B", 25, 25))), ("v2", (("C", 1, 1),))]),
])
def test_ga4_time_on_items_for_both_durations(duration, expected, seen):
    p = local_pipeline()
    out = p | beam.Create(GA4_ROWS) | ga4.TimeOnItems(duration)
    assert_that(out.interactions, equal_to(expected))
    assert_that(out[freshness.SEEN], equal_to(seen), label="seen")
    found = run_counting(p)
    assert found["sessions"] == 3
    if duration == "engagement_time":
        assert found[counters.DROPPED_PREFIX + "nonpositive_duration"] == 2  # v2's C and D


def test_ga4_time_on_items_refuses_an_unknown_duration():
    with pytest.raises(ValueError, match="unknown duration"):
        ga4.TimeOnItems("dwell")


# --------------------------------------------------------------------------- sources


def test_read_ga_sessions_parses_hits_and_dead_letters_bad_lines(tmp_path):
    path = tmp_path / "sessions.json"
    lines = [
        ("\ufeff" + json.dumps(session("v1", 1, [  # a byte order mark first
            page(0, "a"), page(1000), {"time": 2000, "type": "EVENT"}, page("3000", "b"),
        ]))).encode(),
        b"not json",
        json.dumps(session("", 1, [page(0, "x")])).encode(),
        json.dumps(session("v2", "2", [page(5, 7)])).encode(),  # numbers given as text / int IDs
        b"",
        json.dumps(session("v3", 1, [])).encode(),  # no hits: nothing
        b"\xff\xfe broken",
        json.dumps(session("v4", None, [page(0, "a")])).encode(),
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    p = local_pipeline()
    read = p | sources.ReadGaSessions(str(path), "custom_dimension", 10, "PAGE")
    assert_that(read.hits, equal_to([
        ("v1", (1, ((0, "a"), (1000, None), (3000, "b")), None)),  # the EVENT hit is not a PAGE hit
        ("v2", (2, ((5, "7"),), None)),  # no "date" field: no day
    ]), label="hits")
    assert_that(reasons(read[sources.DROPPED]), equal_to(
        ["malformed_json", "missing_visitor_id", "invalid_utf8", "missing_visit_number"]), label="dropped")
    found = run_counting(p)
    assert found[counters.DROPPED_PREFIX + "other_hit_type"] == 1


def test_read_hits_csv_maps_header_columns_and_dead_letters_bad_rows(tmp_path):
    path = tmp_path / "hits.csv"
    path.write_text(
        "other,time,productSKU,visitNumber,fullVisitorId\n"
        "x,0,SKU1,1,v1\n"
        "y,1000,,1,v1\n"  # no item: a hit that still ends the previous one
        'q,7,"S,2",2,v4\n'  # a quoted comma
        "z,5,S,x,v2\n"  # visit number not an integer
        "z,5,S\n"  # too few columns
        "z,-1,S,1,v5\n",  # negative time
        encoding="utf-8",
    )
    p = local_pipeline()
    read = p | sources.ReadHitsCsv(str(path), "productSKU")
    assert_that(read.hits, equal_to([
        ("v1", (1, ((0, "SKU1"),), None)),  # no date column: no day
        ("v1", (1, ((1000, None),), None)),
        ("v4", (2, ((7, "S,2"),), None)),
    ]), label="hits")
    assert_that(reasons(read[sources.DROPPED]),
                equal_to(["missing_visit_number", "malformed_csv", "invalid_time"]), label="dropped")
    p.run().wait_until_finish()


def test_read_interactions_csv_in_any_column_order(tmp_path):
    path = tmp_path / "interactions.csv"
    path.write_text(
        "session_duration,visitorId,contentId\n"
        "12.5,v1,a\n"
        "3,v1,b\n"
        "nan,v2,c\n"  # not finite
        "4,v3,\n"  # no item: counted, not dead-lettered
        ",v4,d\n"  # no duration
        "1e3,v5,e\n",
        encoding="utf-8",
    )
    p = local_pipeline()
    read = p | sources.ReadInteractionsCsv(str(path))
    assert_that(read.interactions,
                equal_to([("v1", ("a", 12.5, None, None)), ("v1", ("b", 3.0, None, None)),
                          ("v5", ("e", 1000.0, None, None))]), label="rows")
    assert_that(reasons(read[sources.DROPPED]),
                equal_to(["invalid_duration", "invalid_duration"]), label="dropped")
    found = run_counting(p)
    assert found[counters.DROPPED_PREFIX + "hit_without_item"] == 1


# --------------------------------------------------------------------------- records


def parts(indices: list, values: list) -> tuple:
    """One partial row as ``records.partial_rows`` makes it: raw int64 and float32 bytes."""
    return np.asarray(indices, np.int64).tobytes(), np.asarray(values, np.float32).tobytes()


def read_records(prefix: str) -> dict:
    """``{key: (indices, values)}`` of the TFRecord shards ``prefix-*``, decoded with
    ``tf.train.Example.FromString``; each key must occur once."""
    rows: dict = {}
    for path in sorted(glob.glob(prefix + "-*" + contract.RECORD_SUFFIX)):
        for raw in tf.data.TFRecordDataset(path).as_numpy_iterator():
            feature = tf.train.Example.FromString(raw).features.feature
            (key,) = feature[features.KEY].int64_list.value
            assert key not in rows, key
            rows[key] = (list(feature[features.INDICES].int64_list.value),
                         list(feature[features.VALUES].float_list.value))
    return rows


@pytest.mark.parametrize("complete_rows", [False, True])
def test_write_grouped_records_merges_partial_rows_sorted_by_index(tmp_path, complete_rows):
    prefix = str(tmp_path / "rows")
    if complete_rows:  # one partial row per key, already sorted (the by-user case)
        partial = [(3, parts([2, 4, 9], [0.5, 1.0, 0.25])), (7, parts([0], [0.75]))]
    else:  # key 3 in two batches: merged and sorted by index, values moving along
        partial = [(3, parts([2, 9], [0.5, 0.25])), (7, parts([0], [0.75])), (3, parts([4], [1.0]))]
    p = local_pipeline()
    _ = p | beam.Create(partial) | records.WriteGroupedRecords(
        prefix, num_shards=1, rows_counter="rows_written", complete_rows=complete_rows)
    found = run_counting(p)
    assert found["rows_written"] == 2
    assert glob.glob(prefix + "-*") == [prefix + "-00000-of-00001" + contract.RECORD_SUFFIX]
    assert read_records(prefix) == {3: ([2, 4, 9], [0.5, 1.0, 0.25]), 7: ([0], [0.75])}


def test_write_interaction_records_splits_training_and_held_out_both_ways(tmp_path):
    def batch(users, items, ratings, held):
        return (np.asarray(users, np.int64), np.asarray(items, np.int64),
                np.asarray(ratings, np.float32), np.asarray(held, bool))

    batches = [  # (userIds, itemIds, ratings, heldOut); a user's rows all in one batch
        batch([0, 0, 1, 1], [1, 0, 0, 2], [0.5, 0.25, 1.0, 0.75], [False, False, False, True]),
        batch([2, 2, 2], [1, -1, 0], [0.125, 0.5, 0.375], [False, True, True]),
    ]
    p = local_pipeline()
    _ = p | beam.Create(batches) | records.WriteInteractionRecords(str(tmp_path), num_shards=1, write_test=True)
    found = run_counting(p)
    out = pathlib.Path(tmp_path)
    # training cells (user, item, rating): (0,1,.5) (0,0,.25) (1,0,1) (2,1,.125)
    assert read_records(str(out / contract.ITEMS_FOR_USER)) == {
        0: ([0, 1], [0.25, 0.5]), 1: ([0], [1.0]), 2: ([1], [0.125])}
    assert read_records(str(out / contract.USERS_FOR_ITEM)) == {
        0: ([0, 1], [0.25, 1.0]), 1: ([0, 2], [0.5, 0.125])}
    # held out: (1,2,.75) and (2,0,.375); (2,-1,.5) has no trained item and is dropped
    assert read_records(str(out / contract.TEST_ITEMS_FOR_USER)) == {1: ([2], [0.75]), 2: ([0], [0.375])}
    assert found["interactions"] == 4 and found["test_interactions"] == 2
    assert found[counters.DROPPED_PREFIX + "held_out_unseen_item"] == 1
    assert found["user_records"] == 3 and found["test_users"] == 2


# --------------------------------------------------------------------------- vocabularies


def test_apply_vocabularies_counts_training_rows_only(tmp_path):
    marked = [  # (visitor, ((item, rating, held_out), ...))
        ("u1", (("a", 0.5, False), ("b", 0.25, False))),
        ("u2", (("a", 1.0, False), ("c", 0.75, True))),
        ("u3", (("b", 0.1, True), ("a", 0.2, False))),
    ]
    # training counts: users u1 2, u2 1, u3 1; items a 3, b 1, c 0 (held out only)
    # dense IDs: most frequent first, ties by the raw ID's bytes in descending order
    users, items = {"u1": 0, "u3": 1, "u2": 2}, {"a": 0, "b": 1, "c": transform.UNKNOWN_ID}
    expected = [(users[v], items[i], float(np.float32(r)), held) for v, xs in marked for i, r, held in xs]

    def rows(columns: tuple) -> list:
        return list(zip(*(c.tolist() for c in columns)))

    p = local_pipeline()
    dense, _ = p | beam.Create(marked) | transform.ApplyVocabularies(str(tmp_path / "tft_tmp"))
    assert_that(dense | beam.FlatMap(rows), equal_to(expected))
    p.run().wait_until_finish()
