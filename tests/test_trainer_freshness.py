"""Item freshness in the trainer (``--max_age_days``, the SavedModel's ``*_fresh`` signatures,
``trainer.recommend --max_age_days``) against NumPy top-k over the fresh items only.

The filter is a date comparison, so which items may appear is checked exactly (sets of dense
IDs: no stale item ever); the order within the fresh items is checked as in
``tests/test_serving.py``, within the rounding-error bounds of ``tests/tolerances.py``.
"""
from __future__ import annotations

import datetime
import json
import os
import pathlib
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from tests.test_serving import _call, _check_lists, _cosine_case, _inputs, _instances
from tests.tolerances import assert_topk_consistent, dot_tolerance
from tests.trainer_fixtures import REPO, cpu_only, random_ratings, write_dataset, write_item_dates
from trainer import recommend, task
from trainer.errors import TrainerInputError
from trainer.export import FRESH_SIGNATURES, SIGNATURES, latest_export

NUSERS, NITEMS, F = 40, 23, 4
USERS = [f"v{i}" for i in range(NUSERS)]
ITEMS = [f"article, {j}" for j in range(NITEMS)]
NEWEST = datetime.date(2024, 3, 17)
# item j last seen AGES[j] days before the newest date; None: no date at all
AGES = [int(a) for a in np.random.default_rng(5).integers(0, 15, NITEMS)]
AGES[0], AGES[1], AGES[2] = 0, None, 14
TRAIN = ["--num_epochs", "3", "--n_embeds", str(F), "--regularization", "0.5", "--batch_size", "8",
         "--no_progress"]


def _date(age: int | None) -> str | None:
    return None if age is None else (NEWEST - datetime.timedelta(days=age)).isoformat()


def _fresh(max_age: int) -> np.ndarray:
    """The oracle: bool per item, last seen at most ``max_age`` days before the newest date."""
    return np.array([a is not None and a <= max_age for a in AGES])


def _dense() -> np.ndarray:
    return random_ratings(NUSERS, NITEMS, 0.3, 11)


