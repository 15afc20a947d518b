"""Held-out evaluation: the metrics against hand arithmetic and a plain-Python reference,
``evaluate`` against a dense NumPy brute force, the test-shard reader, and the trainer end to
end (metrics.json, TensorBoard, early stopping on a validation half, resume)."""
from __future__ import annotations

import json
import logging
import math
import pathlib
import sys

import numpy as np
import pytest


from tests.trainer_fixtures import (
    cpu_only, random_ratings, write_dataset, write_test_split,
)

from schemas import records
from trainer import task
from trainer.data import load_test_data
from trainer.errors import TrainerInputError
from trainer.evaluation import (
    best_index,
    evaluate,
    evaluate_popularity,
    evaluations_since_best,
    item_popularity,
    keep_rows,
    lift,
    popularity_top_k,
    ranking_metrics,
    splitmix64,
    validation_mask,
)
from trainer.metadata import load_metadata
from trainer.sparse import CSR


# --------------------------------------------------------------------------- references
def ref_metrics(recommended, test_sets: list[set[int]], k: int) -> dict:
    """Textbook definitions, one user at a time with Python lists, sets and math.log2."""
    sums = {"precision": 0.0, "recall": 0.0, "ndcg": 0.0, "map": 0.0}
    users = 0
    for row, t in zip(recommended, test_sets):
        if not t:
            continue
        users += 1
        top = [int(x) for x in row[:k]]
        rel = [1 if (x >= 0 and x in t) else 0 for x in top]
        hits = sum(rel)
        sums["precision"] += hits / k
        sums["recall"] += hits / len(t)
        dcg = sum(rel[i] / math.log2(i + 2) for i in range(k))
        idcg = sum(1 / math.log2(i + 2) for i in range(min(k, len(t))))
        sums["ndcg"] += dcg / idcg
        ap = sum(sum(rel[: i + 1]) / (i + 1) * rel[i] for i in range(k)) / min(k, len(t))
        sums["map"] += ap
    out = {f"{m}@{k}": (s / users if users else float("nan")) for m, s in sums.items()}
    out["users"] = users
    return out


def brute_force_topk(u, v, train_dense, k) -> np.ndarray:
    """Dense scores, training cells masked, stable argsort (ties: lower id), −1 padding."""
    scores = u.astype(np.float64) @ v.astype(np.float64).T
    out = np.full((u.shape[0], k), -1, np.int64)
    for i in range(u.shape[0]):
        order = [j for j in np.argsort(-scores[i], kind="stable") if train_dense[i, j] == 0][:k]
        out[i, : len(order)] = order
    return out


def brute_force_evaluate(u, v, train_dense, test_dense, k, rows=None) -> dict:
    rows = np.flatnonzero((test_dense != 0).any(axis=1)) if rows is None else rows
    rec = brute_force_topk(u[rows], v, train_dense[rows], k)
    sets = [set(np.flatnonzero(test_dense[i]).tolist()) for i in rows]
    out = ref_metrics(rec, sets, k)
    out[f"coverage@{k}"] = len({int(x) for x in rec.ravel() if x >= 0}) / v.shape[0]
    return out


def pandas_popularity_evaluate(train_dense, test_dense, k, rows=None) -> dict:
    """The most-popular baseline with pandas + plain Python: item count = distinct training
    users (groupby nunique), ranking by (count desc, item ID asc), each user's training items
    skipped, then the textbook metrics of :func:`ref_metrics` and the coverage."""
    import pandas as pd

    nitems = train_dense.shape[1]
    rows = np.flatnonzero((test_dense != 0).any(axis=1)) if rows is None else rows
    df = pd.DataFrame(np.argwhere(train_dense != 0), columns=["user", "item"])
    counts = df.groupby("item")["user"].nunique().reindex(range(nitems), fill_value=0)
    table = pd.DataFrame({"item": np.arange(nitems), "n": counts.to_numpy()})
    ranking = table.sort_values(["n", "item"], ascending=[False, True])["item"].tolist()
    seen = df.groupby("user")["item"].apply(set).to_dict()
    rec = np.full((len(rows), k), -1, np.int64)
    for r, u in enumerate(rows):
        top = [j for j in ranking if j not in seen.get(int(u), set())][:k]
        rec[r, : len(top)] = top
    out = ref_metrics(rec, [set(np.flatnonzero(test_dense[u]).tolist()) for u in rows], k)
    out[f"coverage@{k}"] = len({int(x) for x in rec.ravel() if x >= 0}) / nitems
    return out


