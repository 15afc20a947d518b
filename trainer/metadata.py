"""Reads and validates ``metadata.json`` and the vocabularies.

The contract: ``schemas/contract.py`` (format version, keys, layout), described in
``schemas/metadata.md``. All paths inside ``metadata.json`` are relative to the directory that
holds it; this module returns them resolved (local paths or ``gs://`` URLs).
"""
from __future__ import annotations

import json
import math
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from schemas import contract
from schemas.contract import MetadataKey as K, RatingKey

from trainer import fileio
from trainer.errors import TrainerInputError

# metadata.json's record_compression -> tf.data's compression_type
_COMPRESSION = {name: "" if name == "NONE" else name for name in contract.RECORD_COMPRESSIONS}


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
    # the largest rating the preprocessing produces (the "rating" block's cap); None when
    # metadata.json has no rating block (outputs that predate it)
    rating_cap: float | None = None


def metadata_path(input_path: str) -> str:
    """``--input_path`` may name the directory or the ``metadata.json`` file itself."""
    if input_path.rstrip("/").endswith(".json"):
        return input_path
    return fileio.join(input_path, contract.METADATA_FILE)


def _no_constants(name: str) -> Any:
    """``json.loads`` hook for ``NaN``, ``Infinity``, ``-Infinity`` (not JSON, but Python's
    parser accepts them): no number in metadata.json may be non-finite."""
    raise TrainerInputError(f"non-finite number {name}")


def _positive_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            and v > 0)


def check_format_version(raw: dict[str, Any], path: str) -> None:
    """Refuses a ``metadata.json`` whose ``format_version`` is missing or not one this trainer
    reads (``contract.KNOWN_FORMAT_VERSIONS``): its other keys may mean something else."""
    version = raw.get(K.FORMAT_VERSION)
    known = sorted(contract.KNOWN_FORMAT_VERSIONS)
    if isinstance(version, int) and not isinstance(version, bool) and version in known:
        return
    found = "is missing" if K.FORMAT_VERSION not in raw else f"is {version!r}"
    raise TrainerInputError(
        f"{path}: '{K.FORMAT_VERSION}' {found}; this trainer reads format_version "
        f"{' or '.join(map(str, known))}: rerun the preprocessing of this checkout "
        "(python -m preprocess) or use the trainer that matches the output"
    )


