"""Seeded generator of a realistic GA360 export sample (newline-delimited JSON sessions).

Shaped like a news site's GA360 export (the Kurier.at layout: the article ID sits in the
hit-level custom dimension 10): about 130k visitors, 4k articles with power-law popularity,
1-3 sessions per visitor, a few page views per session with log-normal dwell times, section
pages without an article ID, and interleaved non-page (EVENT) hits. Same seed, same bytes.

    python -m preprocess.sample_data --output data/ga_sample/ga_sessions_sample.json
"""
from __future__ import annotations

import argparse
import os

import numpy as np

SECTIONS = ("/", "/politik", "/sport", "/wirtschaft", "/kultur", "/chronik")


def generate_sessions(
    n_visitors: int = 130_000,
    n_items: int = 4_000,
    seed: int = 42,
    date: str = "20170801",
):
    """Yields GA360 sessions as compact JSON text, in the BigQuery export schema (the fields
    the pipeline uses, plus a few for realism). Drawn with vectorized NumPy, then formatted."""
    rng = np.random.default_rng(seed)
    # Popularity: power law over item ranks; IDs look like Kurier's 9-digit article IDs.
    weights = 1.0 / np.power(np.arange(n_items) + 10.0, 1.1)
    weights /= weights.sum()
    item_ids = rng.choice(np.arange(100_000_000, 400_000_000), size=n_items, replace=False).astype(str)
    visitor_ids = rng.integers(0, 10**19 - 1, size=n_visitors, dtype=np.uint64)
    sessions_per_visitor = rng.geometric(0.7, size=n_visitors)
    n_sessions = int(sessions_per_visitor.sum())
    pages_per_session = rng.geometric(0.36, size=n_sessions)
    n_pages = int(pages_per_session.sum())
    # Dwell time per page view in ms: log-normal, median ~35 s, capped at 30 min.
    dwell = np.minimum(rng.lognormal(np.log(35_000), 1.1, size=n_pages), 1_800_000).astype(np.int64)
    has_item = rng.random(n_pages) > 0.12  # section pages carry no article ID
    items = item_ids[rng.choice(n_items, size=n_pages, p=weights)]
    has_event = rng.random(n_pages) < 0.2  # a scroll/video event while reading
    visit_starts = 1501545600 + rng.integers(0, 86_400, size=n_sessions)

    page = 0
    session = 0
    for visitor, count in zip(visitor_ids, sessions_per_visitor):
        visitor_text = f"{int(visitor):019d}"
        for visit_number in range(1, int(count) + 1):
            hits, time, hit_number = [], 0, 1
            for k in range(int(pages_per_session[session])):
                if has_item[page]:
                    item = items[page]
                    hits.append(
                        f'{{"hitNumber":{hit_number},"time":{time},"type":"PAGE",'
                        f'"page":{{"pagePath":"/news/article-{item}"}},'
                        f'"customDimensions":[{{"index":10,"value":"{item}"}}]}}'
                    )
                else:
                    section = SECTIONS[k % len(SECTIONS)]
                    hits.append(
                        f'{{"hitNumber":{hit_number},"time":{time},"type":"PAGE",'
                        f'"page":{{"pagePath":"{section}"}},"customDimensions":[]}}'
                    )
                hit_number += 1
                if has_event[page]:
                    hits.append(f'{{"hitNumber":{hit_number},"time":{time + int(dwell[page]) // 2},"type":"EVENT"}}')
                    hit_number += 1
                time += int(dwell[page])
                page += 1
            start = int(visit_starts[session])
            yield (
                f'{{"fullVisitorId":"{visitor_text}","visitNumber":{visit_number},"visitId":{start},'
                f'"visitStartTime":{start},"date":"{date}","hits":[{",".join(hits)}]}}'
            )
            session += 1


def write_sample(path: str, n_visitors: int = 130_000, n_items: int = 4_000, seed: int = 42) -> str:
    """Writes the sample to ``path`` (atomically) and returns the path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    partial = path + ".partial"
    with open(partial, "w", encoding="utf-8") as out:
        for session in generate_sessions(n_visitors, n_items, seed):
            out.write(session)
            out.write("\n")
    os.replace(partial, path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="data/ga_sample/ga_sessions_sample.json")
    parser.add_argument("--visitors", type=int, default=130_000)
    parser.add_argument("--items", type=int, default=4_000)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    print(write_sample(args.output, args.visitors, args.items, args.seed))


if __name__ == "__main__":
    main()
