"""Sessionization of GA360 sessions for every item source, against DuckDB running the project's
SQL and a pandas reference; the BigQuery branch built without BigQuery; flag validation."""
from __future__ import annotations

import json
import pathlib
import shlex
import subprocess

import apache_beam as beam
import duckdb
import numpy as np
import pandas as pd
import pytest

from preprocess import pipeline as graph, sessionize, sources
from preprocess.options import PreprocessOptions, validate
from tests import oracles
from tests.pipelines import REPO, find_bigquery_reads, offline_flags

ITEM_SOURCES = ("custom_dimension", "page_path", "product_sku")


@pytest.fixture(scope="module")
def tricky_sessions(tmp_path_factory) -> str:
    """Random GA360 sessions with ties in time, duplicate hits, several products per hit,
    non-page hits, hits without items and sessions split over several lines."""
    rng = np.random.default_rng(3)
    lines = []
    for v in range(300):
        for visit in range(1, int(rng.integers(1, 4)) + 1):
            hits = []
            for h in range(int(rng.integers(1, 9))):
                hit = {"hitNumber": h + 1, "time": int(rng.integers(0, 20)) * 1000,
                       "type": "PAGE" if rng.random() < 0.8 else "EVENT",
                       "page": {"pagePath": f"/p/{int(rng.integers(0, 15))}"},
                       "customDimensions": [{"index": 3, "value": "x"}],
                       "product": [{"productSKU": f"SKU{int(s)}"} for s in rng.integers(0, 25, int(rng.integers(0, 4)))]}
                if rng.random() < 0.7:
                    hit["customDimensions"].append({"index": 10, "value": f"c{int(rng.integers(0, 30))}"})
                hits.append(hit)
                if rng.random() < 0.1:
                    hits.append(dict(hit))  # an exact duplicate hit
            session = {"fullVisitorId": f"{v:05d}", "visitNumber": visit, "hits": hits,
                       "date": f"201708{int(rng.integers(1, 29)):02d}"}
            if rng.random() < 0.05:  # a session without a (valid) date
                session["date"] = [None, "", "2017-8-1", "date"][int(rng.integers(0, 4))]
            if len(hits) > 3 and rng.random() < 0.2:  # the same session on two lines
                lines.append(json.dumps({**session, "hits": hits[:2]}))
                lines.append(json.dumps({**session, "hits": hits[2:]}))
            else:
                lines.append(json.dumps(session))
    path = tmp_path_factory.mktemp("tricky") / "sessions.json"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def duckdb_interactions(path: str, item_source: str) -> pd.DataFrame:
    query = sources.build_query(f"read_json('{path}', format='newline_delimited')", item_source=item_source)
    return duckdb.connect().execute(query).df()


def beam_interactions(path: str, item_source: str) -> pd.DataFrame:
    out = f"{path}.{item_source}.beam"
    with beam.Pipeline("FnApiRunner") as p:
        read = p | sources.ReadGaSessions(path, item_source, 10, "PAGE")
        _ = ((read.hits | sessionize.SessionizeHits()).interactions
             | beam.FlatMap(lambda kv: [json.dumps([kv[0], item, d]) for item, d in kv[1]])
             | beam.io.WriteToText(out, shard_name_template=""))
    with open(out) as handle:
        rows = [json.loads(line) for line in handle]
    return pd.DataFrame(rows, columns=["visitorId", "contentId", "session_duration"])


