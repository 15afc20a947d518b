"""Readers: GA360 sessions from BigQuery or files, into hits or interactions.

Two element shapes leave this module, both keyed by visitor so that one GroupByKey brings
all of a visitor's data together (plain tuples: they are cheap to encode in Beam):

* **session hits**: ``(visitorId, (visitNumber, ((time, contentId or None), ...), day))``,
  ready for ``sessionize.SessionizeHits`` (``day``: the row's date as a day number,
  ``freshness.parse_day``, or None);
* an **interaction**: ``(visitorId, (contentId, session_duration, first_day, last_day))``,
  what the SQL returns (the days None when the row has no dates).

Rows that cannot be used are counted (``counters.DROP_REASONS``) and, when the row itself is
malformed, also sent to the ``dropped`` output as JSON text so a user can look at them.

Text inputs are read as raw bytes per line and decoded here, one line at a time, so a byte
that is not UTF-8 costs its own line (``dropped_invalid_utf8``), not the job. A UTF-8 byte
order mark at the start of a file is ignored. Numbers are bounded by BigQuery's INT64 range
(the export schema's own type), so no hostile value can overflow later arithmetic.
"""
from __future__ import annotations

import csv
import io
import json
import math
import zlib
from typing import Any, Iterable, Iterator, Optional, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam import coders
from pyarrow import json as pa_json
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

try:  # several times faster than json on export lines; json stays the reference (see loads)
    import orjson
except ImportError:  # pragma: no cover - orjson is a pipeline requirement (setup.py)
    orjson = None

import schemas
from preprocess import counters, freshness, ids, sessionize
from schemas import contract

DROPPED = "dropped"
SQL_FILE = "ga360_interactions.sql"

SessionHits = tuple  # (visitorId, (visitNumber, ((time, contentId or None), ...), day or None))
Interaction = tuple  # (visitorId, (contentId, session_duration, first_day or None, last_day or None))
DATE_COLUMN = "date"  # the GA360 session column, and the optional column of a hits CSV


# --------------------------------------------------------------------------- BigQuery / SQL


def item_sql(item_source: str, content_dimension_index: int) -> tuple[str, str]:
    """Returns ``(item expression, join clause)`` for the SQL template."""
    if item_source == "custom_dimension":
        return (
            "(SELECT MAX(IF(cd.index = {i}, cd.value, NULL)) "
            "FROM UNNEST(h.customDimensions) AS cd)".format(i=int(content_dimension_index)),
            "",
        )
    if item_source == "page_path":
        return "h.page.pagePath", ""
    if item_source == "product_sku":
        return "p.productSKU", "LEFT JOIN UNNEST(h.product) AS p ON TRUE"
    raise ValueError(f"unknown item source {item_source!r}")


def build_query(
    table: str,
    item_source: str = "custom_dimension",
    content_dimension_index: int = 10,
    hit_type: str = "PAGE",
    start_date: Optional[str] = None,
    end_date: Optional[str] = None,
    include_intraday: bool = False,
) -> str:
    """The project's SQL (``schemas/ga360_interactions.sql``) filled in for one table.

    ``table`` is a BigQuery table reference ``PROJECT.DATASET.TABLE`` (quoted here with
    backticks), or any other FROM-able expression for engines such as DuckDB when it does
    not look like one.

    On a wildcard table (``..._*``) the GA360 export's ``ga_sessions_intraday_YYYYMMDD`` tables
    also match ``ga_sessions_*`` (``_TABLE_SUFFIX = 'intraday_YYYYMMDD'``); they repeat the
    current day, still being filled, so they are excluded unless ``include_intraday``.
    A date range (``BETWEEN 'YYYYMMDD' AND 'YYYYMMDD'``) excludes them too, since
    ``'intraday_...' > '9...'`` in string order; with ``include_intraday`` the range applies
    to the date part of their suffix as well.
    """
    item, item_join = item_sql(item_source, content_dimension_index)
    table_ref, wildcard = table_reference(table)
    table_filter = wildcard_filter(wildcard, start_date, end_date, include_intraday)
    hit_filter = "TRUE" if hit_type.upper() == "ALL" else f"h.type = '{hit_type}'"
    return schemas.read_text(SQL_FILE).format(
        table=table_ref,
        table_filter=table_filter,
        hit_filter=hit_filter,
        item=item,
        item_join=item_join,
    )


