"""Item freshness: each item's first and last seen date in the training data.

Dates are the export's own day column, in the property's (view's) reporting time zone: the
GA360 session ``date`` and the GA4 ``event_date`` (both ``YYYYMMDD`` text), a ``date`` column
of a hits CSV, or the ``first_date`` / ``last_date`` columns that the project's SQL returns
(an interactions CSV or a ``--query`` may carry them too). Inside the pipeline a date is a
day number (days since 1970-01-01), so ranges merge with ``min`` / ``max``.

The per-visitor steps (``sessionize``, ``ga4``) emit, next to the visitor's interactions,
``(visitor, ((item, first_day, last_day), ...))`` for the same items (days ``None`` when none
of the item's hits had a date). :class:`WriteItemDates` keeps the training interactions (the
held-out split's own rule, :func:`preprocess.split.held_out_flags`, applied again: no join),
takes each item's earliest and latest day over them, and writes ``item_dates.tsv`` aligned
with the item vocabulary (``schemas/contract.py``): line ``i`` is
``contentId<TAB>first_seen<TAB>last_seen`` of dense item ``i``.
"""
from __future__ import annotations

import datetime
import re
from typing import Any, Iterable, Optional

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems

from preprocess import columns, split
from schemas import contract

SEEN = "seen"  # the tagged output of the per-visitor steps
EPOCH = datetime.date(1970, 1, 1).toordinal()
_COMPACT = re.compile(r"^\s*([0-9]{4})([0-9]{2})([0-9]{2})\s*$")  # YYYYMMDD, the exports' form
_ISO = re.compile(r"^\s*([0-9]{4})-([0-9]{2})-([0-9]{2})\s*$")  # YYYY-MM-DD, BigQuery's DATE

DayRange = tuple  # (first_day or None, last_day or None)
SeenItems = tuple  # (visitorId, ((contentId, first_day or None, last_day or None), ...))


def date_source(options: Any) -> tuple[Optional[str], str]:
    """``(description of the input's date column, or None when it has none, reason)``.

    Known from the flags (and a CSV's header) before the job runs, so a source without
    dates builds no freshness step. A source with a date column can still turn out to hold
    no valid date; ``preprocess.metadata`` then says so.
    """
    from preprocess.options import is_ga4  # not at module level: options imports ga4 imports us
    from preprocess.sources import read_header

    o = options
    if o.query:
        return (f"the {contract.FIRST_DATE} / {contract.LAST_DATE} columns of the --query rows "
                "(when it returns them)"), ""
    if is_ga4(o):
        return "GA4 event_date (YYYYMMDD, the property's reporting time zone)", ""
    if o.bq_table or o.input_format == "ga_json":
        return "GA360 session date (YYYYMMDD, the view's time zone)", ""
    header = read_header(o.input)
    if o.input_format == "hits_csv":
        if "date" in header:
            return "the hits_csv date column (YYYYMMDD or YYYY-MM-DD)", ""
        return None, "the hits_csv header has no date column"
    if all(c in header for c in contract.DATE_COLUMNS):
        return f"the interactions_csv {contract.FIRST_DATE} / {contract.LAST_DATE} columns", ""
    return None, (f"the interactions_csv header has no {contract.FIRST_DATE} and "
                  f"{contract.LAST_DATE} columns")


def parse_day(value: Any) -> Optional[int]:
    """A date as a day number (days since 1970-01-01), or None when it is not one.

    Accepts ``YYYYMMDD`` text (the GA360 ``date`` and GA4 ``event_date`` columns),
    ``YYYY-MM-DD`` text and ``datetime.date``; anything else (null, other text, numbers, a
    day that is not on the calendar) is None: a missing date never drops a row.
    """
    if isinstance(value, datetime.datetime):
        value = value.date()
    if isinstance(value, datetime.date):
        return value.toordinal() - EPOCH
    if not isinstance(value, str):
        return None
    match = _COMPACT.match(value) or _ISO.match(value)
    if match is None:
        return None
    try:
        return datetime.date(*map(int, match.groups())).toordinal() - EPOCH
    except ValueError:  # e.g. 20170231
        return None


def parse_export_day(value: Any) -> Optional[int]:
    """The day of an export's own date column (GA360 ``date``, GA4 ``event_date``): exactly
    ``YYYYMMDD`` text, as the project's SQL takes it (``'^[0-9]{8}$'``), else None."""
    if not isinstance(value, str) or _COMPACT.match(value) is None or len(value) != 8:
        return None
    return parse_day(value)


def day_text(day: int) -> str:
    """Day number -> ``YYYY-MM-DD`` (``contract.DATE_FORMAT``)."""
    return datetime.date.fromordinal(day + EPOCH).strftime(contract.DATE_FORMAT)


