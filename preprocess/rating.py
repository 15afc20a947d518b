"""Time on item -> implicit rating, scaled by the median over the whole data set.

    rating(visitor, item) = min(scale * session_duration / median, cap)      (defaults 0.3, 1.0)

``median`` is the exact median of all positive session durations, as ``numpy.median`` defines
it (the mean of the two middle values for an even count). ``ExactMedianFn`` computes it with a
``CombineGlobally``: its accumulator is a histogram ``{duration: count}``, so it is exact,
mergeable in any order, and its memory is bounded by the number of *distinct* durations, not
by the number of rows (GA durations are integer milliseconds, heavily repeated).
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Iterable, Optional

import apache_beam as beam
import numpy as np

from preprocess import columns


def histogram_median(histogram: dict) -> Optional[float]:
    """Median of the multiset ``{value: count}``; None when it is empty."""
    total = sum(histogram.values())
    if total == 0:
        return None
    # 0-based ranks of the middle element(s) in sorted order.
    low_rank, high_rank = (total - 1) // 2, total // 2
    low = high = None
    seen = 0
    for value in sorted(histogram):
        seen += histogram[value]
        if low is None and seen > low_rank:
            low = value
        if seen > high_rank:
            high = value
            break
    middle = (float(low) + float(high)) / 2.0
    if middle == math.inf:  # the sum of two values near the float64 maximum overflows
        middle = float(low) / 2.0 + float(high) / 2.0
    return middle


class ExactMedianFn(beam.CombineFn):
    """Exact median of numbers with a ``Counter`` of distinct values as the accumulator."""

    def create_accumulator(self) -> Counter:
        return Counter()

    def add_input(self, accumulator: Counter, value: float) -> Counter:
        accumulator[value] += 1
        return accumulator

    def add_inputs(self, accumulator: Counter, values: Iterable[float]) -> Counter:
        accumulator.update(values)
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[Counter]) -> Counter:
        accumulators = iter(accumulators)
        merged = next(accumulators, Counter())
        for other in accumulators:
            merged.update(other)
        return merged

    def compact(self, accumulator: Counter) -> Counter:
        return accumulator

    def extract_output(self, accumulator: Counter) -> Optional[float]:
        return histogram_median(accumulator)


def scale_rating(duration: float, median: float, scale: float = 0.3, cap: float = 1.0) -> float:
    """``min(scale * duration / median, cap)``, unrounded."""
    return min(scale * duration / median, cap)


class ExactMedianOfGroupsFn(ExactMedianFn):
    """``ExactMedianFn`` whose inputs are groups of numbers (one visitor's durations): one
    element per visitor instead of one per interaction through the combine."""

    def add_input(self, accumulator: Counter, values: Iterable[float]) -> Counter:
        accumulator.update(values)
        return accumulator

    def add_inputs(self, accumulator: Counter, groups: Iterable[Iterable[float]]) -> Counter:
        for values in groups:
            accumulator.update(values)
        return accumulator


class HistogramMedianFn(ExactMedianFn):
    """``ExactMedianFn`` whose inputs are histograms ``(distinct values, counts)``: one
    element per batch of visitors (``columns.histogram``)."""

    def add_input(self, accumulator: Counter, histogram: tuple) -> Counter:
        for value, count in zip(*histogram):
            accumulator[value] += count
        return accumulator

    def add_inputs(self, accumulator: Counter, histograms: Iterable[tuple]) -> Counter:
        for histogram in histograms:
            self.add_input(accumulator, histogram)
        return accumulator


def batch_histogram(batch: columns.VisitorColumns) -> tuple:
    return columns.histogram(batch.values)


class MedianDuration(beam.PTransform):
    """Per-visitor interactions (or, ``batched``, ``columns.VisitorColumns``) -> a
    one-element PCollection: the median duration (or None)."""

    def __init__(self, batched: bool = False) -> None:
        super().__init__()
        self.batched = batched

    def expand(self, visitor_interactions):
        if self.batched:
            return (
                visitor_interactions
                | "Durations" >> beam.Map(batch_histogram)
                | "ExactMedian" >> beam.CombineGlobally(HistogramMedianFn())
            )
        return (
            visitor_interactions
            | "Durations" >> beam.Map(lambda kv: tuple(duration for _, duration in kv[1]))
            | "ExactMedian" >> beam.CombineGlobally(ExactMedianOfGroupsFn())
        )


def rate_visitor(element: tuple, median: float, scale: float, cap: float) -> tuple:
    visitor, interactions = element
    # scale_rating inlined (the same expression): it runs once per interaction
    return visitor, tuple((item, min(scale * d / median, cap)) for item, d in interactions)


def rate_columns(batch: columns.VisitorColumns, median: float, scale: float, cap: float) -> columns.VisitorColumns:
    """``scale_rating`` over a batch, as float64: NumPy rounds each step (int -> float,
    ``*``, ``/``, ``min``) as Python does; object arrays (hostile values) go through Python."""
    durations = batch.values
    if durations.dtype == object:
        ratings = np.array([min(scale * d / median, cap) for d in durations.tolist()], dtype=np.float64)
    else:
        ratings = np.minimum(scale * durations / median, cap)
    return batch._replace(values=ratings)


class ScaleToRatings(beam.PTransform):
    """(visitor, ((item, duration), ...)) -> (visitor, ((item, rating), ...)); median as side input."""

    def __init__(self, median, scale: float, cap: float, batched: bool = False) -> None:
        super().__init__()
        self.median = median
        self.scale = scale
        self.cap = cap
        self.batched = batched  # elements are columns.VisitorColumns

    def expand(self, interactions):
        return interactions | "Rate" >> beam.Map(
            rate_columns if self.batched else rate_visitor,
            median=beam.pvalue.AsSingleton(self.median), scale=self.scale, cap=self.cap,
        )
