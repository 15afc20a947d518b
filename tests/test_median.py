"""The exact median CombineFn against numpy.median, split across many accumulators."""
from __future__ import annotations

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.util import assert_that, equal_to

from preprocess.rating import ExactMedianFn, scale_rating


def combine_in_pieces(values: np.ndarray, pieces: int, rng: np.random.Generator) -> float:
    fn = ExactMedianFn()
    shuffled = rng.permutation(values)
    accumulators = []
    for chunk in np.array_split(shuffled, pieces):
        acc = fn.create_accumulator()
        for v in chunk[: len(chunk) // 2]:
            acc = fn.add_input(acc, float(v))
        acc = fn.add_inputs(acc, [float(v) for v in chunk[len(chunk) // 2:]])
        accumulators.append(fn.compact(acc))
    # merge in a random tree, the way a runner may
    while len(accumulators) > 1:
        rng.shuffle(accumulators)
        take = int(rng.integers(2, min(5, len(accumulators)) + 1))
        accumulators = [fn.merge_accumulators(accumulators[:take])] + accumulators[take:]
    return fn.extract_output(accumulators[0])


@pytest.mark.parametrize("seed", range(8))
def test_matches_numpy_median_on_random_data(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 5000))
    kind = seed % 3
    if kind == 0:  # integer milliseconds with many repeats, like GA durations
        values = rng.integers(1, 300, n) * 1000
    elif kind == 1:  # continuous values
        values = rng.lognormal(10, 1.5, n)
    else:  # tiny domain: many ties around the middle
        values = rng.integers(1, 4, n).astype(float)
    pieces = int(rng.integers(1, 40))
    assert combine_in_pieces(values, pieces, rng) == pytest.approx(float(np.median(values)), rel=1e-12)


def test_even_and_odd_counts_and_empty():
    fn = ExactMedianFn()
    assert fn.extract_output(fn.add_inputs(fn.create_accumulator(), [5.0, 1.0, 3.0])) == 3.0
    assert fn.extract_output(fn.add_inputs(fn.create_accumulator(), [4.0, 1.0, 3.0, 10.0])) == 3.5
    assert fn.extract_output(fn.create_accumulator()) is None


def test_memory_is_bounded_by_distinct_values():
    fn = ExactMedianFn()
    acc = fn.add_inputs(fn.create_accumulator(), [1000.0, 2000.0, 3000.0] * 100_000)
    assert len(acc) == 3 and fn.extract_output(acc) == 2000.0


def test_combine_globally_in_a_pipeline_with_many_bundles():
    rng = np.random.default_rng(11)
    values = (rng.integers(1, 500, 20_000) * 100).tolist()
    with beam.Pipeline("FnApiRunner") as p:
        result = (
            p
            | beam.Create(values, reshuffle=True)
            | beam.Reshuffle()
            | beam.CombineGlobally(ExactMedianFn())
        )
        assert_that(result, equal_to([float(np.median(values))]))


def test_rating_formula_is_unrounded_and_capped():
    assert scale_rating(1000.0, 3000.0) == pytest.approx(0.1, abs=1e-15)
    assert scale_rating(10_000.0, 3000.0) == 1.0
    assert scale_rating(1234.0, 4321.0, scale=0.5, cap=2.0) == 0.5 * 1234.0 / 4321.0


def test_grouped_inputs_give_the_same_median():
    from preprocess.rating import ExactMedianOfGroupsFn

    rng = np.random.default_rng(11)
    groups = [tuple(rng.integers(1, 50, int(rng.integers(1, 6))).tolist()) for _ in range(301)]
    fn = ExactMedianOfGroupsFn()
    first = fn.add_inputs(fn.create_accumulator(), groups[:100])
    second = fn.create_accumulator()
    for group in groups[100:]:
        second = fn.add_input(second, group)
    median = fn.extract_output(fn.merge_accumulators([first, second]))
    assert median == float(np.median(np.concatenate(groups)))
