"""The held-out split (--test_fraction): the rule, and the pipeline's train/test records
against a pandas re-implementation of the documented rule on the real GA export."""
from __future__ import annotations

import os

import numpy as np
import pytest

from preprocess.split import held_out_flags, uniform_hash
from tests import oracles
from tests.pipelines import SHARED_CSV, require_shared, run_preprocess, shared_csv_hits
from tests.split_reference import reference_draw, reference_split

FRACTION, SEED = 0.3, 7


def test_single_interaction_users_stay_in_training():
    for visitor in ("a", "b", "c"):
        assert held_out_flags(visitor, ["x"], 0.99) == [False]
    assert held_out_flags("a", [], 0.5) == []


def test_a_user_always_keeps_one_training_interaction():
    items = [f"item{i}" for i in range(5)]
    flags = held_out_flags("v", items, 0.999999)  # every draw is below the fraction
    assert flags.count(False) == 1
    kept = items[flags.index(False)]
    assert kept == max(items, key=lambda i: reference_draw(0, "v", i))


def test_draws_match_the_documented_hash_and_are_uniform():
    pairs = [(f"v{n}", f"i{n % 97}") for n in range(20_000)]
    draws = np.array([uniform_hash(3, v, i) for v, i in pairs])
    assert np.array_equal(draws, [reference_draw(3, v, i) for v, i in pairs])
    # Uniform on [0, 1): each decile holds 10% +- 5 standard deviations.
    counts, _ = np.histogram(draws, bins=10, range=(0, 1))
    assert np.all(np.abs(counts - 2000) < 5 * np.sqrt(2000 * 0.1 * 0.9))
    assert not np.array_equal(draws, [uniform_hash(4, v, i) for v, i in pairs])  # seed matters


def test_zero_fraction_holds_out_nothing(bundled_output):
    meta = oracles.pipeline_output(bundled_output)["metadata"]
    assert meta["test_items_for_user"] == []
    assert meta["split"]["test_fraction"] == 0.0 and meta["split"]["test_interactions"] == 0


@pytest.fixture(scope="module")
def split_output(tmp_path_factory) -> str:
    """The shared GA export cut into two input files, held out with 3 output shards."""
    folder = tmp_path_factory.mktemp("split_in")
    lines = require_shared(SHARED_CSV).read_text().splitlines()
    header, rows = lines[0], lines[1:]
    for part, chunk in enumerate((rows[: len(rows) // 2], rows[len(rows) // 2:])):
        (folder / f"part{part}.csv").write_text("\n".join([header, *chunk]) + "\n")
    out = str(tmp_path_factory.mktemp("split_out"))
    run_preprocess("--input", str(folder / "part*.csv"), "--input_format", "hits_csv",
                   "--item_field", "productSKU", "--output_dir", out, "--num_shards", "3",
                   "--test_fraction", str(FRACTION), "--split_seed", str(SEED))
    return out


def test_train_and_test_records_follow_the_rule(split_output):
    expected, median = oracles.ratings(oracles.durations_from_hits(shared_csv_hits()))
    held = reference_split(expected, FRACTION, SEED)
    train, held_rows = expected[~held], expected[held]
    train_items = set(train["contentId"])
    test = held_rows[held_rows["contentId"].isin(train_items)]

    output = oracles.pipeline_output(split_output)
    meta = output["metadata"]
    oracles.assert_same_ratings(output["items_for_user"], train)
    oracles.assert_same_ratings(output["users_for_item"], train)
    oracles.assert_same_ratings(output["test_items_for_user"], test)
    # The vocabularies hold training rows only; test rows use the same dense IDs.
    assert set(output["items"]) == train_items and meta["nitems"] == len(train_items)
    assert set(output["users"]) == set(train["visitorId"])
    assert meta["median_duration"] == pytest.approx(median, rel=1e-12)  # over all interactions

    split = meta["split"]
    assert split["test_fraction"] == FRACTION and split["seed"] == SEED
    assert split["held_out_interactions"] == int(held.sum())
    assert split["test_interactions"] == len(test)
    assert split["test_users"] == test["visitorId"].nunique() == len(output["test_items_for_user_keys"])
    assert split["test_dropped_unseen_item"] == len(held_rows) - len(test) == meta["dropped"]["held_out_unseen_item"]
    assert meta["ninteractions"] == len(train)
    assert len(meta["test_items_for_user"]) == 3
    assert all(os.path.exists(os.path.join(split_output, p)) for p in meta["test_items_for_user"])
    # A real split: about FRACTION of the interactions of users with 2+ interactions.
    multi = expected.groupby("visitorId")["contentId"].transform("size") >= 2
    assert 0.8 * FRACTION < held[multi].mean() < 1.1 * FRACTION