def as_sorted(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame[["visitorId", "contentId", "session_duration"]].copy()
    frame["session_duration"] = frame["session_duration"].astype(float)
    return frame.sort_values(["visitorId", "contentId"]).reset_index(drop=True)


@pytest.mark.parametrize("item_source", ITEM_SOURCES)
def test_project_sql_in_duckdb_equals_pandas_reference(tricky_sessions, item_source):
    sql = as_sorted(duckdb_interactions(tricky_sessions, item_source))
    reference = as_sorted(oracles.durations_from_hits(oracles.ga_json_hits(tricky_sessions, item_source=item_source)))
    assert len(sql) > 100
    pd.testing.assert_frame_equal(sql, reference)


@pytest.mark.parametrize("item_source", ITEM_SOURCES)
def test_beam_sessionization_equals_project_sql_in_duckdb(tricky_sessions, item_source):
    pd.testing.assert_frame_equal(
        as_sorted(beam_interactions(tricky_sessions, item_source)),
        as_sorted(duckdb_interactions(tricky_sessions, item_source)),
    )


def test_session_durations_by_hand():
    # t=0 A, t=1000 B and C (one hit, two products), t=1000 B again (duplicate), t=5000 no item,
    # t=7000 A (last hit: no duration). A: 1000, B: 4000, C: 4000.
    hits = [(0, "A"), (1000, "B"), (1000, "C"), (1000, "B"), (5000, None), (7000, "A")]
    assert sessionize.session_item_durations(hits) == {"A": 1000, "B": 4000, "C": 4000}


CLOUD_FLAGS = ["--project", "my-project", "--region", "europe-west1",
               "--temp_location", "gs://b/tmp", "--output_dir", "gs://b/out"]


@pytest.mark.parametrize("extra,expected_query", [
    (["--bq_table", "my-project.ga.ga_sessions_*", "--start_date", "20170701", "--end_date", "20170731"],
     lambda: sources.build_query("my-project.ga.ga_sessions_*", start_date="20170701", end_date="20170731")),
    (["--bq_table", "p.d.t", "--item_source", "page_path", "--hit_type", "ALL"],
     lambda: sources.build_query("p.d.t", item_source="page_path", hit_type="ALL")),
    (["--query", "SELECT 'v' AS visitorId, 'c' AS contentId, 5 AS session_duration"],
     lambda: "SELECT 'v' AS visitorId, 'c' AS contentId, 5 AS session_duration"),
])
def test_bigquery_branch_builds_a_standard_sql_read(extra, expected_query, tmp_path):
    validate(PreprocessOptions(CLOUD_FLAGS + extra))  # the job's own check, as on Dataflow
    options = PreprocessOptions(offline_flags(tmp_path) + extra)
    p = beam.Pipeline(options=options)
    graph.build_pipeline(p, options)  # the whole graph builds with Dataflow options, offline
    (read,) = find_bigquery_reads(p)
    assert read._kwargs["query"] == expected_query()
    assert read._kwargs["use_standard_sql"] is True


def test_query_text_fixes_the_seed_bug():
    query = sources.build_query("p.d.ga_sessions_*")
    assert "`p.d.ga_sessions_*`" in query
    assert "PARTITION BY visitorId, visitNumber ORDER BY hit_time" in query
    assert "h.type = 'PAGE'" in query
    assert "cd.index = 10" in sources.build_query("p.d.t", content_dimension_index=10)
    assert "cd.index = 7" in sources.build_query("p.d.t", content_dimension_index=7)
    assert "_TABLE_SUFFIX BETWEEN '20170101' AND '20170102'" in sources.build_query(
        "p.d.t_*", start_date="20170101", end_date="20170102")


@pytest.mark.parametrize("argv,message", [
    ([], "exactly one input"),
    (["--input", "a", "--bq_table", "p.d.t"], "exactly one input"),
    (["--bq_table", "p.d.t", "--start_date", "2017-01-01", "--end_date", "20170102"], "YYYYMMDD"),
    (["--bq_table", "p.d.t", "--start_date", "20170101"], "both"),
    (["--bq_table", "not a table"], "PROJECT.DATASET.TABLE"),
    (["--input", "x", "--hit_type", "PAGE' OR '1'='1"], "plain word"),
    (["--input", "x", "--rating_scale", "0"], "positive"),
    (["--input", "x", "--rating_scale", "nan"], "positive finite"),
    (["--input", "x", "--rating_cap", "inf"], "positive finite"),
    (["--input", "x", "--include_intraday"], "only apply to --bq_table"),
    # BigQuery exports to the temp location before reading: refused at start without gs://
    (["--bq_table", "p.d.t"], "needs --temp_location gs://"),
    (["--query", "SELECT 1", "--temp_location", "/tmp/x"], "needs --temp_location gs://"),
])
def test_bad_flags_get_clear_errors(argv, message):
    with pytest.raises(ValueError, match=message):
        validate(PreprocessOptions(argv))


def dry_run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["./run_dataflow.sh", "--dry_run", *args], cwd=REPO, capture_output=True, text=True)


