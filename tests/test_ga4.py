"""GA4 events: the Beam reader equals DuckDB running the project's GA4 SQL, row for row, on real
export rows (``../shared/data/ga4_events_sample.ndjson``) and on generated edge cases; the SQL's
semantics against hand-computed sessions; the whole job on GA4 input."""
from __future__ import annotations

import itertools
import json
import os

import apache_beam as beam
import duckdb
import numpy as np
import pandas as pd
import pytest

from preprocess import ga4
from preprocess.options import PreprocessOptions, validate
from tests import oracles
from tests.pipelines import SHARED_DATA, find_bigquery_reads, offline_flags, require_shared, run_preprocess

SHARED_GA4 = SHARED_DATA / "ga4_events_sample.ndjson"
# The export schema's types, as BigQuery holds them (INT64 given as JSON strings load as INT64).
DUCKDB_COLUMNS = {
    "event_date": "VARCHAR", "event_timestamp": "BIGINT", "event_name": "VARCHAR", "user_pseudo_id": "VARCHAR", "user_id": "VARCHAR",
    "event_params": "STRUCT(key VARCHAR, value STRUCT(string_value VARCHAR, int_value BIGINT, "
                    "float_value DOUBLE, double_value DOUBLE))[]",
    "items": "STRUCT(item_id VARCHAR)[]",
}
ITEM_SOURCES = ("page_location", "page_path", "page_title", "item_id", "event_param:article_id")
CONFIGS = [(item, duration, "user_pseudo_id", ()) for item, duration in itertools.product(ITEM_SOURCES, ga4.DURATIONS)] + [
    ("page_location", "engagement_time", "user_id", ()),
    ("page_location", "next_event", "user_pseudo_id", ("page_view", "scroll")),
]


def duckdb_table(path) -> str:
    columns = "{" + ", ".join(f"'{k}': '{v}'" for k, v in DUCKDB_COLUMNS.items()) + "}"
    return f"read_json('{path}', format='newline_delimited', columns={columns})"


def duckdb_rows(path, item_source, duration, user_field, names) -> pd.DataFrame:
    query = ga4.build_query(duckdb_table(path), item_source, duration, user_field, names)
    return as_sorted(duckdb.connect().execute(query).df())


