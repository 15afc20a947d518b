"""The exported SavedModel as TF Serving and Vertex AI endpoints call it, and the
``python -m trainer.recommend`` command line, against NumPy oracles.

A request is built as REST JSON (``instances``: one dict per instance; ``inputs``: one batched
list per input), decoded the way TF Serving decodes it (row format: each named input of every
instance stacked along a new first axis; columnar: each input taken as it is), cast to the
signature's input dtypes and passed to ``tf.saved_model.load(path).signatures[name]``.
Scores are checked within the rounding-error bounds of ``tests/tolerances.py``; rankings with
:func:`tests.tolerances.assert_topk_consistent` (only exact scores closer than the bounds may
swap).
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from tests.tolerances import (
    U32, assert_rows_within, assert_topk_consistent, dot_tolerance, gamma, solve_tolerance,
)
from tests.trainer_fixtures import REPO, cpu_only, numpy_fold_in, random_ratings, write_dataset
from trainer import recommend, task
from trainer.export import SIGNATURES, latest_export, next_version, versions

NUSERS, NITEMS, F, LAM, ALPHA, CAP = 30, 17, 4, 0.5, 10.0, 1.0
USERS = [f"visitor {i}, ü" for i in range(NUSERS)]
ITEMS = [f"/p?id={j},x" for j in range(NITEMS)]
EMPTY_USER, EMPTY_ITEM = 5, 3  # no training interactions: zero factors


def _dense() -> np.ndarray:
    d = random_ratings(NUSERS, NITEMS, 0.25, 7)
    d[EMPTY_USER, :] = 0.0
    d[:, EMPTY_ITEM] = 0.0
    return d


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> pathlib.Path:
    """A trainer output dir (implicit objective) with its SavedModel."""
    root = tmp_path_factory.mktemp("serving")
    data = write_dataset(root / "prep", _dense(), USERS, ITEMS, rating_cap=CAP)
    out = root / "model"
    with cpu_only():
        rc = task.main(["--input_path", str(data), "--output_dir", str(out), "--objective", "implicit",
                        "--alpha", str(ALPHA), "--num_epochs", "3", "--n_embeds", str(F),
                        "--regularization", str(LAM), "--batch_size", "8", "--no_batch_pred",
                        "--no_progress"])
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def loaded(model) -> Any:
    import tensorflow as tf

    return tf.saved_model.load(latest_export(str(model)))


@pytest.fixture(scope="module")
def factors(model) -> tuple[np.ndarray, np.ndarray]:
    return np.load(model / "row_factors.npy"), np.load(model / "col_factors.npy")


# --------------------------------------------------------------------------- TF Serving's decoding
def _decode(sig: Any, body: str) -> dict[str, Any]:
    """The tensors TF Serving passes to the signature for the REST body ``body``."""
    import tensorflow as tf

    req = json.loads(body)
    specs = sig.structured_input_signature[1]
    if "instances" in req:  # row format: stack each named input along a new batch axis
        rows = req["instances"]
        assert all(set(r) == set(specs) for r in rows), "every instance names every input"
        cols = {name: np.stack([np.asarray(r[name]) for r in rows]) for name in specs}
    else:  # columnar format: each input already batched
        cols = {name: np.asarray(req["inputs"][name]) for name in specs}
    return {name: tf.constant(cols[name], dtype=specs[name].dtype) for name in specs}


def _call(loaded: Any, name: str, body: str) -> dict[str, np.ndarray]:
    sig = loaded.signatures[name]
    return {key: val.numpy() for key, val in sig(**_decode(sig, body)).items()}


def _dense_ids(names: np.ndarray, scores: np.ndarray, vocab: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Raw-ID answers → dense IDs (−1) and scores (−inf) in the padded slots."""
    ids = np.array([[vocab.index(n.decode()) if n else -1 for n in row] for row in names])
    return ids, np.where(ids >= 0, scores, -np.inf)


def _check_lists(r: dict, out_key: str, vocab: list[str], ks: list[int], exact: np.ndarray,
                 tau: np.ndarray, excluded: np.ndarray, empty: np.ndarray) -> None:
    """Each instance ``b``: ``count[b]`` valid slots, a correct top-``k[b]`` of ``exact[b]``
    within ``tau``, padding ``""`` / 0 after them."""
    ids, scores = _dense_ids(r[out_key], r["scores"], vocab)
    assert ids.shape == r["scores"].shape == (len(ks), min(max(ks), len(vocab)))
    for b, k in enumerate(ks):
        n = int(r["count"][b])
        assert np.all(ids[b, n:] == -1) and np.all(r["scores"][b, n:] == 0), b
        assert_topk_consistent(ids[b:b + 1, :k], scores[b:b + 1, :k], exact[b:b + 1], tau[b:b + 1],
                               excluded[b:b + 1], k, empty=empty[b:b + 1])
        assert np.all(ids[b, k:] == -1), b


