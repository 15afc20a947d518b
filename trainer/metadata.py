"""Reads and validates ``metadata.json`` (contract: ``schemas/metadata.md``) and the vocabularies.

All paths inside ``metadata.json`` are relative to the directory that holds it; this module
returns them resolved (local paths or ``gs://`` URLs).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from schemas import records

from trainer import fileio
from trainer.errors import TrainerInputError

_COMPRESSION = {"NONE": "", "GZIP": "GZIP", "ZLIB": "ZLIB"}


@dataclass(frozen=True)
class Metadata:
    """The parts of ``metadata.json`` the trainer uses, with resolved paths."""

    path: str
    nusers: int
    nitems: int
    ninteractions: int
    user_vocabulary: str
    item_vocabulary: str
    items_for_user: list[str]
    users_for_item: list[str]
    compression: str  # tf.data compression_type: "", "GZIP" or "ZLIB"
    raw: dict[str, Any] = field(repr=False, default_factory=dict)
    # held-out split (optional): test shards, same schema and dense IDs as items_for_user;
    # [] and None when the preprocessing made no split (or predates it)
    test_items_for_user: list[str] = field(default_factory=list)
    split: dict[str, Any] | None = None


def metadata_path(input_path: str) -> str:
    """``--input_path`` may name the directory or the ``metadata.json`` file itself."""
    if input_path.rstrip("/").endswith(".json"):
        return input_path
    return fileio.join(input_path, records.METADATA_FILE)


def load_metadata(input_path: str) -> Metadata:
    path = metadata_path(input_path)
    if not fileio.exists(path):
        raise TrainerInputError(
            f"missing {path}: --input_path must be the preprocessing output directory "
            f"(the one holding {records.METADATA_FILE})"
        )
    try:
        raw = json.loads(fileio.read_text(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TrainerInputError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(raw, dict):
        raise TrainerInputError(f"{path}: expected a JSON object")
    root = fileio.dirname(path)

    def get_int(name: str, minimum: int) -> int:
        v = raw.get(name)
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise TrainerInputError(f"{path}: '{name}' must be an integer >= {minimum}, got {v!r}")
        return v

    def get_str(name: str) -> str:
        v = raw.get(name)
        if not isinstance(v, str) or not v:
            raise TrainerInputError(f"{path}: '{name}' must be a non-empty string, got {v!r}")
        return fileio.resolve(root, v)

    def get_files(name: str) -> list[str]:
        v = raw.get(name)
        if not isinstance(v, list) or not v or not all(isinstance(s, str) and s for s in v):
            raise TrainerInputError(f"{path}: '{name}' must be a non-empty list of shard files")
        files = [fileio.resolve(root, s) for s in v]
        missing = [f for f in files if not fileio.exists(f)]
        if missing:
            raise TrainerInputError(f"{path}: '{name}' lists missing shard(s): {missing[:3]}")
        return files

    def get_optional_files(name: str) -> list[str]:
        v = raw.get(name)
        if v is None or v == []:
            return []
        if not isinstance(v, list):
            raise TrainerInputError(f"{path}: '{name}' must be a list of shard files, got {v!r}")
        return get_files(name)

    split = raw.get("split")
    if split is not None and not isinstance(split, dict):
        raise TrainerInputError(f"{path}: 'split' must be a JSON object, got {split!r}")

    compression = raw.get("record_compression", "NONE")
    if compression not in _COMPRESSION:
        raise TrainerInputError(
            f"{path}: record_compression {compression!r} not one of {sorted(_COMPRESSION)}"
        )
    md = Metadata(
        path=path,
        nusers=get_int("nusers", 1),
        nitems=get_int("nitems", 1),
        ninteractions=get_int("ninteractions", 1),
        user_vocabulary=get_str("user_vocabulary"),
        item_vocabulary=get_str("item_vocabulary"),
        items_for_user=get_files(records.ITEMS_FOR_USER),
        users_for_item=get_files(records.USERS_FOR_ITEM),
        compression=_COMPRESSION[compression],
        raw=raw,
        test_items_for_user=get_optional_files(records.TEST_ITEMS_FOR_USER),
        split=split,
    )
    return md


def read_vocabulary(path: str, expected_size: int, what: str) -> list[str]:
    """Line ``i`` (0-based) is the raw ID of dense ID ``i``. Checks the size and uniqueness."""
    if not fileio.exists(path):
        raise TrainerInputError(f"missing {what} vocabulary file {path}")
    text = fileio.read_text(path)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) != expected_size:
        raise TrainerInputError(
            f"{what} vocabulary {path} has {len(lines)} lines, metadata says {expected_size}"
        )
    if len(set(lines)) != len(lines):
        raise TrainerInputError(f"{what} vocabulary {path} has duplicate IDs")
    if any(line == "" for line in lines):
        raise TrainerInputError(f"{what} vocabulary {path} has an empty line")
    return lines