def py_splitmix64(x: int) -> int:
    """SplitMix64 output on Python ints with explicit 64-bit masking."""
    m = (1 << 64) - 1
    z = (x + 0x9E3779B97F4A7C15) & m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    return z ^ (z >> 31)


def csr_from_sets(sets: list[set[int]], nitems: int) -> CSR:
    rows = [i for i, s in enumerate(sets) for _ in s]
    cols = [j for s in sets for j in sorted(s)]
    return CSR.from_coo(np.array(rows, np.int64), np.array(cols, np.int64),
                        np.ones(len(rows)), (len(sets), nitems))


def assert_metrics_close(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    assert got["users"] == want["users"]
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-12, abs=1e-15, nan_ok=True), key


# --------------------------------------------------------------------------- ranking_metrics
def test_hand_computed_example():
    # k = 4, 10 items. The 5th column must be ignored (item 3 would be a hit for user 0).
    rec = np.array([
        [5, 0, 8, 2, 3],      # u0, T = {3, 5, 8}: rel = 1 0 1 0
        [1, 2, 3, 4, 5],      # u1, T = {}: not evaluated
        [9, 4, 6, -1, -1],    # u2, T = {0, 1, 2, 6, 7, 9} (more than k): rel = 1 0 1 0
        [-1, -1, -1, -1, -1], # u3, T = {4}: nothing recommended, rel = 0 0 0 0
    ])
    test = csr_from_sets([{3, 5, 8}, set(), {0, 1, 2, 6, 7, 9}, {4}], 10)
    d = [1 / math.log2(i + 1) for i in range(1, 5)]  # 1, 0.6309, 0.5, 0.4307
    # precision: u0 2/4, u2 2/4, u3 0/4                           -> (0.5 + 0.5 + 0) / 3
    # recall:    u0 2/3, u2 2/6, u3 0/1                           -> (2/3 + 1/3 + 0) / 3
    # DCG:       u0 = u2 = 1/log2(2) + 1/log2(4) = 1.5, u3 = 0
    # IDCG:      u0 = d1+d2+d3 (|T|=3), u2 = d1+..+d4 (min(4, 6)), u3 = d1
    ndcg_u0 = 1.5 / (d[0] + d[1] + d[2])  # 0.70392
    ndcg_u2 = 1.5 / (d[0] + d[1] + d[2] + d[3])  # 0.58556
    # AP:        u0 = (P@1·1 + P@3·1) / min(4, 3) = (1 + 2/3) / 3 = 5/9
    #            u2 = (1 + 2/3) / min(4, 6) = 5/12,  u3 = 0
    want = {
        "precision@4": 1 / 3,
        "recall@4": (2 / 3 + 1 / 3) / 3,
        "ndcg@4": (ndcg_u0 + ndcg_u2) / 3,
        "map@4": (5 / 9 + 5 / 12) / 3,  # = 35/108
        "users": 3,
    }
    assert_metrics_close(ranking_metrics(rec, test, 4), want)
    assert ranking_metrics(rec, test, 4)["ndcg@4"] == pytest.approx((0.70392 + 0.58556) / 3, abs=1e-5)


def test_single_user_perfect_and_late_hits():
    # T = {7}; hit at rank 3 of k = 3: P = 1/3, R = 1, NDCG = (1/log2 4)/1 = 0.5, AP = (1/3)/1
    m = ranking_metrics(np.array([[1, 2, 7]]), csr_from_sets([{7}], 8), 3)
    assert_metrics_close(m, {"precision@3": 1 / 3, "recall@3": 1.0, "ndcg@3": 0.5,
                             "map@3": 1 / 3, "users": 1})
    # every test item ranked first: NDCG = MAP = 1, recall = 1, precision = |T|/k = 2/3
    m = ranking_metrics(np.array([[4, 0, 6]]), csr_from_sets([{0, 4}], 8), 3)
    assert_metrics_close(m, {"precision@3": 2 / 3, "recall@3": 1.0, "ndcg@3": 1.0,
                             "map@3": 1.0, "users": 1})


