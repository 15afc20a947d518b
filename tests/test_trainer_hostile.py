"""Hostile input to the trainer CLI and its SavedModel: every case ends in a correct result or
one ``error:`` line with exit status 2 — never a traceback, never exit 0 with a wrong or
non-finite result. Expectations come from NumPy closed forms and hand-made files, not from
the trainer's own output."""
from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest


from tests.trainer_fixtures import (  # noqa: E402
    REPO, numpy_fold_in, numpy_topk, random_ratings, write_dataset, write_test_split,
)

from tests.tolerances import (  # noqa: E402
    assert_rows_within, assert_topk_consistent, dot_tolerance, solve_tolerance,
)
from trainer import task  # noqa: E402
from trainer.export import latest_export  # noqa: E402

NUSERS, NITEMS, K, LAM = 14, 9, 3, 0.5
FAST = ["--num_epochs", "2", "--n_embeds", str(K), "--regularization", str(LAM), "--batch_size", "8",
        "--no_progress"]

# legitimate raw IDs that are hostile to naive formats: commas (URLs, page titles), spaces,
# non-ASCII, a no-break space, a zero-width space, quotes, '=' and ';' — but never a tab,
# line break or other control character (preprocess/ids.py drops those)
USERS = [f"user,{i}" if i % 3 == 0 else f"visiteur n° {i} ü" for i in range(NUSERS)]
ITEMS = [
    "https://shop.example.com/p?id=1,2&x=3",
    "Title, with, commas",
    " spaced out ",
    "日本語のページ",
    "emoji 🎉, party",
    "no\u00a0break",
    "zero\u200bwidth",
    '"quoted", \'too\'',
    "a=b;c",
]


def _dense() -> np.ndarray:
    d = random_ratings(NUSERS, NITEMS, 0.35, 7)
    d[2, :] = 0.0  # a user without training interactions: an empty recommendation list
    d[5, :] = 0.6  # a user with every item: nothing left to recommend
    return d


def _main(argv: list[str]) -> int:
    """``task.main`` in this process; argparse's SystemExit is returned as the status."""
    try:
        return task.main(argv)
    except SystemExit as e:
        return int(e.code)


