"""The GA4 Arrow block parser (issue 13) against the per-line reader, its reference.

``ParseGa4EventBlockBucketsFn.arrow_columns`` must give exactly the ``(bucket, Ga4Columns)``
elements that ``ParseGa4EventFn`` line by line gives for the same block, or None (then the
per-line reader takes the block). Checked on the real GA4 export rows in ``../shared``, the
bundled sample's GA4 form, and generated events with the export's awkward shapes, at several
block sizes and every reader option; and in a pipeline, for the counters and dead letters too.
"""
from __future__ import annotations

import json
import os
import pathlib

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.metrics.metric import MetricsFilter

from preprocess import columns, counters, freshness, ga4, sample_data, sources
from tests.pipelines import require_shared

REAL_ROWS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "ga4_events_sample.ndjson")
SOURCES = ["page_location", "page_title", "page_path", "item_id", "event_param:article_id"]


def param(key: str, string=None, integer=None, **other) -> dict:
    return {"key": key, "value": {"string_value": string, "int_value": integer, **other}}


def clean_events(seed: int = 3, negative_engagement: bool = True) -> list[bytes]:
    """Events whose INT64s are JSON numbers (Arrow types them), with the shapes that decide
    values: missing and repeated params, int and string article IDs, null and empty values,
    non-ASCII and query-string URLs, equal timestamps, missing or blank visitors, null names,
    blank lines, duplicates."""
    rng = np.random.default_rng(seed)
    pages = ["https://example.com/a?utm=1", "https://example.com/a#top", "https://example.com/b", "?only-query",
             "https://example.com/über-uns?x=ä", "http://m.example.com/a", "https://example.com/p,1 two", ""]
    lines = []
    for v in range(90):
        visitor = ["v", "visitör", "v,comma", "v space", "", "   ", None][v % 7] if v % 11 == 0 else f"v{v}-é"
        for s in range(int(rng.integers(1, 4))):
            session = 1_600_000_000 + v * 10 + s
            for _ in range(int(rng.integers(1, 7))):
                params = []
                if rng.random() < 0.93:
                    params.append(param("ga_session_id", integer=session))
                if rng.random() < 0.05:
                    params.append(param("ga_session_id", integer=session + 1))  # repeated: MAX
                if rng.random() < 0.9:
                    params.append(param("page_location", string=pages[int(rng.integers(0, len(pages)))]))
                if rng.random() < 0.05:
                    params.append(param("page_location", integer=7))  # an int where text goes
                if rng.random() < 0.7:
                    params.append(param("page_title", string=f"Title {int(rng.integers(0, 6))} ü"))
                if rng.random() < 0.05:
                    params.append(param("page_title", string="Zzz repeated"))
                if rng.random() < 0.6:
                    low = -50 if negative_engagement and rng.random() < 0.05 else 0
                    params.append(param("engagement_time_msec", integer=int(rng.integers(low, 30_000))))
                if rng.random() < 0.03:
                    params.append(param("engagement_time_msec", integer=5))  # repeated: MAX
                r = rng.random()
                if r < 0.3:
                    params.append(param("article_id", integer=int(rng.integers(-3, 8))))
                elif r < 0.6:
                    params.append(param("article_id", string=["A1", "A2", "Ä3", " ", "A1 "][int(rng.integers(0, 5))]))
                elif r < 0.65:
                    params += [param("article_id", string="B"), param("article_id", integer=12)]  # "B" > "12"
                elif r < 0.7:
                    params.append({"key": "article_id", "value": None})
                elif r < 0.72:
                    params.append({"key": "article_id", "value": {}})
                elif r < 0.75:
                    params.append(param("article_id", double_value=1.5))
                if rng.random() < 0.05:
                    params.append({"key": None, "value": {"string_value": "x"}})
                rng.shuffle(params)
                time = 1_700_000_000_000_000 + int(rng.integers(0, 30)) * 250_000  # ties are common
                event = {"event_date": ["20231114", "2023-11-14", None, "20231131"][int(rng.integers(0, 4))],
                         "event_timestamp": time,
                         "event_name": [None, "page_view", "user_engagement", "scroll"][int(rng.integers(0, 4))],
                         "user_pseudo_id": visitor, "user_id": f"u{v % 5}" if rng.random() < 0.5 else None,
                         "event_params": params if rng.random() < 0.97 else None,
                         "items": [{"item_id": f"SKU{i}"} for i in rng.integers(0, 4, int(rng.integers(0, 3)))],
                         "geo": {"country": "AT", "n": 1.5}}
                text = json.dumps(event, ensure_ascii=bool(rng.random() < 0.5))
                lines.append(text.encode("utf-8"))
                if rng.random() < 0.05:
                    lines.append(text.encode("utf-8"))  # a duplicate event
                if rng.random() < 0.02:
                    lines.append(b"  ")  # a blank line
    return lines