@pytest.mark.parametrize("nrows,nitems,k,width,seed", [
    (1, 1, 1, 1, 0), (7, 5, 3, 3, 1), (9, 4, 6, 8, 2), (60, 30, 10, 12, 3), (300, 200, 5, 5, 4),
])
def test_against_python_reference(nrows, nitems, k, width, seed):
    rng = np.random.default_rng(seed)
    sets = []
    for _ in range(nrows):
        size = int(rng.integers(0, min(nitems, 2 * k + 3) + 1))  # 0 (skipped) .. more than k
        sets.append(set(rng.choice(nitems, size, replace=False).tolist()))
    rec = np.full((nrows, width), -1, np.int64)
    for i, t in enumerate(sets):
        n = int(rng.integers(0, min(width, nitems) + 1))  # the rest of the row stays -1
        # half of the candidates from the test set, so there are hits at random ranks
        pool = list(t) if t and rng.random() < 0.5 else []
        rest = [j for j in rng.permutation(nitems).tolist() if j not in pool]
        cand = rng.permutation(pool).tolist() + rest if pool else rest
        rec[i, :n] = rng.permutation(cand[:n]) if n else []
    got = ranking_metrics(rec, csr_from_sets(sets, nitems), k)
    assert_metrics_close(got, ref_metrics(rec, sets, k))


def test_no_evaluable_user_gives_nan():
    m = ranking_metrics(np.array([[0, 1]]), csr_from_sets([set()], 3), 2)
    assert m["users"] == 0 and all(math.isnan(m[f"{x}@2"]) for x in ("precision", "recall", "ndcg", "map"))


@pytest.mark.parametrize("rec,k,match", [
    ([[0, 1], [1, 1]], 2, "repeats"),
    ([[0, 5], [1, 2]], 2, "out of|must be -1"),
    ([[0, -2], [1, 2]], 2, "must be -1"),
    ([[0, 1]], 2, "shape"),
    ([[0], [1]], 2, "shape"),
    ([[0, 1], [1, 2]], 0, "k must be"),
    ([[0.0, 1.0], [1.0, 2.0]], 2, "integer"),
])
def test_ranking_metrics_refuses_bad_input(rec, k, match):
    with pytest.raises(TrainerInputError, match=match):
        ranking_metrics(np.array(rec), csr_from_sets([{0}, {1}], 3), k)


# --------------------------------------------------------------------------- evaluate
@pytest.mark.parametrize("nusers,nitems,f,k,seed", [(40, 25, 4, 5, 0), (90, 60, 8, 10, 1), (12, 8, 3, 10, 2)])
def test_evaluate_equals_numpy_brute_force(nusers, nitems, f, k, seed):
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((nusers, f))
    v = rng.standard_normal((nitems, f))
    train = (rng.random((nusers, nitems)) < 0.3).astype(float)
    train[0, :] = 1.0  # no candidate left: an evaluated user with an all -1 list
    train[0, 0] = 0.0
    train[1, : nitems - 2] = 1.0  # fewer candidates than k
    test = ((rng.random((nusers, nitems)) < 0.15) & (train == 0)).astype(float)
    test[0, :] = 0.0
    test[0, 0] = 1.0
    test[2, :] = 0.0  # a user without test items is not evaluated
    got = evaluate(u, v, CSR.from_dense(train), CSR.from_dense(test), k=k, batch_size=7)
    want = brute_force_evaluate(u, v, train, test, k)
    assert got["users"] == int((test != 0).any(axis=1).sum()) < nusers
    assert_metrics_close(got, want)
    # float32 factors (what the trainer and `implicit` produce) also work
    got32 = evaluate(u.astype(np.float32), v.astype(np.float32), CSR.from_dense(train), CSR.from_dense(test), k=k)
    assert got32["users"] == want["users"]


def test_evaluate_refuses_mismatched_shapes():
    u, v = np.ones((3, 2)), np.ones((4, 2))
    good = CSR.from_dense(np.eye(3, 4))
    with pytest.raises(TrainerInputError, match="users x items"):
        evaluate(u, v, good, CSR.from_dense(np.eye(4, 4)))
    with pytest.raises(TrainerInputError, match="same width"):
        evaluate(u, np.ones((4, 3)), good, good)


