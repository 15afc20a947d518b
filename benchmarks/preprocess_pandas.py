"""The preprocessing job in pandas + NumPy: the benchmark peer of the Beam/tf.Transform pipeline.

Same transformation as ``python -m preprocess --input_format ga_json`` with its defaults
(item from the hit-level custom dimension 10, PAGE hits only, rating = min(0.3 * d / median, 1)):

1. read the newline-delimited GA360 sessions with ``pandas.read_json(engine="pyarrow")``
   (Arrow-backed columns, so the nested hits are exploded without Python objects);
2. keep PAGE hits with a valid time; the item is the MAX of the custom-dimension values with
   the wanted index (None when there is none or it is blank);
3. time on item: in each session (visitor, visitNumber) the next distinct later hit time minus
   the hit's time (``LEAD`` over the distinct hit times, ``schemas/ga360_interactions.sql``);
   duplicate (session, time, item) rows count once; summed per (visitor, item), sums > 0 kept;
4. the exact median of all durations; rating = min(scale * d / median, cap) as float32;
5. dense IDs ordered like tf.Transform's vocabularies: most frequent first, ties by the raw ID's
   UTF-8 bytes in *descending* order (TFT sorts ``(count, token)`` pairs with ``reverse=True``);
6. ``items_for_user`` / ``users_for_item`` TFRecords (``schemas/records.py``: key, indices sorted
   ascending, values), the two vocabularies and a ``metadata.json`` the trainer can read (its
   keys, format version and shard names from ``schemas/contract.py``).

Steps 4-6 are ``write_outputs``, which the GA4 peer (``benchmarks/preprocess_pandas_ga4.py``)
shares.

It assumes clean input: rows the pipeline dead-letters for bad characters or malformed JSON are
not handled (a malformed line makes the reader fail). Missing visitor IDs / visit numbers /
hit times, other hit types and hits without an item are dropped and counted like the pipeline.

    .venv/bin/python -m benchmarks.preprocess_pandas --input data/ga_sample/ga_sessions_sample.json \\
        --output_dir output/preprocess_pandas [--timings_json stages.json]
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from typing import Iterator, Optional, Sequence

import numpy as np
import pandas as pd

from schemas import contract, records as features
from schemas.contract import (
    CONTENT_ID,
    ITEMS_FOR_USER,
    SESSION_DURATION,
    USERS_FOR_ITEM,
    VISITOR_ID,
    MetadataKey as K,
    RatingKey,
)

SUFFIX = contract.RECORD_SUFFIX
VOCAB_DIR = "vocabularies"  # its own layout: the trainer follows the paths in metadata.json


class StageTimer:
    """Wall seconds per named stage, in order."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def done(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self._last
        self._last = now


# --------------------------------------------------------------------------- reading


