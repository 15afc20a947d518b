"""Every flag of the preprocessing job, in one place.

``PreprocessOptions`` is a Beam ``PipelineOptions`` subclass, so the same flags work on the
local runner and on Dataflow, and ``--help`` lists them next to Beam's own.
"""
from __future__ import annotations

import argparse
import difflib
import math
from typing import Sequence

from apache_beam.options import pipeline_options
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions

from preprocess import ga4  # the GA4 reader owns its item sources and name rules

INPUT_FORMATS = ("ga_json", "ga4_json", "hits_csv", "interactions_csv")
ITEM_SOURCES = ("custom_dimension", "page_path", "product_sku")  # GA360; GA4's: preprocess/ga4.py
GA4_ITEM_SOURCE_DEFAULT = "page_location"
GA360_ITEM_SOURCE_DEFAULT = "custom_dimension"


class PreprocessOptions(PipelineOptions):
    """Flags of ``python -m preprocess``."""

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        source = parser.add_argument_group("input (choose one of --bq_table, --ga4_table, --query, --input)")
        source.add_argument(
            "--bq_table",
            help="GA360 export table in BigQuery, PROJECT.DATASET.ga_sessions_* (wildcards allowed). "
            "Read with the project's SQL (schemas/ga360_interactions.sql).",
        )
        source.add_argument(
            "--ga4_table",
            help="GA4 export table in BigQuery, PROJECT.DATASET.events_* (wildcards allowed). "
            "Read with the project's SQL (schemas/ga4_interactions.sql).",
        )
        source.add_argument(
            "--query",
            help="Your own standard-SQL query instead of the project's; it must return the columns "
            "visitorId STRING, contentId STRING, session_duration INT64/FLOAT64, and may return "
            "first_date, last_date (YYYYMMDD) for item freshness.",
        )
        source.add_argument(
            "--start_date",
            help="With --bq_table/--ga4_table on a wildcard table: first _TABLE_SUFFIX to read, YYYYMMDD.",
        )
        source.add_argument(
            "--end_date",
            help="With --bq_table/--ga4_table on a wildcard table: last _TABLE_SUFFIX to read, YYYYMMDD.",
        )
        source.add_argument(
            "--include_intraday",
            action="store_true",
            help="With --bq_table/--ga4_table on a wildcard table: also read the "
            "ga_sessions_intraday_* / events_intraday_* tables (the current day, still being "
            "filled; excluded by default because the day is exported again as a daily table).",
        )
        source.add_argument(
            "--input",
            help="Local or gs:// file pattern of input files (see --input_format).",
        )
        source.add_argument(
            "--input_format",
            choices=INPUT_FORMATS,
            default="ga_json",
            help="ga_json: newline-delimited JSON sessions in the BigQuery GA360 export schema; "
            "ga4_json: newline-delimited JSON events in the BigQuery GA4 export schema; "
            "hits_csv: one row per hit with a header holding fullVisitorId,visitNumber,time and "
            "the item column (--item_field), optionally hitNumber; interactions_csv: header "
            "visitorId,contentId,session_duration (what the SQL returns).",
        )
        source.add_argument(
            "--item_source",
            default=None,
            help="Where the item ID comes from. GA360 (ga_json, --bq_table): custom_dimension "
            "(default; --content_dimension_index), page_path (hits.page.pagePath) or product_sku "
            "(hits.product.productSKU). GA4 (ga4_json, --ga4_table): page_location (default; "
            "the URL without query string and fragment), page_path, page_title, "
            "event_param:KEY (a string or int event param) or item_id (each items[].item_id).",
        )
        source.add_argument(
            "--duration",
            choices=("engagement_time", "next_event"),
            default="engagement_time",
            help="GA4: time on an item = the sum of its events' engagement_time_msec (default, "
            "GA4's own measure) or next_event (gap to the next later event of the session, "
            "the UA hit-gap rule).",
        )
        source.add_argument(
            "--user_id_field",
            choices=("user_pseudo_id", "user_id"),
            default="user_pseudo_id",
            help="GA4: the visitor ID: user_pseudo_id (the device/browser) or user_id (your "
            "site's own login ID, where set; events without it are dropped and counted).",
        )
        source.add_argument(
            "--event_names",
            default="",
            help="GA4: comma-separated event names to keep, e.g. page_view,user_engagement "
            "(default: all events).",
        )
        source.add_argument(
            "--content_dimension_index",
            type=int,
            default=10,
            help="Index of the hit-level custom dimension that holds the content ID "
            "(10 in the Kurier.at layout).",
        )
        source.add_argument(
            "--hit_type",
            default="PAGE",
            help="Only hits of this hits.type are sessionized (ga_json and BigQuery). "
            "Use ALL to keep every hit type (e.g. product events).",
        )
        source.add_argument(
            "--item_field",
            default="contentId",
            help="hits_csv: name of the column holding the item ID (productSKU for the GA sample CSV).",
        )

        out = parser.add_argument_group("output")
        out.add_argument(
            "--output_dir",
            default="output",
            help="Local or gs:// folder for TFRecords, vocabularies, transform_fn and metadata.json.",
        )
        out.add_argument(
            "--num_shards",
            type=int,
            default=0,
            help="Shards per TFRecord output; 0 lets the runner choose.",
        )
        out.add_argument(
            "--test_fraction",
            type=float,
            default=0.0,
            help="Hold out about this share of each user's interactions for evaluation "
            "(test_items_for_user-*); 0 = no split. Deterministic: a seeded hash of "
            "(visitor, item), see preprocess/split.py.",
        )
        out.add_argument(
            "--split_seed",
            type=int,
            default=0,
            help="Seed of the held-out split's hash.",
        )
        out.add_argument(
            "--rating_scale",
            type=float,
            default=0.3,
            help="rating = min(rating_scale * session_duration / median, rating_cap).",
        )
        out.add_argument(
            "--rating_cap",
            type=float,
            default=1.0,
            help="Upper bound of a rating.",
        )