def as_text_int64(lines: list[bytes]) -> list[bytes]:
    """The events with every INT64 written as a string, as BigQuery's NDJSON export does."""
    out = []
    for line in lines:
        if not line.strip():
            out.append(line)
            continue
        event = json.loads(line)
        event["event_timestamp"] = str(event["event_timestamp"])
        for entry in event.get("event_params") or ():
            if isinstance(entry.get("value"), dict) and entry["value"].get("int_value") is not None:
                entry["value"]["int_value"] = str(entry["value"]["int_value"])
        out.append(json.dumps(event).encode())
    return out


def per_line(fn: ga4.ParseGa4EventBlockBucketsFn, lines: list) -> list:
    reference = ga4.ParseGa4EventBlockBucketsFn(fn.parse, fn.buckets, use_arrow=False)
    return sorted(map(repr, reference.process(lines)))


def check_blocks(lines: list, item_source: str, duration: str, user_field: str = "user_pseudo_id",
                 event_names: tuple = (), block_lines: int = 200) -> int:
    """Asserts that every block's Arrow output equals the per-line output; the number of
    blocks Arrow took."""
    fn = ga4.ParseGa4EventBlockBucketsFn(ga4.ParseGa4EventFn(item_source, duration, user_field, event_names), 5)
    taken = 0
    for start in range(0, len(lines), block_lines):
        block = lines[start:start + block_lines]
        fast = fn.arrow_columns(block)
        if fast is None:
            continue
        taken += 1
        assert sorted(map(repr, fast)) == per_line(fn, block), (item_source, duration, start)
    return taken


@pytest.mark.parametrize("duration", ga4.DURATIONS)
@pytest.mark.parametrize("item_source", SOURCES)
def test_arrow_blocks_equal_the_per_line_reader_on_generated_events(item_source, duration):
    lines = clean_events()
    taken = sum(check_blocks(events, item_source, duration, user_field, names, size)
                for events in (lines, as_text_int64(lines))
                for user_field in ga4.USER_FIELDS for names in ((), ("page_view", "scroll"))
                for size in (1, 37, 200, len(lines)))
    if ga4.ParseGa4EventBlockBucketsFn(ga4.ParseGa4EventFn(item_source, duration, "user_id", ()), 1).item_key():
        assert taken > 20
    else:
        assert taken == 0  # page_path and item_id are read line by line


@pytest.mark.parametrize("duration", ga4.DURATIONS)
def test_arrow_blocks_equal_the_per_line_reader_on_real_rows(duration):
    # skips without ../shared (a user's fresh clone), fails under CI=true
    lines = sources.block_lines(require_shared(pathlib.Path(REAL_ROWS)).read_bytes())
    for events in (lines, as_text_int64(lines)):
        for item_source in ("page_location", "page_title", "event_param:ga_session_number", "event_param:page_title"):
            for size in (50, len(lines)):
                assert check_blocks(events, item_source, duration, block_lines=size) >= 1, item_source


def test_arrow_blocks_equal_the_per_line_reader_on_the_bundled_sample(tmp_path):
    path = tmp_path / "ga4.ndjson"
    sample_data.write_sample(str(path), 300, 4_000, 42, "ga4")
    lines = sources.block_lines(path.read_bytes())
    for duration in ga4.DURATIONS:
        assert check_blocks(lines, "event_param:article_id", duration, block_lines=997) >= 1


CLEAN = json.dumps({"event_timestamp": 5, "event_name": "page_view", "user_pseudo_id": "a", "event_date": "20240101",
                    "event_params": [param("ga_session_id", integer=1), param("page_location", string="https://x/a"),
                                     param("article_id", string="A"), param("engagement_time_msec", integer=3)]}).encode()


