"""A Vertex AI hyperparameter-tuning trial (``python -m trainer.hypertune --hypertune_metric ...``):
the metric file it writes, and that the value is the validation metric of the factors it saved.

Oracles independent of the trainer: the pipeline's own held-out rule
(``preprocess.split.held_out_flags``, seed 1, fraction 0.2, on the raw IDs) re-derives the
validation carve-out, and a plain NumPy NDCG@k/recall@k recomputes the metric from the saved
``row_factors.npy``/``col_factors.npy``. The ``cloudml-hypertune`` format (one JSON object a
line: ``timestamp`` number, ``trial``, the tag and ``global_step`` as strings) is checked key by
key.
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from tests.trainer_fixtures import REPO, taste_ratings, write_dataset, write_test_split
from trainer import hypertune, task

NUSERS, NITEMS, GROUPS, K = 120, 50, 3, 5
USERS = [f"visitor:{(i * 7919) % 100003}" for i in range(NUSERS)]  # raw IDs unlike dense IDs
ITEMS = [f"/section-{j % GROUPS}/article-{j * 31 + 5}" for j in range(NITEMS)]
TRIAL = ["--num_epochs", "3", "--n_embeds", "6", "--regularization", "2.5", "--alpha", "4",
         "--eval_k", str(K), "--batch_size", "32", "--no_progress", "--seed", "1"]


def _taste_data() -> tuple[np.ndarray, np.ndarray]:
    """Training and test matrices with group structure (so the metric is not noise)."""
    rng = np.random.default_rng(5)
    ratings = taste_ratings(NUSERS, NITEMS, GROUPS, rng)
    test = np.zeros_like(ratings)
    for i in range(NUSERS):
        cells = np.flatnonzero(ratings[i])
        if cells.size >= 3:
            j = rng.choice(cells)
            test[i, j], ratings[i, j] = ratings[i, j], 0.0
    return ratings, test


def _oracle_split(train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fit, validation) by the pipeline's held-out rule (seed 1, fraction 0.2, raw IDs)."""
    from preprocess.split import held_out_flags

    val = np.zeros_like(train)
    for i in range(NUSERS):
        cells = np.flatnonzero(train[i])
        flags = np.asarray(held_out_flags(USERS[i], [ITEMS[j] for j in cells], 0.2, 1), dtype=bool)
        val[i, cells[flags]] = train[i, cells[flags]]
    return np.where(val > 0, 0.0, train), val


def _numpy_metrics(u: np.ndarray, v: np.ndarray, fit: np.ndarray, val: np.ndarray, k: int) -> dict:
    """Plain NumPy NDCG@k and recall@k over the users with validation cells (fit items
    excluded from the lists)."""
    scores = u.astype(np.float64) @ v.astype(np.float64).T
    scores[fit > 0] = -np.inf
    ndcg, recall = [], []
    for i in np.flatnonzero((val > 0).any(axis=1)):
        top = np.argsort(-scores[i], kind="stable")[:k]
        n = int((val[i] > 0).sum())
        dcg = sum(1.0 / np.log2(r + 2) for r, j in enumerate(top) if val[i, j] > 0)
        idcg = sum(1.0 / np.log2(r + 2) for r in range(min(k, n)))
        ndcg.append(dcg / idcg)
        recall.append(sum(val[i, j] > 0 for j in top) / n)
    return {"ndcg": float(np.mean(ndcg)), "recall": float(np.mean(recall))}


def _agrees(reported: str, expected: float) -> bool:
    return abs(float(reported) - expected) <= 1e-6 * max(1.0, abs(expected))


@pytest.fixture(scope="module")
def matrices() -> tuple[np.ndarray, np.ndarray]:
    return _taste_data()


@pytest.fixture()
def data_dir(tmp_path, matrices) -> pathlib.Path:
    train, test = matrices
    root = write_dataset(tmp_path / "prep", train, USERS, ITEMS, nshards=2)
    write_test_split(root, test)
    return root


