"""The block readers (issue 13): text read a byte range at a time, GA360 hits sessionized per
visitor bucket on NumPy arrays. Checked against independent references: Python's own line
splitting of the whole file, DuckDB running the project's SQL, and the per-session reader
(``ReadGaSessions`` + ``SessionizeHits``, itself tested against the SQL) for the counters,
dead letters and date ranges."""
from __future__ import annotations

import json

import apache_beam as beam
import pandas as pd
import pytest
from apache_beam.metrics.metric import MetricsFilter

from preprocess import columns, counters, freshness, sessionize, sources
from tests.test_ga4 import edge_case_file  # noqa: F401
from tests.test_sources import ITEM_SOURCES, as_sorted, duckdb_interactions, tricky_sessions  # noqa: F401


@pytest.mark.parametrize("block_bytes", [1, 7, 64, 1 << 20])
def test_byte_ranges_give_every_line_once(tmp_path, block_bytes):
    data = "\ufeff{\"a\": 1}\r\n\n  \nline two ü\nx\r\nlast without newline".encode("utf-8")
    path = tmp_path / "lines.txt"
    path.write_bytes(data)
    got = []
    for file_range in sources.byte_ranges(str(path), block_bytes):
        for block in sources.ReadBlocksFn(block_bytes).process(file_range):
            got.extend(block)
    expected = [line[:-1] if line.endswith(b"\r") else line for line in data.split(b"\n")]
    assert got == expected


def test_compressed_files_are_read_whole(tmp_path):
    import gzip

    lines = [f"line {i}".encode() for i in range(1000)]
    path = tmp_path / "lines.txt.gz"
    path.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    ranges = list(sources.byte_ranges(str(path), 100))
    assert ranges == [(str(path), 0, -1)]
    got = [line for block in sources.ReadBlocksFn(100).process(ranges[0]) for line in block]
    assert got == lines


def run_both(path: str, item_source: str, block_bytes: int) -> tuple[dict, dict]:
    """Interactions, seen rows, dead letters and counters of both readers on one file."""
    results = []
    for blocks in (False, True):
        p = beam.Pipeline("FnApiRunner")
        if blocks:
            read = p | sources.ReadGaSessionsInBlocks(path, item_source, 10, "PAGE", block_bytes=block_bytes)
            out = read.hits | sessionize.SessionizeHitBuckets()
            interactions = out.interactions | "Flat" >> beam.FlatMap(columns.to_visitors)
            seen = out[freshness.SEEN] | "FlatSeen" >> beam.FlatMap(columns.seen_to_visitors)
        else:
            read = p | sources.ReadGaSessions(path, item_source, 10, "PAGE")
            out = read.hits | sessionize.SessionizeHits()
            interactions, seen = out.interactions, out[freshness.SEEN]
        found: dict = {}
        for name, pcoll in (("interactions", interactions), ("seen", seen), ("dropped", read[sources.DROPPED])):
            _ = (pcoll | f"Repr{name}" >> beam.Map(repr)
                 | f"Write{name}" >> beam.io.WriteToText(f"{path}.{int(blocks)}.{name}", shard_name_template=""))
        result = p.run()
        result.wait_until_finish()
        for name in ("interactions", "seen", "dropped"):
            with open(f"{path}.{int(blocks)}.{name}") as handle:
                found[name] = sorted(handle.read().splitlines())
        metrics: dict = {}
        for counter in result.metrics().query(MetricsFilter().with_namespace(counters.NAMESPACE))["counters"]:
            metrics[counter.key.metric.name] = metrics.get(counter.key.metric.name, 0) + counter.committed
        found["counters"] = metrics
        results.append(found)
    return results[0], results[1]


@pytest.mark.parametrize("item_source", ITEM_SOURCES)
def test_block_reader_equals_project_sql_in_duckdb(tricky_sessions, item_source):  # noqa: F811
    _, blocks = run_both(tricky_sessions, item_source, block_bytes=3000)
    rows = [(visitor, item, d) for line in blocks["interactions"] for visitor, kept in [eval(line)]
            for item, d in kept]
    frame = pd.DataFrame(rows, columns=["visitorId", "contentId", "session_duration"])
    pd.testing.assert_frame_equal(as_sorted(frame), as_sorted(duckdb_interactions(tricky_sessions, item_source)))


