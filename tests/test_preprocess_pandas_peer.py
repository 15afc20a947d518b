"""The benchmark's pandas peers (benchmarks/preprocess_pandas.py on GA360 sessions,
benchmarks/preprocess_pandas_ga4.py on GA4 events) write what the pipeline writes.

An independent check of both: the peers share no code with ``preprocess`` (different readers,
vectorized sessionization, their own vocabulary order), yet on the bundled GA-scale sample (GA360)
and on a small sample's GA4 form their vocabularies, records and median are identical to the
pipeline's. Edge cases of the time-on-item rules are checked against DuckDB running the
project's SQL.
"""
from __future__ import annotations

import json

import duckdb
import numpy as np
import pandas as pd
import pytest

from benchmarks import preprocess_pandas as peer
from benchmarks import preprocess_pandas_ga4 as ga4_peer
from benchmarks import preprocess_speed
from preprocess import ga4
from preprocess.sample_data import write_sample
from preprocess.sources import build_query
from schemas import contract
from tests import oracles
from tests.test_ga4 import duckdb_table, edge_case_events


def test_peer_equals_pipeline_on_bundled_sample(bundled_sample: str, bundled_output: str, tmp_path) -> None:
    meta = peer.run(bundled_sample, str(tmp_path))
    mine, theirs = oracles.pipeline_output(str(tmp_path)), oracles.pipeline_output(bundled_output)
    # Same vocabularies line by line: same dense IDs, tf.Transform's tie order included
    # (tens of thousands of users share a count on this sample).
    assert mine["users"] == theirs["users"]
    assert mine["items"] == theirs["items"]
    for name in ("items_for_user", "users_for_item"):
        oracles.assert_same_ratings(mine[name], theirs[name], tol=0.0)
    assert sorted(mine["items_for_user_keys"]) == list(range(meta["nusers"]))
    assert sorted(mine["users_for_item_keys"]) == list(range(meta["nitems"]))
    for key in ("nusers", "nitems", "ninteractions", "median_duration"):
        assert meta[key] == theirs["metadata"][key], key
    for reason, count in meta["dropped"].items():
        assert theirs["metadata"]["dropped"][reason] == count, reason
    assert meta["ninteractions"] > 250_000


def _session(visitor: str, visit: int, hits: list) -> str:
    out = []
    for time, kind, dims in hits:
        hit: dict = {"time": time, "type": kind}
        if dims is not None:
            hit["customDimensions"] = [{"index": i, "value": v} for i, v in dims]
        out.append(hit)
    # "date": the export always has it, and the project's SQL reads it
    return json.dumps({"fullVisitorId": visitor, "visitNumber": visit, "date": "20170801", "hits": out},
                      ensure_ascii=False)


EDGE_CASES = [
    # Duplicate row, two items on one hit time, an EVENT in between (ignored), a section page
    # without an item (still ends the previous hit), two values of dimension 10 (MAX = "z"),
    # another dimension, a blank item, and a last hit without a duration.
    _session("A", 1, [
        (0, "PAGE", [(10, "x")]), (0, "PAGE", [(10, "x")]), (0, "PAGE", [(10, "y")]),
        (5, "EVENT", None), (10, "PAGE", []),
        (30, "PAGE", [(10, "x"), (3, "q"), (10, "z")]), (30, "PAGE", [(10, "w")]),
        (45, "PAGE", [(10, "")]), (60, "PAGE", [(10, "x")]),
    ]),
    # One session written as two rows; summed with A's first session.
    _session("A", 2, [(0, "PAGE", [(10, "x")])]),
    _session("A", 2, [(20, "PAGE", [(10, "x")]), (7, "PAGE", [(10, "y")])]),
    _session("B", 1, [(0, "PAGE", [(10, "y")]), (50, "EVENT", None), (100, "PAGE", [(10, "y")])]),
    _session("C", 1, [(0, "PAGE", [(10, "x")])]),  # a single hit: no interaction at all
    _session("D", 1, [(0, "PAGE", [(10, "x")]), (40, "PAGE", [(10, "v")])]),
    _session("Ω-visitor", 3, [(0, "PAGE", [(10, "x")]), (3, "PAGE", [(10, "ü")]), (9, "PAGE", None)]),
]