def as_sorted(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame[["visitorId", "contentId", "session_duration"]].copy()
    frame["session_duration"] = frame["session_duration"].astype(float)
    frame["visitorId"] = frame["visitorId"].astype(str)
    frame["contentId"] = frame["contentId"].astype(str)
    return frame.sort_values(["visitorId", "contentId"]).reset_index(drop=True)


def beam_rows(path, configs, tmp_path) -> list[pd.DataFrame]:
    """Every configuration's rows from one pipeline (one branch per configuration)."""
    outs = [str(tmp_path / f"beam-{i}.jsonl") for i in range(len(configs))]
    with beam.Pipeline("FnApiRunner") as p:
        for i, (item_source, duration, user_field, names) in enumerate(configs):
            read = p | f"Read{i}" >> ga4.ReadGa4Events(str(path), item_source, duration, user_field, names)
            _ = ((read.events | f"Time{i}" >> ga4.TimeOnItems(duration)).interactions
                 | f"Rows{i}" >> beam.FlatMap(lambda kv: [json.dumps([kv[0], item, d]) for item, d in kv[1]])
                 | f"Write{i}" >> beam.io.WriteToText(outs[i], shard_name_template=""))
    frames = []
    for out in outs:
        with open(out, encoding="utf-8") as handle:
            rows = [json.loads(line) for line in handle]
        frames.append(as_sorted(pd.DataFrame(rows, columns=["visitorId", "contentId", "session_duration"])))
    return frames


def check_beam_equals_sql(path, tmp_path) -> list[pd.DataFrame]:
    got = beam_rows(path, CONFIGS, tmp_path)
    for config, beam_frame in zip(CONFIGS, got):
        sql_frame = duckdb_rows(path, *config)
        pd.testing.assert_frame_equal(beam_frame, sql_frame, check_exact=True, obj=str(config))
    return got


def test_beam_reader_equals_project_sql_on_real_ga4_rows(tmp_path):
    frames = check_beam_equals_sql(require_shared(SHARED_GA4), tmp_path)
    sizes = {config[:2]: len(frame) for config, frame in zip(CONFIGS, frames) if config[2:] == ("user_pseudo_id", ())}
    # Real rows carry the signal these sources read: not a comparison of two empty tables.
    assert sizes["page_location", "engagement_time"] > 50 and sizes["page_location", "next_event"] > 50
    assert sizes["page_title", "engagement_time"] > 50 and sizes["item_id", "next_event"] > 0


# --------------------------------------------------------------------------- generated edge cases


def param(key, string=None, integer=None):
    return {"key": key, "value": {"string_value": string, "int_value": integer, "float_value": None, "double_value": None}}


def edge_case_events(seed: int = 7) -> list[str]:
    """Random events with every awkward shape the export has or may have."""
    rng = np.random.default_rng(seed)
    pages = ["https://example.com/news/a?utm=1", "https://example.com/news/a#top", "https://example.com/news/b",
             "https://example.com/", "https://example.com/nachrichten/über-uns?x=ä", "http://m.example.com/news/a",
             "https://example.com/p,1 two"]
    lines = []
    for v in range(120):
        visitor = ["v", "visitör", "v,comma", "v space"][v % 4] + f"-{v}"
        user_id = f"user-{v % 17}" if rng.random() < 0.4 else None
        for s in range(int(rng.integers(1, 4))):
            session = 1_600_000_000 + v * 10 + s
            for _ in range(int(rng.integers(1, 9))):
                params = []
                if rng.random() < 0.95:  # a few events without a session
                    value = session if rng.random() < 0.7 else str(session)  # INT64 as a string
                    params.append(param("ga_session_id", integer=value))
                if rng.random() < 0.9:
                    params.append(param("page_location", string=pages[int(rng.integers(0, len(pages)))]))
                if rng.random() < 0.7:
                    params.append(param("page_title", string=f"Title {int(rng.integers(0, 6))}, ä"))
                if rng.random() < 0.6:
                    msec = int(rng.integers(-200, 30_000)) if rng.random() < 0.1 else int(rng.integers(0, 30_000))
                    params.append(param("engagement_time_msec", integer=msec if rng.random() < 0.5 else str(msec)))
                if rng.random() < 0.5:  # a site's own ID, string or int
                    article = int(rng.integers(0, 8))
                    params.append(param("article_id", integer=article) if rng.random() < 0.5 else param("article_id", string=f"A{article}"))
                if rng.random() < 0.05:  # a repeated key: MAX decides
                    params.append(param("page_title", string="Zzz repeated"))
                rng.shuffle(params)
                items = [{"item_id": f"SKU{int(i)}", "item_name": "x"} for i in rng.integers(0, 6, int(rng.integers(0, 3)))]
                time = 1_700_000_000_000_000 + int(rng.integers(0, 40)) * 250_000  # ties are common
                event = {"event_timestamp": time if rng.random() < 0.5 else str(time),
                         "event_name": ["page_view", "user_engagement", "scroll", "view_item"][int(rng.integers(0, 4))],
                         "user_pseudo_id": visitor, "user_id": user_id, "event_params": params,
                         "items": items if rng.random() < 0.9 else None, "geo": {"country": "AT"}}
                lines.append(json.dumps(event, ensure_ascii=bool(rng.random() < 0.5)))
                if rng.random() < 0.08:
                    lines.append(json.dumps(event))  # a duplicate event
    return lines


@pytest.fixture(scope="module")
def edge_case_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ga4_edge") / "events.ndjson"
    path.write_text("\n".join(edge_case_events()) + "\n", encoding="utf-8")
    return path


def test_beam_reader_equals_project_sql_on_edge_cases(edge_case_file, tmp_path):
    frames = check_beam_equals_sql(edge_case_file, tmp_path)
    assert all(len(frame) > 20 for frame in frames)


# --------------------------------------------------------------------------- semantics by hand


def hand_session() -> list[str]:
    """One visitor, one session; times in µs. Expected values are worked out in the test."""
    def event(ms, name, page, engagement=None, items=(), session=42):
        params = [param("ga_session_id", integer=session), param("page_location", string=page)]
        if engagement is not None:
            params.append(param("engagement_time_msec", integer=engagement))
        return json.dumps({"event_timestamp": ms * 1000, "event_name": name, "user_pseudo_id": "u1",
                           "event_params": params, "items": [{"item_id": i} for i in items]})
    return [
        event(0, "page_view", "https://s.com/a?x=1"),
        event(1500, "view_item", "https://s.com/a", items=("I1", "I2")),
        event(4000, "user_engagement", "https://s.com/a#c", engagement=3900),
        event(4000, "page_view", "https://s.com/b"),              # same time as the engagement event
        event(10_000, "user_engagement", "https://s.com/b", engagement=5800),
        event(10_000, "user_engagement", "https://s.com/b", engagement=5800),  # an exact duplicate
        event(12_500, "scroll", "https://s.com/b", engagement=-5),  # negative: dropped for engagement_time
        event(20_000, "page_view", "https://s.com/c"),            # the last event: no duration
    ]


@pytest.mark.parametrize("item_source,duration,expected", [
    # engagement_time: /a 3900 (page_location cut at ? and #), /b 5800 once (duplicate counts once)
    ("page_location", "engagement_time", {"https://s.com/a": 3900, "https://s.com/b": 5800}),
    # next_event: distinct times 0, 1.5, 4, 10, 12.5, 20 s -> gaps 1.5, 2.5, 6, 2.5, 7.5 s
    # /a: 1500 + 2500 + (4000 -> 10000: 6000); /b: 6000 + 2500 + 7500; /c last: none
    ("page_location", "next_event", {"https://s.com/a": 10_000, "https://s.com/b": 16_000}),
    ("page_path", "next_event", {"/a": 10_000, "/b": 16_000}),
    ("item_id", "next_event", {"I1": 2500, "I2": 2500}),   # the view_item event lasts 1.5 -> 4 s
    ("item_id", "engagement_time", {}),                    # no engagement on item events
])
def test_sql_semantics_by_hand(tmp_path, item_source, duration, expected):
    path = tmp_path / "hand.ndjson"
    path.write_text("\n".join(hand_session()) + "\n")
    rows = duckdb_rows(path, item_source, duration, "user_pseudo_id", ())
    assert dict(zip(rows["contentId"], rows["session_duration"])) == {k: float(v) for k, v in expected.items()}
    (beam_frame,) = beam_rows(path, [(item_source, duration, "user_pseudo_id", ())], tmp_path)
    pd.testing.assert_frame_equal(beam_frame, rows, check_exact=True)


# --------------------------------------------------------------------------- the whole job


def test_ga4_job_counts_and_records(edge_case_file, tmp_path):
    bad = tmp_path / "with_bad_rows.ndjson"
    extra = [
        b"{not json",
        json.dumps({"event_timestamp": 5, "event_name": "page_view", "user_pseudo_id": "x",
                    "event_params": "not a list"}).encode(),
        json.dumps({"event_timestamp": 5, "event_name": "page_view", "user_pseudo_id": "x",
                    "event_params": [param("ga_session_id", integer=1), param("engagement_time_msec", integer="12a"),
                                     param("page_location", string="https://e.com/q")]}).encode(),
        b'{"event_timestamp": 5, "user_pseudo_id": "bad\xff", "event_params": []}',
    ]
    bad.write_bytes(edge_case_file.read_bytes() + b"\n".join(extra) + b"\n")
    out = str(tmp_path / "out")
    run_preprocess("--input", str(bad), "--input_format", "ga4_json", "--output_dir", out)
    output = oracles.pipeline_output(out)
    meta = output["metadata"]
    expected_sql = duckdb_rows(edge_case_file, "page_location", "engagement_time", "user_pseudo_id", ())
    expected, median = oracles.ratings(expected_sql)
    oracles.assert_same_ratings(output["items_for_user"], expected)
    assert meta["median_duration"] == pytest.approx(median, rel=1e-12)
    lines = edge_case_file.read_text().splitlines()
    no_session = sum(1 for line in lines if not any(p["key"] == "ga_session_id" for p in json.loads(line)["event_params"]))
    negative = sum(1 for line in lines for p in json.loads(line)["event_params"]
                   if p["key"] == "engagement_time_msec" and int(p["value"]["int_value"]) < 0
                   and any(q["key"] == "ga_session_id" for q in json.loads(line)["event_params"]))
    dropped = meta["dropped"]
    assert dropped["missing_session_id"] == no_session
    assert dropped["invalid_engagement_time"] == negative + 1
    assert dropped["malformed_json"] == 1 and dropped["malformed_event"] == 1 and dropped["invalid_utf8"] == 1
    assert meta["events"] == len(lines) + 2  # every line that is a JSON object
    assert meta["input"]["source"] == "ga4_json" and meta["input"]["item_source"] == "page_location"
    assert meta["input"]["duration"] == "engagement_time"


def test_ga4_job_on_real_rows(tmp_path):
    path = require_shared(SHARED_GA4)
    out = str(tmp_path / "out")
    run_preprocess("--input", str(path), "--input_format", "ga4_json", "--duration", "next_event",
                   "--output_dir", out)
    output = oracles.pipeline_output(out)
    expected, median = oracles.ratings(duckdb_rows(path, "page_location", "next_event", "user_pseudo_id", ()))
    oracles.assert_same_ratings(output["items_for_user"], expected)
    meta = output["metadata"]
    assert meta["events"] == 700 and meta["dropped"]["missing_session_id"] == 0
    sessions = {(json.loads(line)["user_pseudo_id"],
                 next(p["value"]["int_value"] for p in json.loads(line)["event_params"] if p["key"] == "ga_session_id"))
                for line in open(path)}
    assert len(sessions) == 206  # ../shared/README.md
    assert meta["sessions"] <= len(sessions) and meta["nusers"] == expected["visitorId"].nunique()


# --------------------------------------------------------------------------- flags and the BigQuery query


CLOUD = ["--project", "p", "--region", "europe-west1", "--temp_location", "gs://b/tmp", "--output_dir", "gs://b/o"]


@pytest.mark.parametrize("argv,message", [
    (["--ga4_table", "p.d.events_*", "--item_source", "custom_dimension"], "for GA4 must be one of"),
    (["--ga4_table", "p.d.events_*", "--item_source", "event_param:bad key"], "for GA4 must be one of"),
    (["--ga4_table", "p.d.events_*", "--event_names", "page_view,x'y"], "--event_names"),
    (["--ga4_table", "p.d.events_*", "--bq_table", "p.d.ga_sessions_*"], "exactly one input"),
    (["--ga4_table", "p.d.e'x"], "PROJECT.DATASET.TABLE"),
    (["--bq_table", "p.d.ga_sessions_*", "--duration", "next_event"], "only apply to GA4"),
    (["--input", "x", "--input_format", "ga_json", "--item_source", "page_location"], "for GA360 must be one of"),
])
def test_bad_ga4_flags(argv, message):
    with pytest.raises(ValueError, match=message):
        validate(PreprocessOptions(CLOUD + argv))


def test_ga4_table_query_filters_suffix_and_events():
    validate(PreprocessOptions(CLOUD + ["--ga4_table", "p.d.events_*", "--event_names", "page_view,scroll"]))
    query = ga4.build_query("p.d.events_*", event_names=["page_view", "scroll"], start_date="20240101", end_date="20240131")
    assert "FROM `p.d.events_*` AS e" in query
    assert "_TABLE_SUFFIX BETWEEN '20240101' AND '20240131'" in query
    assert "e.event_name IN ('page_view', 'scroll')" in query
    assert "NOT STARTS_WITH(_TABLE_SUFFIX, 'intraday_')" in ga4.build_query("p.d.events_*")
    assert "e.user_id AS visitorId" in ga4.build_query("p.d.events_*", user_field="user_id")
    assert "FROM next_event_durations" in ga4.build_query("p.d.events_*", duration="next_event")


def test_bigquery_ga4_branch_builds_offline(tmp_path):
    from preprocess import pipeline as graph

    options = PreprocessOptions(offline_flags(tmp_path) + ["--ga4_table", "p.d.events_*", "--item_source", "item_id"])
    p = beam.Pipeline(options=options)
    graph.build_pipeline(p, options)
    (read,) = find_bigquery_reads(p)
    assert read._kwargs["query"] == ga4.build_query("p.d.events_*", item_source="item_id")
    assert read._kwargs["use_standard_sql"] is True
    assert os.path.basename(ga4.SQL_FILE) == "ga4_interactions.sql"
