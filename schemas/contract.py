"""The contract between ``preprocess`` (writer) and ``trainer`` (reader), as code.

One source of truth for what crosses the boundary: the ``metadata.json`` format version and
keys, the layout of an output folder, and the columns of an interaction row (what the
project's SQL returns and ``--input_format interactions_csv`` reads). ``schemas/metadata.md``
describes the meaning of each key; ``schemas/records.py`` the TFRecord features.

Standard library only: the trainer-only package ships ``schemas`` without Beam or
tf.Transform.
"""
from __future__ import annotations

import posixpath
from typing import Final

# --------------------------------------------------------------------------- format version

FORMAT_VERSION: Final = 1
"""The ``format_version`` that ``preprocess`` writes. Raise it when a change would make an
older trainer misread the output (a key renamed, a meaning changed), not for added keys."""

KNOWN_FORMAT_VERSIONS: Final = frozenset({FORMAT_VERSION})
"""The versions this checkout's trainer reads; it refuses any other (and a missing one)."""

# --------------------------------------------------------------------------- output layout
# Every path is relative to the output folder (the one holding METADATA_FILE) and uses "/".

METADATA_FILE: Final = "metadata.json"
OUTPUT_MARKER: Final = ".preprocess_output.json"  # "this folder was written by python -m preprocess"

# TFRecord shards: ``<prefix>-SSSSS-of-NNNNN<RECORD_SUFFIX>``; the metadata key listing a
# prefix's shards is the prefix itself.
USERS_FOR_ITEM: Final = "users_for_item"  # key = itemId, indices = userIds (training)
ITEMS_FOR_USER: Final = "items_for_user"  # key = userId, indices = itemIds (training)
TEST_ITEMS_FOR_USER: Final = "test_items_for_user"  # held out, same layout as items_for_user
SHARD_PREFIXES: Final = (USERS_FOR_ITEM, ITEMS_FOR_USER, TEST_ITEMS_FOR_USER)
RECORD_SUFFIX: Final = ".tfrecord"
RECORD_COMPRESSION: Final = "NONE"  # what preprocess writes
RECORD_COMPRESSIONS: Final = ("NONE", "GZIP", "ZLIB")  # what a reader accepts

TRANSFORM_OUTPUT: Final = "transform_output"  # tf.Transform's transform_fn + transformed_metadata
VOCABULARY_DIR: Final = posixpath.join(TRANSFORM_OUTPUT, "transform_fn", "assets")
USER_VOCABULARY_NAME: Final = "users"  # tf.Transform vocab_filename of the visitor IDs
ITEM_VOCABULARY_NAME: Final = "items"  # ... and of the content IDs
STATS_DIR: Final = "stats"
MEDIAN_FILE: Final = "median_duration.json"  # in STATS_DIR: {"median_duration": <float>}
DROPPED_DIR: Final = "dropped"  # dead-lettered rows, rows-*.jsonl


def vocabulary_path(name: str) -> str:
    """Relative path of the tf.Transform vocabulary ``name`` (line ``i`` = raw ID of dense ID ``i``)."""
    return posixpath.join(VOCABULARY_DIR, name)


USER_VOCABULARY_PATH: Final = vocabulary_path(USER_VOCABULARY_NAME)
ITEM_VOCABULARY_PATH: Final = vocabulary_path(ITEM_VOCABULARY_NAME)

# --------------------------------------------------------------------------- interaction rows
# The columns the SQL (schemas/*_interactions.sql) returns and an interactions_csv header names.

VISITOR_ID: Final = "visitorId"
CONTENT_ID: Final = "contentId"
SESSION_DURATION: Final = "session_duration"  # ms in the SQL; ratings use only its ratio to the median
INTERACTION_COLUMNS: Final = (VISITOR_ID, CONTENT_ID, SESSION_DURATION)
# The pair's first and last date (the export's own day column, ``YYYYMMDD`` text, in the
# property's time zone): the project's SQL returns them; an interactions_csv may (both or none).
FIRST_DATE: Final = "first_date"
LAST_DATE: Final = "last_date"
DATE_COLUMNS: Final = (FIRST_DATE, LAST_DATE)
SQL_COLUMNS: Final = INTERACTION_COLUMNS + DATE_COLUMNS  # what schemas/*_interactions.sql return

# --------------------------------------------------------------------------- item freshness
# Line i of ITEM_DATES_FILE: ``contentId<TAB>first_seen<TAB>last_seen`` of dense item i (the
# contentId is line i of the item vocabulary; dates ``YYYY-MM-DD``, both empty when none of
# the item's training interactions had a date). Written only when the source has dates.
ITEM_DATES_FILE: Final = "item_dates.tsv"
DATE_FORMAT: Final = "%Y-%m-%d"  # dates in ITEM_DATES_FILE and the metadata's dates block

# --------------------------------------------------------------------------- metadata.json keys

RATING_FORMULA: Final = "min(scale * session_duration / median_duration, cap)"