def _one_error_line(err: str) -> str:
    """The single ``error:`` line of a failed run (log lines of the run may precede it)."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> pathlib.Path:
    return write_dataset(tmp_path_factory.mktemp("hostile_prep"), _dense(), USERS, ITEMS)


# --------------------------------------------------------------------------- 1. batch_pred.txt
def _parse_tab_lines(path: pathlib.Path) -> list[list[str]]:
    """The documented format, parsed independently: UTF-8, lines end in \\n, fields by \\t."""
    text = path.read_bytes().decode("utf-8")
    assert text.endswith("\n")
    return [line.split("\t") for line in text[:-1].split("\n")]


def test_batch_pred_is_tab_separated_and_survives_commas_spaces_non_ascii(data_dir, tmp_path):
    out = tmp_path / "model"
    assert _main(["--input_path", str(data_dir), "--output_dir", str(out), "--topk", "4",
                  "--predict_users_for_items", "--no_export", *FAST]) == 0
    u = np.load(out / "row_factors.npy").astype(np.float64)
    v = np.load(out / "col_factors.npy").astype(np.float64)
    d = _dense()
    rows = _parse_tab_lines(out / "batch_pred.txt")
    assert [r[0] for r in rows] == USERS  # one line per user, dense ID order
    ref = numpy_topk(u @ v.T, d != 0, 4)
    for i, row in enumerate(rows):
        want = [] if i == 2 else [ITEMS[j] for j in ref[i]]
        assert row[1:] == want, (USERS[i], row)
    assert rows[2] == [USERS[2]] and rows[5] == [USERS[5]]  # no trailing tab, no empty field
    rows_u = _parse_tab_lines(out / "batch_pred_users.txt")
    ref_u = numpy_topk(v @ u.T, d.T != 0, 4)
    for j, row in enumerate(rows_u):
        assert row == [ITEMS[j], *[USERS[i] for i in ref_u[j]]], row
    # the project's own reader agrees with the independent parse
    from trainer.recommend import read_batch_predictions

    assert read_batch_predictions(str(out / "batch_pred.txt")) == {r[0]: r[1:] for r in rows}


def test_vocabulary_with_a_tab_is_refused(tmp_path, capsys):
    bad = write_dataset(tmp_path / "prep", _dense(), USERS, [*ITEMS[:-1], "tab\there"])
    assert _main(["--input_path", str(bad), "--output_dir", str(tmp_path / "o"), *FAST]) == 2
    assert "tab" in _one_error_line(capsys.readouterr().err)


# --------------------------------------------------------------------------- 2. output dir
def test_reused_output_dir_drops_the_previous_runs_outputs(data_dir, tmp_path):
    """Run 1 writes everything (held-out metrics too); run 2 on the same dir writes no
    batch_pred, no export and has no held-out data: nothing of run 1 may remain."""
    with_split = write_dataset(tmp_path / "split", _dense(), USERS, ITEMS)
    test = np.zeros_like(_dense())
    test[0, np.flatnonzero(_dense()[0] == 0)[:2]] = 0.4
    write_test_split(with_split, test)
    out = tmp_path / "model"
    assert _main(["--input_path", str(with_split), "--output_dir", str(out), "--eval_k", "3",
                  "--predict_users_for_items", *FAST, "--num_epochs", "3"]) == 0
    for name in ("metrics.json", "batch_pred.txt", "batch_pred_users.txt", "export"):
        assert (out / name).exists(), name
    (out / "my_notes.txt").write_text("a file the user put into the trainer's dir")
    assert _main(["--input_path", str(data_dir), "--output_dir", str(out), "--no_batch_pred",
                  "--no_export", *FAST, "--num_epochs", "1"]) == 0
    for name in ("metrics.json", "batch_pred.txt", "batch_pred_users.txt", "export"):
        assert not (out / name).exists(), f"stale {name} of the previous run"
    s = json.loads((out / "training_summary.json").read_text())
    assert len(s["history"]) == 1 and s["evaluation"] is None
    assert (out / "my_notes.txt").read_text() == "a file the user put into the trainer's dir"
    # the fresh run's TensorBoard log and checkpoint hold only the fresh run's sweeps
    import tensorflow as tf

    steps = set()
    for e in (out / "tensorboard").glob("events.out.tfevents.*"):
        for rec in tf.data.TFRecordDataset(str(e)).as_numpy_iterator():
            ev = tf.compat.v1.Event.FromString(rec)
            steps |= {ev.step for v in ev.summary.value if v.tag == "loss"}
    assert steps == {1}, steps
    assert sorted(p.name for p in (out / "checkpoint").iterdir()) == ["factors-00001.npz", "state.json"]


def test_foreign_non_empty_output_dir_is_refused_and_untouched(data_dir, tmp_path, capsys):
    out = tmp_path / "someone_elses"
    out.mkdir()
    files = {"precious.txt": "do not delete", "batch_pred.txt": "not the trainer's",
             "metrics.json": "{}"}
    for name, text in files.items():
        (out / name).write_text(text)
    assert _main(["--input_path", str(data_dir), "--output_dir", str(out), *FAST]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert str(out) in line
    assert sorted(p.name for p in out.iterdir()) == sorted(files)  # nothing added or removed
    for name, text in files.items():
        assert (out / name).read_text() == text
    # an output dir that is a file is refused too
    f = tmp_path / "a_file"
    f.write_text("x")
    assert _main(["--input_path", str(data_dir), "--output_dir", str(f), *FAST]) == 2
    assert str(f) in _one_error_line(capsys.readouterr().err)
    assert f.read_text() == "x"


_HOLD = r"""
import pathlib, sys, time
from trainer import checkpoint, task
real_save = checkpoint.Checkpointer.save
def save_then_hang(self, state, *args, **kwargs):
    real_save(self, state, *args, **kwargs)
    pathlib.Path(sys.argv[1]).write_text("saved")
    time.sleep(600)  # holds the output dir until killed