GCP = ["--runner", "DataflowRunner", "--project", "p", "--region", "europe-west1",
       "--temp_location", "gs://b/tmp", "--output_dir", "gs://b/out", "--bq_table", "p.ga.ga_sessions_*"]


def test_run_dataflow_launches_with_setup_file_or_custom_container():
    with_setup = dry_run(*GCP)
    assert with_setup.returncode == 0, with_setup.stderr
    argv = shlex.split(with_setup.stdout.strip().splitlines()[-1])
    assert argv[1:3] == ["-m", "preprocess"]
    assert argv[argv.index("--setup_file") + 1] == "./setup.py"
    assert argv[argv.index("--runner") + 1] == "DataflowRunner"
    assert argv[argv.index("--bq_table") + 1] == "p.ga.ga_sessions_*"
    # The printed flags parse and validate as the job's own options.
    options = PreprocessOptions(argv[3:])
    validate(options)
    assert options.bq_table == "p.ga.ga_sessions_*"

    image = "europe-docker.pkg.dev/p/r/ga-preprocess:0.1.0"
    with_image = dry_run(*GCP, "--sdk_container_image", image)
    argv = shlex.split(with_image.stdout.strip().splitlines()[-1])
    assert "--setup_file" not in argv and argv[argv.index("--sdk_container_image") + 1] == image


@pytest.mark.parametrize("missing", ["--project", "--region", "--temp_location", "--output_dir"])
def test_run_dataflow_refuses_incomplete_cloud_flags(missing):
    flags = list(GCP)
    at = flags.index(missing)
    del flags[at:at + 2]
    result = dry_run(*flags)
    assert result.returncode == 2 and missing in result.stderr


def test_local_default_run_command():
    result = dry_run()
    *_, preprocess, train = [shlex.split(line) for line in result.stdout.strip().splitlines()]
    assert preprocess[1:3] == ["-m", "preprocess"]
    assert preprocess[preprocess.index("--runner") + 1] == "FnApiRunner"
    assert preprocess[preprocess.index("--input_format") + 1] == "ga_json"
    out = preprocess[preprocess.index("--output_dir") + 1]
    assert train[1:3] == ["-m", "trainer.task"] and train[train.index("--input_path") + 1] == out


def test_unknown_and_abbreviated_flags_are_refused():
    from preprocess.options import refuse_unknown_flags

    refuse_unknown_flags(["--input", "x", "--test_fraction", "0.2", "--max_num_workers", "3"])
    with pytest.raises(ValueError, match=r"--test_fracton .*did you mean --test_fraction"):
        refuse_unknown_flags(["--input", "x", "--test_fracton", "0.2"])
    with pytest.raises(ValueError, match="--test_frac"):  # no prefix abbreviations either
        refuse_unknown_flags(["--input", "x", "--test_frac=0.2"])


def test_unknown_flag_exits_2_before_running(tmp_path):
    from preprocess.__main__ import main

    good = tmp_path / "good.csv"
    good.write_text("visitorId,contentId,session_duration\nv1,c1,1000\nv2,c1,3000\n")
    assert main(["--input", str(good), "--input_format", "interactions_csv", "--output_dir",
                 str(tmp_path / "o"), "--test_fracton", "0.2"]) == 2
    assert not (tmp_path / "o").exists()