def _instances(**cols: list) -> str:
    names = list(cols)
    return json.dumps({"instances": [dict(zip(names, vals)) for vals in zip(*cols.values())]})


def _inputs(**cols: list) -> str:
    return json.dumps({"inputs": cols})


# --------------------------------------------------------------------------- layout and shapes
def test_export_is_a_numeric_version_folder_named_in_the_summary(model):
    have = versions(str(model / "export"))
    assert len(have) == 1  # the run's stale-output cleanup removed export/ first
    assert json.loads((model / "training_summary.json").read_text())["outputs"]["export"] == f"export/{have[0]}"
    assert (model / "export" / str(have[0]) / "saved_model.pb").is_file()
    assert next_version(str(model / "export")) > have[0]  # a later export sorts after it
    for path in (model, model / "export", model / "export" / str(have[0])):
        assert latest_export(str(path)) == str(model / "export" / str(have[0]))
    assert latest_export(str(model / "vocab")) is None


def test_every_signature_input_and_output_has_a_leading_batch_dimension(loaded):
    assert set(loaded.signatures) == {*SIGNATURES, "serving_default"}
    for name, sig in loaded.signatures.items():
        for key, spec in sig.structured_input_signature[1].items():
            assert spec.shape.rank >= 1 and spec.shape[0] is None, (name, key, spec)
        assert sig.structured_input_signature[0] == ()  # keyword inputs only
        for key, spec in sig.structured_outputs.items():
            assert spec.shape.rank >= 1 and spec.shape[0] is None, (name, key, spec)


# --------------------------------------------------------------------------- recommend_*
def test_recommend_items_instances_equal_numpy_dot_topk_without_seen_items(loaded, factors):
    u, v = factors
    d = _dense()
    rows = [0, 7, EMPTY_USER, -1, 12, 29]  # -1: an unknown visitorId
    ks = [4, 1, 3, 5, NITEMS + 5, 2]
    names = [USERS[i] if i >= 0 else "nobody" for i in rows]
    r = _call(loaded, "recommend_items", _instances(visitor_ids=names, k=ks))
    assert r["known"].tolist() == [i >= 0 for i in rows]
    q = np.stack([u[i] if i >= 0 else np.zeros(F, np.float32) for i in rows])
    seen = np.stack([d[i] != 0 if i >= 0 else np.zeros(NITEMS, bool) for i in rows])
    empty = np.array([i < 0 or i == EMPTY_USER for i in rows])
    _check_lists(r, "content_ids", ITEMS, ks, q.astype(np.float64) @ v.T.astype(np.float64),
                 dot_tolerance(q, v, np.float32), seen, empty)
    assert r["count"][3] == 0 and list(r["content_ids"][3]) == [b""] * r["scores"].shape[1]
    # serving_default is recommend_items
    r2 = _call(loaded, "serving_default", _instances(visitor_ids=names, k=ks))
    for key in r:
        np.testing.assert_array_equal(r[key], r2[key])


def test_recommend_users_columnar_inputs_equal_numpy_dot_topk(loaded, factors):
    u, v = factors
    d = _dense()
    cols = [2, EMPTY_ITEM, 16, -1]
    ks = [3, 2, 6, 1]
    names = [ITEMS[j] if j >= 0 else "no-such-item" for j in cols]
    r = _call(loaded, "recommend_users", _inputs(content_ids=names, k=ks))
    assert r["known"].tolist() == [True, True, True, False]
    q = np.stack([v[j] if j >= 0 else np.zeros(F, np.float32) for j in cols])
    seen = np.stack([d[:, j] != 0 if j >= 0 else np.zeros(NUSERS, bool) for j in cols])
    empty = np.array([j < 0 or j == EMPTY_ITEM for j in cols])
    _check_lists(r, "visitor_ids", USERS, ks, q.astype(np.float64) @ u.T.astype(np.float64),
                 dot_tolerance(q, u, np.float32), seen, empty)


