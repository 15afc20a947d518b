"""trainer.plan: the batches hold exactly the matrix's entries, once, in both orientations."""
from __future__ import annotations

import numpy as np
import pytest

from tests.trainer_fixtures import random_ratings
from trainer import plan as plan_mod
from trainer.sparse import CSR
from trainer.wals import WALSModel

tf = pytest.importorskip("tensorflow")


def _entries(plan) -> dict[int, dict[int, float]]:
    """{row: {column: rating}} read back from the plan's stored blocks."""
    out: dict[int, dict[int, float]] = {}
    for b in plan.batches:
        rows, cols, ratings = b.rows.numpy(), b.cols.numpy(), b.ratings.numpy()
        assert cols.shape == ratings.shape == (rows.size, b.width)
        assert b.shape[0] >= rows.size and b.shape[1] >= b.width
        for i, row in enumerate(rows):
            assert row not in out, "a row in two batches"
            keep = cols[i] >= 0
            assert np.all(keep[: keep.sum()]), "padding only after the entries"
            out[int(row)] = dict(zip(cols[i][keep].tolist(), ratings[i][keep].tolist()))
    return out


def _dense_rows(d: np.ndarray) -> dict[int, dict[int, float]]:
    return {i: {int(j): float(d[i, j]) for j in np.flatnonzero(d[i])}
            for i in range(d.shape[0]) if np.any(d[i])}


@pytest.mark.parametrize("max_floats", [None, 300])
def test_plans_hold_every_entry_once_in_both_orientations(max_floats):
    d = random_ratings(70, 45, 0.2, 4).astype(np.float32)
    d[3, :30] = np.arange(1, 31)  # one long row
    d[5] = 0.0  # an empty user
    d[:, 7] = 0.0  # an empty item
    model = WALSModel(factors=8, max_batch_floats=max_floats, device="/CPU:0")
    user_plan, item_plan = model.prepare(CSR.from_dense(d))
    assert _entries(user_plan) == _dense_rows(d)
    assert _entries(item_plan) == _dense_rows(d.T)
    assert set(user_plan.empty_rows.numpy().tolist()) == {5}
    assert set(item_plan.empty_rows.numpy().tolist()) == {7}
    nnz = int(np.count_nonzero(d))
    for p in (user_plan, item_plan):
        assert sum(b.nnz for b in p.batches) == nnz
        # an ID and a rating per stored slot (rows padded to their batch's longest only), a
        # row ID per row, the weight vectors, 3 scalars, a shape per batch, the empty rows
        slots = sum(int(b.rows.shape[0]) * b.width for b in p.batches)
        assert slots <= nnz + sum(int(b.rows.shape[0]) * (b.width - 1) for b in p.batches)
        assert p.stored_bytes() == 8 * slots + 4 * (p.nrows - int(p.empty_rows.shape[0])) \
            + 4 * (p.nrows + p.ncols) + 12 + 8 * len(p.batches) + 4 * int(p.empty_rows.shape[0])


def test_batch_shapes_repeat_and_bound_the_floats():
    """At most two solve shapes per length bucket, each within the batch cap."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 400, 3000)
    k, cap, floats = 16, 64, 1 << 14
    cut = plan_mod._cut_batches(lengths, k, cap, floats)
    buckets = np.floor(plan_mod.BUCKETS_PER_OCTAVE * np.log2(lengths)).astype(int)
    assert len({shape for _, shape in cut}) <= 2 * len(set(buckets.tolist()))
    seen = np.concatenate([rows for rows, _ in cut])
    assert sorted(seen.tolist()) == list(range(lengths.size))
    for rows, (b, width) in cut:
        assert rows.size <= b <= cap and lengths[rows].max() <= width
        assert b * width * k <= floats or b == 1
        assert width <= np.ceil(lengths[rows].min() * 2 ** (1 / plan_mod.BUCKETS_PER_OCTAVE))


def test_batches_spread_over_devices_by_load():
    owner = plan_mod._assign([100, 90, 50, 40, 10, 5], 3)
    load = [sum(s for s, o in zip([100, 90, 50, 40, 10, 5], owner) if o == d) for d in range(3)]
    # by hand: 100→0, 90→1, 50→2, 40→2 (50 < 90), 10→1 (tie 90/90: lower index), 5→2
    assert owner == [0, 1, 2, 2, 1, 2] and load == [100, 100, 95]