class MetadataKey:
    """Top-level keys of ``metadata.json`` (meanings: ``schemas/metadata.md``)."""

    FORMAT_VERSION: Final = "format_version"
    NUSERS: Final = "nusers"
    NITEMS: Final = "nitems"
    NINTERACTIONS: Final = "ninteractions"
    MEDIAN_DURATION: Final = "median_duration"
    RATING: Final = "rating"
    USER_VOCABULARY: Final = "user_vocabulary"
    ITEM_VOCABULARY: Final = "item_vocabulary"
    USERS_FOR_ITEM: Final = USERS_FOR_ITEM
    ITEMS_FOR_USER: Final = ITEMS_FOR_USER
    TEST_ITEMS_FOR_USER: Final = TEST_ITEMS_FOR_USER
    SPLIT: Final = "split"
    RECORD_COMPRESSION: Final = "record_compression"
    TRANSFORM_OUTPUT: Final = "transform_output"
    DROPPED: Final = "dropped"
    SESSIONS: Final = "sessions"
    EVENTS: Final = "events"
    INPUT: Final = "input"
    DATES: Final = "dates"  # item freshness (DatesKey); absent in outputs that predate it


class RatingKey:
    """Keys of the ``rating`` object."""

    SCALE: Final = "scale"
    CAP: Final = "cap"
    FORMULA: Final = "formula"


class SplitKey:
    """Keys of the ``split`` object (the held-out split, ``preprocess/split.py``)."""

    TEST_FRACTION: Final = "test_fraction"
    SEED: Final = "seed"
    METHOD: Final = "method"
    HELD_OUT_INTERACTIONS: Final = "held_out_interactions"
    TEST_INTERACTIONS: Final = "test_interactions"
    TEST_USERS: Final = "test_users"
    TEST_DROPPED_UNSEEN_ITEM: Final = "test_dropped_unseen_item"


class DatesKey:
    """Keys of the ``dates`` object: whether the training data has dates, and their range."""

    AVAILABLE: Final = "available"  # bool: the items carry first/last seen dates
    SOURCE: Final = "source"  # the column the dates come from, or why there are none
    ITEM_DATES: Final = "item_dates"  # ITEM_DATES_FILE (relative path), or null
    OLDEST: Final = "oldest_date"  # YYYY-MM-DD: the earliest date of a training interaction
    NEWEST: Final = "newest_date"  # YYYY-MM-DD: the latest one (max_age_days counts back from it)
    ITEMS_WITH_DATES: Final = "items_with_dates"  # items of the vocabulary that have dates


K = MetadataKey
METADATA_TYPES: Final[dict[str, type | tuple[type, ...]]] = {
    K.FORMAT_VERSION: int,
    K.NUSERS: int,
    K.NITEMS: int,
    K.NINTERACTIONS: int,
    K.MEDIAN_DURATION: (int, float),
    K.RATING: dict,  # RatingKey
    K.USER_VOCABULARY: str,
    K.ITEM_VOCABULARY: str,
    K.USERS_FOR_ITEM: list,  # of shard paths
    K.ITEMS_FOR_USER: list,
    K.TEST_ITEMS_FOR_USER: list,  # [] without a held-out split
    K.SPLIT: dict,  # SplitKey
    K.RECORD_COMPRESSION: str,  # one of RECORD_COMPRESSIONS
    K.TRANSFORM_OUTPUT: str,
    K.DROPPED: dict,  # {reason: count}, preprocess/counters.py
    K.SESSIONS: int,
    K.EVENTS: int,
    K.INPUT: dict,  # how the input was read
    K.DATES: dict,  # DatesKey
}
"""Every key ``python -m preprocess`` writes, with the JSON type of its value."""

WRITTEN_KEYS: Final = frozenset(METADATA_TYPES)
"""Exactly the keys ``python -m preprocess`` writes."""

REQUIRED_KEYS: Final = frozenset({
    K.FORMAT_VERSION, K.NUSERS, K.NITEMS, K.NINTERACTIONS, K.USER_VOCABULARY,
    K.ITEM_VOCABULARY, K.USERS_FOR_ITEM, K.ITEMS_FOR_USER,
})
"""The keys a reader needs; the others are optional for it (``record_compression`` defaults
to ``NONE``, a missing ``test_items_for_user`` means no held-out split)."""
RATING_KEYS: Final = frozenset({RatingKey.SCALE, RatingKey.CAP, RatingKey.FORMULA})
SPLIT_KEYS: Final = frozenset({
    SplitKey.TEST_FRACTION, SplitKey.SEED, SplitKey.METHOD, SplitKey.HELD_OUT_INTERACTIONS,
    SplitKey.TEST_INTERACTIONS, SplitKey.TEST_USERS, SplitKey.TEST_DROPPED_UNSEEN_ITEM,
})
DATES_KEYS: Final = frozenset({
    DatesKey.AVAILABLE, DatesKey.SOURCE, DatesKey.ITEM_DATES, DatesKey.OLDEST, DatesKey.NEWEST,
    DatesKey.ITEMS_WITH_DATES,
})
del K
