"""The benchmark's pandas peer (benchmarks/preprocess_pandas.py) writes what the pipeline writes.

An independent check of both: the peer shares no code with ``preprocess`` (different reader,
vectorized sessionization, its own vocabulary order), yet on the bundled GA-scale sample its
vocabularies, records and median are identical to the pipeline's. Edge cases of the
time-on-item rule are checked against DuckDB running the project's SQL.
"""
from __future__ import annotations

import json

import duckdb
import numpy as np
import pandas as pd
import pytest

from benchmarks import preprocess_pandas as peer
from preprocess.sources import build_query
from tests import oracles


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
