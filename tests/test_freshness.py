"""Item dates in the preprocessing (``preprocess/freshness.py``, the SQL's ``first_date`` /
``last_date``) against independent references: pandas groupings of the raw rows, DuckDB running
the project's SQL, and the split's plain reference (``tests/split_reference.py``)."""
from __future__ import annotations

import datetime
import json
import pathlib

import apache_beam as beam
import duckdb
import numpy as np
import pandas as pd
import pytest
from apache_beam.testing.util import assert_that, equal_to

from preprocess import freshness, ga4, sessionize, sources
from schemas import contract
from tests import oracles
from tests.split_reference import reference_split
from tests.test_ga4 import duckdb_table
from tests.test_transforms import local_pipeline
from tests.pipelines import run_preprocess

EPOCH = datetime.date(1970, 1, 1)


def iso(compact: str) -> str:
    return f"{compact[:4]}-{compact[4:6]}-{compact[6:]}"


def read_item_dates(out: str) -> pd.DataFrame:
    """``item_dates.tsv`` as a frame, with the vocabulary it must align with."""
    meta = json.loads((pathlib.Path(out) / contract.METADATA_FILE).read_text())
    items = oracles.read_vocabulary(str(pathlib.Path(out) / meta["item_vocabulary"]))
    table = pd.read_csv(pathlib.Path(out) / contract.ITEM_DATES_FILE, sep="\t", header=None, dtype=str,
                        names=["contentId", "first", "last"], keep_default_na=False, quoting=3)
    assert table["contentId"].tolist() == items  # line i = dense item i
    return table


# --------------------------------------------------------------------------- plain helpers
def test_parse_day_accepts_the_export_forms_only():
    assert freshness.parse_day("20170801") == (datetime.date(2017, 8, 1) - EPOCH).days
    assert freshness.parse_day("2017-08-01") == freshness.parse_day(datetime.date(2017, 8, 1))
    for bad in (None, "", "2017081", "20170231", "2017-8-1", 20170801, "date", True):
        assert freshness.parse_day(bad) is None, bad
    assert freshness.day_text(freshness.parse_day("20240229")) == "2024-02-29"
    # the exports' own columns: exactly YYYYMMDD, as the SQL's '^[0-9]{8}$'
    assert freshness.parse_export_day("20170801") == freshness.parse_day("20170801")
    for bad in ("2017-08-01", " 20170801", "20170801 ", None, 20170801):
        assert freshness.parse_export_day(bad) is None, bad


# --------------------------------------------------------------------------- the Beam transform
def test_write_item_dates_equals_a_pandas_grouping_of_training_rows(tmp_path):
    """Random per-visitor date ranges, a 40% held-out split: the table holds, per vocabulary
    item, the min first / max last day over its training rows (pandas + the split reference)."""
    rng = np.random.default_rng(4)
    rows = []
    for v in range(300):
        items = rng.choice(40, size=int(rng.integers(1, 8)), replace=False)
        for j in items:
            first = int(rng.integers(19_000, 19_030))
            dated = rng.random() < 0.9
            rows.append((f"v{v}", f"item {j}", first if dated else None,
                         first + int(rng.integers(0, 5)) if dated else None))
    frame = pd.DataFrame(rows, columns=["visitorId", "contentId", "first", "last"])
    frame["held_out"] = reference_split(frame[["visitorId", "contentId"]], 0.4, 9).to_numpy()
    train = frame[~frame["held_out"]]
    vocab = sorted(train["contentId"].unique(), reverse=True)  # any order: the table follows it
    dated = train.dropna(subset=["first"]).groupby("contentId").agg(first=("first", "min"), last=("last", "max"))
    assert len(dated) < len(vocab) or frame["first"].isna().any()

    fn_dir = tmp_path / "transform_fn"
    (fn_dir / "assets").mkdir(parents=True)
    (fn_dir / "assets" / contract.ITEM_VOCABULARY_NAME).write_text("".join(f"{i}\n" for i in vocab))
    out = tmp_path / "out"
    p = local_pipeline()
    seen = p | beam.Create([
        (v, tuple((c, None if pd.isna(f) else int(f), None if pd.isna(l) else int(l))
                  for c, f, l in zip(g["contentId"], g["first"], g["last"])))
        for v, g in frame.groupby("visitorId", sort=False)])
    _ = seen | freshness.WriteItemDates(str(out), (p | "Dir" >> beam.Create([str(fn_dir)]), None), 0.4, 9)
    p.run().wait_until_finish()

    lines = (out / contract.ITEM_DATES_FILE).read_text().split("\n")[:-1]
    expected = []
    for item in vocab:
        if item in dated.index:
            f, l = dated.loc[item]
            expected.append(f"{item}\t{EPOCH + datetime.timedelta(days=int(f))}\t{EPOCH + datetime.timedelta(days=int(l))}")
        else:
            expected.append(f"{item}\t\t")
    assert lines == expected


