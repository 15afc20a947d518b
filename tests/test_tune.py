"""``python -m trainer.tune``: the validation carve-out and the K folds against the pipeline's own
split rule and an independent hash, the one-standard-error rule and the Latin-hypercube design
against hand-made tables, ``tuning.json`` against an independent argmax / rule and a NumPy
re-computation of the chosen trial's K-fold validation metric, the final model against a plain
``trainer.task`` run, determinism, and the command line's errors."""
from __future__ import annotations

import importlib.util
import hashlib
import json
import math
import pathlib
import statistics
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.trainer_fixtures import REPO, cpu_only, taste_ratings, write_dataset, write_test_split
from trainer import task, tune

NUSERS, NITEMS, GROUPS = 150, 60, 3
SEED = 3
FOLDS, FINALISTS = 5, 3  # 150 users: --validation_folds auto gives 5 folds
BUDGET = ["--trials", "5", "--max_sweeps", "4", "--batch_size", "64", "--no_progress",
          "--no_export", "--finalists", str(FINALISTS), "--seed", str(SEED)]
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
def _oracle_folds(train: np.ndarray, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """K-fold carve-outs from a hash written here (BLAKE2b-64 of ``"1" 0x1F user 0x1F item``,
    divided by 2⁶⁴): fold f validates a user's cells with hash in [f/K, (f+1)/K), except that
    a user with one cell keeps it and a user with every cell in the fold keeps the largest."""
    out = []
    for f in range(k):
        val = np.zeros_like(train)
        for i in range(NUSERS):
            cells = np.flatnonzero(train[i])
            h = np.array([int.from_bytes(hashlib.blake2b(b"1\x1f" + USERS[i].encode() + b"\x1f"
                                                          + ITEMS[j].encode(), digest_size=8).digest(),
                                         "big") / 2.0**64 for j in cells])
            flags = (h >= f / k) & (h < (f + 1) / k)
            if cells.size < 2:
                flags[:] = False
            elif flags.all():
                flags[np.argmax(h)] = False
            val[i, cells[flags]] = train[i, cells[flags]]
        out.append((np.where(val > 0, 0.0, train), val))
    return out


def test_folds_are_disjoint_cover_the_cells_and_never_hold_a_test_cell(data_dir, matrices):
    from trainer.data import load_training_data
    from trainer.metadata import load_metadata

    train, test = matrices
    r = load_training_data(load_metadata(str(data_dir))).user_items
    folds = tune.carve_folds(r, USERS, ITEMS, FOLDS, max_users=10_000)
    oracle = _oracle_folds(train, FOLDS)
    assert len(folds) == FOLDS
    vals = [c.val.to_dense() for c in folds]
    for c, val, (want_fit, want_val) in zip(folds, vals, oracle):
        np.testing.assert_array_equal(val, want_val)
        np.testing.assert_array_equal(c.fit.to_dense(), want_fit)
        np.testing.assert_array_equal(c.fit.to_dense() + val, train)
        assert not ((val > 0) & (test > 0)).any()
        assert ((c.fit.to_dense() > 0).any(axis=1) | ~(train > 0).any(axis=1)).all()
    hits = sum((v > 0).astype(int) for v in vals)
    assert hits.max() == 1  # disjoint
    # covering: every cell is validated once, except single-cell users' cells and the one cell
    # a user keeps when a single fold drew all of its cells (its other cells in that fold)
    kept = (train > 0) & (hits == 0)
    single = (train > 0).sum(axis=1) < 2
    for i in np.flatnonzero(kept.any(axis=1) & ~single):
        assert kept[i].sum() == 1
        in_fold = [int(((v[i] > 0)).sum()) for v in vals]
        assert sorted(in_fold)[-1] == (train[i] > 0).sum() - 1 and sorted(in_fold)[-2] == 0
    assert ((hits == 1) | ~(train > 0) | single[:, None] | kept).all()
    assert kept.sum() < 0.05 * (train > 0).sum()
    # fold 0 of 5 is the single carve-out of fraction 1/5 (the pipeline's own rule)
    np.testing.assert_array_equal(vals[0], _oracle_split(train)[1])
    assert tune.fold_bounds(FOLDS)[0] == (0.0, 0.2)


def test_standard_error_by_hand():
    v = [0.61, 0.64, 0.62, 0.66, 0.63]
    assert tune.standard_error(v) == pytest.approx(statistics.stdev(v) / math.sqrt(5), rel=1e-12)
    assert tune.standard_error([0.5]) is None


def _c(value, se, lam, objective="implicit"):
    w = {"alpha": 10.0} if objective == "implicit" else {"unobserved_weight": 0.1}
    return {"value": value, "standard_error": se,
            "hyperparameters": {"objective": objective, "factors": 16, "regularization": lam, **w}}


def test_one_standard_error_rule_on_a_hand_made_table():
    space = tune.SearchSpace()
    # best mean 0.640 ± 0.004: threshold 0.636. Eligible: 0.640 (λ 1), 0.637 (λ 20), 0.636
    # (wals λ 1, i.e. log-position (0 − log 1e-3)/(log 10 − log 1e-3) = 0.75, above implicit
    # λ 20's (log 20 − log 0.1)/(log 1000 − log 0.1) = 0.575). 0.635 (λ 500) is out.
    table = [_c(0.640, 0.004, 1.0), _c(0.637, 0.003, 20.0), _c(0.635, 0.002, 500.0),
             _c(0.636, 0.005, 1.0, "wals"), _c(None, None, 900.0)]
    pick, threshold = tune.one_standard_error_rule(table, space)
    assert threshold == pytest.approx(0.636)
    assert pick == 3
    assert tune.regularization_strength(table[1]["hyperparameters"], space) == pytest.approx(
        math.log(200) / math.log(1e4))
    # without the wals row: implicit λ 20 wins over the best's λ 1
    assert tune.one_standard_error_rule(table[:3], space)[0] == 1
    # a tighter best (SE 0.001): only the best itself is eligible
    tight = [_c(0.640, 0.001, 1.0), _c(0.637, 0.003, 20.0)]
    assert tune.one_standard_error_rule(tight, space) == (0, pytest.approx(0.639))
    # equal strength: the higher mean, then the earlier
    assert tune.one_standard_error_rule([_c(0.630, 0.01, 5.0), _c(0.631, 0.01, 5.0)], space)[0] == 1
    assert tune.one_standard_error_rule([_c(None, None, 1.0)], space)[0] == -1


def test_finalists_are_the_best_distinct_trials():
    h = [{"objective": "implicit", "factors": k} for k in (1, 2, 3, 4)]
    trials = [{"value": 0.5, "hyperparameters": h[0]}, {"value": 0.7, "hyperparameters": h[1]},
              {"value": None, "hyperparameters": h[2]}, {"value": 0.7, "hyperparameters": h[1]},
              {"value": 0.6, "hyperparameters": h[3]}]
    assert tune.finalists(trials, 2) == [1, 4]
    assert tune.finalists(trials, 9) == [1, 4, 0]


def test_latin_hypercube_design_fills_every_stratum_of_each_log_range():
    space = tune.SearchSpace()
    n = 9
    design = tune.random_design(np.random.default_rng(5), space, n)
    assert len(design) == n
    counts = {o: sum(d["objective"] == o for d in design) for o in space.objectives}
    assert sorted(counts.values()) == [4, 5]
    for name in ("regularization", "weight"):
        strata = []
        for d in design:
            lam_range, w_range = tune._ranges(space, d["objective"])
            lo, hi = lam_range if name == "regularization" else w_range
            x = d["regularization"] if name == "regularization" else d[tune._weight_key(d["objective"])]
            strata.append(int(n * (math.log(x) - math.log(lo)) / (math.log(hi) - math.log(lo))))
        assert sorted(strata) == list(range(n)), (name, strata)
    assert tune.random_design(np.random.default_rng(5), space, n) == design  # seeded


# --------------------------------------------------------------------------- tuning.json
def test_tuning_json_lists_every_trial_and_applies_the_rule(tuned):
    d = _tuning(tuned)
    assert d["seed"] == SEED and d["metric"] == "ndcg@10"
    assert len(d["trials"]) == 5 and [t["trial"] for t in d["trials"]] == list(range(5))
    assert d["search_space"]["objectives"] == ["implicit", "wals"]
    assert d["trials"][0]["hyperparameters"] == tune.default_config()
    assert d["budget"]["validation_folds"] == FOLDS  # auto: 150 users < 5,000
    values = []
    for t in d["trials"]:
        curve = [e["ndcg@10"] for e in t["validation"]]
        assert [e["sweep"] for e in t["validation"]] == list(range(1, len(curve) + 1))
        assert 1 <= len(curve) <= 4 and t["seconds"] > 0
        assert t["value"] == max(curve)
        assert t["best_sweep"] == 1 + curve.index(max(curve))
        values.append(t["value"])
    # finalists: the FINALISTS best search values (distinct configurations here)
    cv = d["cross_validation"]
    want = sorted(range(5), key=lambda i: (-values[i], i))[:FINALISTS]
    assert cv["finalists"] == want and cv["folds"] == FOLDS
    rows = []
    for i in want:
        x = d["trials"][i]["cross_validation"]
        folds = x["fold_validation"]
        assert len(folds) == FOLDS and len({len(f) for f in folds}) == 1
        mean = [statistics.fmean(f[s]["ndcg@10"] for f in folds) for s in range(len(folds[0]))]
        assert [e["ndcg@10"] for e in x["validation"]] == pytest.approx(mean, abs=1e-15)
        assert x["value"] == pytest.approx(max(mean), abs=1e-15)
        assert x["best_sweep"] == 1 + mean.index(max(mean))
        assert x["fold_values"] == [f[x["best_sweep"] - 1]["ndcg@10"] for f in folds]
        assert x["standard_error"] == pytest.approx(
            statistics.stdev(x["fold_values"]) / math.sqrt(FOLDS), rel=1e-12)
        rows.append((i, x["value"], x["standard_error"], d["trials"][i]["hyperparameters"]))
    # the rule, independently: the best mean, its SE, the eligible, the largest log-λ position
    b = max(rows, key=lambda r: (r[1], -r[0]))
    eligible = [r for r in rows if r[1] >= b[1] - b[2]]
    ranges = {"implicit": (0.1, 1000.0), "wals": (0.001, 10.0)}

    def pos(h):
        lo, hi = ranges[h["objective"]]
        return math.log(h["regularization"] / lo) / math.log(hi / lo)

    pick = max(eligible, key=lambda r: (pos(r[3]), r[1], -want.index(r[0])))
    ch = d["chosen"]
    assert ch["trial"] == pick[0] and ch["value"] == pick[1]
    assert ch["sweeps"] == d["trials"][pick[0]]["cross_validation"]["best_sweep"]
    assert ch["hyperparameters"] == d["trials"][pick[0]]["hyperparameters"]
    assert cv["threshold"] == pytest.approx(b[1] - b[2], abs=1e-15)


def test_one_fold_chooses_the_argmax(data_dir, tmp_path):
    with cpu_only():
        assert tune.main(["--input_path", str(data_dir), "--output_dir", str(tmp_path / "o"),
                          *BUDGET, "--validation_folds", "1"]) == 0
    d = _tuning(tmp_path / "o")
    values = [t["value"] for t in d["trials"]]
    assert d["cross_validation"] is None and d["budget"]["validation_folds"] == 1
    assert d["chosen"]["trial"] == values.index(max(values))
    assert d["chosen"]["sweeps"] == d["trials"][d["chosen"]["trial"]]["best_sweep"]
    assert all("cross_validation" not in t for t in d["trials"])


def test_chosen_trial_value_recomputed_with_numpy(tuned, matrices):
    """The chosen trial's K-fold validation NDCG@10, recomputed: on every oracle fold a model
    trained uninterrupted on the fold's fit cells for the chosen sweeps (the tuner advances the
    folds in rounds, resuming), scored by a NumPy NDCG on the fold's validation cells."""
    from trainer.sparse import CSR
    from trainer.wals import WALSModel

    d = _tuning(tuned)
    ch = d["chosen"]
    got = []
    for fit, val in _oracle_folds(matrices[0], FOLDS):
        rows, cols = np.nonzero(fit)
        m = CSR.from_coo(rows, cols, fit[rows, cols], fit.shape)
        with cpu_only():
            model = WALSModel(**ch["hyperparameters"], iterations=ch["sweeps"], random_state=SEED,
                              batch_size=64).fit(m)
        got.append(_numpy_ndcg(model.user_factors, model.item_factors, fit, val, 10))
    assert got == pytest.approx(d["trials"][ch["trial"]]["cross_validation"]["fold_values"], abs=1e-9)
    assert statistics.fmean(got) == pytest.approx(ch["value"], abs=1e-9)


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
def _without_time(x):
    if isinstance(x, dict):
        return {k: _without_time(v) for k, v in x.items() if "seconds" not in k}
    return [_without_time(v) for v in x] if isinstance(x, list) else x


def _trials_without_time(d: dict) -> list[dict]:
    return _without_time(d["trials"])


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
    assert _without_time(a["cross_validation"]) == _without_time(ref["cross_validation"])
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
    (["--validation_folds", "0"], "--validation_folds must be >= 1"),
    (["--validation_folds", "five"], "--validation_folds must be auto or an integer"),
    (["--validation_folds", "4", "--validation_fraction", "0.2"], "does not fit --validation_folds 4"),
    (["--finalists", "0"], "--finalists must be >= 1"),
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


def test_auto_folds_only_on_small_validation_sets():
    assert tune.resolve_folds("auto", False, tune.AUTO_FOLDS_BELOW_USERS - 1) == tune.AUTO_FOLDS == 5
    assert tune.resolve_folds("auto", False, tune.AUTO_FOLDS_BELOW_USERS) == 1
    assert tune.resolve_folds("auto", True, 10) == 1  # an explicit fraction: one carve-out
    assert tune.resolve_folds("3", False, 10) == 3