# --------------------------------------------------------------------------- popularity baseline
def test_popularity_hand_computed_example():
    # 6 users x 6 items. Training users per item: 0 {u0,u3} = 2, 1 {u4} = 1, 2 {u0,u1,u2} = 3,
    # 3 {u1,u4} = 2, 4 {u2} = 1, 5 {} = 0. u4's rating 50 on item 1 would put item 1 first if
    # ratings were summed; counting users it is 4th. Ranking, ties to the lower ID:
    # 2 (3), 0 (2), 3 (2), 1 (1), 4 (1), 5 (0).
    train = np.zeros((6, 6))
    for u, items in enumerate([[0, 2], [2, 3], [2, 4], [0], [1, 3], []]):
        train[u, items] = 0.5
    train[4, 1] = 50.0
    np.testing.assert_array_equal(item_popularity(CSR.from_dense(train)), [2, 1, 3, 2, 1, 0])
    # k = 2, the user's training items skipped:
    #   u0 seen {0,2} -> [3, 1]   u1 seen {2,3} -> [0, 1]   u2 seen {2,4} -> [0, 3]
    #   u3 seen {0}   -> [2, 3]   u4 seen {1,3} -> [2, 0]   u5 seen {}    -> [2, 0]
    ids = popularity_top_k(item_popularity(CSR.from_dense(train)), CSR.from_dense(train), 2)
    np.testing.assert_array_equal(ids, [[3, 1], [0, 1], [0, 3], [2, 3], [2, 0], [2, 0]])
    # held out: u0 {1,5} rel 0 1; u1 {} not evaluated; u2 {0} rel 1 0; u3 {4,5} rel 0 0;
    # u4 {2} rel 1 0; u5 {2} rel 1 0 (no training history: popularity still recommends)
    test = np.zeros((6, 6))
    for u, items in enumerate([[1, 5], [], [0], [4, 5], [2], [2]]):
        test[u, items] = 1.0
    d2 = 1 / math.log2(3)
    ndcg_u0 = d2 / (1 + d2)  # hit at rank 2 of |T| = 2
    want = {
        "precision@2": (1 / 2 + 1 / 2 + 0 + 1 / 2 + 1 / 2) / 5,  # 0.4
        "recall@2": (1 / 2 + 1 + 0 + 1 + 1) / 5,  # 0.7
        "ndcg@2": (ndcg_u0 + 1 + 0 + 1 + 1) / 5,
        "map@2": ((1 / 2) / 2 + 1 + 0 + 1 + 1) / 5,  # AP u0 = P@2 / min(2, 2) = 1/4 -> 0.65
        "coverage@2": 4 / 6,  # {3, 1, 0, 2}: u1's list does not count (not evaluated)
        "users": 5,
    }
    got = evaluate_popularity(CSR.from_dense(train), CSR.from_dense(test), 2)
    assert_metrics_close(got, want)
    assert got["precision@2"] == pytest.approx(0.4) and got["map@2"] == pytest.approx(0.65)
    assert_metrics_close(got, pandas_popularity_evaluate(train, test, 2))


@pytest.mark.parametrize("nusers,nitems,density,k,seed", [
    (1, 1, 1.0, 1, 0), (30, 8, 0.4, 5, 1), (50, 20, 0.3, 10, 2), (200, 60, 0.1, 7, 3), (40, 12, 0.5, 12, 4),
])
def test_popularity_equals_plain_python(nusers, nitems, density, k, seed):
    rng = np.random.default_rng(seed)
    # skewed item probabilities, so there are both ties and clear leaders
    p = np.minimum(1.0, density * 3 * rng.power(0.4, nitems))
    train = np.where(rng.random((nusers, nitems)) < p, rng.uniform(0.1, 9.0, (nusers, nitems)), 0.0)
    train[0, :] = 1.0  # every item seen: an all -1 list
    if nusers > 2:
        train[1, :] = 0.0  # no training history: the plain ranking
        train[2, : nitems - 1] = 1.0  # one candidate left, fewer than k
        train[2, nitems - 1] = 0.0
    count = [sum(1 for u in range(nusers) if train[u, j] != 0) for j in range(nitems)]
    ranking = sorted(range(nitems), key=lambda j: (-count[j], j))
    want = np.full((nusers, k), -1, np.int64)
    for u in range(nusers):
        top = [j for j in ranking if train[u, j] == 0][:k]
        want[u, : len(top)] = top
    tr = CSR.from_dense(train)
    np.testing.assert_array_equal(item_popularity(tr), count)
    np.testing.assert_array_equal(popularity_top_k(item_popularity(tr), tr, k), want)
    test = ((rng.random((nusers, nitems)) < 0.2) & (train == 0)).astype(float)
    if nusers > 3:
        test[3, :] = 0.0  # not evaluated
    got = evaluate_popularity(tr, CSR.from_dense(test), k)
    assert_metrics_close(got, pandas_popularity_evaluate(train, test, k))