def test_readers_carry_the_date_of_their_rows(tmp_path):
    hits = tmp_path / "hits.csv"
    hits.write_text("fullVisitorId,visitNumber,time,sku,date\nv1,1,0,A,20170801\nv1,1,10,B,2017-08-02\n"
                    "v1,2,0,A,bad\n", encoding="utf-8")
    inter = tmp_path / "interactions.csv"
    inter.write_text("visitorId,contentId,session_duration,first_date,last_date\n"
                     "v1,a,5,20170801,20170803\nv1,b,5,20170803,20170801\nv2,c,1,,20170801\n", encoding="utf-8")
    day = freshness.parse_day
    p = local_pipeline()
    read = p | "Hits" >> sources.ReadHitsCsv(str(hits), "sku")
    assert_that(read.hits, equal_to([("v1", (1, ((0, "A"),), day("20170801"))), ("v1", (1, ((10, "B"),), day("20170802"))),
                                     ("v1", (2, ((0, "A"),), None))]), label="hits")
    rows = p | "Inter" >> sources.ReadInteractionsCsv(str(inter))
    # a reversed or half range is no date
    assert_that(rows.interactions, equal_to([("v1", ("a", 5.0, day("20170801"), day("20170803"))),
                                             ("v1", ("b", 5.0, None, None)), ("v2", ("c", 1.0, None, None))]),
                label="interactions")
    p.run().wait_until_finish()


# --------------------------------------------------------------------------- SQL vs pandas vs Beam
def ga360_dated_sessions(path: pathlib.Path, seed: int = 8) -> str:
    """GA360 sessions over 20 days, sessions split over rows of different dates, duplicate
    hits, hits without items, non-page hits, and rows without a valid date."""
    rng = np.random.default_rng(seed)
    lines = []
    for v in range(250):
        for visit in range(1, int(rng.integers(1, 4)) + 1):
            hits = []
            for h in range(int(rng.integers(1, 7))):
                hit = {"time": int(rng.integers(0, 15)) * 1000, "type": "PAGE" if rng.random() < 0.85 else "EVENT",
                       "customDimensions": [{"index": 10, "value": f"c{int(rng.integers(0, 25))}"}]
                       if rng.random() < 0.8 else []}
                hits.append(hit)
            day = f"201708{int(rng.integers(1, 21)):02d}"
            if rng.random() < 0.05:
                day = [None, "", "2017-08-01", "x"][int(rng.integers(0, 4))]
            session = {"fullVisitorId": f"u{v:04d}", "visitNumber": visit, "date": day, "hits": hits}
            if len(hits) > 2 and rng.random() < 0.3:  # the session continues on the next day's row
                later = f"201708{int(rng.integers(1, 22)):02d}"
                lines.append(json.dumps({**session, "hits": hits[:2]}))
                lines.append(json.dumps({**session, "date": later, "hits": hits[2:]}))
            else:
                lines.append(json.dumps(session))
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def pandas_ga360_dates(path: str) -> pd.DataFrame:
    """The reference: per kept (visitor, item) of the pandas durations, min/max of the dates
    (8-digit ones) of the rows holding the visitor's page hits on the item."""
    rows = []
    for line in open(path, encoding="utf-8"):
        s = json.loads(line)
        date = s.get("date")
        valid = isinstance(date, str) and len(date) == 8 and date.isdigit()
        for hit in s["hits"]:
            values = [cd["value"] for cd in hit.get("customDimensions", []) if cd["index"] == 10]
            if hit["type"] == "PAGE" and values:
                rows.append((s["fullVisitorId"], max(values), date if valid else None))
    seen = pd.DataFrame(rows, columns=["visitorId", "contentId", "date"])
    kept = oracles.durations_from_hits(oracles.ga_json_hits(path))[["visitorId", "contentId"]]
    grouped = seen.groupby(["visitorId", "contentId"], as_index=False).agg(
        first_date=("date", "min"), last_date=("date", "max"))
    return kept.merge(grouped, on=["visitorId", "contentId"], how="left").sort_values(
        ["visitorId", "contentId"]).reset_index(drop=True)