def _numeric(series: pd.Series) -> np.ndarray:
    """A column as float64 NumPy (NaN where missing or not a number); BigQuery's JSON export
    writes INT64 as strings, so numeric strings are accepted like the pipeline does."""
    if isinstance(series.dtype, pd.ArrowDtype) and series.dtype.kind in "iuf":
        return series.astype("float64[pyarrow]").to_numpy(dtype=np.float64, na_value=np.nan)
    return pd.to_numeric(series.astype(object), errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def _text(series: pd.Series) -> np.ndarray:
    """A string column as an object array of str, None where missing or blank."""
    values = series.astype("string[pyarrow]")
    blank = values.isna() | (values.str.strip() == "").fillna(True)
    out = values.to_numpy(dtype=object, na_value=None)
    out[blank.to_numpy(dtype=bool)] = None
    return out


def _children(lists: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """Flattens an Arrow list column: (the elements, the row position each came from)."""
    lengths = lists.list.len().fillna(0).to_numpy(dtype=np.int64)
    parents = np.repeat(np.arange(len(lists)), lengths)
    return lists.list.flatten().reset_index(drop=True), parents


def read_hits(paths: Sequence[str], content_dimension_index: int, hit_type: Optional[str],
              dropped: dict) -> pd.DataFrame:
    """GA JSON files -> one row per kept hit: visitorId (str), visitNumber, time, contentId|None."""
    sessions = pd.concat(
        [pd.read_json(p, lines=True, engine="pyarrow", dtype_backend="pyarrow") for p in paths],
        ignore_index=True,
    )
    visitors = _text(sessions["fullVisitorId"])
    visits = _numeric(sessions["visitNumber"])
    good_visit = np.isfinite(visits) & (visits >= 0) & (visits == np.floor(visits))
    has_visitor = ~pd.isna(visitors)
    dropped["missing_visitor_id"] = int(np.count_nonzero(~has_visitor))
    dropped["missing_visit_number"] = int(np.count_nonzero(~good_visit & has_visitor))

    hits, session_of_hit = _children(sessions["hits"])
    fields = hits.dtype.pyarrow_dtype
    n = len(hits)
    ok = np.ones(n, dtype=bool)
    ok &= (has_visitor & good_visit)[session_of_hit]
    if hit_type is not None:
        has_types = fields.get_field_index("type") >= 0
        types = hits.struct.field("type").to_numpy(dtype=object, na_value=None) if has_types else np.full(n, None)
        is_type = types == hit_type
        dropped["other_hit_type"] = int(np.count_nonzero(ok & ~is_type))
        ok &= is_type
    times = _numeric(hits.struct.field("time")) if fields.get_field_index("time") >= 0 else np.full(n, np.nan)
    good_time = np.isfinite(times) & (times >= 0)
    dropped["invalid_time"] = int(np.count_nonzero(ok & ~good_time))
    ok &= good_time

    items = np.full(n, None, dtype=object)
    if fields.get_field_index("customDimensions") >= 0:
        dims, hit_of_dim = _children(hits.struct.field("customDimensions"))
        index = _numeric(dims.struct.field("index"))
        value = dims.struct.field("value").astype("string[pyarrow]")
        wanted = (index == content_dimension_index) & value.notna().to_numpy(dtype=bool)
        if wanted.any():
            best = value[wanted].groupby(hit_of_dim[wanted], sort=False).max()  # MAX(value), as the SQL
            items[best.index.to_numpy()] = _text(best)
    keep = np.flatnonzero(ok)
    frame = pd.DataFrame({
        VISITOR_ID: visitors[session_of_hit[keep]],
        "visitNumber": visits[session_of_hit[keep]].astype(np.int64),
        "time": times[keep],
        CONTENT_ID: items[keep],
    })
    if np.all(frame["time"].to_numpy() == np.floor(frame["time"].to_numpy())):
        frame["time"] = frame["time"].astype(np.int64)  # integer milliseconds: exact integer sums
    dropped["hit_without_item"] = int(frame[CONTENT_ID].isna().sum())
    return frame


# --------------------------------------------------------------------------- time on item


def time_on_items(hits: pd.DataFrame) -> pd.DataFrame:
    """(visitorId, contentId, session_duration) with LEAD semantics over distinct hit times."""
    visitor_code, visitor_names = pd.factorize(hits[VISITOR_ID], sort=False)
    session = pd.DataFrame({"v": visitor_code, "n": hits["visitNumber"].to_numpy()})
    session_code = session.groupby(["v", "n"], sort=False).ngroup().to_numpy()
    times = hits["time"].to_numpy()
    # Distinct (session, time) in order; the next one in the same session ends this one.
    order = np.lexsort((times, session_code))
    s_sorted, t_sorted = session_code[order], times[order]
    new = np.ones(len(order), dtype=bool)
    new[1:] = (s_sorted[1:] != s_sorted[:-1]) | (t_sorted[1:] != t_sorted[:-1])
    group_sorted = np.cumsum(new) - 1
    g_session, g_time = s_sorted[new], t_sorted[new]
    has_next = np.zeros(len(g_time), dtype=bool)
    has_next[:-1] = g_session[1:] == g_session[:-1]
    duration = np.zeros_like(g_time)
    duration[:-1] = g_time[1:] - g_time[:-1]
    group = np.empty(len(order), dtype=np.int64)
    group[order] = group_sorted

    item_code, item_names = pd.factorize(hits[CONTENT_ID], sort=False, use_na_sentinel=True)
    credited = (item_code >= 0) & has_next[group]
    timed = pd.DataFrame({
        "group": group[credited], "v": visitor_code[credited], "item": item_code[credited],
        "d": duration[group[credited]],
    }).drop_duplicates(["group", "item"])  # one credit per distinct (session, time, item)
    summed = timed.groupby(["v", "item"], sort=False)["d"].sum()
    summed = summed[summed > 0]
    v, i = summed.index.get_level_values(0), summed.index.get_level_values(1)
    return pd.DataFrame({
        VISITOR_ID: np.asarray(visitor_names, dtype=object)[v],
        CONTENT_ID: np.asarray(item_names, dtype=object)[i],
        SESSION_DURATION: summed.to_numpy(),
    })


# --------------------------------------------------------------------------- dense IDs


def vocabulary(ids: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(dense ID of each row, vocabulary) with tf.Transform's order: count descending, then
    the raw ID's UTF-8 bytes descending. Python's str order is code-point order, which is the
    UTF-8 byte order, so sorting the strings gives the byte rank."""
    codes, uniques = pd.factorize(ids, sort=True)  # code = rank of the string
    counts = np.bincount(codes, minlength=len(uniques))
    ranks = np.arange(len(uniques))
    order = np.lexsort((-ranks, -counts))  # last key first: count desc, then string desc
    dense_of_code = np.empty(len(uniques), dtype=np.int64)
    dense_of_code[order] = np.arange(len(uniques))
    return dense_of_code[codes], np.asarray(uniques, dtype=object)[order]


# --------------------------------------------------------------------------- records


def grouped_rows(keys: np.ndarray, indices: np.ndarray, values: np.ndarray
                 ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(key, indices ascending, values) per key, keys ascending."""
    order = np.lexsort((indices, keys))
    keys, indices, values = keys[order], indices[order], values[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    ends = np.r_[starts[1:], len(keys)]
    for start, end in zip(starts.tolist(), ends.tolist()):
        yield int(keys[start]), indices[start:end], values[start:end]


def write_records(path: str, rows: Iterator[tuple[int, np.ndarray, np.ndarray]]) -> None:
    import tensorflow as tf  # only here: the TFRecord writer and the Example proto

    with tf.io.TFRecordWriter(path) as writer:
        for key, indices, values in rows:
            example = tf.train.Example()
            feature = example.features.feature
            feature[features.KEY].int64_list.value.append(key)
            feature[features.INDICES].int64_list.value.extend(indices.tolist())
            feature[features.VALUES].float_list.value.extend(values.tolist())
            writer.write(example.SerializeToString())


def write_lines(path: str, lines: np.ndarray) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        handle.write("".join(f"{line}\n" for line in lines))


# --------------------------------------------------------------------------- the job


def run(input_pattern: str, output_dir: str, content_dimension_index: int = 10,
        hit_type: str = "PAGE", rating_scale: float = 0.3, rating_cap: float = 1.0,
        timer: Optional[StageTimer] = None) -> dict:
    """Runs the whole transformation and returns the metadata it wrote."""
    timer = timer or StageTimer()
    paths = input_paths(input_pattern)
    dropped: dict = {}
    hits = read_hits(paths, content_dimension_index, None if hit_type.upper() == "ALL" else hit_type, dropped)
    timer.done("read_and_explode")
    interactions = time_on_items(hits)
    timer.done("time_on_item")
    described = {"source": "ga_json", "pattern": input_pattern, "item_source": "custom_dimension",
                 "content_dimension_index": content_dimension_index, "hit_type": hit_type,
                 "implementation": "benchmarks.preprocess_pandas"}
    return write_outputs(interactions, output_dir, rating_scale, rating_cap, dropped, described, timer)


def input_paths(input_pattern: str) -> list[str]:
    """The local files of a glob pattern, sorted; ValueError when it matches none."""
    paths = sorted(glob.glob(input_pattern))
    if not paths:
        raise ValueError(f"Input pattern {input_pattern!r} matched no files.")
    return paths


def write_outputs(interactions: pd.DataFrame, output_dir: str, rating_scale: float, rating_cap: float,
                  dropped: dict, described: dict, timer: StageTimer, extra: Optional[dict] = None) -> dict:
    """Steps 4-6 of the module docstring, shared by the readers (``preprocess_pandas_ga4`` too):
    ``(visitorId, contentId, session_duration)`` rows -> median, ratings, vocabularies, the two
    TFRecord files and ``metadata.json`` (``described`` is its ``input`` object, ``extra`` more
    top-level keys). Returns the metadata."""
    if interactions.empty:
        raise ValueError("No interactions survived preprocessing.")
    durations = interactions[SESSION_DURATION].to_numpy(dtype=np.float64)
    median = float(np.median(durations))
    ratings = np.minimum(rating_scale * durations / median, rating_cap).astype(np.float32)
    timer.done("median_and_rating")
    users, user_vocab = vocabulary(interactions[VISITOR_ID])
    items, item_vocab = vocabulary(interactions[CONTENT_ID])
    timer.done("vocabularies")

    import tensorflow  # noqa: F401  (imported here so its cost shows as a stage of its own)

    timer.done("import_tensorflow")
    os.makedirs(os.path.join(output_dir, VOCAB_DIR), exist_ok=True)
    for stale in glob.glob(os.path.join(output_dir, f"*{SUFFIX}")):
        os.remove(stale)
    user_vocab_path = f"{VOCAB_DIR}/{contract.USER_VOCABULARY_NAME}"
    item_vocab_path = f"{VOCAB_DIR}/{contract.ITEM_VOCABULARY_NAME}"
    write_lines(os.path.join(output_dir, user_vocab_path), user_vocab)
    write_lines(os.path.join(output_dir, item_vocab_path), item_vocab)
    by_user = f"{ITEMS_FOR_USER}-00000-of-00001{SUFFIX}"
    by_item = f"{USERS_FOR_ITEM}-00000-of-00001{SUFFIX}"
    write_records(os.path.join(output_dir, by_user), grouped_rows(users, items, ratings))
    timer.done("group_and_write_items_for_user")
    write_records(os.path.join(output_dir, by_item), grouped_rows(items, users, ratings))
    timer.done("group_and_write_users_for_item")

    metadata = {
        K.FORMAT_VERSION: contract.FORMAT_VERSION,
        K.NUSERS: len(user_vocab),
        K.NITEMS: len(item_vocab),
        K.NINTERACTIONS: len(interactions),
        K.MEDIAN_DURATION: median,
        K.RATING: {RatingKey.SCALE: rating_scale, RatingKey.CAP: rating_cap,
                   RatingKey.FORMULA: contract.RATING_FORMULA},
        K.USER_VOCABULARY: user_vocab_path,
        K.ITEM_VOCABULARY: item_vocab_path,
        K.USERS_FOR_ITEM: [by_item],
        K.ITEMS_FOR_USER: [by_user],
        K.RECORD_COMPRESSION: contract.RECORD_COMPRESSION,
        K.DROPPED: dropped,
        K.INPUT: described,
        **(extra or {}),
    }
    with open(os.path.join(output_dir, contract.METADATA_FILE), "w") as handle:
        json.dump(metadata, handle, indent=2, sort_keys=True)
    timer.done("metadata")
    return metadata


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="GA360 JSON file or glob pattern (local)")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--content_dimension_index", type=int, default=10)
    p.add_argument("--hit_type", default="PAGE", help="PAGE, another hits.type, or ALL")
    p.add_argument("--rating_scale", type=float, default=0.3)
    p.add_argument("--rating_cap", type=float, default=1.0)
    p.add_argument("--timings_json", default=None, help="write the seconds per stage here")
    args = p.parse_args(argv)
    timer = StageTimer()
    meta = run(args.input, args.output_dir, args.content_dimension_index, args.hit_type,
               args.rating_scale, args.rating_cap, timer)
    if args.timings_json:
        with open(args.timings_json, "w") as handle:
            json.dump(timer.seconds, handle, indent=2)
    print(f"preprocess_pandas: {meta[K.NINTERACTIONS]} interactions, {meta[K.NUSERS]} users, "
          f"{meta[K.NITEMS]} items, median {meta[K.MEDIAN_DURATION]} -> {args.output_dir}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
