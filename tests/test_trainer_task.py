"""End to end through ``python -m trainer.task``: files on disk checked against NumPy oracles,
the SavedModel in a fresh process, resume after an interruption, CLI errors."""
from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest



from tests.trainer_fixtures import (
    REPO, cpu_only, dense_weights, numpy_solve_rows, numpy_topk, random_ratings, write_dataset,
)

from trainer import task
from trainer.recommend import read_batch_predictions

NUSERS, NITEMS = 40, 23
W0, LAM, K = 0.05, 0.3, 6
FLAGS = [
    "--num_epochs", "4", "--n_embeds", str(K), "--objective", "wals", "--unobserved_weight", str(W0),
    "--regularization", str(LAM), "--topk", "5", "--batch_size", "16", "--no_progress",
    "--solver", "cholesky",  # exact half-sweeps: the closed-form oracle applies
]


def _dense() -> np.ndarray:
    d = random_ratings(NUSERS, NITEMS, 0.2, 42)
    d[6, :] = 0.0  # a user with no training interactions (e.g. all held out)
    d[:, 4] = 0.0  # an item nobody has
    d[9, :] = 0.3  # a user with every item but 4
    d[9, 4] = 0.0
    return d


USERS = [f"vis:{i * 7919 % 100003}" for i in range(NUSERS)]  # raw IDs unlike dense IDs
ITEMS = [f"/article/{j * 31 + 5}" for j in range(NITEMS)]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> pathlib.Path:
    return write_dataset(tmp_path_factory.mktemp("prep"), _dense(), USERS, ITEMS, nshards=2)


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("train")
    with cpu_only():  # compared bit for bit with a resumed run
        rc = task.main(
            ["--input_path", str(data_dir), "--output_dir", str(out), "--predict_users_for_items", *FLAGS]
        )
    assert rc == 0
    return out