def unknown_flags(argv: Sequence[str]) -> list[str]:
    """The arguments in ``argv`` that neither this job nor any Beam/Dataflow option knows.

    Beam itself only logs "Discarding unparseable args" and runs with the defaults, so a
    misspelt ``--test_fracton 0.2`` would silently run without a split. This parses ``argv``
    the way Beam does (every ``PipelineOptions`` subclass, no abbreviations).
    """
    parser = pipeline_options._BeamArgumentParser(allow_abbrev=False)  # Beam's own parser class
    seen: set = set()
    for cls in PipelineOptions.__subclasses__():
        if str(cls) not in seen:
            seen.add(str(cls))
            cls._add_argparse_args(parser)
    _, unknown = parser.parse_known_args(list(argv))
    return unknown


def refuse_unknown_flags(argv: Sequence[str]) -> None:
    """Raises ``ValueError`` naming every unknown flag, with the closest known one."""
    unknown = unknown_flags(argv)
    if not unknown:
        return
    # argparse also returns the values of unknown flags ("--test_fracton 0.2" -> both words)
    unknown = [arg for arg in unknown if arg.startswith("-")] or unknown
    known = [
        option
        for cls in PipelineOptions.__subclasses__()
        for option in _option_strings(cls)
    ]
    hints = []
    for arg in unknown:
        name = arg.split("=", 1)[0]
        close = difflib.get_close_matches(name, known, n=1) if name.startswith("--") else []
        hints.append(f"{arg} (did you mean {close[0]}?)" if close else arg)
    raise ValueError(f"Unknown flag(s): {', '.join(hints)}. See --help.")


def _option_strings(cls: type) -> list[str]:
    parser = pipeline_options._BeamArgumentParser(allow_abbrev=False)
    cls._add_argparse_args(parser)
    return [s for action in parser._actions for s in action.option_strings if s.startswith("--")]


def is_ga4(options: PreprocessOptions) -> bool:
    """Whether the input is a GA4 events export (BigQuery or NDJSON)."""
    return bool(options.ga4_table) or (bool(options.input) and options.input_format == "ga4_json")


