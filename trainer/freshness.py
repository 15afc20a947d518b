"""Item freshness: the preprocessing's item dates, and which items are fresh enough.

The preprocessing records each item's first and last seen date in the training data
(``metadata.json``'s ``dates`` block and ``item_dates.tsv``, line ``i`` =
``contentId<TAB>first_seen<TAB>last_seen`` of dense item ``i``; ``schemas/metadata.md``).
An item's *age* is ``newest_date − last_seen`` in whole days, ``newest_date`` being the newest
date in the training data. ``max_age_days = N`` keeps the items of age ``≤ N`` (``N = 0``:
only items seen on the newest day); an item without a date is never kept by a filter, since
nothing says it is fresh.

Outputs without dates (sources without a date column, outputs that predate the block) have
no :class:`ItemDates`; asking them for a freshness filter is an error the caller reports.
NumPy and the standard library only.
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass

import numpy as np

from schemas import contract
from schemas.contract import DatesKey, MetadataKey as K
from trainer import fileio
from trainer.errors import TrainerInputError
from trainer.metadata import Metadata

NO_DATE_AGE = np.iinfo(np.int64).max // 2
"""The age given to an item without a date: larger than any ``max_age_days``, so a filter
never keeps it (and ``newest − NO_DATE_AGE`` cannot overflow)."""


@dataclass(frozen=True)
class ItemDates:
    """The items' dates, aligned with the item vocabulary.

    Attributes
    ----------
    first_seen, last_seen : ndarray
        int64 day numbers (days since 1970-01-01) per dense item; ``-1`` where ``has_date``
        is False.
    has_date : ndarray
        bool per dense item.
    newest_day : int
        The newest date in the training data, as a day number.
    source : str
        The column the dates come from (``metadata.json``).
    """

    first_seen: np.ndarray
    last_seen: np.ndarray
    has_date: np.ndarray
    newest_day: int
    source: str

    @property
    def newest_date(self) -> str:
        return day_text(self.newest_day)

    def ages(self) -> np.ndarray:
        """int64 age in days per item (``NO_DATE_AGE`` for an item without a date)."""
        return np.where(self.has_date, self.newest_day - self.last_seen, NO_DATE_AGE)

    def fresh(self, max_age_days: int) -> np.ndarray:
        """bool per item: last seen within ``max_age_days`` days of the newest date."""
        if max_age_days < 0:
            raise ValueError(f"max_age_days must be >= 0, got {max_age_days}")
        return self.ages() <= max_age_days


def day_number(text: str) -> int:
    """``YYYY-MM-DD`` -> days since 1970-01-01 (``ValueError`` when it is not such a date)."""
    day = datetime.datetime.strptime(text, contract.DATE_FORMAT).date()
    return day.toordinal() - datetime.date(1970, 1, 1).toordinal()


def day_text(day: int) -> str:
    return (datetime.date(1970, 1, 1) + datetime.timedelta(days=int(day))).strftime(contract.DATE_FORMAT)


def unavailable_reason(md: Metadata) -> str | None:
    """Why ``md`` has no item dates (``None`` when it has them)."""
    block = md.raw.get(K.DATES)
    if block is None:
        return (f"{md.path} has no '{K.DATES}' block (written by a preprocessing that predates "
                "item dates: rerun python -m preprocess)")
    if not isinstance(block, dict) or not isinstance(block.get(DatesKey.AVAILABLE), bool):
        raise TrainerInputError(f"{md.path}: '{K.DATES}' must be an object with a boolean "
                                f"'{DatesKey.AVAILABLE}', got {block!r}")
    if not block[DatesKey.AVAILABLE]:
        return f"the input has no dates ({block.get(DatesKey.SOURCE) or 'no reason given'})"
    return None


def load_item_dates(md: Metadata, items: list[str]) -> ItemDates | None:
    """The items' dates of ``md`` (``items``: its item vocabulary), or ``None`` when the
    output has none (:func:`unavailable_reason` says why).

    Raises
    ------
    TrainerInputError
        A ``dates`` block or ``item_dates.tsv`` that is malformed: a missing file, a line
        count other than ``nitems``, a contentId that is not the vocabulary's line, a date
        that is not ``YYYY-MM-DD``, ``first_seen > last_seen``, or a ``newest_date`` other than
        the newest ``last_seen``.
    """
    if unavailable_reason(md) is not None:
        return None
    block = md.raw[K.DATES]
    rel = block.get(DatesKey.ITEM_DATES)
    if not isinstance(rel, str) or not rel:
        raise TrainerInputError(f"{md.path}: '{K.DATES}.{DatesKey.ITEM_DATES}' must name the item dates file")
    path = fileio.resolve(fileio.dirname(md.path), rel)
    if not fileio.exists(path) or fileio.isdir(path):
        raise TrainerInputError(f"missing item dates file {path} (named in {md.path})")
    lines = fileio.read_text(path).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) != len(items):
        raise TrainerInputError(f"item dates {path} has {len(lines)} lines, the item vocabulary {len(items)}")
    first = np.full(len(items), -1, np.int64)
    last = np.full(len(items), -1, np.int64)
    for i, (line, item) in enumerate(zip(lines, items)):
        fields = line.split("\t")
        if len(fields) != 3 or fields[0] != item:
            raise TrainerInputError(
                f"item dates {path} line {i + 1} must be '{item}<TAB>first<TAB>last' "
                f"(the item vocabulary's line), got {line[:200]!r}")
        if fields[1] == fields[2] == "":
            continue
        try:
            first[i], last[i] = day_number(fields[1]), day_number(fields[2])
        except ValueError:
            raise TrainerInputError(f"item dates {path} line {i + 1}: dates must be YYYY-MM-DD, "
                                    f"got {fields[1]!r}, {fields[2]!r}") from None
        if first[i] > last[i]:
            raise TrainerInputError(f"item dates {path} line {i + 1}: first seen after last seen")
    has = last >= 0
    if not has.any():
        raise TrainerInputError(f"item dates {path} holds no date, but {md.path} says dates are available")
    newest = int(last[has].max())
    stated = block.get(DatesKey.NEWEST)
    if stated != day_text(newest):
        raise TrainerInputError(f"{md.path}: '{K.DATES}.{DatesKey.NEWEST}' is {stated!r}, the newest "
                                f"last seen date in {path} is {day_text(newest)}")
    return ItemDates(first, last, has, newest, str(block.get(DatesKey.SOURCE, "")))


def require_item_dates(md: Metadata, items: list[str], flag: str) -> ItemDates:
    """:func:`load_item_dates`, refusing an output without dates with a message naming ``flag``."""
    dates = load_item_dates(md, items)
    if dates is None:
        raise TrainerInputError(f"{flag} needs item dates, and {unavailable_reason(md)}")
    return dates
