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

from preprocess import counters, freshness, sessionize, sources
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
            interactions = out.interactions | "Flat" >> beam.FlatMap(lambda batch: batch)
            seen = out[freshness.SEEN] | "FlatSeen" >> beam.FlatMap(lambda batch: batch)
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
