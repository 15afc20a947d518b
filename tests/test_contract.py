"""The preprocess/trainer contract (``schemas/contract.py``): what the writer writes is what the
contract lists and what the reader accepts, and the trainer refuses an unknown format_version."""
from __future__ import annotations

import json
import os
import pathlib
import runpy
import shutil
import subprocess
import sys

import pytest

from schemas import contract
from schemas.contract import MetadataKey as K
from tests.pipelines import run_preprocess

REPO = pathlib.Path(__file__).resolve().parents[1]

# one visitor with two items, one with one: the smallest input with a non-trivial matrix
ROWS = [("visitor-a", "item-1", 1000), ("visitor-a", "item-2", 2000), ("visitor-b", "item-1", 3000)]
TRAIN_FAST = ["--num_epochs", "1", "--n_embeds", "2", "--no_export", "--no_batch_pred", "--no_progress"]


@pytest.fixture(scope="module")
def tiny_output(tmp_path_factory) -> pathlib.Path:
    """A preprocessing output of a 3-row interactions_csv, written by ``python -m preprocess``."""
    root = tmp_path_factory.mktemp("contract")
    csv_path = root / "interactions.csv"
    csv_path.write_text(
        ",".join(contract.INTERACTION_COLUMNS) + "\n"
        + "".join(f"{v},{c},{d}\n" for v, c, d in ROWS),
        encoding="utf-8",
    )
    out = root / "out"
    run_preprocess("--input", str(csv_path), "--input_format", "interactions_csv",
                   "--output_dir", str(out))
    return out


def _metadata(root: pathlib.Path) -> dict:
    return json.loads((root / contract.METADATA_FILE).read_text(encoding="utf-8"))


def test_schemas_import_neither_beam_nor_tensorflow():
    code = ("import sys, schemas, schemas.contract, schemas.records; "
            "heavy = [m for m in sys.modules if m.split('.')[0] in "
            "('apache_beam', 'tensorflow', 'tensorflow_transform', 'tfx_bsl', 'numpy')]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_trainer_only_package_ships_schemas(monkeypatch):
    """``GA_RECS_TRAINER_ONLY=1``: the lean package holds ``schemas`` next to ``trainer``."""
    import setuptools

    captured: dict = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kw: captured.update(kw))
    monkeypatch.setenv("GA_RECS_TRAINER_ONLY", "1")
    runpy.run_path(str(REPO / "setup.py"))
    assert set(captured["packages"]) == {"trainer", "schemas"}


def test_preprocess_writes_exactly_the_contract_keys(tiny_output):
    meta = _metadata(tiny_output)
    assert set(meta) == contract.WRITTEN_KEYS
    for key, kind in contract.METADATA_TYPES.items():
        assert isinstance(meta[key], kind) and not isinstance(meta[key], bool), (key, meta[key])
    assert set(meta[K.RATING]) == contract.RATING_KEYS
    assert set(meta[K.SPLIT]) == contract.SPLIT_KEYS
    assert set(meta[K.DATES]) == contract.DATES_KEYS
    assert meta[K.FORMAT_VERSION] == contract.FORMAT_VERSION
    assert meta[K.RECORD_COMPRESSION] == contract.RECORD_COMPRESSION
    assert meta[K.RATING][contract.RatingKey.FORMULA] == contract.RATING_FORMULA
    assert (meta[K.NUSERS], meta[K.NITEMS], meta[K.NINTERACTIONS]) == (2, 2, 3)


def test_metadata_md_describes_every_key():
    text = (REPO / "schemas" / "metadata.md").read_text(encoding="utf-8")
    for key in contract.WRITTEN_KEYS | contract.RATING_KEYS | contract.SPLIT_KEYS | contract.DATES_KEYS:
        assert f'"{key}":' in text, key


def test_preprocess_output_follows_the_contract_layout(tiny_output):
    meta = _metadata(tiny_output)
    assert meta[K.USER_VOCABULARY] == contract.USER_VOCABULARY_PATH
    assert meta[K.ITEM_VOCABULARY] == contract.ITEM_VOCABULARY_PATH
    assert meta[K.TRANSFORM_OUTPUT] == contract.TRANSFORM_OUTPUT
    assert meta[K.TEST_ITEMS_FOR_USER] == []  # no --test_fraction
    for prefix in (contract.USERS_FOR_ITEM, contract.ITEMS_FOR_USER):
        assert meta[prefix], prefix
        for shard in meta[prefix]:
            assert shard.startswith(prefix + "-") and shard.endswith(contract.RECORD_SUFFIX), shard
            assert (tiny_output / shard).is_file()
    for path in (contract.METADATA_FILE, contract.OUTPUT_MARKER, contract.USER_VOCABULARY_PATH,
                 contract.ITEM_VOCABULARY_PATH, f"{contract.STATS_DIR}/{contract.MEDIAN_FILE}"):
        assert (tiny_output / path).is_file(), path
    for folder in (contract.TRANSFORM_OUTPUT, contract.DROPPED_DIR):
        assert (tiny_output / folder).is_dir(), folder
    vocabulary = (tiny_output / contract.USER_VOCABULARY_PATH).read_text(encoding="utf-8").split()
    assert sorted(vocabulary) == ["visitor-a", "visitor-b"]