checkpoint.Checkpointer.save = save_then_hang
sys.exit(task.main(sys.argv[2:]))
"""


def test_second_trainer_on_the_same_dir_fails_at_once_naming_the_holder(data_dir, tmp_path):
    out = tmp_path / "shared_out"
    marker = tmp_path / "marker"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    argv = ["--input_path", str(data_dir), "--output_dir", str(out), *FAST]
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(marker), *argv], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        while not marker.exists():
            assert holder.poll() is None, holder.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the first trainer never reached its checkpoint"
            time.sleep(0.05)
        second = subprocess.run([sys.executable, "-m", "trainer.task", *argv], env=env,
                                capture_output=True, text=True, timeout=180)
        assert second.returncode == 2, second.stderr[-3000:]
        line = _one_error_line(second.stderr)
        assert str(out) in line and f"pid {holder.pid}" in line and socket.gethostname() in line
        assert "factors-00001.npz" in os.listdir(out / "checkpoint")  # the holder's work intact
    finally:
        holder.kill()
        holder.wait()
    assert holder.returncode == -signal.SIGKILL
    # the OS released the dead holder's lock: the next run goes ahead (and resumes its work)
    assert _main([*argv, "--resume"]) == 0


def test_remote_lock_object_refuses_a_second_holder_until_broken():
    """gs:// has no flock: a lock object with holder info (tested on TensorFlow's ram://
    file system, which takes the same code path as gs://)."""
    from trainer import fileio
    from trainer.errors import TrainerInputError

    out = "ram://hostile-bucket/model"
    first = fileio.claim_output_dir(out)
    first.check()
    with pytest.raises(TrainerInputError, match=r"pid \d+ on host .*--break_lock"):
        fileio.claim_output_dir(out)
    second = fileio.claim_output_dir(out, break_lock=True)
    with pytest.raises(TrainerInputError, match="taken over"):
        first.check()  # the first run learns at its next sweep that it lost the dir
    first.release()  # does not remove the second holder's lock
    with pytest.raises(TrainerInputError, match="--break_lock"):
        fileio.claim_output_dir(out)
    second.release()
    fileio.claim_output_dir(out).release()  # free again


# --------------------------------------------------------------------------- 3. fold_in
@pytest.fixture(scope="module")
def exported(data_dir, tmp_path_factory):
    """(implicit model dir, wals model dir), both with the SavedModel."""
    outs = []
    for objective in ("implicit", "wals"):
        out = tmp_path_factory.mktemp(f"fold_{objective}")
        assert _main(["--input_path", str(data_dir), "--output_dir", str(out), "--objective", objective,
                      "--alpha", "10", "--unobserved_weight", "0.05", "--no_batch_pred", *FAST]) == 0
        outs.append(out)
    return outs


CAP = 1.0  # write_dataset's rating cap (metadata.json "rating" block)


def _fold_in_row(items, ratings, objective, w0=0.0, alpha=0.0):
    """The dense ``(target, weights)`` row (1 × NITEMS) that :func:`numpy_fold_in` solves."""
    target, weights = np.zeros((1, NITEMS)), np.full((1, NITEMS), 1.0 if objective == "implicit" else w0)
    for j, r in zip(items, ratings):
        if objective == "implicit":
            weights[0, j], target[0, j] = 1.0 + alpha * r, float(r > 0)
        else:
            weights[0, j], target[0, j] = w0 + 1.0, r
    return target, weights