def table_reference(table: str) -> tuple[str, bool]:
    """``(FROM-clause text, is a BigQuery wildcard table)``: a ``PROJECT.DATASET.TABLE``
    reference is quoted with backticks; anything else (a DuckDB ``read_json(...)``) is kept."""
    looks_like_bq = table.count(".") == 2 and "(" not in table
    return (f"`{table}`" if looks_like_bq else table), looks_like_bq and table.endswith("*")


def wildcard_filter(
    wildcard: bool, start_date: Optional[str], end_date: Optional[str], include_intraday: bool
) -> str:
    """The ``_TABLE_SUFFIX`` condition of a wildcard table read (``TRUE`` for other tables).

    Both exports write a daily table and, for the current day, an ``..._intraday_YYYYMMDD``
    table that the wildcard also matches (suffix ``intraday_YYYYMMDD``); it is left out unless
    ``include_intraday``. A date range applies to the date part of either suffix.
    """
    if start_date:
        suffix = "REGEXP_REPLACE(_TABLE_SUFFIX, '^intraday_', '')" if include_intraday else "_TABLE_SUFFIX"
        return f"{suffix} BETWEEN '{start_date}' AND '{end_date}'"
    if wildcard and not include_intraday:
        return "NOT STARTS_WITH(_TABLE_SUFFIX, 'intraday_')"
    return "TRUE"


class ReadInteractionsFromBigQuery(beam.PTransform):
    """Runs the interaction query in BigQuery (standard SQL) and validates its rows."""

    def __init__(self, query: str, **bigquery_kwargs: Any) -> None:
        super().__init__()
        self.query = query
        self.bigquery_kwargs = bigquery_kwargs

    def read_transform(self) -> beam.PTransform:
        return beam.io.ReadFromBigQuery(
            query=self.query, use_standard_sql=True, **self.bigquery_kwargs
        )

    def expand(self, pbegin):
        return (
            pbegin
            | "RunQuery" >> self.read_transform()
            | "ValidateRows"
            >> beam.ParDo(ParseInteractionFn()).with_outputs(DROPPED, main="interactions")
        )


# --------------------------------------------------------------------------- parsing helpers


INT64_MAX = 2**63 - 1  # hits.time and visitNumber are INT64 in the export schema


def parse_time(value: Any) -> Optional[float]:
    """A hit time (ms since session start): a finite number in [0, 2^63), or None.

    BigQuery's JSON export writes INT64 as strings, so numeric strings are accepted. Values
    beyond INT64 cannot come from the export; refusing them keeps every later sum finite.
    """
    if type(value) is int:  # the common case, first
        return value if 0 <= value <= INT64_MAX else None
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value)  # float() itself ignores surrounding whitespace
        except ValueError:
            return None
    if not isinstance(value, (int, float)) or not 0 <= value <= INT64_MAX:  # NaN fails too
        return None
    return int(value) if float(value).is_integer() else float(value)


def parse_visit_number(value: Any) -> Optional[int]:
    number = parse_time(value)
    if number is None or not float(number).is_integer():
        return None
    return int(number)


def dead_letter(reason: str, record: Any) -> beam.pvalue.TaggedOutput:
    counters.dropped(reason).inc()
    text = record if isinstance(record, str) else json.dumps(record, default=str)
    return beam.pvalue.TaggedOutput(DROPPED, json.dumps({"reason": reason, "record": text[:2000]}))