def _trial(args: list[str], module: str = "trainer.hypertune", **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items()
             if k not in (hypertune.MODEL_DIR_ENV, hypertune.TRIAL_ID_ENV, hypertune.METRIC_FILE_ENV)}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env={**clean, "CUDA_VISIBLE_DEVICES": "", **env})


# --------------------------------------------------------------------------- the metric file
def test_report_writes_the_cloudml_hypertune_format(tmp_path, monkeypatch):
    path = tmp_path / "hp" / "output.metrics"  # the parent dir is created
    monkeypatch.setenv(hypertune.METRIC_FILE_ENV, str(path))
    monkeypatch.delenv(hypertune.TRIAL_ID_ENV, raising=False)
    hypertune.report("ndcg", 0.25, 7)
    monkeypatch.setenv(hypertune.TRIAL_ID_ENV, "12")
    hypertune.report("ndcg", np.float32(0.5))
    lines = path.read_text().splitlines()
    assert len(lines) == 2  # appended
    first, second = (json.loads(x) for x in lines)
    assert list(first) == sorted(first) and set(first) == {"timestamp", "trial", "ndcg", "global_step"}
    assert isinstance(first["timestamp"], float) and abs(first["timestamp"] - __import__("time").time()) < 60
    assert (first["trial"], first["ndcg"], first["global_step"]) == ("0", "0.25", "7")
    assert (second["trial"], second["ndcg"], second["global_step"]) == ("12", "0.5", "0")


def test_default_metric_file_is_the_packages():
    assert hypertune.DEFAULT_METRIC_FILE == "/tmp/hypertune/output.metrics"
    assert (hypertune.METRIC_FILE_ENV, hypertune.TRIAL_ID_ENV) == ("CLOUD_ML_HP_METRIC_FILE", "CLOUD_ML_TRIAL_ID")


# --------------------------------------------------------------------------- a trial
@pytest.mark.parametrize("metric", ["ndcg", "recall"])
def test_trial_reports_the_validation_metric_of_its_factors(tmp_path, data_dir, matrices, metric):
    """Vertex AI's way: the trial's parameters appended as --flag=value, AIP_MODEL_DIR per
    trial. The test records are overwritten with garbage first: a plain run fails on them, a
    trial never reads them (metadata.json still names them)."""
    train, _ = matrices
    (shard,) = data_dir.glob("test_items_for_user-*")
    shard.write_bytes(b"not a TFRecord file")
    if metric == "ndcg":  # the control: the garbage is fatal to a run that reads it
        bad = _trial(["--input_path", str(data_dir), "--output_dir", str(tmp_path / "plain"), *TRIAL],
                     module="trainer.task")
        assert bad.returncode == 2 and "test_items_for_user" in bad.stderr, bad.stderr
    metric_file = tmp_path / "hypertune" / "output.metrics"
    model_dir = tmp_path / "base" / "7" / "model"
    out = tmp_path / "out"
    p = _trial(["--input_path", str(data_dir), "--output_dir", str(out), "--hypertune_metric", metric,
                *TRIAL, "--n_embeds=8", "--regularization=0.7"],  # as Vertex appends them
               CLOUD_ML_HP_METRIC_FILE=str(metric_file), CLOUD_ML_TRIAL_ID="7",
               AIP_MODEL_DIR=str(model_dir) + "/")
    assert p.returncode == 0, p.stderr
    assert not out.exists(), "a trial writes to $AIP_MODEL_DIR, not --output_dir"
    (line,) = metric_file.read_text().splitlines()
    rec = json.loads(line)
    assert set(rec) == {"timestamp", "trial", metric, "global_step"}
    assert (rec["trial"], rec["global_step"]) == ("7", "3")
    u = np.load(model_dir / "row_factors.npy")
    v = np.load(model_dir / "col_factors.npy")
    assert u.shape == (NUSERS, 8) and v.shape == (NITEMS, 8)  # the appended --n_embeds=8 won
    fit, val = _oracle_split(train)
    assert np.count_nonzero(val) > 20 and np.count_nonzero(fit) > 0
    expected = _numpy_metrics(u, v, fit, val, K)[metric]
    assert 0.0 < expected < 1.0
    assert _agrees(rec[metric], expected), (rec[metric], expected)
    assert not _agrees(str(float(rec[metric]) + 1e-4), expected)  # the check can fail
    summary = json.loads((model_dir / "hypertune.json").read_text())
    assert summary["value"] == float(rec[metric]) and summary["metric"] == f"{metric}@{K}"
    assert summary["hyperparameters"]["factors"] == 8 and summary["hyperparameters"]["regularization"] == 0.7
    assert summary["validation"]["validation_interactions"] == np.count_nonzero(val)
    assert summary["validation"]["fit_interactions"] == np.count_nonzero(fit)
    names = {x.name for x in model_dir.iterdir()}
    assert {"col_factors.npy", "hypertune.json", "row_factors.npy"} <= names
    assert not names & {"batch_pred.txt", "export", "metrics.json"}  # no deployable outputs


