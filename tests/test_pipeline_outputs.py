"""End-to-end: the TFRecords, mapped back through the vocabularies, equal independent references."""
from __future__ import annotations

import json

import duckdb
import numpy as np
import pandas as pd
import pytest

from preprocess.sources import build_query
from tests import oracles
from tests.pipelines import SHARED_CSV, run_preprocess, shared_csv_hits


def check_both_directions(output: dict, expected: pd.DataFrame, median: float) -> None:
    oracles.assert_same_ratings(output["items_for_user"], expected)
    oracles.assert_same_ratings(output["users_for_item"], expected)
    meta = output["metadata"]
    assert meta["median_duration"] == pytest.approx(median, rel=1e-12)
    assert meta["ninteractions"] == len(expected)
    assert meta["nusers"] == expected["visitorId"].nunique() == len(output["users"])
    assert meta["nitems"] == expected["contentId"].nunique() == len(output["items"])
    # One record per user and per item, keyed by every dense ID exactly once.
    assert sorted(output["items_for_user_keys"]) == list(range(meta["nusers"]))
    assert sorted(output["users_for_item_keys"]) == list(range(meta["nitems"]))


def duckdb_ratings(con: duckdb.DuckDBPyConnection, query: str) -> tuple[pd.DataFrame, float]:
    """Ratings computed entirely in DuckDB from the project's SQL."""
    con.execute(f"CREATE OR REPLACE TEMP TABLE interactions AS {query}")
    median = con.execute("SELECT MEDIAN(session_duration) FROM interactions").fetchone()[0]
    frame = con.execute(
        "SELECT visitorId, contentId, "
        "LEAST(0.3 * session_duration / (SELECT MEDIAN(session_duration) FROM interactions), 1.0) AS rating "
        "FROM interactions"
    ).df()
    return frame, float(median)


def test_bundled_sample_equals_duckdb_running_the_project_sql(bundled_sample, bundled_output):
    con = duckdb.connect()
    query = build_query(f"read_json('{bundled_sample}', format='newline_delimited')")
    expected, median = duckdb_ratings(con, query)
    assert len(expected) > 250_000  # GA scale: the sample is not trivially small
    check_both_directions(oracles.pipeline_output(bundled_output), expected, median)


def test_bundled_sample_equals_pandas_grouping(bundled_sample, bundled_output):
    interactions = oracles.durations_from_hits(oracles.ga_json_hits(bundled_sample))
    expected, median = oracles.ratings(interactions)
    check_both_directions(oracles.pipeline_output(bundled_output), expected, median)


def test_real_ga_csv_equals_pandas_grouping(shared_csv_output):
    expected, median = oracles.ratings(oracles.durations_from_hits(shared_csv_hits()))
    assert len(expected) > 1000
    check_both_directions(oracles.pipeline_output(shared_csv_output), expected, median)


def test_real_ga_csv_equals_duckdb_running_the_project_sql(shared_csv_output):
    """The flat real rows are nested back into the GA360 export shape, then the project's SQL
    (item from hits.product.productSKU, every hit type) runs on them in DuckDB."""
    con = duckdb.connect()
    con.execute(
        f"""CREATE TABLE ga_sessions AS
        SELECT fullVisitorId, visitNumber, '20170801' AS date,
               LIST({{'time': time, 'type': 'PAGE', 'product': [{{'productSKU': productSKU}}]}}) AS hits
        FROM read_csv('{SHARED_CSV}', types={{'fullVisitorId': 'VARCHAR', 'productSKU': 'VARCHAR'}})
        GROUP BY fullVisitorId, visitNumber"""
    )
    query = build_query("ga_sessions", item_source="product_sku", hit_type="ALL")
    expected, median = duckdb_ratings(con, query)
    check_both_directions(oracles.pipeline_output(shared_csv_output), expected, median)


def test_interactions_csv_equals_pandas_grouping(tmp_path):
    rng = np.random.default_rng(7)
    n = 3000
    frame = pd.DataFrame({
        "visitorId": [f"v{i:04d}" for i in rng.integers(0, 400, n)],
        "contentId": [f"c-{i}" for i in rng.integers(0, 60, n)],
        # integer ms, some floats, zeros and negatives (summed per pair, then only > 0 kept)
        "session_duration": np.where(rng.random(n) < 0.1, -rng.integers(0, 5000, n),
                                     rng.integers(0, 200_000, n)).astype(float)
                            + np.where(rng.random(n) < 0.2, 0.5, 0.0),
    })
    path = tmp_path / "interactions.csv"
    frame.to_csv(path, index=False)
    out = str(tmp_path / "out")
    run_preprocess("--input", str(path), "--input_format", "interactions_csv", "--output_dir", out)

    summed = frame.groupby(["visitorId", "contentId"], as_index=False)["session_duration"].sum()
    dropped = int((summed["session_duration"] <= 0).sum())
    summed = summed[summed["session_duration"] > 0]
    expected, median = oracles.ratings(summed)
    output = oracles.pipeline_output(out)
    check_both_directions(output, expected, median)
    assert output["metadata"]["dropped"]["nonpositive_duration"] == dropped > 0


def test_metadata_paths_are_relative_and_complete(bundled_output):
    with open(f"{bundled_output}/metadata.json") as handle:
        meta = json.load(handle)
    for key in ("nusers", "nitems", "ninteractions", "median_duration", "user_vocabulary",
                "item_vocabulary", "users_for_item", "items_for_user", "dropped"):
        assert key in meta, key
    paths = [meta["user_vocabulary"], meta["item_vocabulary"], *meta["users_for_item"], *meta["items_for_user"]]
    assert all(not p.startswith("/") for p in paths)
    assert meta["dropped"]["other_hit_type"] > 0 and meta["dropped"]["hit_without_item"] > 0