@pytest.mark.parametrize("odd", [
    b"\xef\xbb\xbf" + CLEAN.replace(b'"a"', b'"a\\u0007"'), b"not json", CLEAN + CLEAN, CLEAN + b" " + CLEAN,
    CLEAN.replace(b'"a"', b'"a\\u0007"'), CLEAN.replace(b'"a"', b'"\\ud800"'), CLEAN.replace(b'"a"', b'"a\xff"'),
    CLEAN.replace(b'"a"', b"7"), CLEAN.replace(b'"event_timestamp": 5', b'"event_timestamp": -5'),
    CLEAN.replace(b'"event_timestamp": 5', b'"event_timestamp": "5"'), CLEAN.replace(b'"event_timestamp": 5', b'"event_timestamp": 5.0'),
    CLEAN.replace(b'"event_timestamp": 5', b'"event_timestamp": null'), CLEAN.replace(b'"event_timestamp": 5', b'"event_timestamp": 1e3'),
    CLEAN.replace(b'"event_timestamp": 5', b'"event_timestamp": 9223372036854775808'),
    CLEAN.replace(b'"event_timestamp": 5', b'"event_timestamp": 5, "event_timestamp": 6'),
    CLEAN.replace(b'"int_value": 1', b'"int_value": "1"'), CLEAN.replace(b'"int_value": 3', b'"int_value": -3'),
    CLEAN.replace(b'"string_value": "A"', b'"string_value": "A\\u0001"'), CLEAN.replace(b'"string_value": "A"', b'"string_value": 2'),
    CLEAN.replace(b'"event_params": [', b'"event_params": [null, '), CLEAN.replace(b'"event_name": "page_view"', b'"event_name": 3'),
    CLEAN.replace(b'"event_date": "20240101"', b'"event_date": 20240101'), b"[1]", b"3", b'"text"', b"{}{}",
    CLEAN.replace(b'"event_params": [', b'"event_params": {"a": ['),
    as_text_int64([CLEAN])[0],  # a block that mixes numbers and text
    as_text_int64([CLEAN])[0].replace(b'"5"', b'" 5"'), as_text_int64([CLEAN])[0].replace(b'"5"', b'"+5"'),
    as_text_int64([CLEAN])[0].replace(b'"5"', b'"5x"'), as_text_int64([CLEAN])[0].replace(b'"5"', b'"1234567890123456789"'),
])
def test_any_doubt_sends_the_block_line_by_line(odd):
    fn = ga4.ParseGa4EventBlockBucketsFn(ga4.ParseGa4EventFn("event_param:article_id", "engagement_time",
                                                             "user_pseudo_id", ()), 3)
    assert fn.arrow_columns([CLEAN, CLEAN]) is not None
    try:
        json.loads(odd)
        odd_is_json = True
    except ValueError:
        odd_is_json = False
    got = fn.arrow_columns([CLEAN, odd, CLEAN])
    assert got is None or (odd_is_json and sorted(map(repr, got)) == per_line(fn, [CLEAN, odd, CLEAN])), odd
    text = as_text_int64([CLEAN])[0]  # the same with INT64s as text (the first line decides the form)
    assert fn.arrow_columns([text, text]) is not None
    if odd.startswith(b"{") and b'"event_timestamp": 5' in odd:
        odd = as_text_int64([CLEAN])[0] if odd == CLEAN else odd
    got = fn.arrow_columns([text, odd, text])
    assert got is None or (odd_is_json and sorted(map(repr, got)) == per_line(fn, [text, odd, text])), odd


def pipeline_outputs(path: str, item_source: str, duration: str, use_arrow: bool, tmp_path, block_bytes: int) -> dict:
    p = beam.Pipeline("FnApiRunner")
    read = p | ga4.ReadGa4EventsInBlocks(path, item_source, duration, "user_pseudo_id", (), block_bytes=block_bytes,
                                         use_arrow=use_arrow)
    out = read.events | ga4.TimeOnItemBuckets(duration)
    interactions = out.interactions | "Flat" >> beam.FlatMap(columns.to_visitors)
    seen = out[freshness.SEEN] | "FlatSeen" >> beam.FlatMap(columns.seen_to_visitors)
    got: dict = {}
    for name, pcoll in (("events", read.events), ("interactions", interactions), ("seen", seen),
                        ("dropped", read[sources.DROPPED])):
        target = str(tmp_path / f"{int(use_arrow)}.{name}")
        _ = pcoll | f"Repr{name}" >> beam.Map(repr) | f"Write{name}" >> beam.io.WriteToText(target, shard_name_template="")
    result = p.run()
    result.wait_until_finish()
    for name in ("events", "interactions", "seen", "dropped"):
        with open(tmp_path / f"{int(use_arrow)}.{name}") as handle:
            got[name] = sorted(handle.read().splitlines())
    got["counters"] = {}
    for counter in result.metrics().query(MetricsFilter().with_namespace(counters.NAMESPACE))["counters"]:
        got["counters"][counter.key.metric.name] = got["counters"].get(counter.key.metric.name, 0) + counter.committed
    return got