def widen(ranges: dict, item: Any, first: Optional[int], last: Optional[int]) -> None:
    """Extends ``ranges[item]`` (a ``[first, last]`` list) by the days ``first..last``
    (``None`` adds nothing; the item is still registered)."""
    current = ranges.setdefault(item, [None, None])
    if first is not None and (current[0] is None or first < current[0]):
        current[0] = first
    if last is not None and (current[1] is None or last > current[1]):
        current[1] = last


def seen_output(visitor: str, kept: tuple, ranges: dict) -> beam.pvalue.TaggedOutput:
    """The ``SEEN`` element for a visitor's kept ``((item, duration), ...)``."""
    rows = tuple((item, *ranges.get(item, (None, None))) for item, _ in kept)
    return beam.pvalue.TaggedOutput(SEEN, (visitor, rows))


def training_ranges(element: SeenItems, test_fraction: float, seed: int) -> Iterable[tuple]:
    """``(item, (first_day, last_day))`` for the visitor's training interactions that have a
    date; held-out ones are left out by the split's own rule."""
    visitor, rows = element
    held_out = split.held_out_flags(visitor, [item for item, _, _ in rows], test_fraction, seed)
    for (item, first, last), flag in zip(rows, held_out):
        if not flag and first is not None:
            yield item, (first, last)


def batch_training_ranges(batch: Any, test_fraction: float, seed: int) -> Iterable[tuple]:
    """``training_ranges`` over a ``columns.SeenColumns`` batch, merged per item first, so
    one element per (item, batch) goes on to the per-item combine, not one per interaction."""
    held_out = split.batch_flags(batch.visitors, batch.counts, batch.items, test_fraction, seed)
    keep = np.flatnonzero(~held_out & (batch.firsts != columns.NO_DAY))
    codes: dict = {}
    items = batch.items
    code = np.fromiter((codes.setdefault(items[k], len(codes)) for k in keep.tolist()), np.int64, len(keep))
    firsts = np.full(len(codes), np.iinfo(np.int64).max, np.int64)
    lasts = np.full(len(codes), columns.NO_DAY, np.int64)
    np.minimum.at(firsts, code, batch.firsts[keep])
    np.maximum.at(lasts, code, batch.lasts[keep])
    return list(zip(codes, zip(firsts.tolist(), lasts.tolist())))


class DayRangeFn(beam.CombineFn):
    """(first, last) day ranges -> their union's (min first, max last)."""

    def create_accumulator(self) -> Optional[DayRange]:
        return None

    def add_input(self, acc: Optional[DayRange], value: DayRange) -> DayRange:
        if acc is None:
            return tuple(value)
        return min(acc[0], value[0]), max(acc[1], value[1])

    def merge_accumulators(self, accumulators: Iterable[Optional[DayRange]]) -> Optional[DayRange]:
        merged = None
        for acc in accumulators:
            if acc is not None:
                merged = self.add_input(merged, acc)
        return merged

    def extract_output(self, acc: Optional[DayRange]) -> Optional[DayRange]:
        return acc


def aligned_table(transform_fn_dir: str, ranges: dict) -> str:
    """The text of ``item_dates.tsv``: one line per line of the item vocabulary that
    tf.Transform wrote under ``transform_fn_dir/assets/`` (so it cannot drift from the
    dense IDs), empty dates for an item without any."""
    path = FileSystems.join(transform_fn_dir, "assets", contract.ITEM_VOCABULARY_NAME)
    with FileSystems.open(path) as handle:
        items = handle.read().decode("utf-8").split("\n")
    if items and items[-1] == "":
        items.pop()
    lines = []
    for item in items:
        days = ranges.get(item)
        dates = (day_text(days[0]), day_text(days[1])) if days else ("", "")
        lines.append("\t".join((item, *dates)))
    return "\n".join(lines)


class WriteItemDates(beam.PTransform):
    """``SEEN`` elements -> ``OUTPUT_DIR/item_dates.tsv`` (module doc).

    ``transform_fn`` is tf.Transform's ``(saved model dir, metadata)`` result, whose
    vocabulary asset gives the line order.
    """

    def __init__(self, output_dir: str, transform_fn: tuple, test_fraction: float, seed: int,
                 batched: bool = False) -> None:
        super().__init__()
        self.output_dir = output_dir
        self.transform_fn_dir = transform_fn[0]
        self.test_fraction = test_fraction
        self.seed = seed
        self.batched = batched  # elements are columns.SeenColumns

    def expand(self, seen):
        ranges = (
            seen
            | "TrainingRanges" >> beam.FlatMap(batch_training_ranges if self.batched else training_ranges,
                                               self.test_fraction, self.seed)
            | "PerItem" >> beam.CombinePerKey(DayRangeFn())
        )
        return (
            self.transform_fn_dir
            | "AlignWithVocabulary" >> beam.Map(aligned_table, beam.pvalue.AsDict(ranges))
            | "WriteTable" >> beam.io.WriteToText(
                FileSystems.join(self.output_dir, contract.ITEM_DATES_FILE), shard_name_template=""
            )
        )