def test_popularity_top_k_refuses_bad_input():
    tr = CSR.from_dense(np.eye(3, 4))
    with pytest.raises(TrainerInputError, match="k must be"):
        popularity_top_k(np.ones(4), tr, 0)
    with pytest.raises(TrainerInputError, match="scores"):
        popularity_top_k(np.ones(3), tr, 2)
    with pytest.raises(TrainerInputError, match="users x items"):
        evaluate_popularity(tr, CSR.from_dense(np.eye(4, 4)), 2)


def test_lift_is_model_over_baseline_or_null():
    model = {"precision@3": 0.2, "recall@3": 0.0, "ndcg@3": 0.3, "map@3": float("nan"),
             "coverage@3": 0.5, "users": 7}
    base = {"precision@3": 0.0, "recall@3": 0.0, "ndcg@3": 0.1, "map@3": 0.5,
            "coverage@3": 0.1, "users": 7}
    got = lift(model, base, 3)
    assert got == {"precision@3": None, "recall@3": None, "ndcg@3": pytest.approx(3.0), "map@3": None}
    assert lift({**model, "recall@3": 0.0}, {**base, "recall@3": 0.25}, 3)["recall@3"] == 0.0


# --------------------------------------------------------------------------- helpers
def test_validation_mask_is_a_fixed_hash():
    # SplitMix64 seeded with 0 first outputs 0xE220A8397B1DCDAF (published test value)
    assert int(splitmix64(np.array([0], np.uint64))[0]) == 0xE220A8397B1DCDAF
    ids = np.arange(0, 20000, 7)
    want = [py_splitmix64((0x5EED << 32) + int(i)) >> 63 == 1 for i in ids]
    np.testing.assert_array_equal(validation_mask(ids), want)
    np.testing.assert_array_equal(validation_mask(ids, seed=3), [py_splitmix64((3 << 32) + int(i)) >> 63 == 1 for i in ids])
    share = validation_mask(np.arange(100_000)).mean()
    assert 0.49 < share < 0.51


def test_keep_rows_and_best_index():
    d = random_ratings(9, 5, 0.5, 3)
    mask = np.array([1, 0, 1, 1, 0, 0, 1, 0, 1], bool)
    np.testing.assert_array_equal(keep_rows(CSR.from_dense(d), mask).to_dense(), d * mask[:, None])
    ev = [{"m": 0.1}, {"m": 0.3}, {"m": 0.2}, {"m": 0.3}, {"m": float("nan")}]
    assert best_index(ev, "m") == 1  # a later tie is not an improvement
    assert evaluations_since_best(ev, "m") == 3
    assert best_index([], "m") is None and evaluations_since_best([], "m") == 0


def test_fit_stops_when_the_callback_returns_true():
    from trainer.wals import WALSModel

    seen = []

    def cb(st) -> bool:
        seen.append(st.sweeps_done)
        return st.sweeps_done == 2

    m = WALSModel(factors=3, regularization=0.1, objective="wals", unobserved_weight=0.1, iterations=6)
    m.fit(CSR.from_dense(random_ratings(15, 9, 0.3, 5)), callback=cb)
    assert seen == [1, 2] and [h["sweep"] for h in m.history] == [1, 2]


# --------------------------------------------------------------------------- test shards
NUSERS, NITEMS = 80, 30


