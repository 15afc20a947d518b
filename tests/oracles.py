"""Independent references the pipeline is checked against: plain pandas/NumPy and DuckDB.

Nothing here imports the pipeline's code paths for the computation (the DuckDB reference
runs the project's SQL text, which is the point of that test); only the names the two sides
agree on (``schemas/contract.py``, ``schemas/records.py``).
"""
from __future__ import annotations

import functools
import json
import os

import numpy as np
import pandas as pd
import tensorflow as tf

from schemas import contract, records as features
from schemas.contract import CONTENT_ID, SESSION_DURATION, VISITOR_ID, MetadataKey as K


def ga_json_hits(path: str, content_index: int = 10, item_source: str = "custom_dimension",
                 hit_type: str = "PAGE") -> pd.DataFrame:
    """Rows (visitorId, visitNumber, time, contentId|None) of the page hits of a clean GA JSON file."""
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            session = json.loads(line)
            for hit in session["hits"]:
                if hit.get("type") != hit_type:
                    continue
                if item_source == "custom_dimension":
                    values = [cd["value"] for cd in hit.get("customDimensions", []) if cd["index"] == content_index]
                    items = [max(values)] if values else [None]
                elif item_source == "page_path":
                    items = [hit.get("page", {}).get("pagePath")]
                else:
                    items = [p["productSKU"] for p in hit.get("product", [])] or [None]
                for item in items:
                    rows.append((session["fullVisitorId"], int(session["visitNumber"]), hit["time"], item))
    return pd.DataFrame(rows, columns=[VISITOR_ID, "visitNumber", "time", CONTENT_ID])


def durations_from_hits(hits: pd.DataFrame) -> pd.DataFrame:
    """Time on item with pandas: next distinct hit time in the session minus this hit's time."""
    hits = hits.drop_duplicates()
    times = hits[[VISITOR_ID, "visitNumber", "time"]].drop_duplicates().sort_values(
        [VISITOR_ID, "visitNumber", "time"]
    )
    times["duration"] = times.groupby([VISITOR_ID, "visitNumber"])["time"].shift(-1) - times["time"]
    timed = hits.merge(times, on=[VISITOR_ID, "visitNumber", "time"])
    timed = timed[timed[CONTENT_ID].notna() & (timed[CONTENT_ID] != "") & timed["duration"].notna()]
    summed = timed.groupby([VISITOR_ID, CONTENT_ID], as_index=False)["duration"].sum()
    summed = summed.rename(columns={"duration": SESSION_DURATION})
    return summed[summed[SESSION_DURATION] > 0].reset_index(drop=True)


def ratings(interactions: pd.DataFrame, scale: float = 0.3, cap: float = 1.0) -> tuple[pd.DataFrame, float]:
    median = float(np.median(interactions[SESSION_DURATION].to_numpy(dtype=np.float64)))
    out = interactions.copy()
    out["rating"] = np.minimum(scale * out[SESSION_DURATION].astype(np.float64) / median, cap)
    return out[[VISITOR_ID, CONTENT_ID, "rating"]], median


def read_vocabulary(path: str) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        return handle.read().split("\n")[:-1]


def read_records(paths: list[str]) -> list[tuple[list, np.ndarray, np.ndarray]]:
    """(key, indices, values) of every record, parsed by TensorFlow's own Example parser."""
    spec = {
        features.KEY: tf.io.VarLenFeature(tf.int64),  # VarLen so a malformed key length shows up
        features.INDICES: tf.io.VarLenFeature(tf.int64),
        features.VALUES: tf.io.VarLenFeature(tf.float32),
    }
    out = []
    for batch in tf.data.TFRecordDataset(paths).batch(20_000):
        parsed = tf.io.parse_example(batch, spec)
        dense = {}
        for name, sparse in parsed.items():
            rows = sparse.indices[:, 0].numpy()
            splits = np.searchsorted(rows, np.arange(int(sparse.dense_shape[0]) + 1))
            dense[name] = np.split(sparse.values.numpy(), splits[1:-1])
        out.extend(zip([list(k) for k in dense[features.KEY]], dense[features.INDICES],
                       dense[features.VALUES]))
    return out


@functools.lru_cache(maxsize=8)
def pipeline_output(output_dir: str) -> dict:
    """The pipeline's output read back through metadata.json and the vocabulary files:
    ``{"by_user": DataFrame, "by_item": DataFrame, "metadata": dict}``."""
    with open(os.path.join(output_dir, contract.METADATA_FILE)) as handle:
        meta = json.load(handle)
    users = read_vocabulary(os.path.join(output_dir, meta[K.USER_VOCABULARY]))
    items = read_vocabulary(os.path.join(output_dir, meta[K.ITEM_VOCABULARY]))
    frames = {}
    for name, row_vocab, col_vocab, row_col, col_col in (
        (K.ITEMS_FOR_USER, users, items, VISITOR_ID, CONTENT_ID),
        (K.USERS_FOR_ITEM, items, users, CONTENT_ID, VISITOR_ID),
        (K.TEST_ITEMS_FOR_USER, users, items, VISITOR_ID, CONTENT_ID),
    ):
        records = read_records([os.path.join(output_dir, p) for p in meta.get(name, [])])
        if not records:
            frames[name] = pd.DataFrame(columns=[VISITOR_ID, CONTENT_ID, "rating"])
            frames[name + "_keys"] = []
            continue
        for key, indices, values in records:
            assert len(key) == 1 and len(indices) == len(values)
        row_ids = np.concatenate([np.full(len(ind), k[0]) for k, ind, _ in records])
        col_ids = np.concatenate([ind for _, ind, _ in records])
        row_names, col_names = np.array(row_vocab, dtype=object), np.array(col_vocab, dtype=object)
        frames[name] = pd.DataFrame({
            row_col: row_names[row_ids],
            col_col: col_names[col_ids],
            "rating": np.concatenate([v for _, _, v in records]).astype(np.float64),
        })[[VISITOR_ID, CONTENT_ID, "rating"]]
        frames[name + "_keys"] = [k[0] for k, _, _ in records]
    frames["metadata"] = meta
    frames["users"], frames["items"] = users, items
    return frames


def assert_same_ratings(actual: pd.DataFrame, expected: pd.DataFrame, tol: float = 1e-6) -> None:
    a = actual.sort_values([VISITOR_ID, CONTENT_ID]).reset_index(drop=True)
    e = expected.sort_values([VISITOR_ID, CONTENT_ID]).reset_index(drop=True)
    assert len(a) == len(e), f"{len(a)} interactions written, {len(e)} expected"
    assert (a[VISITOR_ID].to_numpy() == e[VISITOR_ID].to_numpy()).all(), "visitor IDs differ"
    assert (a[CONTENT_ID].to_numpy() == e[CONTENT_ID].to_numpy()).all(), "content IDs differ"
    np.testing.assert_allclose(a["rating"].to_numpy(), e["rating"].to_numpy(), atol=tol, rtol=0)