def _check_fold_in(r, v, given_items, merged, objective, w0=0.0, alpha=0.0):
    """The SavedModel's ``fold_in`` answer ``r`` against the float64 closed form for the
    ``merged`` (distinct, clipped) ratings: the embedding within (X) for a float64 solve stored
    in float32, the scores within that error times ‖v_j‖ plus γ_k of the float32 dot product,
    the list a correct top-k under those bounds (tests/tolerances.py)."""
    items, ratings = [j for j, _ in merged], [x for _, x in merged]
    want = numpy_fold_in(v, items, ratings, objective, LAM, w0=w0, alpha=alpha)
    target, weights = _fold_in_row(items, ratings, objective, w0, alpha)
    tol = solve_tolerance(v, target, weights, LAM, np.float64, output_dtype=np.float32)
    emb = r["embedding"].numpy()
    assert np.all(np.isfinite(emb)), emb
    assert_rows_within(emb, want, tol, "fold_in embedding")
    n = int(r["count"].numpy())
    kk = r["scores"].shape[0]
    ids = np.full((1, kk), -1)
    ids[0, :n] = [ITEMS.index(c.decode()) for c in r["content_ids"].numpy()[:n]]
    scores = np.full((1, kk), -np.inf)
    scores[0, :n] = r["scores"].numpy()[:n]
    assert np.all(np.isfinite(scores[0, :n])), scores
    seen = np.isin(np.arange(NITEMS), list(given_items))[None, :]
    assert_topk_consistent(ids, scores, want[None, :] @ v.T.astype(np.float64),
                           dot_tolerance(want[None, :], v, np.float32, q_err=tol), seen, kk)


@pytest.mark.parametrize("objective", ["implicit", "wals"])
@pytest.mark.parametrize("given,merged", [
    ([(0, 1e8), (3, 0.5)], [(0, CAP), (3, 0.5)]),
    ([(0, 1e30), (3, 0.5)], [(0, CAP), (3, 0.5)]),
    ([(0, 3.4e38), (0, 3.4e38), (4, 0.25)], [(0, CAP), (4, 0.25)]),  # the float32 sum overflows
    ([(0, 0.0), (3, 0.5)], [(0, 0.0), (3, 0.5)]),
    ([(1, 0.7), (6, 0.2), (1, 0.2)], [(1, 0.9), (6, 0.2)]),  # an ordinary request
])
def test_fold_in_extreme_ratings_equal_float64_closed_form(exported, objective, given, merged):
    import tensorflow as tf

    out = exported[0 if objective == "implicit" else 1]
    m = tf.saved_model.load(latest_export(str(out)))
    r = m.signatures["fold_in"](content_ids=tf.constant([[ITEMS[j] for j, _ in given]]),
                                ratings=tf.constant([[x for _, x in given]], tf.float32), k=tf.constant([9]))
    r = {key: val[0] for key, val in r.items()}  # the one instance
    v = np.load(out / "col_factors.npy")
    # the oracle gets exactly the model's input: the float32 ratings, summed in float64, clipped
    exact = [(j, min(sum(float(np.float32(x)) for i, x in given if i == j), CAP)) for j, _ in merged]
    assert np.allclose([x for _, x in exact], [x for _, x in merged], rtol=2**-23, atol=0)
    _check_fold_in(r, v, {j for j, _ in merged}, exact, objective, w0=0.05, alpha=10.0)
    clipped = sum(1 for (j, x) in merged if x == CAP and sum(y for i, y in given if i == j) > CAP)
    assert int(r["clipped_ratings"].numpy()) == clipped


@pytest.mark.parametrize("objective", ["implicit", "wals"])
@pytest.mark.parametrize("bad,match", [
    (-0.5, "negative"), (float("nan"), "NaN"), (float("inf"), "NaN/inf"), (-float("inf"), "NaN/inf"),
])
def test_fold_in_refuses_negative_and_non_finite_ratings(exported, objective, bad, match):
    import tensorflow as tf

    m = tf.saved_model.load(latest_export(str(exported[0 if objective == "implicit" else 1])))
    with pytest.raises(tf.errors.InvalidArgumentError, match=match):
        m.signatures["fold_in"](content_ids=tf.constant([[ITEMS[0], ITEMS[1]]]),
                                ratings=tf.constant([[0.5, bad]], tf.float32), k=tf.constant([3]))


