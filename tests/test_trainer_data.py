"""Reading metadata.json + TFRecord shards, and the clear errors for bad input."""
from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest



from tests.trainer_fixtures import random_ratings, write_dataset, write_records

from schemas import records
from trainer.data import load_training_data, read_shards
from trainer.errors import TrainerInputError
from trainer.metadata import load_metadata, read_vocabulary


def _dense() -> np.ndarray:
    d = random_ratings(12, 8, 0.35, 0)
    d[3, :] = 0.0  # a user without interactions has no record
    d[0, 0] = 0.25
    return d


@pytest.fixture()
def dataset(tmp_path: pathlib.Path) -> pathlib.Path:
    return write_dataset(tmp_path / "out", _dense(), nshards=3)


def _meta(root: pathlib.Path) -> dict:
    return json.loads((root / records.METADATA_FILE).read_text())


def _set_meta(root: pathlib.Path, **kw) -> None:
    m = _meta(root)
    m.update(kw)
    (root / records.METADATA_FILE).write_text(json.dumps(m))


def test_reads_both_orientations_equal_to_dense(dataset):
    md = load_metadata(str(dataset))
    assert (md.nusers, md.nitems) == (12, 8)
    data = load_training_data(md)
    np.testing.assert_array_equal(data.user_items.to_dense(), _dense())
    np.testing.assert_array_equal(data.item_users.to_dense(), _dense().T)
    # metadata.json given as a file works too
    assert load_metadata(str(dataset / records.METADATA_FILE)).nusers == 12
    users = read_vocabulary(md.user_vocabulary, md.nusers, "user")
    assert users[5] == "visitor-0005"


def test_an_empty_shard_among_others_is_fine(dataset):
    m = _meta(dataset)
    write_records(dataset / "items_for_user-empty.tfrecord", [])
    m[records.ITEMS_FOR_USER].append("items_for_user-empty.tfrecord")
    (dataset / records.METADATA_FILE).write_text(json.dumps(m))
    data = load_training_data(load_metadata(str(dataset)))
    np.testing.assert_array_equal(data.user_items.to_dense(), _dense())


def test_missing_metadata(tmp_path):
    with pytest.raises(TrainerInputError, match="missing .*metadata.json"):
        load_metadata(str(tmp_path))


@pytest.mark.parametrize(
    "change,match",
    [
        ({"nusers": 0}, "nusers"),
        ({"nitems": "8"}, "nitems"),
        ({records.ITEMS_FOR_USER: []}, "items_for_user"),
        ({records.USERS_FOR_ITEM: ["nope.tfrecord"]}, "missing shard"),
        ({"record_compression": "LZ4"}, "record_compression"),
        ({"user_vocabulary": ""}, "user_vocabulary"),
        ({"median_duration": -1.0}, "median_duration"),
        ({"median_duration": "41000"}, "median_duration"),
        ({"rating": {"scale": 0.3}}, "'rating' must be an object with a finite 'cap'"),
        ({"rating": {"scale": 0.3, "cap": 0}}, "'cap' > 0"),
        ({"rating": {"scale": -2, "cap": 1.0}}, "scale"),
        ({"rating": [1.0]}, "'rating'"),
    ],
)
def test_bad_metadata(dataset, change, match):
    _set_meta(dataset, **change)
    with pytest.raises(TrainerInputError, match=match):
        load_metadata(str(dataset))


def test_metadata_not_json(dataset):
    (dataset / records.METADATA_FILE).write_text("{not json")
    with pytest.raises(TrainerInputError, match="not valid JSON"):
        load_metadata(str(dataset))


def test_all_shards_empty(tmp_path):
    write_records(tmp_path / "a.tfrecord", [])
    write_records(tmp_path / "b.tfrecord", [])
    with pytest.raises(TrainerInputError, match="no records"):
        read_shards([str(tmp_path / "a.tfrecord"), str(tmp_path / "b.tfrecord")], 3, 3)


