"""Every class of bad input is counted and dropped, kept correctly, or refused with a clear error."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from preprocess.metadata import NoInteractionsError
from tests import oracles
from tests.ga360_rows import page, session
from tests.pipelines import REPO, run_preprocess


def good_sessions(rng) -> list[dict]:
    out = []
    for v in range(60):
        for visit in (1, 2):
            times = np.sort(rng.choice(300, size=int(rng.integers(2, 7)), replace=False)) * 1000
            out.append(session(f"{v:04d}", visit, [page(int(t), f"c{int(rng.integers(0, 12))}") for t in times]))
    return out


@pytest.fixture(scope="module")
def bad_ga_json(tmp_path_factory):
    """(path of the file with bad rows, path of its clean equivalent, expected drop counts)."""
    rng = np.random.default_rng(5)
    good = good_sessions(rng)
    big_session = session("heavy-visitor", 1, [page(t * 10, f"c{t % 50}") for t in range(100_000)])
    unicode_session = session("visitör-ü", 1, [page(0, "artikel-é"), page(5000, "新聞-1"), page(9000)])
    mixed_hits = [page(0, "c1"), page("abc", "c2"), page(-5, "c3"), page(None, "c4"),
                  page(2000, "a\tb"), page(7000, "c5"), page(9000)]
    clean_mixed = [page(0, "c1"), page(2000), page(7000, "c5"), page(9000)]
    bad_lines = [
        "{not json",
        "[1, 2]",
        json.dumps(session(None, 1, [page(0, "c1"), page(10, "c2")])),
        json.dumps(session("", 1, [page(0, "c1"), page(10, "c2")])),
        json.dumps(session("ab\tc", 1, [page(0, "c1"), page(10, "c2")])),
        json.dumps(session("x\ny", 1, [page(0, "c1"), page(10, "c2")])),
        json.dumps({"fullVisitorId": "no-visit-number", "hits": [page(0, "c1"), page(10, "c2")]}),
        json.dumps({"fullVisitorId": "no-hits", "visitNumber": 1}),
        "",
    ]
    lines = [json.dumps(s) for s in good] + bad_lines + [
        json.dumps(good[0]),  # an exact duplicate row
        json.dumps(big_session),
        json.dumps(unicode_session, ensure_ascii=False),
        json.dumps(session("mixed-visitor", 1, mixed_hits)),
    ]
    clean = [json.dumps(s) for s in good] + [
        json.dumps(big_session), json.dumps(unicode_session, ensure_ascii=False),
        json.dumps(session("mixed-visitor", 1, clean_mixed)),
    ]
    folder = tmp_path_factory.mktemp("bad_input")
    bad_path, clean_path = folder / "bad.json", folder / "clean.json"
    order = rng.permutation(len(lines))
    bad_path.write_text("\n".join(lines[i] for i in order) + "\n", encoding="utf-8")
    clean_path.write_text("\n".join(clean) + "\n", encoding="utf-8")
    expected = {"malformed_json": 2, "missing_visitor_id": 2, "invalid_visitor_id": 2,
                "missing_visit_number": 1, "missing_hits": 1, "invalid_time": 3, "invalid_content_id": 1}
    return str(bad_path), str(clean_path), expected


@pytest.fixture(scope="module")
def bad_ga_json_output(bad_ga_json, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("bad_out"))
    run_preprocess("--input", bad_ga_json[0], "--output_dir", out)
    return out


def test_bad_rows_are_counted_by_reason(bad_ga_json, bad_ga_json_output):
    dropped = oracles.pipeline_output(bad_ga_json_output)["metadata"]["dropped"]
    for reason, count in bad_ga_json[2].items():
        assert dropped[reason] == count, reason


def test_dead_letters_hold_the_malformed_rows(bad_ga_json, bad_ga_json_output):
    folder = os.path.join(bad_ga_json_output, "dropped")
    letters = [json.loads(line) for name in os.listdir(folder) for line in open(os.path.join(folder, name))]
    reasons = pd.Series([d["reason"] for d in letters]).value_counts().to_dict()
    assert reasons == bad_ga_json[2]
    assert any(d["record"] == "{not json" for d in letters)


def test_output_equals_reference_on_the_clean_rows(bad_ga_json, bad_ga_json_output):
    """Duplicates, a 100k-hit visitor and non-ASCII IDs are kept, exactly as the clean data gives."""
    expected, median = oracles.ratings(oracles.durations_from_hits(oracles.ga_json_hits(bad_ga_json[1])))
    output = oracles.pipeline_output(bad_ga_json_output)
    oracles.assert_same_ratings(output["items_for_user"], expected)
    oracles.assert_same_ratings(output["users_for_item"], expected)
    assert output["metadata"]["median_duration"] == pytest.approx(median)
    assert "visitör-ü" in output["users"] and "新聞-1" in output["items"]
    assert "heavy-visitor" in output["users"]
    assert not any(ch in name for name in output["users"] + output["items"] for ch in "\t\n\r")


def test_bad_csv_rows(tmp_path):
    path = tmp_path / "interactions.csv"
    path.write_text(
        "visitorId,contentId,session_duration\n"
        "v1,c1,1000\nv1,c2,3000\nv2,c1,2000\nv2,c2,500\nv3,c3,4000\n"
        "v4,c1\n"                    # malformed_csv: a column short
        "v5,c1,abc\nv5,c2,nan\nv5,c3,inf\n"  # invalid_duration
        ",c1,100\n"                  # missing_visitor_id
        '"v\tx",c1,100\n'            # invalid_visitor_id
        "v6,,100\n"                  # no item
        "v7,c1,0\nv7,c2,-10\n"       # nonpositive_duration
    )
    out = str(tmp_path / "out")
    run_preprocess("--input", str(path), "--input_format", "interactions_csv", "--output_dir", out)
    output = oracles.pipeline_output(out)
    dropped = output["metadata"]["dropped"]
    assert dropped["malformed_csv"] == 1 and dropped["invalid_duration"] == 3
    assert dropped["missing_visitor_id"] == 1 and dropped["invalid_visitor_id"] == 1
    assert dropped["hit_without_item"] == 1 and dropped["nonpositive_duration"] == 2
    expected = pd.DataFrame({"visitorId": ["v1", "v1", "v2", "v2", "v3"], "contentId": ["c1", "c2", "c1", "c2", "c3"],
                             "rating": np.minimum(0.3 * np.array([1000, 3000, 2000, 500, 4000]) / 2000.0, 1.0)})
    oracles.assert_same_ratings(output["items_for_user"], expected)


def test_empty_and_missing_inputs_get_clear_errors(tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text("")
    with pytest.raises(ValueError, match="only empty files"):
        run_preprocess("--input", str(empty), "--output_dir", str(tmp_path / "o1"))
    with pytest.raises(ValueError, match="matched no files"):
        run_preprocess("--input", str(tmp_path / "nothing-*.json"), "--output_dir", str(tmp_path / "o2"))
    header_only = tmp_path / "header.csv"
    header_only.write_text("fullVisitorId,visitNumber,time\n")
    with pytest.raises(ValueError, match="lacks column"):
        run_preprocess("--input", str(header_only), "--input_format", "hits_csv", "--output_dir", str(tmp_path / "o3"))


def test_input_with_no_usable_row_is_an_error_not_an_empty_model(tmp_path):
    path = tmp_path / "all_bad.json"
    path.write_text('{broken\n{"fullVisitorId": "a\\tb", "visitNumber": 1, "hits": []}\n')
    with pytest.raises(NoInteractionsError, match="malformed_json"):
        run_preprocess("--input", str(path), "--output_dir", str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out" / "metadata.json")


def test_exit_status_is_honest(tmp_path):
    good = tmp_path / "good.csv"
    good.write_text("visitorId,contentId,session_duration\nv1,c1,1000\nv2,c1,3000\nv2,c2,2000\n")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    ok = subprocess.run([sys.executable, "-m", "preprocess", "--input", str(good), "--input_format",
                         "interactions_csv", "--output_dir", str(tmp_path / "ok")],
                        cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert json.load(open(tmp_path / "ok" / "metadata.json"))["ninteractions"] == 3
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    failed = subprocess.run([sys.executable, "-m", "preprocess", "--input", str(empty), "--output_dir",
                             str(tmp_path / "bad")], cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert failed.returncode == 2 and "only empty files" in failed.stderr