def test_fold_in_cap_without_a_rating_block_is_the_largest_training_rating(tmp_path):
    import tensorflow as tf

    d = _dense()
    root = write_dataset(tmp_path / "prep", d, USERS, ITEMS, rating_cap=None)
    out = tmp_path / "m"
    assert _main(["--input_path", str(root), "--output_dir", str(out), "--no_batch_pred", *FAST]) == 0
    # no arithmetic: the largest stored (float32) rating, and JSON round-trips a double exactly
    assert json.loads((out / "training_summary.json").read_text())["data"]["rating_cap"] == d.max()
    m = tf.saved_model.load(latest_export(str(out)))
    r = m.signatures["fold_in"](content_ids=tf.constant([[ITEMS[2]]]), ratings=tf.constant([[1e8]]), k=tf.constant([3]))
    r = {key: val[0] for key, val in r.items()}  # the one instance
    _check_fold_in(r, np.load(out / "col_factors.npy"), {2}, [(2, float(np.float32(d.max())))],
                   "implicit", alpha=10.0)


# --------------------------------------------------------------------------- 4. flags and files
@pytest.mark.parametrize("flag,value", [
    ("--regularization", "nan"), ("--regularization", "inf"), ("--regularization", "-1"),
    ("--alpha", "inf"), ("--alpha", "nan"), ("--alpha", "-1"),
    ("--epsilon", "0"), ("--epsilon", "nan"), ("--unobserved_weight", "nan"),
    ("--unobserved_weight", "-0.1"), ("--col_weight_factor", "inf"), ("--col_weight_exp", "nan"),
    ("--num_epochs", "-1"), ("--batch_size", "0"), ("--eval_k", "0"), ("--topk", "0"),
    ("--n_embeds", "0"), ("--cg_steps", "0"), ("--eval_every", "-1"), ("--seed", "-1"),
    ("--early_stopping_patience", "0"), ("--num_epochs", "abc"), ("--alpha", "1e999"),
])
def test_bad_numeric_flag_is_one_line_and_exit_2_before_any_work(flag, value, tmp_path, capsys):
    # the input path does not exist: the flag must be refused before anything is read
    rc = _main(["--input_path", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path / "o"),
                flag, value])
    err = capsys.readouterr().err
    assert rc == 2
    assert len(err.strip().splitlines()) == 1, err
    assert flag in err and "metadata.json" not in err
    assert not (tmp_path / "o").exists()


def test_topk_larger_than_the_catalogue_is_clamped(data_dir, tmp_path, monkeypatch, caplog):
    import logging

    from trainer import recommend

    asked = []
    real = recommend.top_k

    def spy(queries, targets, N, *a, **kw):
        asked.append(N)
        return real(queries, targets, N, *a, **kw)

    monkeypatch.setattr(recommend, "top_k", spy)
    out = tmp_path / "m"
    with caplog.at_level(logging.INFO, logger="trainer"):
        assert _main(["--input_path", str(data_dir), "--output_dir", str(out), "--topk", "2000000",
                      "--predict_users_for_items", "--no_export", *FAST]) == 0
    assert asked and max(asked) <= max(NITEMS, NUSERS), asked  # no N-sized buffers
    assert "--topk 2000000" in caplog.text and "clamped" in caplog.text
    u = np.load(out / "row_factors.npy").astype(np.float64)
    v = np.load(out / "col_factors.npy").astype(np.float64)
    rows = _parse_tab_lines(out / "batch_pred.txt")
    ref = numpy_topk(u @ v.T, _dense() != 0, NITEMS)
    assert rows[0][1:] == [ITEMS[j] for j in ref[0]]  # everything unseen, ranked