def decode_line(raw: Any) -> Optional[str]:
    """One line of a text input as text: UTF-8 without a leading byte order mark, or None
    when the bytes are not UTF-8."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return raw[1:] if raw.startswith("\ufeff") else raw


def undecodable(raw: bytes) -> beam.pvalue.TaggedOutput:
    return dead_letter("invalid_utf8", raw.decode("utf-8", "backslashreplace"))


def read_lines(pattern: str, skip_header_lines: int = 0) -> beam.PTransform:
    """Lines of the files as raw bytes (decoded per line by the parsers)."""
    return beam.io.ReadFromText(pattern, skip_header_lines=skip_header_lines, coder=coders.BytesCoder())


def loads(raw: bytes) -> Any:
    """``json.loads`` of one line, through orjson when it accepts the bytes.

    orjson is strict RFC 8259 JSON over valid UTF-8; every line it refuses (NaN, a lone
    surrogate, invalid UTF-8, a byte order mark, very deep nesting, a blank line) raises
    ``ValueError`` here and the caller takes the ``json`` path, so what a line means, and
    why a line is dropped, is decided by ``json`` exactly as before.
    """
    if orjson is None:
        raise ValueError("orjson is not installed")
    return orjson.loads(raw)


# --------------------------------------------------------------------------- line blocks

BLOCK_BYTES = 8 << 20  # bytes of text per block: a few thousand sessions, one DoFn call


def byte_ranges(pattern: str, block_bytes: int = BLOCK_BYTES) -> Iterator[tuple[str, int, int]]:
    """``(path, start, end)`` ranges covering every file matching ``pattern``.

    An uncompressed file is cut every ``block_bytes``, so one large export still spreads over
    workers; a compressed one (``.gz``, ``.bz2``, ...) cannot be entered in the middle and is
    one range ``(path, 0, -1)``.
    """
    for path in matched_files(pattern):
        size = FileSystems.match([path])[0].metadata_list[0].size_in_bytes
        if CompressionTypes.detect_compression_type(path) != CompressionTypes.UNCOMPRESSED:
            yield path, 0, -1
            continue
        for start in range(0, size, block_bytes):
            yield path, start, min(start + block_bytes, size)


def _read_to_line_end(handle: Any, data: bytes) -> bytes:
    """``data`` extended to the end of its last line (the file's next newline or its end)."""
    if not data or data.endswith(b"\n"):
        return data
    tail = [data]
    while True:
        chunk = handle.read(1 << 16)
        if not chunk:
            break
        cut = chunk.find(b"\n")
        if cut >= 0:
            tail.append(chunk[:cut + 1])
            break
        tail.append(chunk)
    return b"".join(tail)


def range_text(path: str, start: int, end: int) -> bytes:
    """The complete lines that *start* in ``[start, end)`` of an uncompressed file.

    ``TextIO``'s rule: a line belongs to the range holding its first byte, so adjacent
    ranges neither lose nor repeat a line wherever the cuts fall.
    """
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        if start > 0:
            handle.seek(start - 1)
            data = handle.read(end - start + 1)
            cut = data.find(b"\n")  # the first line starting at or after `start`
            if cut < 0 or start + cut >= end:
                return b""
            data = data[cut + 1:]
        else:
            data = handle.read(end)
        return _read_to_line_end(handle, data)


def block_lines(data: bytes) -> list[bytes]:
    """The lines of a block as ``ReadFromText`` gives them: split at ``\\n``, one ``\\r``
    before it removed, no empty last line for a final newline."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if b"\r" not in data:  # the usual case: no line to trim, no per-line pass
        return lines
    return [line[:-1] if line.endswith(b"\r") else line for line in lines]


class ReadBlocksFn(beam.DoFn):
    """``(path, start, end)`` -> the lines of that range, as one list (a block); with ``raw``
    the range's text itself (complete lines, as ``range_text`` gives it), for a parser that
    reads a whole block at once and splits it into lines only when it has to."""

    def __init__(self, block_bytes: int = BLOCK_BYTES, raw: bool = False) -> None:
        self.block_bytes = block_bytes
        self.raw = raw

    def block(self, data: bytes) -> Any:
        return data if self.raw else block_lines(data)

    def process(self, file_range: tuple) -> Iterable:
        path, start, end = file_range
        if end >= 0:
            yield self.block(range_text(path, start, end))
            return
        with FileSystems.open(path) as handle:  # compressed: read through, cut at newlines
            carry = b""  # the start of a line that the next chunk ends
            while True:
                chunk = handle.read(self.block_bytes)
                if not chunk:
                    if carry:
                        yield self.block(carry)
                    return
                data = carry + chunk
                cut = data.rfind(b"\n") + 1
                carry = data[cut:]
                if cut:
                    yield self.block(data[:cut])


class ReadLineBlocks(beam.PTransform):
    """Text files (local or gs://) -> blocks of raw lines: one element per about
    ``block_bytes`` of text instead of one per line, so the parsers loop over lines in
    Python without Beam's per-element cost (encoding, timestamps, counters) on each."""

    def __init__(self, pattern: str, block_bytes: int = BLOCK_BYTES, raw: bool = False) -> None:
        super().__init__()
        self.pattern = pattern
        self.block_bytes = block_bytes
        self.raw = raw  # blocks as text (ReadBlocksFn's raw), not lists of lines

    def expand(self, pbegin):
        return (
            pbegin
            | "Pattern" >> beam.Create([self.pattern])
            | "ByteRanges" >> beam.FlatMap(byte_ranges, self.block_bytes)
            | "SpreadRanges" >> beam.Reshuffle()  # on Dataflow: ranges to many workers
            | "ReadRanges" >> beam.ParDo(ReadBlocksFn(self.block_bytes, self.raw))
        )


def visitor_id(value: Any) -> tuple[Optional[str], Optional[str]]:
    visitor, problem = ids.clean_id(value)
    if problem == ids.MISSING:
        return None, "missing_visitor_id"
    if problem:
        return None, "invalid_visitor_id"
    return visitor, None


def content_id(value: Any) -> tuple[Optional[str], Optional[str]]:
    """Content ID or None; only an ID with bad characters is an error (missing is normal)."""
    content, problem = ids.clean_id(value)
    if problem == ids.INVALID_CHARACTERS:
        return None, "invalid_content_id"
    return content, None


# --------------------------------------------------------------------------- GA360 JSON


def hit_items(hit: dict, item_source: str, content_dimension_index: int) -> list:
    """The raw item values of one GA360 hit, mirroring the SQL's item expression.

    custom_dimension: MAX over the values with the wanted index (one value or None);
    page_path: hits.page.pagePath; product_sku: one value per product (None if none).
    Raises ``MalformedHit`` when a field the expression reads has the wrong JSON type (the
    export schema makes customDimensions and product arrays of records, page a record).
    Dimension values are STRING in the schema: integers are compared as their decimal text;
    any other type is returned as it is, for the caller to reject as an invalid ID.
    """
    if item_source == "custom_dimension":
        dims = _repeated(hit, "customDimensions")
        values = [
            cd.get("value")
            for cd in dims
            if cd.get("value") is not None
            and (cd.get("index") == content_dimension_index
                 or parse_visit_number(cd.get("index")) == content_dimension_index)
        ]
        texts = [str(v) if type(v) is int else v for v in values]
        not_text = [v for v in texts if not isinstance(v, str)]
        if not_text:
            return [not_text[0]]
        return [max(texts)] if texts else [None]
    if item_source == "page_path":
        page = hit.get("page")
        if page is not None and not isinstance(page, dict):
            raise MalformedHit("page")
        return [page.get("pagePath") if page else None]
    if item_source == "product_sku":
        return [p.get("productSKU") for p in _repeated(hit, "product")] or [None]
    raise ValueError(f"unknown item source {item_source!r}")


class MalformedHit(ValueError):
    """A GA360 hit field has the wrong JSON type; the argument names the field."""


def _repeated(hit: dict, field: str) -> list:
    """A REPEATED RECORD field of a hit: a list of objects (null or absent = empty)."""
    value = hit.get(field)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise MalformedHit(field)
    return value


class ParseGaSessionFn(beam.DoFn):
    """One line of a GA360 export (a session) -> its hits, keyed by visitor."""

    def __init__(self, item_source: str, content_dimension_index: int, hit_type: str) -> None:
        self.item_source = item_source
        self.content_dimension_index = content_dimension_index
        self.hit_type = None if hit_type.upper() == "ALL" else hit_type
        self.other_hit_type = counters.dropped("other_hit_type")
        self._days: dict = {}

    def process(self, raw: bytes) -> Iterable:
        for out in self.session_rows(raw):
            if type(out) is tuple:
                visitor, visit, hits, day = out
                yield visitor, (visit, hits, day)
            else:
                yield out

    def session_rows(self, raw: bytes) -> Iterable:
        """One line -> its dead letters (``TaggedOutput``) and, when it has kept hits, one
        ``(visitor, visitNumber, ((time, contentId or None), ...), day)`` tuple."""
        line = None
        try:
            session = loads(raw)  # the common case: valid UTF-8 JSON, no byte order mark
        except ValueError:
            line = decode_line(raw)
            if line is None:
                yield undecodable(raw)
                return
            if not line.strip():
                return
            try:
                session = json.loads(line)
            except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser's stack
                yield dead_letter("malformed_json", line)
                return
        if not isinstance(session, dict):
            line = line if line is not None else decode_line(raw)
            yield dead_letter("malformed_json", line)
            return
        visitor, problem = visitor_id(session.get("fullVisitorId"))
        if problem:
            yield dead_letter(problem, line if line is not None else decode_line(raw))
            return
        visit = parse_visit_number(session.get("visitNumber"))
        if visit is None:
            yield dead_letter("missing_visit_number", line if line is not None else decode_line(raw))
            return
        hits = session.get("hits")
        if not isinstance(hits, list):
            yield dead_letter("missing_hits", line if line is not None else decode_line(raw))
            return
        session_hits = []
        other_type = 0
        for hit in hits:
            if not isinstance(hit, dict):
                yield dead_letter("malformed_json", hit)
                continue
            if self.hit_type is not None and hit.get("type") != self.hit_type:
                other_type += 1
                continue
            time = hit.get("time")
            if not (type(time) is int and 0 <= time <= INT64_MAX):  # the export's own form, first
                time = parse_time(time)
            if time is None:
                yield dead_letter("invalid_time", {"fullVisitorId": visitor, "hit": hit})
                continue
            try:
                raw_items = (self.custom_dimension_item(hit) if self.item_source == "custom_dimension"
                             else hit_items(hit, self.item_source, self.content_dimension_index))
            except MalformedHit:
                yield dead_letter("malformed_hit", {"fullVisitorId": visitor, "hit": hit})
                continue
            for raw_item in raw_items:
                item, problem = content_id(raw_item)
                if problem:
                    yield dead_letter(problem, {"fullVisitorId": visitor, "hit": hit})
                session_hits.append((time, item))
        if other_type:
            self.other_hit_type.inc(other_type)
        if session_hits:
            yield visitor, visit, tuple(session_hits), self.export_day(session.get(DATE_COLUMN))

    def export_day(self, value: Any) -> Optional[int]:
        """``freshness.parse_export_day``, remembered per text: an export has few dates."""
        if type(value) is not str:
            return freshness.parse_export_day(value)
        day = self._days.get(value, self)
        if day is self:
            day = self._days[value] = freshness.parse_export_day(value)
        return day

    def custom_dimension_item(self, hit: dict) -> list:
        """``hit_items`` for ``custom_dimension``, with a shortcut for the export's usual form
        (integer indices, text or null values); anything else goes through ``hit_items``."""
        dims = hit.get("customDimensions")
        if type(dims) is list:
            values = []
            for cd in dims:
                if type(cd) is not dict or type(cd.get("index")) is not int:
                    break
                value = cd.get("value")
                if value is not None:
                    if type(value) is not str:
                        break
                    if cd["index"] == self.content_dimension_index:
                        values.append(value)
            else:
                return [max(values)] if values else [None]
        return hit_items(hit, "custom_dimension", self.content_dimension_index)


class ReadGaSessions(beam.PTransform):
    """Newline-delimited GA360 export JSON (local or gs://) -> session hits keyed by visitor."""

    def __init__(self, pattern: str, item_source: str, content_dimension_index: int, hit_type: str):
        super().__init__()
        self.pattern = pattern
        self.parse = ParseGaSessionFn(item_source, content_dimension_index, hit_type)

    def expand(self, pbegin):
        return (
            pbegin
            | "ReadLines" >> read_lines(self.pattern)
            | "ParseSessions" >> beam.ParDo(self.parse).with_outputs(DROPPED, main="hits")
        )


_ARROW_READ = pa_json.ReadOptions(use_threads=False, block_size=64 << 20)  # one DoFn, one core
_ARROW_PARSE = pa_json.ParseOptions(
    explicit_schema=pa.schema([  # the GA360 export fields the custom_dimension item reads
        ("fullVisitorId", pa.string()), ("visitNumber", pa.int64()), ("date", pa.string()),
        ("hits", pa.list_(pa.struct([
            ("time", pa.int64()), ("type", pa.string()),
            ("customDimensions", pa.list_(pa.struct([("index", pa.int64()), ("value", pa.string())]))),
        ]))),
    ]),
    unexpected_field_behavior="ignore",
)


class ParseGaSessionBlockFn(ParseGaSessionFn):
    """A block of GA360 export lines -> their kept hits as columns, one element per visitor
    bucket (``sessionize.pack_rows``); every line is read and checked by
    ``ParseGaSessionFn.session_rows``, so drops and dead letters are the per-line reader's."""

    def __init__(self, item_source: str, content_dimension_index: int, hit_type: str, buckets: int) -> None:
        super().__init__(item_source, content_dimension_index, hit_type)
        self.buckets = buckets

    def process(self, lines: list) -> Iterable:
        bucketed = self.arrow_columns(lines) if self.item_source == "custom_dimension" else None
        if bucketed is not None:
            yield from bucketed
            return
        rows = []
        for raw in lines:
            for out in self.session_rows(raw):
                if type(out) is tuple:
                    rows.append(out)
                else:
                    yield out
        yield from sessionize.bucketed_columns(rows, self.buckets)

    def arrow_columns(self, lines: list) -> Optional[list]:
        """The block's ``(bucket, HitColumns)`` from Arrow's JSON reader, or None when any
        line needs the per-line path.

        Arrow parses the whole block against the export schema and refuses what ``json``
        and the per-line checks would treat otherwise (a number as text or the reverse, a
        fraction where an integer goes, a repeated key, a bad surrogate, a non-object line);
        the rest is checked here on the columns: text that is not UTF-8, two objects on a
        line, nulls and negatives where a dead letter would be due, IDs and items through
        ``ids.clean_id``. Any doubt returns None, so the per-line reader, the reference,
        decides every drop and dead letter.
        """
        data = b"\n".join(lines)
        try:
            data.decode("utf-8")  # Arrow takes invalid UTF-8 in strings as it is
            table = pa_json.read_json(io.BytesIO(data), read_options=_ARROW_READ, parse_options=_ARROW_PARSE)
        except Exception:  # any refusal: the per-line path says why
            return None
        if table.num_rows != sum(1 for line in lines if line.strip()):
            return None  # e.g. two objects on one line: malformed for json
        visitors, visits = table["fullVisitorId"].combine_chunks(), table["visitNumber"].combine_chunks()
        hits, dates = table["hits"].combine_chunks(), table["date"].combine_chunks()
        if visitors.null_count or visits.null_count or hits.null_count or table.num_rows == 0:
            return None
        visit = visits.to_numpy(zero_copy_only=False)
        if (visit < 0).any():
            return None
        visitor_text = visitors.to_pylist()
        if any(ids.clean_id(v)[1] for v in set(visitor_text)):
            return None
        hit = hits.flatten()
        if hit.null_count:
            return None
        hit_row = pc.list_parent_indices(hits).to_numpy()
        kept = (np.ones(len(hit), dtype=bool) if self.hit_type is None
                else pc.fill_null(pc.equal(hit.field("type"), self.hit_type), False).to_numpy(zero_copy_only=False))
        other_type = len(hit) - int(kept.sum())
        times_all = hit.field("time")
        times = times_all.to_numpy(zero_copy_only=False)[kept] if not times_all.null_count else None
        if times is None:
            times_kept = pc.filter(times_all, pa.array(kept))
            if times_kept.null_count:
                return None  # invalid_time on a kept hit: dead letters
            times = times_kept.to_numpy(zero_copy_only=False)
        if (times < 0).any():
            return None
        items = self.arrow_items(hit, kept)
        if items is None:
            return None
        if other_type:
            self.other_hit_type.inc(other_type)
        days = [self.export_day(d) for d in dates.to_pylist()]
        return sessionize.bucketed_arrays(visitor_text, visit, days, hit_row[kept], times, items, self.buckets)

    def arrow_items(self, hit: pa.StructArray, kept: np.ndarray) -> Optional[list]:
        """The item (``hit_items`` for ``custom_dimension``, then ``content_id``) of each
        kept hit, or None when one needs a dead letter."""
        n = len(hit)
        items: list = [None] * n
        dims = hit.field("customDimensions")
        if dims.null_count == n:
            return [items[i] for i in np.flatnonzero(kept).tolist()]
        flat = dims.flatten()
        if flat.null_count:
            return None  # a customDimensions entry that is not an object: malformed_hit
        owner = pc.list_parent_indices(dims).to_numpy()
        wanted = pc.and_(pc.fill_null(pc.equal(flat.field("index"), self.content_dimension_index), False),
                         pc.is_valid(flat.field("value"))).to_numpy(zero_copy_only=False)
        values = flat.field("value").filter(pa.array(wanted)).to_pylist()
        for hit_index, value in zip(owner[wanted].tolist(), values):
            current = items[hit_index]
            items[hit_index] = value if current is None or value > current else current  # MAX, as the SQL
        cleaned = {}
        for value in set(items):
            if value is not None:
                item, problem = content_id(value)
                if problem:
                    return None
                cleaned[value] = item
        return [cleaned.get(items[i]) for i in np.flatnonzero(kept).tolist()]


def input_bytes(pattern: str) -> int:
    """Total size of the files matching ``pattern`` (raises ``ValueError`` when none)."""
    matched_files(pattern)  # the clear errors: no file, only empty files
    return sum(m.size_in_bytes for m in FileSystems.match([pattern])[0].metadata_list)


class ReadGaSessionsInBlocks(beam.PTransform):
    """Newline-delimited GA360 export JSON (local or gs://) -> kept hits as columns keyed by
    visitor bucket (``.hits``, for ``sessionize.SessionizeHitBuckets``) and dead letters.

    The same rows, checks and counters as ``ReadGaSessions``, read a block of lines at a
    time. The bucket count follows the input size (``sessionize.bucket_count``).
    """

    def __init__(self, pattern: str, item_source: str, content_dimension_index: int, hit_type: str,
                 block_bytes: int = BLOCK_BYTES) -> None:
        super().__init__()
        self.pattern = pattern
        self.block_bytes = block_bytes
        buckets = sessionize.bucket_count(input_bytes(pattern))
        self.parse = ParseGaSessionBlockFn(item_source, content_dimension_index, hit_type, buckets)

    def expand(self, pbegin):
        return (
            pbegin
            | "ReadLineBlocks" >> ReadLineBlocks(self.pattern, self.block_bytes)
            | "ParseSessions" >> beam.ParDo(self.parse).with_outputs(DROPPED, main="hits")
        )


# --------------------------------------------------------------------------- CSV


def read_header(pattern: str) -> list[str]:
    """The header row shared by every non-empty file matching ``pattern`` (local or gs://).

    The reader skips the first line of each file, so each must start with the same header:
    a file whose first line differs (another column order, or no header at all) would
    otherwise be read with the wrong columns or lose its first row. Raises ``ValueError``
    naming the file.
    """
    header: Optional[list[str]] = None
    first_file = ""
    for path in matched_files(pattern):
        with FileSystems.open(path) as handle:
            first = handle.readline()
        if not first:
            continue  # an empty file adds no rows
        try:
            text = first.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise ValueError(f"{path}: the CSV header (first line) is not UTF-8 text.") from None
        if not text.strip():
            raise ValueError(f"{path}: expected a CSV header on its first line, found an empty line.")
        row = next(csv.reader([text]))
        if header is None:
            header, first_file = row, path
        elif row != header:
            raise ValueError(
                f"{path}: its first line {text.strip()[:200]!r} is not the header of {first_file} "
                f"({','.join(header)}); every file of a CSV input must start with the same header."
            )
    assert header is not None  # matched_files refuses patterns with only empty files
    return header


def matched_files(pattern: str) -> list[str]:
    """Paths matching ``pattern``; a clear error when there are none or all are empty."""
    matches = FileSystems.match([pattern])[0].metadata_list
    if not matches:
        raise ValueError(f"Input pattern {pattern!r} matched no files.")
    if all(m.size_in_bytes == 0 for m in matches):
        raise ValueError(f"Input pattern {pattern!r} matched only empty files: no data to preprocess.")
    return sorted(m.path for m in matches)


def _csv_row(line: str, width: int) -> Optional[list]:
    try:
        row = next(csv.reader(io.StringIO(line)))
    except (csv.Error, StopIteration):
        return None
    return row if len(row) == width else None


def column_positions(header: Sequence[str], needed: Sequence[str], pattern: str) -> dict:
    missing = [name for name in needed if name not in header]
    if missing:
        raise ValueError(
            f"CSV header of {pattern!r} lacks column(s) {missing}; it has {list(header)}."
        )
    return {name: header.index(name) for name in needed}


class ParseHitsCsvFn(beam.DoFn):
    """One hits_csv row -> a one-hit session fragment keyed by visitor (dated when the header
    has a ``date`` column: ``YYYYMMDD`` or ``YYYY-MM-DD``)."""

    def __init__(self, header: Sequence[str], item_field: str) -> None:
        self.width = len(header)
        self.pos = column_positions(header, ["fullVisitorId", "visitNumber", "time", item_field], "hits_csv")
        self.item_field = item_field
        self.date_pos = header.index(DATE_COLUMN) if DATE_COLUMN in header else None

    def process(self, raw: bytes) -> Iterable:
        line = decode_line(raw)
        if line is None:
            yield undecodable(raw)
            return
        if not line.strip():
            return
        row = _csv_row(line, self.width)
        if row is None:
            yield dead_letter("malformed_csv", line)
            return
        visitor, problem = visitor_id(row[self.pos["fullVisitorId"]])
        if problem:
            yield dead_letter(problem, line)
            return
        visit = parse_visit_number(row[self.pos["visitNumber"]])
        if visit is None:
            yield dead_letter("missing_visit_number", line)
            return
        time = parse_time(row[self.pos["time"]])
        if time is None:
            yield dead_letter("invalid_time", line)
            return
        item, problem = content_id(row[self.pos[self.item_field]])
        if problem:
            yield dead_letter(problem, line)
        day = None if self.date_pos is None else freshness.parse_day(row[self.date_pos])
        yield visitor, (visit, ((time, item),), day)


class ParseInteractionFn(beam.DoFn):
    """A (visitorId, contentId, session_duration[, first_date, last_date]) row, from CSV text
    or a BigQuery dict. The dates are read when present (both, or they count as none)."""

    COLUMNS = contract.INTERACTION_COLUMNS  # required: what the SQL returns, an interactions_csv's header
    DATE_COLUMNS = contract.DATE_COLUMNS  # optional: the SQL returns them too

    def __init__(self, header: Optional[Sequence[str]] = None) -> None:
        self.width = len(header) if header else None
        self.pos = column_positions(header, self.COLUMNS, "interactions_csv") if header else None
        self.date_pos = (
            [header.index(c) for c in self.DATE_COLUMNS]
            if header and all(c in header for c in self.DATE_COLUMNS) else None
        )

    def process(self, element: Any) -> Iterable:
        if isinstance(element, bytes):
            text = decode_line(element)
            if text is None:
                yield undecodable(element)
                return
            element = text
        if isinstance(element, str):
            if not element.strip():
                return
            row = _csv_row(element, self.width)
            if row is None:
                yield dead_letter("malformed_csv", element)
                return
            visitor_raw, content_raw, duration_raw = (row[self.pos[c]] for c in self.COLUMNS)
            dates_raw = [row[i] for i in self.date_pos] if self.date_pos else [None, None]
        else:
            visitor_raw, content_raw, duration_raw = (element.get(c) for c in self.COLUMNS)
            dates_raw = [element.get(c) for c in self.DATE_COLUMNS]
        visitor, problem = visitor_id(visitor_raw)
        if problem:
            yield dead_letter(problem, element)
            return
        content, problem = content_id(content_raw)
        if problem:
            yield dead_letter(problem, element)
            return
        if content is None:
            counters.dropped("hit_without_item").inc()
            return
        duration = _finite_number(duration_raw)
        if duration is None:
            yield dead_letter("invalid_duration", element)
            return
        first, last = (freshness.parse_day(d) for d in dates_raw)
        if first is None or last is None or first > last:
            first = last = None  # a partial or reversed range is no date
        yield visitor, (content, duration, first, last)


def _finite_number(value: Any) -> Optional[float]:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


class ReadHitsCsv(beam.PTransform):
    """Flat hit rows with a header -> session hits keyed by visitor."""

    def __init__(self, pattern: str, item_field: str) -> None:
        super().__init__()
        self.pattern = pattern
        self.parse = ParseHitsCsvFn(read_header(pattern), item_field)

    def expand(self, pbegin):
        return (
            pbegin
            | "ReadLines" >> read_lines(self.pattern, skip_header_lines=1)
            | "ParseRows" >> beam.ParDo(self.parse).with_outputs(DROPPED, main="hits")
        )


class ReadInteractionsCsv(beam.PTransform):
    """visitorId,contentId,session_duration rows -> interactions."""

    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pattern = pattern
        self.parse = ParseInteractionFn(read_header(pattern))

    def expand(self, pbegin):
        return (
            pbegin
            | "ReadLines" >> read_lines(self.pattern, skip_header_lines=1)
            | "ParseRows" >> beam.ParDo(self.parse).with_outputs(DROPPED, main="interactions")
        )
