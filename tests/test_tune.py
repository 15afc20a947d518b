"""``python -m trainer.tune``: the validation carve-out against the pipeline's own split rule,
``tuning.json`` against an independent argmax and a NumPy re-computation of the chosen trial's
validation metric, the final model against a plain ``trainer.task`` run, determinism, and the
command line's errors."""
from __future__ import annotations

import importlib.util
import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.trainer_fixtures import REPO, cpu_only, taste_ratings, write_dataset, write_test_split
from trainer import task, tune

NUSERS, NITEMS, GROUPS = 150, 60, 3
SEED = 3
BUDGET = ["--trials", "5", "--max_sweeps", "4", "--batch_size", "64", "--no_progress",
          "--no_export", "--seed", str(SEED)]
USERS = [f"visitor:{(i * 7919) % 100003}" for i in range(NUSERS)]  # raw IDs unlike dense IDs
ITEMS = [f"/section-{j % GROUPS}/article-{j * 31 + 5}" for j in range(NITEMS)]


def _taste_data() -> tuple[np.ndarray, np.ndarray]:
    """Training and test matrices (users × items, 0 = none) with taste structure: each user
    belongs to one of ``GROUPS`` groups and mostly reads that group's items; the test cells
    are a random fifth of each user's cells (users with 2+ cells)."""
    rng = np.random.default_rng(0)
    ratings = taste_ratings(NUSERS, NITEMS, GROUPS, rng)
    test = np.zeros_like(ratings)
    for i in range(NUSERS):
        cells = np.flatnonzero(ratings[i])
        if cells.size >= 2:
            pick = rng.choice(cells, size=max(1, cells.size // 5), replace=False)
            test[i, pick], ratings[i, pick] = ratings[i, pick], 0.0
    return ratings, test


@pytest.fixture(scope="module")
def matrices() -> tuple[np.ndarray, np.ndarray]:
    return _taste_data()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, matrices) -> pathlib.Path:
    train, test = matrices
    root = write_dataset(tmp_path_factory.mktemp("prep"), train, USERS, ITEMS, nshards=2)
    write_test_split(root, test)
    return root


@pytest.fixture(scope="module")
def tuned(data_dir, tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("tuned")
    with cpu_only():
        rc = tune.main(["--input_path", str(data_dir), "--output_dir", str(out), *BUDGET])
    assert rc == 0
    return out


def _tuning(out: pathlib.Path) -> dict:
    return json.loads((out / tune.TUNING).read_text())


def _oracle_split(train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The validation cells by the pipeline's own rule (preprocess.split.held_out_flags, seed
    1, fraction 0.2, per user on the raw IDs): (fit, validation) dense matrices."""
    from preprocess.split import held_out_flags

    val = np.zeros_like(train)
    for i in range(NUSERS):
        cells = np.flatnonzero(train[i])
        flags = held_out_flags(USERS[i], [ITEMS[j] for j in cells], 0.2, 1)
        val[i, cells[np.asarray(flags, dtype=bool)]] = train[i, cells[np.asarray(flags, dtype=bool)]]
    return np.where(val > 0, 0.0, train), val


def _numpy_ndcg(u: np.ndarray, v: np.ndarray, fit: np.ndarray, val: np.ndarray, k: int) -> float:
    scores = u.astype(np.float64) @ v.astype(np.float64).T
    scores[fit > 0] = -np.inf
    values = []
    for i in np.flatnonzero((val > 0).any(axis=1)):
        top = np.argsort(-scores[i], kind="stable")[:k]
        dcg = sum(1.0 / np.log2(r + 2) for r, j in enumerate(top) if val[i, j] > 0)
        idcg = sum(1.0 / np.log2(r + 2) for r in range(min(k, int((val[i] > 0).sum()))))
        values.append(dcg / idcg)
    return float(np.mean(values))


# --------------------------------------------------------------------------- carve-out
def test_carve_out_is_the_pipeline_rule_on_training_records_only(data_dir, matrices):
    from trainer.data import load_training_data
    from trainer.metadata import load_metadata

    train, test = matrices
    r = load_training_data(load_metadata(str(data_dir))).user_items
    c = tune.carve(r, USERS, ITEMS, 0.2, max_users=10_000)
    fit, val = c.fit.to_dense(), c.val.to_dense()
    want_fit, want_val = _oracle_split(train)
    assert np.count_nonzero(want_val) > 0
    np.testing.assert_array_equal(val, want_val)
    np.testing.assert_array_equal(fit, want_fit)
    assert not ((fit > 0) & (val > 0)).any()  # disjoint
    np.testing.assert_array_equal(fit + val, train)  # together: the training records
    assert not ((val > 0) & (test > 0)).any()  # no held-out test cell
    # every user with training data keeps at least one cell to fit
    assert ((fit > 0).any(axis=1) | ~(train > 0).any(axis=1)).all()


def test_scored_users_cap_is_a_fixed_subset(data_dir):
    from trainer.data import load_training_data
    from trainer.evaluation import splitmix64
    from trainer.metadata import load_metadata

    r = load_training_data(load_metadata(str(data_dir))).user_items
    full = tune.carve(r, USERS, ITEMS, 0.2, max_users=10_000).val
    capped = tune.carve(r, USERS, ITEMS, 0.2, max_users=20).val
    rows = np.flatnonzero(full.row_lengths() > 0)
    h = [int(splitmix64(np.uint64((7 << 32) + int(u)))) for u in rows]
    want = set(rows[np.argsort(h, kind="stable")[:20]].tolist())
    assert set(np.flatnonzero(capped.row_lengths() > 0).tolist()) == want
    np.testing.assert_array_equal(capped.to_dense()[sorted(want)], full.to_dense()[sorted(want)])


# --------------------------------------------------------------------------- tuning.json
def test_tuning_json_lists_every_trial_and_chooses_the_argmax(tuned):
    d = _tuning(tuned)
    assert d["seed"] == SEED and d["metric"] == "ndcg@10"
    assert len(d["trials"]) == 5 and [t["trial"] for t in d["trials"]] == list(range(5))
    assert d["search_space"]["objectives"] == ["implicit", "wals"]
    assert d["trials"][0]["hyperparameters"] == tune.default_config()
    values = []
    for t in d["trials"]:
        curve = [e["ndcg@10"] for e in t["validation"]]
        assert [e["sweep"] for e in t["validation"]] == list(range(1, len(curve) + 1))
        assert 1 <= len(curve) <= 4 and t["seconds"] > 0
        assert t["value"] == max(curve)
        assert t["best_sweep"] == 1 + curve.index(max(curve))
        values.append(t["value"])
    chosen = d["chosen"]["trial"]
    assert chosen == values.index(max(values))
    assert d["chosen"]["sweeps"] == d["trials"][chosen]["best_sweep"]
    assert d["chosen"]["hyperparameters"] == d["trials"][chosen]["hyperparameters"]


def test_chosen_trial_value_recomputed_with_numpy(tuned, matrices):
    """The chosen trial's validation NDCG@10, recomputed: the model trained on the oracle's fit
    cells, scored by a NumPy NDCG on the oracle's validation cells."""
    from trainer.sparse import CSR
    from trainer.wals import WALSModel

    d = _tuning(tuned)
    ch = d["chosen"]
    fit, val = _oracle_split(matrices[0])
    rows, cols = np.nonzero(fit)
    m = CSR.from_coo(rows, cols, fit[rows, cols], fit.shape)
    with cpu_only():
        model = WALSModel(**ch["hyperparameters"], iterations=ch["sweeps"], random_state=SEED,
                          batch_size=64).fit(m)
    got = _numpy_ndcg(model.user_factors, model.item_factors, fit, val, 10)
    assert got == pytest.approx(ch["value"], abs=1e-9)


def test_outputs_are_trainer_task_outputs_plus_tuning(tuned):
    for name in (task.ROW_FACTORS, task.COL_FACTORS, task.SUMMARY, task.METRICS, "batch_pred.txt",
                 tune.TUNING):
        assert (tuned / name).is_file(), name
    metrics = json.loads((tuned / task.METRICS).read_text())
    assert "popularity" in metrics["baselines"] and metrics["metrics"]["ndcg@10"] > 0
    summary = json.loads((tuned / task.SUMMARY).read_text())
    ch = _tuning(tuned)["chosen"]
    assert summary["hyperparameters"]["factors"] == ch["hyperparameters"]["factors"]
    assert summary["hyperparameters"]["iterations"] == ch["sweeps"]
    # The plot needs matplotlib (the bench extra, not a trainer dependency): absent, no plot.
    if importlib.util.find_spec("matplotlib") is None:
        assert not (tuned / tune.PLOT).exists()
    else:
        assert (tuned / tune.PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_final_model_equals_a_plain_trainer_task_run(tuned, data_dir, tmp_path):
    ch = _tuning(tuned)["chosen"]
    out = tmp_path / "plain"
    flags = ch["task_flags"] + ["--seed", str(SEED), "--batch_size", "64", "--no_progress", "--no_export"]
    with cpu_only():
        assert task.main(["--input_path", str(data_dir), "--output_dir", str(out), *flags]) == 0
    for name in (task.ROW_FACTORS, task.COL_FACTORS):
        a, b = np.load(tuned / name), np.load(out / name)
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes(), name  # bit for bit
    assert (tuned / "batch_pred.txt").read_text() == (out / "batch_pred.txt").read_text()
    assert json.loads((tuned / task.METRICS).read_text())["metrics"] == \
        json.loads((out / task.METRICS).read_text())["metrics"]


# --------------------------------------------------------------------------- determinism
def _trials_without_time(d: dict) -> list[dict]:
    return [{k: v for k, v in t.items() if "seconds" not in k} for t in d["trials"]]


def test_deterministic_given_the_seed_and_blind_to_test_records(tuned, data_dir, tmp_path):
    """Same seed: the same trials, even on a copy of the input without its test records (so
    the search never reads them); another seed: another search."""
    blind = tmp_path / "blind"
    shutil.copytree(data_dir, blind)
    meta = json.loads((blind / "metadata.json").read_text())
    for name in meta.pop("test_items_for_user"):
        (blind / name).unlink()
    meta.pop("split")
    (blind / "metadata.json").write_text(json.dumps(meta))
    with cpu_only():
        assert tune.main(["--input_path", str(blind), "--output_dir", str(tmp_path / "a"), *BUDGET]) == 0
        other = [f if f != str(SEED) else "4" for f in BUDGET]
        assert tune.main(["--input_path", str(data_dir), "--output_dir", str(tmp_path / "b"), *other]) == 0
    a, ref, b = _tuning(tmp_path / "a"), _tuning(tuned), _tuning(tmp_path / "b")
    assert _trials_without_time(a) == _trials_without_time(ref)
    assert a["chosen"] == ref["chosen"]
    assert not (tmp_path / "a" / task.METRICS).exists()  # no test records: no held-out metrics
    assert _trials_without_time(b) != _trials_without_time(ref)


# --------------------------------------------------------------------------- command line
@pytest.mark.parametrize("flags, message", [
    (["--trials", "0"], "--trials must be >= 1"),
    (["--max_sweeps", "0"], "--max_sweeps must be >= 1"),
    (["--n_embeds", "8"], "--n_embeds is chosen by the search"),
    (["--num_epochs", "3"], "--num_epochs is chosen by the search"),
    (["--metric", "auc"], "invalid choice"),
    (["--validation_fraction", "1.5"], "--validation_fraction must be in (0, 1)"),
    (["--resume"], "--resume is not available"),
    (["--early_stopping_metric", "ndcg"], "--early_stopping_metric is not available"),
    (["--col_weights", "inverse_linear"], "needs --objectives wals"),
    (["--cg_steps", "0"], "cg_steps must be >= 1"),
])
def test_bad_flags_one_line_exit_2(flags, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        tune.main(["--input_path", str(tmp_path), "--output_dir", str(tmp_path / "o"), *flags])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_bad_input_one_line_exit_2(tmp_path, capsys):
    assert tune.main(["--input_path", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1


def test_module_entry_point(tmp_path):
    r = subprocess.run([sys.executable, "-m", "trainer.tune", "--input_path", str(tmp_path),
                        "--output_dir", str(tmp_path / "o"), "--trials", "-1"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "python -m trainer.tune: error: --trials must be >= 1, got -1 (see --help)"]


def test_refuses_a_foreign_output_dir_before_searching(data_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "foreign"
    out.mkdir()
    (out / "notes.txt").write_text("not the trainer's")
    monkeypatch.setattr(tune, "search", lambda *a, **k: pytest.fail("searched"))
    assert tune.main(["--input_path", str(data_dir), "--output_dir", str(out), *BUDGET]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1


def test_plot_skipped_with_a_log_line_without_matplotlib(tuned, tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib → ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    d = _tuning(tuned)
    with caplog.at_level("INFO", logger="trainer.tune"):
        assert tune.plot(str(tmp_path / tune.PLOT), d["trials"], d["chosen"]["trial"], d["metric"]) is False
    assert not (tmp_path / tune.PLOT).exists()
    assert "matplotlib is not installed" in caplog.text