def test_block_reader_equals_session_reader_on_hostile_rows(tmp_path):
    """Dead letters, counters and date ranges as the per-session reader gives them, on rows
    that take every path: bad lines, float and string times, huge times (the bucket's
    reference path), a byte order mark, int IDs, duplicate hits, several rows per session."""
    def session(visitor, visit, hits, date="20170801"):
        return json.dumps({"fullVisitorId": visitor, "visitNumber": visit, "date": date, "hits": hits})

    def hit(time, item=None, kind="PAGE"):
        h = {"time": time, "type": kind}
        if item is not None:
            h["customDimensions"] = [{"index": 10, "value": item}]
        return h

    lines = [("\ufeff" + session("a", 1, [hit(0, "x"), hit(10, "y")])).encode(),
             b"not json", b"", b"\xff\xfe bad",
             session("a", 1, [hit(10, "y"), hit(25, None), hit(40, "x")], date="20170802").encode(),
             session("b", "2", [hit("5", "x"), hit(7.5, "z"), hit(9, "x", "EVENT"), hit(12, "z")]).encode(),
             session(17, 3, [hit(0, 5), hit(3, "q\tr"), hit(4, "w")], date="bad").encode(),
             session("c", 1, [hit(-1, "x"), hit(0, "x"), hit(2**62, "y"), hit(2**62 + 9, "x")]).encode(),
             session("d", None, [hit(0, "x")]).encode(),
             session("e\n", 1, [hit(0, "x")]).encode(),
             session("f", 1, "nope").encode(),
             session("g", 1, [hit(0, "x"), hit(0, "x"), hit(100, "x"), hit(50, "v")]).encode()]
    # many visitors, so that several blocks and buckets are used
    lines += [session(f"v{i}", i % 3, [hit(0, f"i{i % 7}"), hit(1000 + i, f"i{i % 5}"), hit(3000, None)]).encode()
              for i in range(300)]
    path = tmp_path / "hostile.json"
    path.write_bytes(b"\n".join(lines) + b"\n")
    reference, blocks = run_both(str(path), "custom_dimension", block_bytes=500)
    assert blocks == reference
    assert reference["counters"][counters.DROPPED_PREFIX + "invalid_time"] == 1
    assert len(reference["dropped"]) > 5 and len(reference["interactions"]) > 250


def test_column_steps_equal_the_per_visitor_rules():
    """Median, ratings, held-out flags and the record batch of a column batch against the
    per-visitor functions (``scale_rating``, ``held_out_flags``, ``to_record_batch``), with
    int, float and huge (object) durations."""
    import numpy as np

    from preprocess import rating, split, transform

    visitors = [(f"v{i}", tuple((f"i{j}", d) for j, d in enumerate(durations)))
                for i, durations in enumerate([[5, 7, 9], [1000], [3, 3], [2**70, 1], [0.5, 2.25, 1e300]])]
    for batch in (visitors[:3], visitors[3:], visitors):
        cols = columns.from_visitors(batch)
        assert columns.to_visitors(cols) == [(v, rows) for v, rows in batch]
        flat = [d for _, rows in batch for _, d in rows]
        accumulator = rating.HistogramMedianFn().add_input(rating.HistogramMedianFn().create_accumulator(),
                                                           columns.histogram(cols.values))
        assert rating.histogram_median(accumulator) == rating.histogram_median({d: flat.count(d) for d in flat})
        median = 7.0
        rated = rating.rate_columns(cols, median, 0.3, 1.0)
        assert rated.values.tolist() == [rating.scale_rating(d, median, 0.3, 1.0) for d in flat]
        flags = split.batch_flags(cols.visitors, cols.counts, cols.items, 0.5, 3)
        assert flags.tolist() == [f for v, rows in batch for f in split.held_out_flags(v, [i for i, _ in rows], 0.5, 3)]
        marked = rated._replace(held_out=flags)
        expected = transform.to_record_batch(
            [(v, tuple((i, r, f) for (i, _), r, f in zip(rows, rs, fs)))
             for (v, rows), rs, fs in zip(batch, np.split(rated.values, np.cumsum(cols.counts)[:-1]),
                                         np.split(flags, np.cumsum(cols.counts)[:-1]))])
        assert transform.columns_record_batch(marked).equals(expected)