# --------------------------------------------------------------------------- similar_*
def _cosine_case(x: np.ndarray, rows: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(exact cosines, tolerance, excluded, empty) for the queries ``rows`` (−1: unknown).

    Model: unit rows computed in float64 (norm and division: each component relatively off by
    at most γ_{F+3}(u₆₄)), stored in float32 (one more u₃₂), dotted in float32 (γ_F(u₃₂) on
    ``|n̂_q|·|n̂_t|``). So ``|ŝ − s| ≤ ((1+u₃₂)²(1+γ_{F+3}(u₆₄))²(1+γ_F(u₃₂)) − 1)|n_q|·|n_t|``,
    plus γ_{2F+8}(u₆₄)|n_q|·|n_t| for the float64 oracle's own normalisation and dot product.
    Left out: the query itself and zero rows (no direction); unknown and zero queries get none.
    """
    x64 = x.astype(np.float64)
    norms = np.linalg.norm(x64, axis=1)
    unit = np.divide(x64, norms[:, None], out=np.zeros_like(x64), where=norms[:, None] > 0)
    q = np.stack([unit[i] if i >= 0 else np.zeros(x.shape[1]) for i in rows])
    exact = q @ unit.T
    rel = ((1 + U32) ** 2 * (1 + gamma(F + 3, np.float64)) ** 2 * (1 + gamma(F, np.float32)) - 1
           + gamma(2 * F + 8, np.float64))
    tau = rel * (np.abs(q) @ np.abs(unit).T)
    excluded = np.tile(norms == 0, (len(rows), 1))
    for b, i in enumerate(rows):
        if i >= 0:
            excluded[b, i] = True
    empty = np.array([i < 0 or norms[i] == 0 for i in rows])
    return exact, tau, excluded, empty


def test_similar_items_instances_equal_numpy_cosine_topk_without_the_item(loaded, factors):
    _, v = factors
    rows = [0, -1, EMPTY_ITEM, 9, 16]
    ks = [5, 3, 2, NITEMS, 1]
    names = [ITEMS[j] if j >= 0 else "not-an-item" for j in rows]
    r = _call(loaded, "similar_items", _instances(content_ids=names, k=ks))
    # the unknown ID is flagged, the rest of the batch answered
    assert r["known"].tolist() == [True, False, True, True, True]
    assert r["count"].tolist()[1:3] == [0, 0]
    assert r["count"][3] == NITEMS - 2  # every item but itself and the zero one
    _check_lists(r, "content_ids", ITEMS, ks, *_cosine_case(v, rows))


def test_similar_users_columnar_inputs_equal_numpy_cosine_topk(loaded, factors):
    u, _ = factors
    rows = [EMPTY_USER, 3, 22, -1]
    ks = [2, 4, 7, 2]
    names = [USERS[i] if i >= 0 else "who?" for i in rows]
    r = _call(loaded, "similar_users", _inputs(visitor_ids=names, k=ks))
    assert r["known"].tolist() == [True, True, True, False]
    _check_lists(r, "visitor_ids", USERS, ks, *_cosine_case(u, rows))


# --------------------------------------------------------------------------- fold_in
FOLD = [  # (items given, ratings): "" pads the shorter lists, "no-such-item" is unknown
    ([ITEMS[0], ITEMS[2], "no-such-item", ITEMS[0]], [0.5, 1.0, 0.3, 0.25]),
    ([ITEMS[5], "", "", ""], [3.0, 0.0, 0.0, 0.0]),  # 3.0 is clipped to the cap
    (["", "", "", ""], [0.0, 0.0, 0.0, 0.0]),  # nothing known: u = 0, no recommendations
]
FOLD_MERGED = [{0: 0.75, 2: 1.0}, {5: CAP}, {}]


def test_fold_in_padded_instances_equal_float64_closed_form(loaded, factors):
    _, v = factors
    ks = [6, 3, 2]
    body = _instances(content_ids=[c for c, _ in FOLD], ratings=[r for _, r in FOLD], k=ks)
    r = _call(loaded, "fold_in", body)
    assert r["embedding"].shape == (3, F)
    assert r["unknown_items"].tolist() == [1, 0, 0]
    assert r["clipped_ratings"].tolist() == [0, 1, 0]
    want = np.zeros((3, F))
    tol = np.zeros(3)
    for b, merged in enumerate(FOLD_MERGED):
        items, ratings = list(merged), list(merged.values())
        want[b] = numpy_fold_in(v, items, ratings, "implicit", LAM, alpha=ALPHA)
        target, weights = np.zeros((1, NITEMS)), np.ones((1, NITEMS))
        for j, x in merged.items():
            target[0, j], weights[0, j] = float(x > 0), 1.0 + ALPHA * x
        tol[b] = solve_tolerance(v, target, weights, LAM, np.float64, output_dtype=np.float32)[0]
    assert tol[2] == 0 and np.all(r["embedding"][2] == 0)  # b = 0: exactly zero
    assert_rows_within(r["embedding"], want, tol, "fold_in embeddings")
    seen = np.zeros((3, NITEMS), bool)
    for b, merged in enumerate(FOLD_MERGED):
        seen[b, list(merged)] = True
    _check_lists(r, "content_ids", ITEMS, ks, want @ v.T.astype(np.float64),
                 dot_tolerance(want, v, np.float32, q_err=tol), seen, np.array([False, False, True]))
    # the columnar form of the same request gives the same answer
    r2 = _call(loaded, "fold_in", _inputs(content_ids=[c for c, _ in FOLD],
                                          ratings=[x for _, x in FOLD], k=ks))
    for key in r:
        np.testing.assert_array_equal(r[key], r2[key])


@pytest.mark.parametrize("ratings,k,match", [
    ([[0.5, 0.0], [float("nan"), 0.0]], [2, 2], "NaN"),
    ([[0.5, 0.0], [0.5, -1.0]], [2, 2], "negative"),  # in a padding slot: refused too
    ([[0.5, 0.0], [0.5, 0.0]], [2, 0], "k must be >= 1"),
    ([[0.5, 0.0], [0.5, 0.0]], [2], "one value per instance"),
])
def test_fold_in_refuses_bad_requests(loaded, ratings, k, match):
    import tensorflow as tf

    with pytest.raises(tf.errors.InvalidArgumentError, match=match):
        loaded.signatures["fold_in"](content_ids=tf.constant([[ITEMS[1], ""], [ITEMS[2], ""]]),
                                     ratings=tf.constant(ratings, tf.float32), k=tf.constant(k))


# --------------------------------------------------------------------------- command line
def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), CUDA_VISIBLE_DEVICES="")
    return subprocess.run([sys.executable, "-m", "trainer.recommend", *args], env=env,
                          capture_output=True, text=True, timeout=180)


def _parse(stdout: str, vocab: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
    lines = [line.split("\t") for line in stdout.split("\n")[:-1]] if stdout else []
    assert all(len(f) == 2 for f in lines), stdout
    ids = np.full((1, k), -1)
    scores = np.full((1, k), -np.inf)
    ids[0, :len(lines)] = [vocab.index(name) for name, _ in lines]
    scores[0, :len(lines)] = [float(s) for _, s in lines]
    return ids, scores


def test_cli_recommends_items_for_a_visitor(model, factors):
    u, v = factors
    user, k = 11, 4
    proc = _cli("--model_dir", str(model), "--visitor_id", USERS[user], "--k", str(k))
    assert proc.returncode == 0, proc.stderr
    ids, scores = _parse(proc.stdout, ITEMS, k)
    assert_topk_consistent(ids, scores, u[user:user + 1].astype(np.float64) @ v.T.astype(np.float64),
                           dot_tolerance(u[user:user + 1], v, np.float32), (_dense()[user] != 0)[None], k)


def test_cli_similar_items_from_the_version_folder(model, factors):
    _, v = factors
    item, k = 7, 5
    folder = latest_export(str(model))
    proc = _cli("--model_dir", folder, "--similar_to", ITEMS[item], "--k", str(k))
    assert proc.returncode == 0, proc.stderr
    ids, scores = _parse(proc.stdout, ITEMS, k)
    exact, tau, excluded, empty = _cosine_case(v, [item])
    assert_topk_consistent(ids, scores, exact, tau, excluded, k, empty=empty)


def test_cli_unknown_id_exits_2_with_one_line(model):
    proc = _cli("--model_dir", str(model), "--similar_to", "no-such-item")
    assert proc.returncode == 2 and proc.stdout == ""
    # TensorFlow's own start-up lines may come first (its C++ logging ignores
    # TF_CPP_MIN_LOG_LEVEL before absl is initialised); ours is one line, the last
    err = proc.stderr.strip().splitlines()
    assert [line for line in err if line.startswith("error:")] == err[-1:], proc.stderr
    assert err[-1].startswith("error: unknown contentId 'no-such-item': not in the model's vocabulary")


def test_cli_missing_model_and_bad_flags_exit_2(tmp_path, capsys, model):
    assert recommend.main(["--model_dir", str(tmp_path), "--visitor_id", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no exported SavedModel in"), err
    assert recommend.main(["--model_dir", str(model), "--visitor_id", "nobody"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown visitorId 'nobody'")
    for bad in (["--model_dir", str(model)], ["--model_dir", str(model), "--visitor_id", "a", "--similar_to", "b"],
                ["--model_dir", str(model), "--visitor_id", USERS[0], "--k", "0"]):
        with pytest.raises(SystemExit) as e:
            recommend.main(bad)
        assert e.value.code == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