def test_trial_without_aip_model_dir_writes_to_output_dir(tmp_path, data_dir):
    metric_file = tmp_path / "m" / "output.metrics"
    out = tmp_path / "out"
    p = _trial(["--input_path", str(data_dir), "--output_dir", str(out), "--hypertune_metric", "map", *TRIAL],
               CLOUD_ML_HP_METRIC_FILE=str(metric_file))
    assert p.returncode == 0, p.stderr
    (line,) = metric_file.read_text().splitlines()
    rec = json.loads(line)
    assert rec["trial"] == "0" and float(rec["map"]) == json.loads((out / "hypertune.json").read_text())["value"]
    assert not (out / "batch_pred.txt").exists() and not (out / "export").exists()


# --------------------------------------------------------------------------- refused flags
@pytest.mark.parametrize("extra,msg", [
    (["--hypertune_metric", "auc"], "invalid choice: 'auc'"),
    (["--hypertune_metric", "ndcg", "--resume"], "--resume is not available in a tuning trial"),
    (["--n_embeds=0"], "--n_embeds must be >= 1"),  # trainer.task's checks apply
    (["--regularization=-1"], "--regularization must be > 0"),
    (["--hypertune_metric", "ndcg", "--early_stopping_metric", "ndcg"], "--early_stopping_metric is not available"),
    (["--hypertune_metric", "ndcg", "--eval_every", "1"], "--eval_every is not available"),
])
def test_bad_trial_flags_exit_2_in_one_line(capsys, extra, msg):
    with pytest.raises(SystemExit) as stop:
        hypertune.parse_args(["--input_path", "a", "--output_dir", "b", *extra])
    assert stop.value.code == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert msg in line


@pytest.mark.parametrize("module", ["task", "tune"])
def test_trainer_task_and_tune_do_not_take_the_trial_flag(capsys, module):
    from trainer import tune

    parse = {"task": task.parse_args, "tune": tune.parse_args}[module]
    with pytest.raises(SystemExit) as stop:
        parse(["--input_path", "a", "--output_dir", "b", "--hypertune_metric", "ndcg"])
    assert stop.value.code == 2 and "unrecognized arguments" in capsys.readouterr().err


def test_trial_parser_takes_every_trainer_flag_and_the_default_metric():
    ns = hypertune.parse_args(["--input_path", "a", "--output_dir", "b", "--n_embeds=12", "--alpha=3.5e1"])
    assert (ns.hypertune_metric, ns.n_embeds, ns.alpha) == ("ndcg", 12, 35.0)
    assert vars(task.parse_args(["--input_path", "a", "--output_dir", "b"])).keys() | {"hypertune_metric"} == \
        vars(ns).keys()