def test_trainer_reads_what_preprocess_writes(tiny_output):
    from trainer.data import load_training_data
    from trainer.metadata import load_metadata, read_vocabulary

    md = load_metadata(str(tiny_output))
    assert (md.nusers, md.nitems, md.ninteractions) == (2, 2, 3)
    assert md.test_items_for_user == [] and md.rating_cap == 1.0
    data = load_training_data(md)
    assert data.user_items.nnz == data.item_users.nnz == 3
    users = read_vocabulary(md.user_vocabulary, md.nusers, "user")
    items = read_vocabulary(md.item_vocabulary, md.nitems, "item")
    dense = data.user_items.to_dense()
    for visitor, item, _ in ROWS:
        assert dense[users.index(visitor), items.index(item)] > 0


def test_readers_and_other_writers_use_the_contract_names():
    """The pipeline's interactions reader and its tf.Transform vocabulary names agree with the
    contract."""
    from preprocess import sources, transform

    assert tuple(sources.ParseInteractionFn.COLUMNS) == contract.INTERACTION_COLUMNS
    assert (transform.USER_VOCABULARY, transform.ITEM_VOCABULARY) == (
        contract.USER_VOCABULARY_NAME, contract.ITEM_VOCABULARY_NAME)


def test_the_sql_returns_the_interaction_columns(tmp_path):
    """Both BigQuery queries, run by DuckDB on a small sample, return exactly the columns the
    pipeline's BigQuery reader and the interactions_csv reader take (the interaction columns,
    then the optional date columns)."""
    import duckdb

    from preprocess import ga4, sources
    from preprocess.sample_data import write_sample

    def columns(query: str) -> tuple[str, ...]:
        result = con.execute(query)
        assert result.fetchall(), "the sample gave no rows"
        return tuple(c[0] for c in result.description)

    con = duckdb.connect()
    ga360 = write_sample(str(tmp_path / "ga360.json"), n_visitors=20)
    table = f"read_json('{ga360}', format='newline_delimited')"
    assert columns(sources.build_query(table)) == contract.SQL_COLUMNS
    events = write_sample(str(tmp_path / "ga4.json"), n_visitors=20, schema="ga4")
    table = f"read_json('{events}', format='newline_delimited')"
    for duration in ga4.DURATIONS:
        assert columns(ga4.build_query(table, duration=duration)) == contract.SQL_COLUMNS


def test_other_writers_write_a_subset_the_trainer_reads(tmp_path):
    """The trainer tests' fixture and the pandas benchmark peer write metadata.json too."""
    import numpy as np

    from benchmarks import preprocess_pandas
    from preprocess.sample_data import write_sample
    from tests.trainer_fixtures import write_dataset
    from trainer.metadata import load_metadata

    fixture = write_dataset(tmp_path / "fixture", np.eye(3, dtype=np.float32) * 0.5)
    sample = write_sample(str(tmp_path / "ga360.json"), n_visitors=30)
    peer = tmp_path / "peer"
    preprocess_pandas.run(sample, str(peer))
    for root in (fixture, peer):
        meta = _metadata(root)
        assert contract.REQUIRED_KEYS <= set(meta) <= contract.WRITTEN_KEYS, root
        assert meta[K.FORMAT_VERSION] in contract.KNOWN_FORMAT_VERSIONS
        load_metadata(str(root))


@pytest.mark.parametrize("version", [None, 999, 0, "1", True, 1.0])
def test_load_metadata_refuses_a_missing_or_unknown_format_version(tiny_output, tmp_path, version):
    from trainer.errors import TrainerInputError
    from trainer.metadata import load_metadata

    copy = pathlib.Path(shutil.copytree(tiny_output, tmp_path / "copy"))
    meta = _metadata(copy)
    if version is None:
        del meta[K.FORMAT_VERSION]
    else:
        meta[K.FORMAT_VERSION] = version
    (copy / contract.METADATA_FILE).write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(TrainerInputError, match="format_version"):
        load_metadata(str(copy))


def test_trainer_exits_2_on_an_unknown_format_version(tiny_output, tmp_path):
    """``python -m trainer.task`` on an output with format_version 999: exit status 2 and one
    error line that names format_version; nothing written."""
    copy = pathlib.Path(shutil.copytree(tiny_output, tmp_path / "prep"))
    meta = _metadata(copy)
    meta[K.FORMAT_VERSION] = 999
    (copy / contract.METADATA_FILE).write_text(json.dumps(meta), encoding="utf-8")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.task", "--input_path", str(copy),
         "--output_dir", str(tmp_path / "model"), *TRAIN_FAST],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, proc.stderr
    assert "format_version" in errors[0] and "999" in errors[0], errors[0]
    assert not (tmp_path / "model").exists()