def test_intraday_tables_excluded_unless_asked(tricky_sessions):
    """DuckDB runs the project's SQL for a wildcard table over a stand-in for it: two daily
    tables and the current day's intraday table, each row tagged with its _TABLE_SUFFIX."""
    lines = open(tricky_sessions).read().splitlines()
    folder = pathlib.Path(tricky_sessions).parent
    third = len(lines) // 3
    days = {"20170801": lines[:third], "20170802": lines[third:2 * third], "intraday_20170803": lines[2 * third:]}
    parts = []
    for suffix, rows in days.items():
        path = folder / f"ga_sessions_{suffix}.json"
        path.write_text("\n".join(rows) + "\n")
        parts.append(f"SELECT *, '{suffix}' AS _TABLE_SUFFIX FROM read_json('{path}', format='newline_delimited')")
    stand_in = "(" + " UNION ALL BY NAME ".join(parts) + ")"

    def sql(**kwargs) -> pd.DataFrame:
        query = sources.build_query("p.ga.ga_sessions_*", **kwargs).replace("`p.ga.ga_sessions_*`", stand_in)
        return as_sorted(duckdb.connect().execute(query).df())

    def reference(*suffixes: str) -> pd.DataFrame:
        path = folder / ("+".join(suffixes) + ".json")
        path.write_text("\n".join(row for s in suffixes for row in days[s]) + "\n")
        return as_sorted(oracles.durations_from_hits(oracles.ga_json_hits(str(path))))

    daily = reference("20170801", "20170802")
    everything = reference("20170801", "20170802", "intraday_20170803")
    assert len(everything) > len(daily)
    pd.testing.assert_frame_equal(sql(), daily)
    pd.testing.assert_frame_equal(sql(start_date="20170801", end_date="20170803"), daily)
    pd.testing.assert_frame_equal(sql(include_intraday=True), everything)
    pd.testing.assert_frame_equal(sql(include_intraday=True, start_date="20170801", end_date="20170803"), everything)
    pd.testing.assert_frame_equal(sql(include_intraday=True, start_date="20170802", end_date="20170803"),
                                  reference("20170802", "intraday_20170803"))


def test_dataflow_job_id_and_console_url_are_printed(capsys):
    from preprocess.__main__ import announce_job

    class Submitted:  # what DataflowRunner.run returns offers job_id()
        def job_id(self) -> str:
            return "2026-12-01_01_02_03-123456789"

    options = PreprocessOptions(GCP)
    assert announce_job(Submitted(), options) == " (Dataflow job 2026-12-01_01_02_03-123456789)"
    # The console's documented job URL: /dataflow/jobs/REGION/JOB_ID?project=PROJECT
    assert capsys.readouterr().out.strip() == (
        "preprocess: Dataflow job 2026-12-01_01_02_03-123456789 submitted: https://console.cloud.google.com"
        "/dataflow/jobs/europe-west1/2026-12-01_01_02_03-123456789?project=p")
    assert announce_job(None, PreprocessOptions(["--runner", "FnApiRunner"])) == ""


def test_whitespace_only_ids_are_missing_in_the_sql_and_in_beam(tmp_path):
    """A visitor or content ID of spaces is no ID for either reader (ids.clean_id, TRIM in the SQL)."""
    def hit(time, content):
        return {"time": time, "type": "PAGE", "customDimensions": [{"index": 10, "value": content}]}
    sessions = [
        {"fullVisitorId": "   ", "visitNumber": 1, "hits": [hit(0, "c1"), hit(1000, "c2")]},
        {"fullVisitorId": "v1", "visitNumber": 1, "hits": [hit(0, "  "), hit(1000, "c2"), hit(3000, "c3")]},
        {"fullVisitorId": "v2", "visitNumber": 1, "hits": [hit(0, "c1"), hit(500, "c2"), hit(2000, "c3")]},
    ]
    for s in sessions:
        s["date"] = "20170801"  # every export row has it; the SQL reads it
    path = tmp_path / "sessions.json"
    path.write_text("\n".join(json.dumps(s) for s in sessions) + "\n")
    sql = as_sorted(duckdb_interactions(str(path), "custom_dimension"))
    assert list(zip(sql["visitorId"], sql["contentId"], sql["session_duration"])) == [
        ("v1", "c2", 2000.0), ("v2", "c1", 500.0), ("v2", "c2", 1500.0)]
    pd.testing.assert_frame_equal(as_sorted(beam_interactions(str(path), "custom_dimension")), sql)