@pytest.mark.parametrize(
    "rows,match",
    [
        ([(0, [1], [0.5]), (1, [3], [0.5])], "column id 3 out of range"),
        ([(0, [1], [0.5]), (5, [0], [0.5])], "key 5 out of range"),
        ([(0, [-1], [0.5])], "out of range"),
        ([(0, [1], [0.5]), (0, [2], [0.5])], "key 0 appears in 2 records"),
        ([(0, [1, 2], [0.5])], "2 indices but 1 values"),
        ([(1, [1, 1], [0.5, 0.2])], "duplicate entry"),
        ([(0, [1], [float("nan")])], "NaN"),
        ([(0, [0, 1], [1.0, float("inf")])], "inf"),
    ],
)
def test_bad_records(tmp_path, rows, match):
    f = tmp_path / "x.tfrecord"
    write_records(f, rows)
    with pytest.raises(TrainerInputError, match=match):
        read_shards([str(f)], 3, 3)


def test_corrupt_shard(tmp_path):
    f = tmp_path / "x.tfrecord"
    write_records(f, [(0, [1], [0.5]), (1, [2], [0.5])])
    f.write_bytes(f.read_bytes()[:-7])  # truncated file
    with pytest.raises(TrainerInputError, match="unreadable"):
        read_shards([str(f)], 3, 3)


def test_inconsistent_orientations_and_counts(dataset):
    d = _dense()
    d2 = d.copy()
    d2[0, 0] = 0.5  # users_for_item disagrees in one value
    other = write_dataset(dataset.parent / "other", d2)
    _set_meta(dataset, **{records.USERS_FOR_ITEM: [str(p) for p in sorted(other.glob("users_for_item-*"))]})
    with pytest.raises(TrainerInputError, match="not the transpose"):
        load_training_data(load_metadata(str(dataset)))
    fresh = write_dataset(dataset.parent / "fresh", d)
    _set_meta(fresh, ninteractions=int(np.count_nonzero(d)) + 1)
    with pytest.raises(TrainerInputError, match="ninteractions"):
        load_training_data(load_metadata(str(fresh)))


def test_bad_vocabulary(dataset):
    md = load_metadata(str(dataset))
    with pytest.raises(TrainerInputError, match="has 12 lines, metadata says 13"):
        read_vocabulary(md.user_vocabulary, 13, "user")
    pathlib.Path(md.user_vocabulary).write_text("a\nb\na\n")
    with pytest.raises(TrainerInputError, match="duplicate"):
        read_vocabulary(md.user_vocabulary, 3, "user")


def test_metadata_non_finite_numbers_and_directories(dataset):
    text = (dataset / records.METADATA_FILE).read_text()
    (dataset / records.METADATA_FILE).write_text(text.replace('"median_duration": 1000.0', '"median_duration": NaN'))
    with pytest.raises(TrainerInputError, match="non-finite number NaN"):
        load_metadata(str(dataset))
    (dataset / records.METADATA_FILE).write_text(text)
    assert load_metadata(str(dataset)).rating_cap == 1.0
    (dataset / records.METADATA_FILE).unlink()
    (dataset / records.METADATA_FILE).mkdir()
    with pytest.raises(TrainerInputError, match="is a directory"):
        load_metadata(str(dataset))


def test_vocabulary_ids_with_control_characters_are_refused(dataset):
    md = load_metadata(str(dataset))
    ok = ["a,b", " c ", "ü", "no\u00a0break"]  # commas, spaces, non-ASCII are fine
    pathlib.Path(md.user_vocabulary).write_text("".join(n + "\n" for n in ok), encoding="utf-8")
    assert read_vocabulary(md.user_vocabulary, 4, "user") == ok
    for bad in ["tab\there", "cr\rhere", "nel\x85here", "ls\u2028here"]:
        pathlib.Path(md.user_vocabulary).write_text(f"a\n{bad}\n", encoding="utf-8")
        with pytest.raises(TrainerInputError, match="line 2 holds"):
            read_vocabulary(md.user_vocabulary, 2, "user")