@pytest.mark.parametrize("duration", ga4.DURATIONS)
def test_pipeline_counters_and_dead_letters_are_the_per_line_readers(tmp_path, duration):
    """Arrow blocks and line blocks mixed (some blocks hold a dead letter): the same events,
    interactions, date ranges, dead letters and counters as every block read line by line."""
    lines = clean_events(seed=5)
    lines[40:40] = [b"not json", CLEAN.replace(b'"a"', b'"a\\u0007"'), b"\xff\xfe"]
    path = tmp_path / "events.ndjson"
    path.write_bytes(b"\n".join(lines) + b"\n")
    fn = ga4.ParseGa4EventBlockBucketsFn(ga4.ParseGa4EventFn("event_param:article_id", duration, "user_pseudo_id", ()), 1)
    blocks = [sources.block_lines(sources.range_text(*file_range)) for file_range in sources.byte_ranges(str(path), 4096)]
    taken = [fn.arrow_columns(block) is not None for block in blocks]
    assert sum(taken) > 5 and not all(taken)  # both paths in one run
    fast = pipeline_outputs(str(path), "event_param:article_id", duration, True, tmp_path, 4096)
    slow = pipeline_outputs(str(path), "event_param:article_id", duration, False, tmp_path, 4096)
    if duration == "engagement_time":  # the pipeline's Arrow blocks ship compacted rows
        assert fast.pop("events") != slow.pop("events")
    assert fast == slow
    assert fast["dropped"] and fast["interactions"]


def test_compacted_rows_are_a_subset_one_per_silent_key():
    """``arrow_columns(compact=True)``: every engaged row kept, and of the rows with no
    engagement (or 0) at least one per (visitor, session, item, date); a subset, and fewer."""
    fn = ga4.ParseGa4EventBlockBucketsFn(
        ga4.ParseGa4EventFn("event_param:article_id", "engagement_time", "user_pseudo_id", ()), 4)
    lines = clean_events(seed=6, negative_engagement=False)
    full = fn.arrow_columns(lines)
    compact = fn.arrow_columns(lines, compact=True)
    assert full is not None and compact is not None

    def rows(bucketed):
        out = []
        for bucket, cols in bucketed:
            out += [(bucket, *row) for row in zip(*cols)]
        return out

    before, after = rows(full), rows(compact)
    assert set(after) <= set(before) and len(after) < len(before)
    silent = lambda r: not r[6]  # engagement None or 0  # noqa: E731
    assert sorted(map(repr, (r for r in before if not silent(r)))) == \
        sorted(map(repr, (r for r in after if not silent(r))))
    # every (visitor, session, item, day) of a silent row is still there (once per raw item
    # and date value: two raw values that clean to one item may both stay)
    key = lambda r: repr((r[1], r[2], r[5], r[7]))  # visitor, session, item, day  # noqa: E731
    assert {key(r) for r in before if silent(r)} == {key(r) for r in after if silent(r)}


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_raw_text_blocks_equal_line_blocks(newline):
    """``process`` on a block's text (``ReadLineBlocks(raw=True)``) gives what it gives on the
    block's lines, with LF and CRLF line ends, clean and with a dead letter in the block."""
    fn = ga4.ParseGa4EventBlockBucketsFn(
        ga4.ParseGa4EventFn("event_param:article_id", "engagement_time", "user_pseudo_id", ()), 4)
    clean = clean_events(seed=7)
    for lines in (clean, clean[:20] + [b"not json"] + clean[20:]):
        text = newline.join(lines) + newline

        def run(block):
            return [(o.tag, repr(o.value)) if isinstance(o, beam.pvalue.TaggedOutput) else repr(o)
                    for o in fn.process(block)]

        assert run(text) == run(sources.block_lines(text))
        assert run(text)


@pytest.mark.parametrize("weak_hash", [False, True])
def test_distinct_rows_equal_a_set_of_tuples(weak_hash, monkeypatch):
    """``ga4.distinct_rows`` against Python's set of row tuples; with a hash of 2 values
    (collisions everywhere) the exact comparison alone must get it right."""
    if weak_hash:
        monkeypatch.setattr(ga4, "_hash_rows", lambda keys: (keys[0].view(np.uint64) & np.uint64(1)))
    rng = np.random.default_rng(11)
    for n in (0, 1, 2, 7, 300, 5000):
        keys = tuple(rng.integers(-2, 3, n) for _ in range(3)) + (rng.random(n) < 0.5,)
        got = [tuple(key[i].item() for key in keys) for i in ga4.distinct_rows(keys)]
        want = set(zip(*(key.tolist() for key in keys)))
        assert len(got) == len(set(got)) == len(want) and set(got) == want