def test_eval_k_larger_than_the_catalogue_is_refused(data_dir, tmp_path, capsys):
    root = write_dataset(tmp_path / "split", _dense(), USERS, ITEMS)
    test = np.zeros_like(_dense())
    test[0, np.flatnonzero(_dense()[0] == 0)[:1]] = 0.4
    write_test_split(root, test)
    assert _main(["--input_path", str(root), "--output_dir", str(tmp_path / "o"), "--eval_k", "2000000",
                  *FAST]) == 2
    assert "--eval_k" in _one_error_line(capsys.readouterr().err)


def _corrupt(kind: str, root: pathlib.Path) -> None:
    meta_path = root / "metadata.json"
    meta = json.loads(meta_path.read_text())
    if kind == "metadata.json is a directory":
        meta_path.unlink()
        meta_path.mkdir()
    elif kind == "vocabulary is a directory":
        vocab = root / meta["user_vocabulary"]
        vocab.unlink()
        vocab.mkdir()
    elif kind == "shard is a directory":
        shard = root / meta["items_for_user"][0]
        shard.unlink()
        shard.mkdir()
    elif kind == "median_duration Infinity":
        meta_path.write_text(meta_path.read_text().replace('"median_duration": 1000.0', '"median_duration": Infinity'))
    elif kind == "rating cap NaN":
        meta_path.write_text(meta_path.read_text().replace('"cap": 1.0', '"cap": NaN'))
    elif kind == "rating cap negative":
        meta["rating"]["cap"] = -1.0
        meta_path.write_text(json.dumps(meta))
    elif kind == "nusers does not match the vocabulary":
        meta["nusers"] = NUSERS + 1
        meta_path.write_text(json.dumps(meta))
    elif kind == "vocabulary not UTF-8":
        (root / meta["item_vocabulary"]).write_bytes(b"\xff\xfe\n" * NITEMS)
    else:
        raise AssertionError(kind)


@pytest.mark.parametrize("kind,match", [
    ("metadata.json is a directory", "directory"),
    ("vocabulary is a directory", "directory"),
    ("shard is a directory", "directory"),
    ("median_duration Infinity", "Infinity"),
    ("rating cap NaN", "NaN"),
    ("rating cap negative", "cap"),
    ("nusers does not match the vocabulary", "metadata says"),
    ("vocabulary not UTF-8", "UTF-8"),
])
def test_bad_input_files_are_one_line_and_exit_2(kind, match, tmp_path, capsys):
    root = write_dataset(tmp_path / "prep", _dense(), USERS, ITEMS)
    _corrupt(kind, root)
    rc = _main(["--input_path", str(root), "--output_dir", str(tmp_path / "o"), *FAST])
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 2 and match in line, line