def test_peer_time_on_item_equals_the_project_sql_on_edge_cases(tmp_path) -> None:
    path = tmp_path / "edge.json"
    path.write_text("\n".join(EDGE_CASES) + "\n", encoding="utf-8")
    meta = peer.run(str(path), str(tmp_path / "out"))
    written = oracles.pipeline_output(str(tmp_path / "out"))["items_for_user"]

    con = duckdb.connect()
    query = build_query(f"read_json('{path}', format='newline_delimited')")
    expected = con.execute(f"SELECT visitorId, contentId, session_duration FROM ({query})").df()
    median = float(np.median(expected["session_duration"].to_numpy(dtype=np.float64)))
    expected["rating"] = np.minimum(0.3 * expected["session_duration"] / median, 1.0)
    oracles.assert_same_ratings(written, expected[["visitorId", "contentId", "rating"]])
    assert meta["median_duration"] == median

    columns = expected[["visitorId", "contentId", "session_duration"]]
    by_pair = {(v, c): d for v, c, d in columns.itertuples(index=False)}
    assert by_pair == {("A", "x"): 17, ("A", "y"): 23, ("A", "z"): 15, ("A", "w"): 15,
                       ("B", "y"): 100, ("D", "x"): 40, ("Ω-visitor", "x"): 3, ("Ω-visitor", "ü"): 6}
    assert meta["dropped"]["other_hit_type"] == 2
    assert meta["dropped"]["hit_without_item"] == 3  # the section pages and the blank item


def test_vocabulary_order_is_count_descending_then_utf8_bytes_descending() -> None:
    ids = pd.Series(["b", "a", "é", "c", "a", "b", "z", "é", "ab"])
    dense, vocab = peer.vocabulary(ids)
    counts = ids.value_counts()
    expected = [t for _, t in sorted(((counts[t], t.encode("utf-8")) for t in counts.index), reverse=True)]
    assert list(vocab) == [t.decode("utf-8") for t in expected]
    assert list(vocab[dense]) == list(ids)  # the dense IDs map back to the raw IDs


@pytest.mark.parametrize("keys", [[3, 1, 3, 0, 1, 3], [0]])
def test_grouped_rows_sorted_by_key_then_index(keys: list) -> None:
    keys_a = np.array(keys)
    indices = np.arange(len(keys))[::-1].copy()
    values = np.linspace(0.1, 0.9, len(keys)).astype(np.float32)
    rows = list(peer.grouped_rows(keys_a, indices, values))
    assert [k for k, _, _ in rows] == sorted(set(keys))
    for key, ind, val in rows:
        assert list(ind) == sorted(indices[keys_a == key])
        assert dict(zip(ind, val)) == dict(zip(indices[keys_a == key], values[keys_a == key]))


# --------------------------------------------------------------------------- GA4


GA4_SAMPLE = dict(n_visitors=3_000, n_items=800, seed=11)
PEER_REASONS = set(ga4_peer.DROP_REASONS)


@pytest.fixture(scope="module")
def ga4_form(tmp_path_factory) -> str:
    """A small sample's GA4 events form (about 35,000 events)."""
    return write_sample(str(tmp_path_factory.mktemp("ga4_form") / "events.ndjson"), schema="ga4", **GA4_SAMPLE)


@pytest.fixture(scope="module")
def ga4_pipeline_output(ga4_form, tmp_path_factory) -> str:
    """The pipeline on it with the very flags ``benchmarks.preprocess_speed --schema ga4`` gives."""
    from preprocess.__main__ import run

    out = str(tmp_path_factory.mktemp("ga4_pipeline_out"))
    run(preprocess_speed.job_argv(preprocess_speed.PIPELINE, ga4_form, out, "", schema="ga4"))
    return out


def sql_interactions(path: str, item_source: str = "event_param:article_id") -> pd.DataFrame:
    """DuckDB running schemas/ga4_interactions.sql (engagement_time) on a GA4 NDJSON file."""
    query = ga4.build_query(duckdb_table(path), item_source, "engagement_time")
    return duckdb.connect().execute(f"SELECT visitorId, contentId, session_duration FROM ({query})").df()


def test_ga4_peer_equals_pipeline_and_sql_on_the_ga4_form(ga4_form, ga4_pipeline_output, tmp_path) -> None:
    from trainer.metadata import load_metadata

    meta = ga4_peer.run(ga4_form, str(tmp_path))
    mine, theirs = oracles.pipeline_output(str(tmp_path)), oracles.pipeline_output(ga4_pipeline_output)
    assert mine["users"] == theirs["users"]  # tf.Transform's tie order included
    assert mine["items"] == theirs["items"]
    for name in ("items_for_user", "users_for_item"):
        oracles.assert_same_ratings(mine[name], theirs[name], tol=0.0)
    assert sorted(mine["items_for_user_keys"]) == list(range(meta["nusers"]))
    assert sorted(mine["users_for_item_keys"]) == list(range(meta["nitems"]))
    for key in ("nusers", "nitems", "ninteractions", "median_duration", "events"):
        assert meta[key] == theirs["metadata"][key], key
    assert set(meta["dropped"]) == PEER_REASONS
    for reason, count in meta["dropped"].items():
        assert theirs["metadata"]["dropped"][reason] == count, reason
    # The form's own noise is there: section pages, last pages without an engagement beacon.
    assert meta["dropped"]["event_without_item"] > 1_000 and meta["dropped"]["nonpositive_duration"] > 1_000
    assert meta["ninteractions"] > 5_000
    assert contract.REQUIRED_KEYS <= set(meta) <= contract.WRITTEN_KEYS  # a metadata.json the trainer reads
    load_metadata(str(tmp_path))

    # The project's SQL on the same file, an oracle that is neither Beam nor pandas.
    expected, median = oracles.ratings(sql_interactions(ga4_form))
    oracles.assert_same_ratings(mine["items_for_user"], expected)
    assert meta["median_duration"] == median