def sorted_dates(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame[["visitorId", "contentId", "first_date", "last_date"]].copy()
    for c in ("first_date", "last_date"):
        frame[c] = frame[c].astype(object).where(frame[c].notna(), None)
    return frame.sort_values(["visitorId", "contentId"]).reset_index(drop=True)


def beam_seen(read_and_step, tmp_path: pathlib.Path) -> pd.DataFrame:
    """The SEEN output of a reader + per-visitor step, as (visitor, item, YYYYMMDD, YYYYMMDD)."""
    out = str(tmp_path / "seen.jsonl")

    def compact(day):
        return None if day is None else freshness.day_text(day).replace("-", "")

    with beam.Pipeline("FnApiRunner") as p:
        seen = read_and_step(p)[freshness.SEEN]
        _ = (seen | beam.FlatMap(lambda kv: [json.dumps([kv[0], i, compact(f), compact(l)]) for i, f, l in kv[1]])
             | beam.io.WriteToText(out, shard_name_template=""))
    rows = [json.loads(line) for line in open(out, encoding="utf-8")]
    return sorted_dates(pd.DataFrame(rows, columns=["visitorId", "contentId", "first_date", "last_date"]))


def test_ga360_sql_dates_equal_pandas_and_the_beam_reader(tmp_path):
    path = ga360_dated_sessions(tmp_path / "sessions.json")
    query = sources.build_query(f"read_json('{path}', format='newline_delimited')")
    sql = sorted_dates(duckdb.connect().execute(query).df())
    reference = sorted_dates(pandas_ga360_dates(path))
    assert len(sql) > 300 and sql["first_date"].isna().sum() > 0 and (sql["first_date"] < sql["last_date"]).sum() > 50
    pd.testing.assert_frame_equal(sql, reference)
    got = beam_seen(lambda p: (p | sources.ReadGaSessions(path, "custom_dimension", 10, "PAGE")).hits
                    | sessionize.SessionizeHits(), tmp_path)
    pd.testing.assert_frame_equal(got, sql)


@pytest.mark.parametrize("duration", ga4.DURATIONS)
def test_ga4_sql_dates_equal_pandas_and_the_beam_reader(tmp_path, duration):
    from tests.test_ga4 import edge_case_events

    rng = np.random.default_rng(2)
    lines = []
    for line in edge_case_events():
        event = json.loads(line)
        if rng.random() < 0.95:  # dates that need not follow the timestamps: the column is read as it is
            event["event_date"] = f"202403{int(rng.integers(1, 29)):02d}"
        lines.append(json.dumps(event))
    path = tmp_path / "events.ndjson"
    path.write_text("\n".join(lines) + "\n")
    query = ga4.build_query(duckdb_table(path), "page_location", duration)
    sql = sorted_dates(duckdb.connect().execute(query).df())
    got = beam_seen(lambda p: (p | ga4.ReadGa4Events(str(path), "page_location", duration, "user_pseudo_id", ())).events
                    | ga4.TimeOnItems(duration), tmp_path)
    assert len(sql) > 50
    pd.testing.assert_frame_equal(got, sql)
    # pandas: the events of each kept pair (valid session and time; for engagement_time a
    # negative engagement does not count), min/max of event_date
    rows = []
    for line in lines:
        e = json.loads(line)
        params = {p["key"]: p["value"] for p in e["event_params"]}
        url = (params.get("page_location") or {}).get("string_value")
        engagement = (params.get("engagement_time_msec") or {}).get("int_value")
        if "ga_session_id" not in params or not url:
            continue
        if duration == "engagement_time" and engagement is not None and int(engagement) < 0:
            continue
        rows.append((e["user_pseudo_id"], url.split("?")[0].split("#")[0], e.get("event_date")))
    ref = pd.DataFrame(rows, columns=["visitorId", "contentId", "date"]).groupby(
        ["visitorId", "contentId"], as_index=False).agg(first_date=("date", "min"), last_date=("date", "max"))
    ref = sql[["visitorId", "contentId"]].merge(ref, on=["visitorId", "contentId"], how="left")
    pd.testing.assert_frame_equal(sorted_dates(ref), sql)


# --------------------------------------------------------------------------- whole jobs
def test_bundled_sample_item_dates_equal_pandas(bundled_sample, bundled_output):
    """Every interaction is in training (no split): per item, the min / max session date of
    the visitors' page hits on it, over the kept interactions (pandas on the raw JSON)."""
    meta = json.loads((pathlib.Path(bundled_output) / contract.METADATA_FILE).read_text())
    table = read_item_dates(bundled_output)
    pairs = pandas_ga360_dates(bundled_sample)
    per_item = pairs.groupby("contentId").agg(first=("first_date", "min"), last=("last_date", "max"))
    expected = per_item.loc[table["contentId"]]
    assert table["first"].tolist() == [iso(d) for d in expected["first"]]
    assert table["last"].tolist() == [iso(d) for d in expected["last"]]
    dates = meta["dates"]
    assert dates["available"] is True and dates["item_dates"] == contract.ITEM_DATES_FILE
    assert dates["items_with_dates"] == meta["nitems"] == len(table)
    assert (dates["oldest_date"], dates["newest_date"]) == (iso(expected["first"].min()), iso(expected["last"].max()))
    assert "session date" in dates["source"]


def test_ga4_job_with_a_split_dates_only_training_rows(tmp_path):
    """A GA4 job holding out 30%: the table equals DuckDB's SQL dates over the training pairs
    (the split by its plain reference), grouped by item with pandas."""
    from preprocess.sample_data import write_sample

    sample = write_sample(str(tmp_path / "events.json"), n_visitors=1500, schema="ga4")
    out = str(tmp_path / "out")
    run_preprocess("--input", sample, "--input_format", "ga4_json", "--item_source", "event_param:article_id",
                   "--output_dir", out, "--test_fraction", "0.3", "--split_seed", "5")
    sql = duckdb.connect().execute(ga4.build_query(
        f"read_json('{sample}', format='newline_delimited')", "event_param:article_id")).df()
    held = reference_split(sql[["visitorId", "contentId"]], 0.3, 5).to_numpy()
    assert held.sum() > 100
    per_item = sql[~held].groupby("contentId").agg(first=("first_date", "min"), last=("last_date", "max"))
    table = read_item_dates(out)
    assert sorted(table["contentId"]) == sorted(per_item.index)
    expected = per_item.loc[table["contentId"]]
    assert table["first"].tolist() == [iso(d) for d in expected["first"]]
    assert table["last"].tolist() == [iso(d) for d in expected["last"]]
    everything = sql.groupby("contentId")["last_date"].max().loc[table["contentId"]]
    assert (everything > expected["last"]).any()  # held-out rows would have changed some dates
    assert json.loads((pathlib.Path(out) / "metadata.json").read_text())["dates"]["newest_date"] == iso(expected["last"].max())


def test_sources_without_dates_say_so(shared_csv_output):
    """The shared real hits CSV has no date column: no table, ``available: false`` and why."""
    meta = json.loads((pathlib.Path(shared_csv_output) / contract.METADATA_FILE).read_text())
    assert meta["dates"] == {"available": False, "source": "the hits_csv header has no date column",
                             "item_dates": None, "oldest_date": None, "newest_date": None, "items_with_dates": 0}
    assert not (pathlib.Path(shared_csv_output) / contract.ITEM_DATES_FILE).exists()