def load_metadata(input_path: str) -> Metadata:
    """Reads and checks ``metadata.json`` (``input_path``: its directory or the file).

    Raises
    ------
    TrainerInputError
        Missing, a directory, not JSON, a non-finite number, an unknown ``format_version``,
        or a field that is missing, of the wrong type or out of range (the message names the
        file and the field).
    """
    path = metadata_path(input_path)
    if not fileio.exists(path):
        raise TrainerInputError(
            f"missing {path}: --input_path must be the preprocessing output directory "
            f"(the one holding {contract.METADATA_FILE})"
        )
    if fileio.isdir(path):
        raise TrainerInputError(f"{path} is a directory; expected the {contract.METADATA_FILE} file")
    try:
        raw = json.loads(fileio.read_text(path), parse_constant=_no_constants)
    except json.JSONDecodeError as e:
        raise TrainerInputError(f"{path} is not valid JSON: {e}") from e
    except TrainerInputError as e:
        raise TrainerInputError(f"{path}: {e} (JSON numbers must be finite)") from e
    if not isinstance(raw, dict):
        raise TrainerInputError(f"{path}: expected a JSON object")
    check_format_version(raw, path)
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
        dirs = [f for f in files if fileio.isdir(f)]
        if dirs:
            raise TrainerInputError(f"{path}: '{name}' lists a directory, not a shard file: {dirs[0]}")
        return files

    def get_optional_files(name: str) -> list[str]:
        v = raw.get(name)
        if v is None or v == []:
            return []
        if not isinstance(v, list):
            raise TrainerInputError(f"{path}: '{name}' must be a list of shard files, got {v!r}")
        return get_files(name)

    split = raw.get(K.SPLIT)
    if split is not None and not isinstance(split, dict):
        raise TrainerInputError(f"{path}: '{K.SPLIT}' must be a JSON object, got {split!r}")

    # median_duration only scales ratings in the preprocessing; a non-finite or non-positive
    # one means the ratings themselves are suspect
    if K.MEDIAN_DURATION in raw and not _positive_number(raw[K.MEDIAN_DURATION]):
        raise TrainerInputError(
            f"{path}: '{K.MEDIAN_DURATION}' must be a finite number > 0, "
            f"got {raw[K.MEDIAN_DURATION]!r}"
        )
    rating_cap = None
    rating = raw.get(K.RATING)
    if rating is not None:
        if not isinstance(rating, dict) or not _positive_number(rating.get(RatingKey.CAP)):
            raise TrainerInputError(
                f"{path}: '{K.RATING}' must be an object with a finite '{RatingKey.CAP}' > 0, "
                f"got {rating!r}"
            )
        if RatingKey.SCALE in rating and not _positive_number(rating[RatingKey.SCALE]):
            raise TrainerInputError(
                f"{path}: rating '{RatingKey.SCALE}' must be a finite number > 0, "
                f"got {rating[RatingKey.SCALE]!r}"
            )
        rating_cap = float(rating[RatingKey.CAP])

    compression = raw.get(K.RECORD_COMPRESSION, contract.RECORD_COMPRESSION)
    if compression not in _COMPRESSION:
        raise TrainerInputError(
            f"{path}: {K.RECORD_COMPRESSION} {compression!r} not one of {sorted(_COMPRESSION)}"
        )
    md = Metadata(
        path=path,
        nusers=get_int(K.NUSERS, 1),
        nitems=get_int(K.NITEMS, 1),
        ninteractions=get_int(K.NINTERACTIONS, 1),
        user_vocabulary=get_str(K.USER_VOCABULARY),
        item_vocabulary=get_str(K.ITEM_VOCABULARY),
        items_for_user=get_files(K.ITEMS_FOR_USER),
        users_for_item=get_files(K.USERS_FOR_ITEM),
        compression=_COMPRESSION[compression],
        raw=raw,
        test_items_for_user=get_optional_files(K.TEST_ITEMS_FOR_USER),
        split=split,
        rating_cap=rating_cap,
    )
    return md


def _bad_id_character(name: str) -> str | None:
    """The first character that may not be in a raw ID: a tab, line break or other control
    character (the rule of ``preprocess/ids.py``, which drops such IDs). ``batch_pred.txt`` is
    tab-separated and line-based, so an ID holding one would corrupt it."""
    if name.isprintable():  # the common case, in C: no control character, no line separator
        return None
    for ch in name:
        if unicodedata.category(ch) in ("Cc", "Cs") or ch in "\u2028\u2029":
            return ch
    return None


def read_vocabulary(path: str, expected_size: int, what: str) -> list[str]:
    """Line ``i`` (0-based) is the raw ID of dense ID ``i``.

    Checks the size, uniqueness, no empty line, UTF-8, and that no ID holds a tab, line break
    or other control character (see :func:`_bad_id_character`).
    """
    if not fileio.exists(path):
        raise TrainerInputError(f"missing {what} vocabulary file {path}")
    if fileio.isdir(path):
        raise TrainerInputError(f"{what} vocabulary {path} is a directory, not a file")
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
    for i, line in enumerate(lines):
        ch = _bad_id_character(line)
        if ch is not None:
            kind = "a tab" if ch == "\t" else f"the control character {ch!r}"
            raise TrainerInputError(
                f"{what} vocabulary {path} line {i + 1} holds {kind}: IDs may not contain tabs, "
                "line breaks or control characters (the preprocessing drops such IDs)"
            )
    return lines