def _split() -> tuple[np.ndarray, np.ndarray]:
    """(train, test): clustered preferences so the model learns something, and about 20 % of
    each user's interactions held out (every test user keeps a training interaction)."""
    rng = np.random.default_rng(11)
    cu, ci = rng.integers(0, 3, NUSERS), rng.integers(0, 3, NITEMS)
    p = np.where(cu[:, None] == ci[None, :], 0.45, 0.05)
    full = np.where(rng.random((NUSERS, NITEMS)) < p, rng.uniform(0.1, 1.0, p.shape), 0.0)
    full = full.astype(np.float32).astype(np.float64)
    test = np.zeros_like(full)
    for i in range(NUSERS):
        obs = np.flatnonzero(full[i])
        if obs.size >= 2:
            held = rng.choice(obs, max(1, obs.size // 5), replace=False)
            test[i, held] = full[i, held]
    return full - test, test


def add_test_split(root: pathlib.Path, test: np.ndarray, nshards: int = 2, **split) -> None:
    """Writes test_items_for_user shards (same schema as items_for_user) and names them in
    metadata.json with a split block, as the pipeline contract says."""
    write_test_split(root, test, nshards, **split)


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory) -> pathlib.Path:
    train, test = _split()
    root = write_dataset(tmp_path_factory.mktemp("split"), train)
    add_test_split(root, test)
    return root


def test_reads_test_shards(split_dir, tmp_path):
    train, test = _split()
    md = load_metadata(str(split_dir))
    got = load_test_data(md, CSR.from_dense(train))
    assert got.shape == (NUSERS, NITEMS)
    np.testing.assert_array_equal(got.to_dense(), test)
    # old outputs (no key) and outputs without a split ([]) have no test data
    plain = write_dataset(tmp_path / "plain", train)
    assert load_test_data(load_metadata(str(plain))) is None
    meta = json.loads((plain / records.METADATA_FILE).read_text())
    (plain / records.METADATA_FILE).write_text(json.dumps({**meta, records.TEST_ITEMS_FOR_USER: []}))
    assert load_test_data(load_metadata(str(plain))) is None


@pytest.mark.parametrize("change,match", [
    ({records.TEST_ITEMS_FOR_USER: ["nope.tfrecord"]}, "missing shard"),
    ({records.TEST_ITEMS_FOR_USER: "x.tfrecord"}, "list of shard files"),
    ({"split": [1]}, "'split' must be"),
])
def test_bad_test_metadata(tmp_path, change, match):
    root = write_dataset(tmp_path / "d", _split()[0])
    meta = json.loads((root / records.METADATA_FILE).read_text())
    (root / records.METADATA_FILE).write_text(json.dumps({**meta, **change}))
    with pytest.raises(TrainerInputError, match=match):
        load_metadata(str(root))


def test_test_counts_must_match_split_block(tmp_path, caplog):
    train, test = _split()
    root = write_dataset(tmp_path / "d", train)
    add_test_split(root, test, test_interactions=int(np.count_nonzero(test)) + 1)
    with pytest.raises(TrainerInputError, match="test_interactions"):
        load_test_data(load_metadata(str(root)))
    # a test entry that is also a training entry can never be hit: warned about
    overlap = test.copy()
    i, j = np.argwhere(train != 0)[0]
    overlap[i, j] = 0.5
    root2 = write_dataset(tmp_path / "e", train)
    add_test_split(root2, overlap)
    md = load_metadata(str(root2))
    with caplog.at_level(logging.WARNING):
        load_test_data(md, CSR.from_dense(train))
    assert "1 held-out entries are also training entries" in caplog.text


# --------------------------------------------------------------------------- the trainer
FAST = ["--n_embeds", "4", "--objective", "wals", "--regularization", "0.3", "--unobserved_weight", "0.05",
        "--no_export", "--no_batch_pred", "--no_progress", "--batch_size", "32"]


def _tb_scalars(out: pathlib.Path) -> dict:
    import tensorflow as tf

    logged = {}
    events = [str(e) for e in (out / "tensorboard").glob("events.out.tfevents.*")]
    for rec in tf.data.TFRecordDataset(events).as_numpy_iterator():
        ev = tf.compat.v1.Event.FromString(rec)
        for v in ev.summary.value:
            logged[v.tag, ev.step] = float(tf.make_ndarray(v.tensor))
    return logged


def test_task_writes_metrics(split_dir, tmp_path, caplog):
    out = tmp_path / "m"
    with caplog.at_level(logging.INFO, logger="trainer"):
        rc = task.main(["--input_path", str(split_dir), "--output_dir", str(out), "--num_epochs", "4",
                        "--eval_every", "2", "--eval_k", "5", *FAST])
    assert rc == 0
    train, test = _split()
    u, v = np.load(out / "row_factors.npy"), np.load(out / "col_factors.npy")
    m = json.loads((out / "metrics.json").read_text())
    assert m["k"] == 5 and m["factors"] == "final" and m["sweep"] == 4 and m["sweeps_run"] == 4
    want = brute_force_evaluate(u, v, train, test, 5)
    assert m["users"] == want["users"] == int((test != 0).any(axis=1).sum())
    for key in want:
        assert m["metrics"][key] == pytest.approx(want[key], rel=1e-9), key
    assert m["split"]["test_interactions"] == int(np.count_nonzero(test))
    assert m["held_out"] == {"users": want["users"], "interactions": int(np.count_nonzero(test))}
    assert m["early_stopping"] is None
    assert [(e["sweep"], e["set"]) for e in m["evaluations"]] == [(2, "test"), (4, "test")]
    assert m["metrics"]["ndcg@5"] == m["evaluations"][-1]["ndcg@5"]  # sweep 4 reused
    s = json.loads((out / "training_summary.json").read_text())
    assert s["evaluation"]["metrics"] == m["metrics"] and s["outputs"]["metrics"] == "metrics.json"
    tb = _tb_scalars(out)
    for e in m["evaluations"]:
        for key in ("precision@5", "recall@5", "ndcg@5", "map@5", "coverage@5"):
            assert tb[f"eval/{key}", e["sweep"]] == pytest.approx(e[key], rel=1e-6)
    # the most-popular baseline on the same users, by pandas; the lift = model / baseline
    pop = m["baselines"]["popularity"]
    base = pandas_popularity_evaluate(train, test, 5)
    assert set(pop) == set(m["metrics"]) == set(base)
    for key in base:
        assert pop[key] == pytest.approx(base[key], rel=1e-12), key
    assert 0 < pop["ndcg@5"] < m["metrics"]["ndcg@5"]  # the clustered data rewards the model
    assert set(m["lift"]) == {"precision@5", "recall@5", "ndcg@5", "map@5"}
    for key, val in m["lift"].items():
        assert val == pytest.approx(want[key] / base[key], rel=1e-9), key
    assert s["evaluation"]["baselines"] == m["baselines"] and s["evaluation"]["lift"] == m["lift"]
    for key in base:
        if "@" in key:
            assert tb[f"baseline/popularity/{key}", 4] == pytest.approx(base[key], rel=1e-6), key
    assert s["timing"]["baseline_seconds"] >= 0
    # one log line with the model, the baseline and the lift (run_dataflow.sh users see it)
    p, r = m["metrics"], pop
    line = (f"held-out ndcg@5 {p['ndcg@5']:.4f} (popularity {r['ndcg@5']:.4f}, "
            f"lift {p['ndcg@5'] / r['ndcg@5']:.2f}x)")
    assert line in caplog.text


def test_task_without_split_skips_evaluation(tmp_path, caplog, capsys):
    root = write_dataset(tmp_path / "plain", _split()[0])
    with caplog.at_level(logging.INFO, logger="trainer"):
        rc = task.main(["--input_path", str(root), "--output_dir", str(tmp_path / "o"), "--num_epochs", "1", *FAST])
    assert rc == 0
    assert "no held-out split: skipping evaluation" in caplog.text
    assert not (tmp_path / "o" / "metrics.json").exists()
    assert json.loads((tmp_path / "o" / "training_summary.json").read_text())["evaluation"] is None
    rc = task.main(["--input_path", str(root), "--output_dir", str(tmp_path / "o2"), "--num_epochs", "1",
                    "--early_stopping_metric", "ndcg", *FAST])
    assert rc == 2
    assert "--early_stopping_metric needs held-out test records" in capsys.readouterr().err


ES = ["--num_epochs", "30", "--early_stopping_metric", "ndcg", "--early_stopping_patience", "1"]


@pytest.fixture(scope="module")
def early_stopped(split_dir, tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("es")
    with cpu_only():  # compared bit for bit with other runs below
        assert task.main(["--input_path", str(split_dir), "--output_dir", str(out), *ES, *FAST]) == 0
    return out


def test_early_stopping_stops_and_restores_best(early_stopped, split_dir, tmp_path):
    train, test = _split()
    m = json.loads((early_stopped / "metrics.json").read_text())
    es = m["early_stopping"]
    ev = m["evaluations"]
    vals = [e["ndcg@10"] for e in ev]
    assert [e["sweep"] for e in ev] == list(range(1, len(ev) + 1)) and {e["set"] for e in ev} == {"validation"}
    assert es["stopped_early"] and es["last_sweep"] == len(ev) < 30
    best = int(np.argmax(vals))  # first maximum
    assert es["best_sweep"] == m["sweep"] == ev[best]["sweep"] and m["factors"] == "best"
    assert len(ev) - 1 - best == 1  # patience 1: one evaluation without improvement, then stop
    assert vals[-1] <= vals[best]
    # the saved factors are those of the best sweep: a plain run of that many sweeps
    plain = tmp_path / "plain"
    with cpu_only():
        assert task.main(["--input_path", str(split_dir), "--output_dir", str(plain),
                          "--num_epochs", str(es["best_sweep"]), *FAST]) == 0
    u, v = np.load(early_stopped / "row_factors.npy"), np.load(early_stopped / "col_factors.npy")
    np.testing.assert_array_equal(u, np.load(plain / "row_factors.npy"))
    np.testing.assert_array_equal(v, np.load(plain / "col_factors.npy"))
    # the halves by an independent hash; validation picked the sweep, the test half is reported
    has = (test != 0).any(axis=1)
    val = np.array([py_splitmix64((0x5EED << 32) + i) >> 63 == 1 for i in range(NUSERS)]) & has
    assert es["validation_users"] == val.sum() and es["test_users"] == (has & ~val).sum() == m["users"]
    assert ev[best]["ndcg@10"] == pytest.approx(
        brute_force_evaluate(u, v, train, test, 10, np.flatnonzero(val))["ndcg@10"], rel=1e-9)
    want = brute_force_evaluate(u, v, train, test, 10, np.flatnonzero(has & ~val))
    for key in want:
        assert m["metrics"][key] == pytest.approx(want[key], rel=1e-9), key
    # the baseline is evaluated on the same reported test half
    base = pandas_popularity_evaluate(train, test, 10, np.flatnonzero(has & ~val))
    assert m["baselines"]["popularity"]["users"] == m["users"]
    for key in base:
        assert m["baselines"]["popularity"][key] == pytest.approx(base[key], rel=1e-12), key
    for key, v in m["lift"].items():
        assert v == pytest.approx(want[key] / base[key], rel=1e-9), key
    tb = _tb_scalars(early_stopped)
    assert tb["validation/ndcg@10", ev[-1]["sweep"]] == pytest.approx(vals[-1], rel=1e-6)
    assert tb["eval/ndcg@10", es["best_sweep"]] == pytest.approx(m["metrics"]["ndcg@10"], rel=1e-6)


def test_early_stopping_resume_after_crash_gives_same_result(early_stopped, split_dir, tmp_path, monkeypatch):
    """Crash in the worst window: sweep 3 evaluated as the new best, its factors and best
    factors written, but state.json not yet pointing to them. --resume must redo sweep 3 and
    its evaluation and end exactly like the uninterrupted run."""
    from trainer import device as device_policy
    from trainer import fileio

    # compared bit for bit with the uninterrupted run: on the CPU (tests/trainer_fixtures.cpu_only)
    monkeypatch.setattr(device_policy, "default_device", lambda: device_policy.CPU)
    ev = json.loads((early_stopped / "metrics.json").read_text())["evaluations"]
    assert ev[2]["ndcg@10"] > max(e["ndcg@10"] for e in ev[:2])  # sweep 3 is a new best
    out = tmp_path / "crashed"
    real_write_json = fileio.write_json

    def crash_at_sweep_3(path, obj):
        if path.endswith("state.json") and obj["sweeps_done"] == 3:
            raise KeyboardInterrupt
        real_write_json(path, obj)

    monkeypatch.setattr(fileio, "write_json", crash_at_sweep_3)
    with pytest.raises(KeyboardInterrupt):
        task.main(["--input_path", str(split_dir), "--output_dir", str(out), *ES, *FAST])
    monkeypatch.setattr(fileio, "write_json", real_write_json)
    ckpt = out / "checkpoint"
    state = json.loads((ckpt / "state.json").read_text())
    assert state["sweeps_done"] == 2 and state["version"] == 2
    assert [e["sweep"] for e in state["evaluation"]["evaluations"]] == [1, 2]
    assert state["evaluation"]["best"] == {"sweep": 2, "factors": "best-00002.npz"}
    # the files of the unfinished sweep 3 are there, not yet named by state.json
    assert sorted(p.name for p in ckpt.glob("*.npz")) == [
        "best-00002.npz", "best-00003.npz", "factors-00002.npz", "factors-00003.npz"]

    assert task.main(["--input_path", str(split_dir), "--output_dir", str(out), "--resume", *ES, *FAST]) == 0
    a = json.loads((early_stopped / "metrics.json").read_text())
    b = json.loads((out / "metrics.json").read_text())
    assert a == b
    np.testing.assert_array_equal(np.load(out / "row_factors.npy"), np.load(early_stopped / "row_factors.npy"))
    np.testing.assert_array_equal(np.load(out / "col_factors.npy"), np.load(early_stopped / "col_factors.npy"))
    # resuming the finished run again trains nothing more and gives the same result
    assert task.main(["--input_path", str(split_dir), "--output_dir", str(out), "--resume", *ES, *FAST]) == 0
    assert json.loads((out / "metrics.json").read_text()) == a
    assert len(json.loads((out / "training_summary.json").read_text())["history"]) == a["sweeps_run"]