def item_source(options: PreprocessOptions) -> str:
    """``--item_source``, or the default of the input's schema."""
    if options.item_source:
        return options.item_source
    return GA4_ITEM_SOURCE_DEFAULT if is_ga4(options) else GA360_ITEM_SOURCE_DEFAULT


def event_names(options: PreprocessOptions) -> list[str]:
    """``--event_names`` as a list (empty: every event)."""
    return [name.strip() for name in (options.event_names or "").split(",") if name.strip()]


def validate(options: PreprocessOptions) -> None:
    """Raises ``ValueError`` with a readable message when the flags do not make a job."""
    o = options
    chosen = [name for name in ("bq_table", "ga4_table", "query", "input") if getattr(o, name)]
    if len(chosen) != 1:
        raise ValueError(
            "Give exactly one input: --bq_table, --ga4_table, --query or --input "
            f"(got {', '.join('--' + c for c in chosen) or 'none'})."
        )
    table = o.bq_table or o.ga4_table
    if (o.start_date or o.end_date or o.include_intraday) and not table:
        raise ValueError("--start_date/--end_date/--include_intraday only apply to --bq_table/--ga4_table.")
    if is_ga4(o):
        ga4.check_item_source(item_source(o))
        bad = [name for name in event_names(o) if not ga4.NAME.match(name)]
        if bad:
            raise ValueError(f"--event_names must be letters, digits and underscores, got {bad}.")
    else:
        reads_ga360 = o.bq_table or (o.input and o.input_format == "ga_json")
        if reads_ga360 and item_source(o) not in ITEM_SOURCES:
            raise ValueError(f"--item_source for GA360 must be one of {', '.join(ITEM_SOURCES)}, "
                             f"got {item_source(o)!r}.")
        changed = [flag for flag, default in (("duration", "engagement_time"), ("user_id_field", "user_pseudo_id"),
                                              ("event_names", "")) if getattr(o, flag) != default]
        if changed:
            raise ValueError(f"--{', --'.join(changed)} only apply to GA4 input (--ga4_table, --input_format ga4_json).")
    if bool(o.start_date) != bool(o.end_date):
        raise ValueError("Give both --start_date and --end_date, or neither.")
    for flag in ("start_date", "end_date"):
        value = getattr(o, flag)
        if value and not (len(value) == 8 and value.isdigit()):
            raise ValueError(f"--{flag} must be YYYYMMDD, got {value!r}.")
    for flag in ("bq_table", "ga4_table"):
        value = getattr(o, flag)
        if value and (value.count(".") != 2 or any(c in value for c in "`; \n'\"\\")):
            raise ValueError(f"--{flag} must look like PROJECT.DATASET.TABLE, got {value!r}.")
    if o.content_dimension_index < 1:
        raise ValueError("--content_dimension_index must be >= 1.")
    if not o.hit_type or any(c in o.hit_type for c in "'\"\\"):
        raise ValueError(f"--hit_type must be a plain word, got {o.hit_type!r}.")
    for flag in ("rating_scale", "rating_cap"):
        value = getattr(o, flag)
        if not (math.isfinite(value) and value > 0):  # NaN fails both tests
            raise ValueError(f"--{flag} must be a positive finite number, got {value}.")
    if not 0.0 <= o.test_fraction < 1.0:
        raise ValueError(f"--test_fraction must be in [0, 1), got {o.test_fraction}.")
    if o.num_shards < 0:
        raise ValueError("--num_shards must be >= 0.")
    if not o.output_dir:
        raise ValueError("--output_dir is required.")
    if table or o.query:
        # ReadFromBigQuery exports the query result to files under the temp location before
        # reading them: without a gs:// folder it fails late, after credential retries.
        temp = o.view_as(GoogleCloudOptions).temp_location or ""
        if not temp.startswith("gs://"):
            raise ValueError(
                "Reading BigQuery (--bq_table/--ga4_table/--query) needs --temp_location gs://BUCKET/tmp: "
                f"BigQuery exports the rows there before they are read (got {temp or 'none'!r})."
            )