@pytest.fixture(scope="module")
def checkpointed(data_dir, tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("ckpt")
    assert _main(["--input_path", str(data_dir), "--output_dir", str(out), "--no_export", "--no_batch_pred",
                  *FAST]) == 0
    return out


def _break_checkpoint(kind: str, ckpt: pathlib.Path) -> None:
    state = json.loads((ckpt / "state.json").read_text())
    npz = ckpt / state["factors"]
    if kind == "garbage factors":
        npz.write_bytes(b"garbage")
    elif kind == "truncated state.json":
        (ckpt / "state.json").write_text('{"sweeps')
    elif kind == "missing factors":
        npz.unlink()
    elif kind == "factors name escapes the dir":
        state["factors"] = "../../../../etc/passwd"
        (ckpt / "state.json").write_text(json.dumps(state))
    elif kind == "wrong factor shape":
        np.savez(npz, user_factors=np.zeros((3, K), np.float32), item_factors=np.zeros((NITEMS, K), np.float32))
    elif kind == "NaN factors":
        with np.load(npz) as z:
            u, v = z["user_factors"].copy(), z["item_factors"]
        u[0, 0] = np.nan
        np.savez(npz, user_factors=u, item_factors=v)
    elif kind == "state.json is a list":
        (ckpt / "state.json").write_text("[1, 2]")
    elif kind == "state.json is a directory":
        (ckpt / "state.json").unlink()
        (ckpt / "state.json").mkdir()
    else:
        raise AssertionError(kind)


@pytest.mark.parametrize("kind", [
    "garbage factors", "truncated state.json", "missing factors", "factors name escapes the dir",
    "wrong factor shape", "NaN factors", "state.json is a list", "state.json is a directory",
])
def test_corrupt_checkpoint_with_resume_is_one_line_and_exit_2(kind, checkpointed, data_dir, tmp_path, capsys):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(checkpointed, out)
    _break_checkpoint(kind, out / "checkpoint")
    rc = _main(["--input_path", str(data_dir), "--output_dir", str(out), "--resume", "--no_export",
                "--no_batch_pred", *FAST, "--num_epochs", "3"])
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 2 and "checkpoint" in line, line
    # without --resume the same dir trains from scratch (the broken checkpoint is replaced)
    assert _main(["--input_path", str(data_dir), "--output_dir", str(out), "--no_export", "--no_batch_pred",
                  *FAST]) == 0


@pytest.mark.parametrize("version", [None, 1, 3, "2"])  # None: an older trainer's (no field)
def test_checkpoint_of_another_format_version_is_refused_in_one_line(version, checkpointed, data_dir,
                                                                     tmp_path, capsys):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(checkpointed, out)
    state_file = out / "checkpoint" / "state.json"
    state = json.loads(state_file.read_text())
    assert state["version"] == 2
    if version is None:
        del state["version"]
    else:
        state["version"] = version
    state_file.write_text(json.dumps(state))
    rc = _main(["--input_path", str(data_dir), "--output_dir", str(out), "--resume", "--no_export",
                "--no_batch_pred", *FAST, "--num_epochs", "3"])
    line = _one_error_line(capsys.readouterr().err)
    shown = repr(1 if version is None else version)
    assert rc == 2 and f"format version {shown}" in line and "reads version 2" in line, line
    assert "run without --resume" in line


@pytest.mark.parametrize("kind", ["evaluation state a list", "evaluations not a list", "best factors garbage",
                                  "best factors NaN", "best factors name escapes the dir"])
def test_corrupt_early_stopping_state_with_resume_is_one_line_and_exit_2(kind, tmp_path, capsys):
    d = _dense()
    test = np.zeros_like(d)
    for i in range(NUSERS):  # one unseen item held out for every user that has one
        free = np.flatnonzero(d[i] == 0)
        if free.size and d[i].any():
            test[i, free[0]] = 0.5
    root = write_dataset(tmp_path / "split", d, USERS, ITEMS)
    write_test_split(root, test)
    out = tmp_path / "es"
    argv = ["--input_path", str(root), "--output_dir", str(out), "--early_stopping_metric", "ndcg",
            "--eval_k", "3", "--no_export", "--no_batch_pred", *FAST]
    assert _main(argv) == 0
    ckpt = out / "checkpoint"
    state = json.loads((ckpt / "state.json").read_text())
    best = ckpt / state["evaluation"]["best"]["factors"]
    if kind == "evaluation state a list":
        state["evaluation"] = []
        (ckpt / "state.json").write_text(json.dumps(state))
    elif kind == "evaluations not a list":
        state["evaluation"]["evaluations"] = {"sweep": 1}
        (ckpt / "state.json").write_text(json.dumps(state))
    elif kind == "best factors name escapes the dir":
        state["evaluation"]["best"]["factors"] = "../factors-00001.npz"
        (ckpt / "state.json").write_text(json.dumps(state))
    elif kind == "best factors garbage":
        best.write_bytes(b"\x00" * 10)
    else:
        with np.load(best) as z:
            u, v = z["user_factors"].copy(), z["item_factors"]
        u[1, 1] = np.inf
        np.savez(best, user_factors=u, item_factors=v)
    capsys.readouterr()
    assert _main([*argv, "--resume"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "--resume" in line and "checkpoint" in line, line