@pytest.fixture(scope="module")
def dated(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("fresh") / "prep"
    write_dataset(root, _dense(), USERS, ITEMS)
    write_item_dates(root, [_date(a) for a in AGES],
                     first_seen=[_date(None if a is None else a + 3) for a in AGES])
    return root


@pytest.fixture(scope="module")
def model(dated) -> pathlib.Path:
    out = dated.parent / "model"
    with cpu_only():
        assert task.main(["--input_path", str(dated), "--output_dir", str(out), "--max_age_days", "4", *TRAIN]) == 0
    return out


@pytest.fixture(scope="module")
def loaded(model) -> Any:
    import tensorflow as tf

    return tf.saved_model.load(latest_export(str(model)))


def test_batch_pred_holds_only_fresh_items_and_equals_numpy_topk_over_them(model):
    u, v = np.load(model / "row_factors.npy"), np.load(model / "col_factors.npy")
    fresh = _fresh(4)
    assert 0 < fresh.sum() < NITEMS - 5  # the filter matters on this data
    pred = recommend.read_batch_predictions(str(model / "batch_pred.txt"))
    assert list(pred) == USERS
    seen = _dense() != 0
    exact = u.astype(np.float64) @ v.T.astype(np.float64)
    tau = dot_tolerance(u, v, np.float32)
    stale = ~fresh
    for i, name in enumerate(USERS):
        ids = np.array([ITEMS.index(c) for c in pred[name]], dtype=np.int64)
        assert not stale[ids].any(), (name, pred[name])  # exact: never a stale item
        row = np.full(10, -1, np.int64)
        row[:ids.size] = ids
        scores = np.where(row >= 0, exact[i, np.maximum(row, 0)], -np.inf)
        assert_topk_consistent(row[None], scores[None], exact[i:i + 1], tau[i:i + 1],
                               (seen[i] | stale)[None], 10)
    summary = json.loads((model / "training_summary.json").read_text())
    assert summary["data"]["dates"] == {"available": True, "newest_date": NEWEST.isoformat(),
                                        "items_with_dates": NITEMS - 1, "max_age_days": 4,
                                        "fresh_items": int(fresh.sum())}


def test_fresh_signatures_exist_with_batched_inputs(loaded):
    assert set(loaded.signatures) == {*SIGNATURES, *FRESH_SIGNATURES, "serving_default"}
    for name in FRESH_SIGNATURES:
        spec = loaded.signatures[name].structured_input_signature[1]["max_age_days"]
        assert spec.shape.as_list() == [None] and spec.dtype.name == "int32"


def test_recommend_items_fresh_per_instance_equals_numpy_topk_over_fresh_items(loaded, model):
    u, v = np.load(model / "row_factors.npy"), np.load(model / "col_factors.npy")
    d = _dense()
    rows = [0, 3, 3, 3, 17, 39]
    ages = [4, 0, -1, 14, 7, 2]  # -1: no filter
    ks = [5, 5, 5, 5, 30, 2]
    r = _call(loaded, "recommend_items_fresh",
              _instances(visitor_ids=[USERS[i] for i in rows], k=ks, max_age_days=ages))
    q = u[rows]
    excluded = np.stack([(d[i] != 0) | (~_fresh(a) if a >= 0 else False) for i, a in zip(rows, ages)])
    _check_lists(r, "content_ids", ITEMS, ks, q.astype(np.float64) @ v.T.astype(np.float64),
                 dot_tolerance(q, v, np.float32), excluded, np.zeros(len(rows), bool))
    for b, a in enumerate(ages):  # exact: no stale item in any list
        got = {ITEMS.index(n.decode()) for n in r["content_ids"][b] if n}
        if a >= 0:
            assert got <= set(np.flatnonzero(_fresh(a))), (b, got)
    # a negative max_age_days is the plain signature's answer
    plain = _call(loaded, "recommend_items", _instances(visitor_ids=[USERS[3]], k=[5]))
    np.testing.assert_array_equal(plain["content_ids"][0], r["content_ids"][2][:plain["content_ids"].shape[1]])


def test_similar_items_fresh_columnar_equals_numpy_cosine_over_fresh_items(loaded, model):
    v = np.load(model / "col_factors.npy")
    rows = [0, 1, 5, -1]
    ages = [3, 10, -1, 3]
    ks = [4, 4, 6, 2]
    names = [ITEMS[j] if j >= 0 else "no such item" for j in rows]
    r = _call(loaded, "similar_items_fresh", _inputs(content_ids=names, k=ks, max_age_days=ages))
    exact, tau, excluded, empty = _cosine_case(v, rows)
    for b, a in enumerate(ages):
        if a >= 0:
            excluded[b] |= ~_fresh(a)
    assert r["known"].tolist() == [True, True, True, False]
    _check_lists(r, "content_ids", ITEMS, ks, exact, tau, excluded, empty)


def test_fold_in_fresh_leaves_out_stale_items(loaded):
    body = _instances(content_ids=[[ITEMS[0], ITEMS[4]], [ITEMS[7], ""]], ratings=[[0.5, 1.0], [0.3, 0.0]],
                      k=[NITEMS, NITEMS], max_age_days=[2, -1])
    fresh = _call(loaded, "fold_in_fresh", body)
    plain = _call(loaded, "fold_in", _instances(content_ids=[[ITEMS[0], ITEMS[4]], [ITEMS[7], ""]],
                                                ratings=[[0.5, 1.0], [0.3, 0.0]], k=[NITEMS, NITEMS]))
    np.testing.assert_array_equal(fresh["embedding"], plain["embedding"])  # same solve
    allowed = set(np.flatnonzero(_fresh(2))) - {0, 4}
    got = [ITEMS.index(n.decode()) for n in fresh["content_ids"][0] if n]
    assert set(got) == allowed  # k = all: exactly the fresh items not given
    keep = [ITEMS.index(n.decode()) for n in plain["content_ids"][0] if n]
    assert got == [j for j in keep if j in allowed]  # the same order, stale ones removed
    np.testing.assert_array_equal(fresh["content_ids"][1], plain["content_ids"][1])


def test_recommend_cli_max_age_days(model, capsys):
    assert recommend.main(["--model_dir", str(model), "--visitor_id", USERS[3], "--k", "50",
                           "--max_age_days", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    got = {ITEMS.index(line.split("\t")[0]) for line in lines}
    assert got == set(np.flatnonzero(_fresh(1) & (_dense()[3] == 0)))


# --------------------------------------------------------------------------- without dates
@pytest.fixture(scope="module")
def undated(tmp_path_factory) -> pathlib.Path:
    """An output without a ``dates`` block (as from a preprocessing that predates it)."""
    return write_dataset(tmp_path_factory.mktemp("undated") / "prep", _dense(), USERS, ITEMS)


def _trainer(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, "-m", "trainer.task", *argv], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def _one_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def test_max_age_days_is_refused_without_dates(undated, tmp_path):
    error = _one_error(_trainer("--input_path", str(undated), "--output_dir", str(tmp_path / "m"),
                                "--max_age_days", "3", *TRAIN))
    assert "--max_age_days needs item dates" in error and "no 'dates' block" in error
    assert not (tmp_path / "m").exists()  # refused before the output dir is claimed
    meta = json.loads((undated / "metadata.json").read_text())
    meta["dates"] = {"available": False, "source": "the hits_csv header has no date column",
                     "item_dates": None, "oldest_date": None, "newest_date": None, "items_with_dates": 0}
    (undated / "metadata.json").write_text(json.dumps(meta))
    error = _one_error(_trainer("--input_path", str(undated), "--output_dir", str(tmp_path / "m"),
                                "--max_age_days", "3", *TRAIN))
    assert "the input has no dates (the hits_csv header has no date column)" in error


@pytest.mark.parametrize("argv,message", [
    (["--max_age_days", "-1"], "--max_age_days must be >= 0"),
    (["--max_age_days", "2", "--no_batch_pred"], "--no_batch_pred"),
])
def test_bad_max_age_days_flags(undated, tmp_path, argv, message):
    error = _one_error(_trainer("--input_path", str(undated), "--output_dir", str(tmp_path / "m"), *argv))
    assert message in error


def test_model_without_dates_has_no_fresh_signatures_and_the_cli_refuses(undated, tmp_path, capsys):
    import tensorflow as tf

    out = tmp_path / "model"
    with cpu_only():
        assert task.main(["--input_path", str(undated), "--output_dir", str(out), *TRAIN]) == 0
    loaded = tf.saved_model.load(latest_export(str(out)))
    assert set(loaded.signatures) == {*SIGNATURES, "serving_default"}
    assert json.loads((out / "training_summary.json").read_text())["data"]["dates"] == {"available": False}
    capsys.readouterr()
    assert recommend.main(["--model_dir", str(out), "--visitor_id", USERS[0], "--max_age_days", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no item dates" in err[0]


@pytest.mark.parametrize("corrupt,message", [
    (lambda lines: lines[:-1], "lines, the item vocabulary"),
    (lambda lines: [lines[1], lines[0], *lines[2:]], "the item vocabulary's line"),
    (lambda lines: [lines[0].replace("2024-03-17", "17.03.2024"), *lines[1:]], "YYYY-MM-DD"),
])
def test_malformed_item_dates_are_refused(dated, tmp_path, corrupt, message):
    import shutil

    from trainer.freshness import load_item_dates
    from trainer.metadata import load_metadata

    copy = pathlib.Path(shutil.copytree(dated, tmp_path / "copy"))
    path = copy / "item_dates.tsv"
    path.write_text("".join(line + "\n" for line in corrupt(path.read_text().split("\n")[:-1])))
    with pytest.raises(TrainerInputError, match=message):
        load_item_dates(load_metadata(str(copy)), ITEMS)