def _factors(out: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    return np.load(out / "row_factors.npy"), np.load(out / "col_factors.npy")


def test_output_files(trained):
    u, v = _factors(trained)
    assert u.dtype == np.float32 and u.shape == (NUSERS, K)
    assert v.dtype == np.float32 and v.shape == (NITEMS, K)
    s = json.loads((trained / "training_summary.json").read_text())
    assert s["hyperparameters"]["factors"] == K and s["hyperparameters"]["iterations"] == 4
    assert s["hyperparameters"]["regularization"] == LAM
    assert s["hyperparameters"]["unobserved_weight"] == W0
    assert [h["sweep"] for h in s["history"]] == [1, 2, 3, 4]
    losses = [h["loss"] for h in s["history"]]
    assert all(b <= a * (1 + 1e-6) for a, b in zip(losses, losses[1:]))
    w = dense_weights(_dense(), W0, np.ones(NUSERS), np.ones(NITEMS))
    unreg = float((w * (_dense() - u.astype(float) @ v.T.astype(float)) ** 2).sum())
    assert s["final"]["rwse"] == pytest.approx(np.sqrt(unreg / w.sum()), rel=1e-5)
    assert s["final"]["loss"] == pytest.approx(
        unreg + LAM * float((u.astype(float) ** 2).sum() + (v.astype(float) ** 2).sum()), rel=1e-5
    )
    events = list((trained / "tensorboard").glob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file"
    import tensorflow as tf

    logged = {}
    for rec in tf.data.TFRecordDataset([str(e) for e in events]).as_numpy_iterator():
        ev = tf.compat.v1.Event.FromString(rec)
        for v in ev.summary.value:
            assert v.metadata.plugin_data.plugin_name == "scalars"
            logged[v.tag, ev.step] = float(tf.make_ndarray(v.tensor))
    for h in s["history"]:
        assert logged["loss", h["sweep"]] == pytest.approx(h["loss"], rel=1e-6)
        assert logged["rwse", h["sweep"]] == pytest.approx(h["rwse"], rel=1e-6)
    assert (trained / "vocab" / "users.txt").read_text().splitlines() == USERS


def test_no_training_loss_skips_the_loss_not_the_training(trained, data_dir, tmp_path):
    """--no_training_loss (WALSModel's calculate_training_loss=False): the same factors, a
    history of sweep numbers and seconds, no loss scalars in TensorBoard."""
    out = tmp_path / "noloss"
    with cpu_only():
        rc = task.main(["--input_path", str(data_dir), "--output_dir", str(out), "--no_training_loss",
                        "--no_export", *FLAGS])
    assert rc == 0
    for a, b in zip(_factors(trained), _factors(out)):
        np.testing.assert_array_equal(a, b)
    s = json.loads((out / "training_summary.json").read_text())
    assert [sorted(h) for h in s["history"]] == [["seconds", "sweep"]] * 4
    assert s["final"] == {"sweep": 4}
    assert (out / "batch_pred.txt").read_text() == (trained / "batch_pred.txt").read_text()
    import tensorflow as tf

    tags = set()
    for e in (out / "tensorboard").glob("events.out.tfevents.*"):
        for rec in tf.data.TFRecordDataset([str(e)]).as_numpy_iterator():
            tags |= {v.tag for v in tf.compat.v1.Event.FromString(rec).summary.value}
    assert tags == {"seconds"}


def test_col_factors_are_the_closed_form_given_row_factors(trained):
    u, v = _factors(trained)
    d = _dense()
    w = dense_weights(d, W0, np.ones(NUSERS), np.ones(NITEMS))
    np.testing.assert_allclose(v, numpy_solve_rows(u, d.T, w.T, LAM), atol=1e-4, rtol=1e-4)
    assert np.all(u[6] == 0) and np.all(v[4] == 0)


def test_batch_predictions_equal_numpy_argsort(trained):
    u, v = _factors(trained)
    d = _dense()
    pred = read_batch_predictions(str(trained / "batch_pred.txt"))
    assert list(pred) == USERS  # one line per user, dense ID order, raw IDs
    ref = numpy_topk(u.astype(np.float64) @ v.T.astype(np.float64), d != 0, 5)
    for i, name in enumerate(USERS):
        want = [] if i == 6 else [ITEMS[j] for j in ref[i]]
        assert pred[name] == want, name
    # user 9 has every item but item 4, which nobody has (zero factor, score 0): only it is left
    assert pred[USERS[9]] == [ITEMS[4]]
    pred_u = read_batch_predictions(str(trained / "batch_pred_users.txt"))
    ref_u = numpy_topk(v.astype(np.float64) @ u.T.astype(np.float64), d.T != 0, 5)
    for j, name in enumerate(ITEMS):
        want = [] if j == 4 else [USERS[i] for i in ref_u[j]]
        assert pred_u[name] == want, name


_SERVE = r"""
import json, sys
import tensorflow as tf
m = tf.saved_model.load(sys.argv[1])
out = {}
ask = json.loads(sys.argv[2])
r = m.signatures["recommend_items"](visitor_ids=tf.constant(ask), k=tf.constant([4] * len(ask)))
out["items"] = {k: v.numpy().tolist() for k, v in r.items()}
ask = json.loads(sys.argv[3])
r = m.signatures["recommend_users"](content_ids=tf.constant(ask), k=tf.constant([3] * len(ask)))
out["users"] = {k: v.numpy().tolist() for k, v in r.items()}
r = m.signatures["fold_in"](content_ids=tf.constant([["%s", "%s", "no-such-item"]]),
                            ratings=tf.constant([[0.5, 1.0, 2.0]]), k=tf.constant([4]))
out["fold"] = {k: v.numpy()[0].tolist() for k, v in r.items()}  # the one instance
try:
    m.signatures["fold_in"](content_ids=tf.constant([["%s"]]), ratings=tf.constant([[float("nan")]]), k=tf.constant([4]))
    out["nan_error"] = None
except tf.errors.InvalidArgumentError as e:
    out["nan_error"] = e.message
try:
    m.signatures["recommend_items"](visitor_ids=tf.constant(["x"]), k=tf.constant([0]))
    out["k0_error"] = None
except tf.errors.InvalidArgumentError as e:
    out["k0_error"] = e.message
def enc(x):
    if isinstance(x, bytes): return x.decode()
    if isinstance(x, list): return [enc(y) for y in x]
    if isinstance(x, dict): return {k: enc(v) for k, v in x.items()}
    return x
print("RESULT" + json.dumps(enc(out)))
""" % (ITEMS[2], ITEMS[7], ITEMS[2])


def test_saved_model_in_fresh_process(trained, tmp_path):
    u, v = _factors(trained)
    u64, v64 = u.astype(np.float64), v.astype(np.float64)
    d = _dense()
    ask_users = [USERS[0], "unknown-visitor", USERS[6], USERS[17]]
    ask_items = [ITEMS[3], ITEMS[4], "unknown-item"]
    # run from an empty directory with only TensorFlow: no project code importable
    env = {k: val for k, val in os.environ.items() if k != "PYTHONPATH"}
    export = json.loads((trained / "training_summary.json").read_text())["outputs"]["export"]
    assert export.startswith("export/") and export.split("/")[1].isdigit()  # export/<version>
    proc = subprocess.run(
        [sys.executable, "-c", _SERVE, str(trained / export), json.dumps(ask_users), json.dumps(ask_items)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT", 1)[1])

    items = out["items"]
    assert items["known"] == [True, False, True, True]
    ref = numpy_topk(u64 @ v64.T, d != 0, 4)
    for row, i in ((0, 0), (3, 17)):
        assert items["count"][row] == len(ref[i])
        assert items["content_ids"][row][: len(ref[i])] == [ITEMS[j] for j in ref[i]]
        np.testing.assert_allclose(items["scores"][row][: len(ref[i])], (u64 @ v64.T)[i, ref[i]], rtol=1e-5, atol=1e-6)
    assert items["count"][1] == 0 and items["content_ids"][1] == [""] * 4  # unknown visitor
    assert items["count"][2] == 0  # known, but no training interactions

    users = out["users"]
    assert users["known"] == [True, True, False]
    ref_u = numpy_topk(v64 @ u64.T, d.T != 0, 3)
    assert users["visitor_ids"][0][: users["count"][0]] == [USERS[i] for i in ref_u[3]]
    assert users["count"][1] == 0 and users["count"][2] == 0  # item with no users; unknown

    fold = out["fold"]
    row = np.zeros((1, NITEMS))
    row[0, [2, 7]] = [0.5, 1.0]
    want_u = numpy_solve_rows(v64, row, dense_weights(row, W0, np.ones(1), np.ones(NITEMS)), LAM)[0]
    np.testing.assert_allclose(fold["embedding"], want_u, atol=1e-4, rtol=1e-4)
    assert fold["unknown_items"] == 1
    ref_f = numpy_topk((want_u @ v64.T)[None, :], row != 0, 4)[0]
    assert fold["content_ids"][: fold["count"]] == [ITEMS[j] for j in ref_f]
    assert fold["clipped_ratings"] == 0  # both ratings within the rating cap (1.0)
    assert "NaN" in out["nan_error"]
    assert "k must be >= 1" in out["k0_error"]


_KILL_ME = r"""
import pathlib, sys, time
from trainer import checkpoint, task
real_save = checkpoint.Checkpointer.save
def save_then_hang(self, state, *args, **kwargs):
    real_save(self, state, *args, **kwargs)
    if state.sweeps_done == 2:
        pathlib.Path(sys.argv[1]).write_text("saved")
        time.sleep(600)  # killed here, in the middle of the run
checkpoint.Checkpointer.save = save_then_hang
sys.exit(task.main(sys.argv[2:]))
"""


def test_resume_after_kill_gives_same_factors(trained, data_dir, tmp_path):
    """SIGKILL the trainer after its sweep-2 checkpoint, then --resume: same factors, same
    loss history and same predictions as the uninterrupted run (CPU is deterministic)."""
    out = tmp_path / "killed"
    marker = tmp_path / "marker"
    env = dict(os.environ, PYTHONPATH=str(REPO), CUDA_VISIBLE_DEVICES="")  # CPU: bit for bit
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILL_ME, str(marker), "--input_path", str(data_dir),
         "--output_dir", str(out), *FLAGS],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "trainer never reached sweep 2"
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "row_factors.npy").exists()
    assert json.loads((out / "checkpoint" / "state.json").read_text())["sweeps_done"] == 2

    with cpu_only():
        rc = task.main(["--input_path", str(data_dir), "--output_dir", str(out), "--resume", "--no_export", *FLAGS])
    assert rc == 0
    u1, v1 = _factors(trained)
    u2, v2 = _factors(out)
    np.testing.assert_array_equal(u1, u2)
    np.testing.assert_array_equal(v1, v2)
    h1 = json.loads((trained / "training_summary.json").read_text())["history"]
    h2 = json.loads((out / "training_summary.json").read_text())["history"]
    assert [h["loss"] for h in h1] == [h["loss"] for h in h2]
    assert (out / "batch_pred.txt").read_text() == (trained / "batch_pred.txt").read_text()
    # without --resume the run starts over; with other hyperparameters a resume is refused
    flags = [f if f != str(LAM) else "0.5" for f in FLAGS]
    rc = task.main(["--input_path", str(data_dir), "--output_dir", str(out), "--resume", *flags])
    assert rc == 2


def test_cli_errors(tmp_path, data_dir, capsys):
    rc = task.main(["--input_path", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path / "o")])
    assert rc == 2
    assert "metadata.json" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        task.main(["--input_path", str(data_dir), "--output_dir", str(tmp_path / "o"), "--n_embeds", "0"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--n_embeds must be >= 1" in err and len(err.strip().splitlines()) == 1  # no usage dump
    with pytest.raises(SystemExit):
        task.main(["--input_path", str(data_dir), "--output_dir", str(tmp_path / "o"), "--regularization", "0"])


def test_module_entry_point_runs_without_beam(tmp_path):
    """``python -m trainer.task --help`` works and the trainer package never imports Beam or
    tf.Transform (it must run in a lean TF image)."""
    code = (
        "import sys, runpy; sys.argv=['trainer.task','--help']\n"
        "try:\n runpy.run_module('trainer.task', run_name='__main__')\n"
        "except SystemExit: pass\n"
        "import trainer.wals, trainer.data, trainer.export, trainer.recommend, trainer.checkpoint\n"
        "import trainer.heldout, trainer.device, trainer.monitor, trainer.flags, trainer.hparams\n"
        "bad=[m for m in sys.modules if m.startswith(('apache_beam','tensorflow_transform'))]\n"
        "print('BAD', bad)"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "--input_path" in proc.stdout and "--n_embeds" in proc.stdout
    assert "BAD []" in proc.stdout