def test_arrow_block_parse_equals_the_line_parser(tricky_sessions, tmp_path):  # noqa: F811
    """Arrow's reading of a clean block gives the very bytes the per-line parser packs; a
    block with anything the line parser would dead-letter or read otherwise is refused."""
    with open(tricky_sessions, "rb") as handle:
        lines = sources.block_lines(handle.read())
    parse = sources.ParseGaSessionBlockFn("custom_dimension", 10, "PAGE", buckets=5)
    for start in range(0, len(lines), 150):
        block = lines[start:start + 150]
        fast = parse.arrow_columns(block)
        assert fast is not None
        rows = [out for raw in block for out in parse.session_rows(raw)]
        assert sorted(fast) == sorted(sessionize.bucketed_columns(rows, 5))
    clean = json.dumps({"fullVisitorId": "a", "visitNumber": 1, "hits": [{"time": 0, "type": "PAGE"}]}).encode()
    for odd in [b"\xef\xbb\xbf" + clean, b"not json", clean + clean, clean.replace(b'"a"', b'"a\\u0007"'),
                clean.replace(b'"a"', b'"\\ud800"'), clean.replace(b'"a"', b'"a\xff"'), clean.replace(b"0,", b"-1,"),
                clean.replace(b"1,", b'"1",'), clean.replace(b'"time": 0', b'"time": null'), b"[1]",
                clean.replace(b'"visitNumber": 1', b'"visitNumber": 1, "visitNumber": 2'),
                clean.replace(b'{"time"', b'null, {"time"')]:
        assert parse.arrow_columns([clean, odd, clean]) is None, odd


@pytest.mark.parametrize("duration", ["engagement_time", "next_event"])
@pytest.mark.parametrize("item_source", ["page_location", "item_id"])
def test_ga4_buckets_equal_the_per_visitor_steps(edge_case_file, tmp_path, duration, item_source):  # noqa: F811
    """GA4 per bucket on arrays (ReadGa4EventsInBlocks + TimeOnItemBuckets) against the
    per-visitor steps (ReadGa4Events + TimeOnItems, tested against the SQL in test_ga4.py) on
    its edge cases: interactions, date ranges, dead letters and counters."""
    from preprocess import ga4

    found = []
    for blocks in (False, True):
        p = beam.Pipeline("FnApiRunner")
        if blocks:
            read = p | ga4.ReadGa4EventsInBlocks(str(edge_case_file), item_source, duration, "user_pseudo_id", ())
            out = read.events | ga4.TimeOnItemBuckets(duration)
            interactions = out.interactions | "Flat" >> beam.FlatMap(columns.to_visitors)
            seen = out[freshness.SEEN] | "FlatSeen" >> beam.FlatMap(columns.seen_to_visitors)
        else:
            read = p | ga4.ReadGa4Events(str(edge_case_file), item_source, duration, "user_pseudo_id", ())
            out = read.events | ga4.TimeOnItems(duration)
            interactions, seen = out.interactions, out[freshness.SEEN]
        got: dict = {}
        for name, pcoll in (("interactions", interactions), ("seen", seen), ("dropped", read[sources.DROPPED])):
            target = str(tmp_path / f"{int(blocks)}.{name}")
            _ = pcoll | f"Repr{name}" >> beam.Map(repr) | f"Write{name}" >> beam.io.WriteToText(target, shard_name_template="")
        result = p.run()
        result.wait_until_finish()
        for name in ("interactions", "seen", "dropped"):
            with open(tmp_path / f"{int(blocks)}.{name}") as handle:
                got[name] = sorted(handle.read().splitlines())
        got["counters"] = {}
        for counter in result.metrics().query(MetricsFilter().with_namespace(counters.NAMESPACE))["counters"]:
            got["counters"][counter.key.metric.name] = got["counters"].get(counter.key.metric.name, 0) + counter.committed
        found.append(got)
    assert found[1] == found[0]
    assert found[0]["interactions"]