def _int64_form(line: str, as_text: bool) -> str:
    """An edge-case event with every INT64 (timestamp, int_value) as a JSON number or as text:
    one form per file, as an export writes it."""
    event = json.loads(line)
    def convert(value):
        return None if value is None else str(value) if as_text else int(value)

    event["event_timestamp"] = convert(event["event_timestamp"])
    for entry in event["event_params"]:
        entry["value"]["int_value"] = convert(entry["value"]["int_value"])
    return json.dumps(event, ensure_ascii=False)


def _event(visitor, time, engagement=None, article="A1", session=7) -> str:
    params = [{"key": "ga_session_id", "value": {"string_value": None, "int_value": session}},
              {"key": "page_location", "value": {"string_value": "https://e.com/x?q=1", "int_value": None}},
              {"key": "page_title", "value": {"string_value": "X", "int_value": None}},
              {"key": "article_id", "value": {"string_value": article, "int_value": None}}]
    if engagement is not None:
        params.append({"key": "engagement_time_msec", "value": {"string_value": None, "int_value": engagement}})
    event = {"event_timestamp": time, "event_name": "user_engagement", "event_params": params}
    if visitor is not None:
        event["user_pseudo_id"] = visitor
    return json.dumps(event)


# Dropped, one reason each, in the pipeline's order (the visitor first, then the session, ...).
DROPPED_BY_HAND = [
    (_event(None, 1_000, 500), "missing_visitor_id"),
    (_event("  ", 1_000, 500), "missing_visitor_id"),
    (_event(" ", -5, -3, session=None), "missing_visitor_id"),
    (_event("h1", 1_000, 500, session=None), "missing_session_id"),
    (_event("h1", -5, -3, session=None), "missing_session_id"),
    (_event("h1", -5, 500), "invalid_time"),
    (_event("h1", None, -3), "invalid_time"),
    (_event("h1", 2_000, -3), "invalid_engagement_time"),
    (_event("h1", 3_000, -3, article=" "), "invalid_engagement_time"),
]


@pytest.mark.parametrize("as_text", [False, True], ids=["int64_numbers", "int64_text"])
@pytest.mark.parametrize("item_source", ["event_param:article_id", "page_location", "page_title"])
def test_ga4_peer_equals_the_project_sql_on_edge_cases(tmp_path, item_source, as_text) -> None:
    """Random events (tests/test_ga4.py: no session, repeated keys, int and string article IDs,
    duplicate events, ties) and the drops above; small blocks, so that block boundaries fall
    inside sessions."""
    lines = edge_case_events() + [line for line, _ in DROPPED_BY_HAND]
    path = tmp_path / "edge.ndjson"
    path.write_text("\n".join(_int64_form(line, as_text) for line in lines) + "\n", encoding="utf-8")
    dropped: dict = {}
    pairs, timed, events = ga4_peer.read_events([str(path)], item_source, dropped, block_bytes=16 << 10)
    got = ga4_peer.engagement_time_on_items(pairs, timed, dropped)
    expected = sql_interactions(str(path), item_source)
    assert len(expected) > 20
    columns = ["visitorId", "contentId", "session_duration"]
    pd.testing.assert_frame_equal(
        got[columns].astype({"session_duration": float}).sort_values(columns[:2]).reset_index(drop=True),
        expected[columns].astype({"session_duration": float}).sort_values(columns[:2]).reset_index(drop=True),
        check_dtype=False)
    assert events == len(lines)
    random_events = [{p["key"] for p in json.loads(line)["event_params"]} for line in edge_case_events()]
    by_hand = pd.Series([reason for _, reason in DROPPED_BY_HAND]).value_counts()
    assert dropped["missing_session_id"] == sum("ga_session_id" not in keys for keys in random_events) + 2
    for reason in ("missing_visitor_id", "invalid_time", "invalid_engagement_time"):
        assert dropped[reason] == by_hand[reason], reason


def test_ga4_peer_per_event_max_with_a_repeated_key() -> None:
    import pyarrow as pa

    owner = pa.array([0, 2, 2, 3], pa.int64())
    values = pa.array(["b", "a", "c", None])
    assert ga4_peer.per_event_max(owner, values, 5).to_pylist() == ["b", None, "c", None, None]
