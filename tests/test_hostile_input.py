"""Hostile input to the preprocessing job: every case ends in a dropped-and-counted row, kept
data equal to an independent reference, or one line and exit 2; never a crash of the job.

Each bad file is run next to the clean file it should be equivalent to, and the output is
compared with the pandas reference of the clean file (``tests/oracles.py``).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from preprocess import sources
from tests import oracles
from tests.ga360_rows import page, session
from tests.pipelines import REPO, run_preprocess


def good_lines(rng, visitors: int = 40) -> list[str]:
    lines = []
    for v in range(visitors):
        times = np.sort(rng.choice(200, size=int(rng.integers(2, 6)), replace=False)) * 1000
        lines.append(json.dumps(session(f"g{v:03d}", 1, [page(int(t), f"c{int(rng.integers(0, 9))}") for t in times])))
    return lines


@pytest.fixture(scope="module")
def hostile_ga_json(tmp_path_factory):
    """(bad file, clean equivalent, expected drop counts) for GA360 JSON."""
    rng = np.random.default_rng(11)
    good = good_lines(rng)
    deep = '{"fullVisitorId": "deep", "visitNumber": 1, "hits": ' + "[" * 100_000 + "]" * 100_000 + "}"
    huge = 10**400
    mixed = session("mixed", 1, [
        {"time": 0, "type": "PAGE", "customDimensions": [{"index": 10, "value": 5}, {"index": 10, "value": "abc"}]},
        page(3000, "c1"), page(8000)])
    mixed_clean = session("mixed", 1, [page(0, "abc"), page(3000, "c1"), page(8000)])
    wrong_types = session("wrong-types", 1, [
        {"time": 0, "type": "PAGE", "customDimensions": "c7"},            # not an array
        {"time": 1000, "type": "PAGE", "customDimensions": [{"index": 10, "value": "c2"}]},
        {"time": 2000, "type": "PAGE", "customDimensions": 17},           # not an array
        {"time": 2500, "type": "PAGE", "customDimensions": [{"index": huge, "value": "c9"}]},  # no match
        page(4000, "c3"), page(9000)])
    wrong_types_clean = session("wrong-types", 1, [page(1000, "c2"), page(2500), page(4000, "c3"), page(9000)])
    big_numbers = session("big-numbers", 1, [page(0, "c4"), page(huge, "c5"), page(6000, "c6"), page(7000)])
    big_numbers_clean = session("big-numbers", 1, [page(0, "c4"), page(6000, "c6"), page(7000)])
    bad_bytes = json.dumps(session("latin1-é", 1, [page(0, "c1"), page(10, "c2")]), ensure_ascii=False).encode("latin-1")

    lines = [line.encode() for line in good] + [
        bad_bytes,                                             # invalid_utf8
        deep.encode(),                                         # malformed_json (RecursionError)
        json.dumps(session("huge-visit", huge, [page(0, "c1"), page(10, "c2")])).encode(),  # missing_visit_number
        json.dumps(mixed).encode(), json.dumps(wrong_types).encode(), json.dumps(big_numbers).encode(),
    ]
    clean = good + [json.dumps(mixed_clean), json.dumps(wrong_types_clean), json.dumps(big_numbers_clean)]
    folder = tmp_path_factory.mktemp("hostile")
    bad_path, clean_path = folder / "bad.json", folder / "clean.json"
    # A byte order mark before the first session: that session must be kept.
    bad_path.write_bytes(b"\xef\xbb\xbf" + b"\n".join(lines) + b"\n")
    clean_path.write_text("\n".join(clean) + "\n", encoding="utf-8")
    expected = {"invalid_utf8": 1, "malformed_json": 1, "missing_visit_number": 1, "malformed_hit": 2,
                "invalid_time": 1}
    out = str(folder / "out")
    run_preprocess("--input", str(bad_path), "--output_dir", out)
    return out, str(clean_path), expected


def test_hostile_ga_json_rows_are_counted_and_dropped(hostile_ga_json):
    out, _, expected = hostile_ga_json
    dropped = oracles.pipeline_output(out)["metadata"]["dropped"]
    assert {k: v for k, v in dropped.items() if v and k not in ("hit_without_item",)} == expected
    letters = [json.loads(line) for name in os.listdir(os.path.join(out, "dropped"))
               for line in open(os.path.join(out, "dropped", name), encoding="utf-8")]
    assert pd.Series([d["reason"] for d in letters]).value_counts().to_dict() == expected
    # The undecodable row is shown with its bad byte escaped, so it can be found in the input.
    assert any(d["reason"] == "invalid_utf8" and "latin1-\\xe9" in d["record"] for d in letters)


def test_hostile_ga_json_keeps_exactly_the_clean_rows(hostile_ga_json):
    out, clean_path, _ = hostile_ga_json
    expected, median = oracles.ratings(oracles.durations_from_hits(oracles.ga_json_hits(clean_path)))
    output = oracles.pipeline_output(out)
    oracles.assert_same_ratings(output["items_for_user"], expected)
    assert output["metadata"]["median_duration"] == pytest.approx(median, rel=1e-12)
    assert "g000" in output["users"]  # the first session, after the byte order mark


def test_item_expression_rejects_wrong_json_types():
    assert sources.hit_items({"customDimensions": [{"index": 10, "value": 5}, {"index": 10, "value": "40"}]},
                             "custom_dimension", 10) == ["5"]  # STRING MAX: "5" > "40"
    assert sources.hit_items({"customDimensions": [{"index": 10, "value": 2.5}]}, "custom_dimension", 10) == [2.5]
    for hit, source in (({"product": {"productSKU": "x"}}, "product_sku"), ({"product": ["x"]}, "product_sku"),
                        ({"page": "/x"}, "page_path"), ({"customDimensions": "x"}, "custom_dimension")):
        with pytest.raises(sources.MalformedHit):
            sources.hit_items(hit, source, 10)
    assert sources.hit_items({"product": None}, "product_sku", 10) == [None]


@pytest.mark.parametrize("value,expected", [
    (2**63 - 1, 2**63 - 1), (2**63, None), (10**400, None), ("9223372036854775808", None),
    ("1e400", None), (float("nan"), None), (-1, None), ("12", 12), (1.5, 1.5), (True, None)])
def test_times_are_bounded_by_int64(value, expected):
    assert sources.parse_time(value) == expected


def test_non_utf8_and_bom_in_csv_inputs(tmp_path):
    hits = tmp_path / "hits.csv"
    hits.write_bytes(b"\xef\xbb\xbffullVisitorId,visitNumber,time,contentId\n"
                     b"v1,1,0,a\nv1,1,1000,b\nv1,1,3000,c\n"
                     b"v\xff2,1,0,a\n"                       # one bad byte: this row only
                     b"v2,1,0,a\nv2,1,4000,b\nv2,1,5000,c\n")
    out = str(tmp_path / "out_hits")
    run_preprocess("--input", str(hits), "--input_format", "hits_csv", "--output_dir", out)
    output = oracles.pipeline_output(out)
    assert output["metadata"]["dropped"]["invalid_utf8"] == 1
    durations = pd.DataFrame({"visitorId": ["v1", "v1", "v2", "v2"], "contentId": ["a", "b", "a", "b"],
                              "session_duration": [1000.0, 2000.0, 4000.0, 1000.0]})
    expected, _ = oracles.ratings(durations)
    oracles.assert_same_ratings(output["items_for_user"], expected)

    interactions = tmp_path / "interactions.csv"
    interactions.write_bytes(b"visitorId,contentId,session_duration\nv1,c1,1000\nv1,c\xc3(,500\nv2,c1,3000\n")
    out = str(tmp_path / "out_interactions")
    run_preprocess("--input", str(interactions), "--input_format", "interactions_csv", "--output_dir", out)
    output = oracles.pipeline_output(out)
    assert output["metadata"]["dropped"]["invalid_utf8"] == 1 and output["metadata"]["ninteractions"] == 2


def test_duration_sums_that_overflow_are_dropped_not_infinite(tmp_path):
    path = tmp_path / "interactions.csv"
    path.write_text("visitorId,contentId,session_duration\n"
                    "v1,c1,1e308\nv1,c1,1e308\n"                 # sums to inf in float64
                    "v1,c2,1.7e308\nv2,c1,1.6e308\nv2,c2,1000\n")
    out = str(tmp_path / "out")
    run_preprocess("--input", str(path), "--input_format", "interactions_csv", "--output_dir", out)
    output = oracles.pipeline_output(out)
    meta = output["metadata"]
    assert meta["dropped"]["duration_overflow"] == 1
    durations = pd.DataFrame({"visitorId": ["v1", "v2", "v2"], "contentId": ["c2", "c1", "c2"],
                              "session_duration": [1.7e308, 1.6e308, 1000.0]})
    median = 1.6e308  # numpy's median would be inf here: the mean of two middles is not needed (odd count)
    assert meta["median_duration"] == median
    expected, oracle_median = oracles.ratings(durations)
    assert oracle_median == median
    oracles.assert_same_ratings(output["items_for_user"], expected)
    assert np.isfinite(output["items_for_user"]["rating"]).all()


def test_median_of_two_huge_middles_is_finite():
    from preprocess.rating import histogram_median

    assert histogram_median({1.6e308: 1, 1.7e308: 1}) == pytest.approx(1.65e308, rel=1e-15)
    assert histogram_median({3: 1, 4: 1}) == 3.5


def write_csv(path, header: str, rows: list[str]) -> None:
    path.write_text("\n".join([header, *rows]) + "\n")


def test_every_csv_file_of_a_glob_has_its_header_checked(tmp_path):
    header = "visitorId,contentId,session_duration"
    write_csv(tmp_path / "part0.csv", header, ["v1,c1,1000", "v2,c1,2000"])
    write_csv(tmp_path / "part1.csv", "contentId,visitorId,session_duration", ["c2,v1,1000"])
    with pytest.raises(ValueError, match=r"part1\.csv: its first line .* is not the header of"):
        sources.read_header(str(tmp_path / "part*.csv"))
    (tmp_path / "part1.csv").write_text("v3,c2,1000\nv1,c2,500\n")  # no header: its first row would be lost
    with pytest.raises(ValueError, match=r"part1\.csv"):
        run_preprocess("--input", str(tmp_path / "part*.csv"), "--input_format", "interactions_csv",
                       "--output_dir", str(tmp_path / "out"))
    write_csv(tmp_path / "part1.csv", header, ["v3,c2,1000", "v1,c2,500"])
    (tmp_path / "part2.csv").write_text("")  # an empty file adds nothing and is fine
    assert sources.read_header(str(tmp_path / "part*.csv")) == header.split(",")


def test_output_dir_of_someone_else_is_refused_and_left_alone(tmp_path):
    source = tmp_path / "in.csv"
    write_csv(source, "visitorId,contentId,session_duration", ["v1,c1,1000", "v2,c1,3000", "v2,c2,2000"])
    mine = tmp_path / "mine"
    for name in ("stats/keep.txt", "tmp/keep.txt", "dropped/keep.txt", "notes.txt"):
        (mine / name).parent.mkdir(parents=True, exist_ok=True)
        (mine / name).write_text("user data")
    args = ["--input", str(source), "--input_format", "interactions_csv"]
    with pytest.raises(ValueError, match="not empty .* did not write it"):
        run_preprocess(*args, "--output_dir", str(mine))
    assert sorted(str(p.relative_to(mine)) for p in mine.rglob("*") if p.is_file()) == [
        "dropped/keep.txt", "notes.txt", "stats/keep.txt", "tmp/keep.txt"]
    assert all(p.read_text() == "user data" for p in mine.rglob("*") if p.is_file())


def test_rerun_into_its_own_output_replaces_only_its_outputs(tmp_path):
    header = "visitorId,contentId,session_duration"
    first, second = tmp_path / "first.csv", tmp_path / "second.csv"
    write_csv(first, header, ["v1,c1,1000", "v2,c1,3000", "v2,c2,2000"])
    write_csv(second, header, ["w1,d1,1000", "w2,d1,3000"])
    out = tmp_path / "out"
    run_preprocess("--input", str(first), "--input_format", "interactions_csv", "--output_dir", str(out), "--num_shards", "3")
    (out / "notes.txt").write_text("user data")
    run_preprocess("--input", str(second), "--input_format", "interactions_csv", "--output_dir", str(out), "--num_shards", "1")
    assert (out / "notes.txt").read_text() == "user data"
    assert len(list(out.glob("items_for_user-*"))) == 1  # the first run's 3 shards are gone
    output = oracles.pipeline_output(str(out))
    assert sorted(output["users"]) == ["w1", "w2"] and output["items"] == ["d1"]


def test_hostile_cli_cases_exit_2_with_one_line(tmp_path):
    good = tmp_path / "good.csv"
    write_csv(good, "visitorId,contentId,session_duration", ["v1,c1,1000", "v2,c1,3000"])
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    base = [sys.executable, "-m", "preprocess", "--input", str(good), "--input_format", "interactions_csv"]
    for extra, message in (
        (["--rating_scale", "nan", "--output_dir", str(tmp_path / "a")], "--rating_scale must be a positive finite"),
        (["--test_fracton", "0.2", "--output_dir", str(tmp_path / "b")], "did you mean --test_fraction"),
        (["--output_dir", str(good)], "is a file"),
    ):
        done = subprocess.run(base + extra, cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
        errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
        assert done.returncode == 2 and len(errors) == 1 and message in errors[0], done.stderr[-2000:]
        assert "Traceback" not in done.stderr
