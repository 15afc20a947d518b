r"""Seeded generator of a news site's analytics export, in GA360 and GA4 form (same behaviour).

One simulated fortnight of a news site (the Kurier.at layout) is written either as GA360
``ga_sessions`` rows (newline-delimited JSON, one session a line; the article ID in the hit-level
custom dimension 10) or as GA4 ``events`` rows (newline-delimited JSON, one event a line, as
BigQuery exports them). Same seed, same bytes; both forms of one seed describe the same page
views, dwell times and visitor IDs.

    python -m preprocess.sample_data --output data/ga_sample/ga_sessions_sample.json
    python -m preprocess.sample_data --schema ga4 --output data/ga_sample/ga4_events_sample.ndjson

Generative model
----------------
Days ``d = 0 … D−1`` (``D = 14``, from 2024-03-04 UTC); ``T = 12`` sections (topics).

*Articles* ``i = 1 … I``: a 9-digit ID (``10⁸ +`` a draw without replacement from ``[0, 3·10⁸)``); a topic ``z_i ~ Categorical(π)``, ``π_t ∝ (t + 3)^−1``;
a publication day ``p_i ~ Uniform{−7, …, D−1}`` (a week of back catalogue); a within-topic
popularity ``q_i = (r_i + 2)^−α`` (``α = 1``) where ``r_i`` is the article's rank in a random
order of its topic (a power law inside each topic). Freshness on day ``d``:
``f_i(d) = exp(−(d − p_i)/τ)`` for ``p_i ≤ d``, else 0 (not yet published), ``τ = 2`` days.
(Only a tiny catalogue can have a topic with nothing published by day ``d``; its reads then
come from all articles, as random clicks do.)

*Visitors* ``u``: a 19-digit ID; ``K_u = 1 + Binomial(2, ½)`` preferred topics, drawn without replacement with
probabilities ``π``, weights ``θ_u ~ Dirichlet(1, …, 1)`` over them (``θ_ut = 0`` elsewhere): the
visitor's affinity for topic ``t``. Loyalty ``λ_u ~ Gamma(shape ½, scale 2)``; sessions
``S_u = 1 + Poisson(λ_u)`` (at most 40; heavy-tailed: most visitors come once, a few daily);
their starts are ``S_u`` uniform points of ``[0, 14 d − S_u·3 h)``, sorted, the ``k``-th (from 0)
moved ``k·3 h`` later: inside the fortnight, at least 3 h apart; ``visitNumber`` counts them.

*Page views*: ``N_s ~ Geometric(0.4)`` per session (at most 25). Each page view, with ``d`` the
session's start day:

* with probability 0.12 a section page (no article ID): the visitor's section
  ``t ~ Categorical(θ_u)``, or the home page ``/`` (a third of them);
* else, with probability ``ε = 0.15``, a random click: article ``i`` with probability
  ``∝ q_i f_i(d)`` over all articles;
* else a topical read: ``t ~ Categorical(θ_u)``, then ``i`` in topic ``t`` with probability
  ``∝ q_i f_i(d)``.

*Dwell time* (ms) of an article view: ``log dwell ~ Normal(log 15 000 + β θ_{u z_i}, 0.8²)``
with ``β = log 4`` (a reader fully devoted to the topic stays 4× longer in median); section
pages ``log dwell ~ Normal(log 8 000, 0.5²)``; clipped to [2 s, 30 min]. An article view
fires a scroll event (90 % depth) with probability ``1 − exp(−dwell / 90 s)``, halfway through
the dwell. A session's first page carries campaign parameters (``?utm_source=…``) with
probability 0.2.

Clicks thus follow per-visitor taste (topics), popularity within a topic, and recency; dwell
grows with the taste; section pages, random clicks and non-page events (scroll; in GA4 also
session_start and user_engagement) are the noise. :func:`catalogue` exposes the articles' topics and publication days
(:func:`item_topics`: ID -> section) so tests can check that the structure is there.

The two forms
-------------
Page ``k`` of a session starts at ``T_k = Σ_{j<k} dwell_j`` ms after the session start ``s``
(unix seconds).

* GA360: a ``PAGE`` hit at ``hits.time = T_k`` (``pagePath`` ``/news/article-<id>`` with the ID
  also in custom dimension 10, or the section path; the landing page's query string kept in
  ``pagePath``), an ``EVENT`` hit (scroll) at ``T_k + dwell_k // 2``; ``visitNumber``,
  ``visitId = visitStartTime = s``, ``date`` = the start's UTC day.
* GA4: ``event_timestamp = 10⁶ s + 1000 T`` µs; per session a ``session_start`` at ``T_0``; per
  page a ``page_view`` at ``T_k``, a ``scroll`` at ``T_k + dwell_k // 2``, and, for every page
  but the session's last, a ``user_engagement`` at ``T_{k+1} − 1`` ms with
  ``engagement_time_msec = dwell_k``. The session's last page sends none: its end is unknown,
  as in GA360, where the last hit of a session gets no duration (the tab was closed before
  the beacon). Every event has ``ga_session_id = s``, ``ga_session_number`` (= visitNumber),
  ``page_location`` (``https://news.example.com`` + the GA360 pagePath), ``page_title``, and
  on article pages the param ``article_id``. ``user_pseudo_id`` = GA360's ``fullVisitorId``.
  INT64 values are JSON numbers.

At the defaults (150,000 visitors, 4,000 articles, seed 42): 300,064 sessions, 748,892 page
views; 200 MB of GA360 rows, 910 MB of GA4 rows (1,745,165 events); the pipeline finds 369,936
interactions of 105,560 visitors with 3,930 articles, median duration 36.75 s.

So the GA360 reader's defaults (custom dimension 10, ``PAGE`` hits, next-hit gaps) and the GA4
reader with ``--item_source event_param:article_id --duration engagement_time``
(:data:`GA4_READER_FLAGS`) give the same ``(visitor, item, duration)`` rows; so does
``--duration next_event --event_names page_view,user_engagement`` (page ``k``'s GA4 events lie
in ``[T_k, T_{k+1})``; the filter drops the last page's scroll, which GA360's ``PAGE`` filter
drops too).
"""
from __future__ import annotations

import argparse
import datetime
import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np

SCHEMAS = ("ga360", "ga4")
DEFAULT_OUTPUT = {
    "ga360": "data/ga_sample/ga_sessions_sample.json",
    "ga4": "data/ga_sample/ga4_events_sample.ndjson",
}
# The GA4 reader's flags under which the GA4 form gives the GA360 form's interactions.
GA4_READER_FLAGS = ("--input_format", "ga4_json", "--item_source", "event_param:article_id",
                    "--duration", "engagement_time")

DEFAULT_VISITORS = 150_000  # about 105k of them read an article long enough to be timed
HOST = "https://news.example.com"
# (path, title) per topic; index T is the home page (a section page of no topic).
SECTIONS = (
    ("/politik", "Politik"), ("/chronik", "Chronik"), ("/wirtschaft", "Wirtschaft"),
    ("/sport", "Sport"), ("/kultur", "Kultur"), ("/meinung", "Meinung"),
    ("/wissen", "Wissen"), ("/gesundheit", "Gesundheit"), ("/digital", "Digital"),
    ("/motor", "Motor"), ("/reise", "Reise"), ("/lifestyle", "Lifestyle"),
)
HOME = ("/", "News Example")
CAMPAIGNS = (
    "?utm_source=newsletter&utm_medium=email&utm_campaign=morgen",
    "?utm_source=facebook&utm_medium=social",
    "?utm_source=twitter&utm_medium=social",
    "?utm_source=google&utm_medium=cpc&utm_campaign=brand",
)

WINDOW_START = int(datetime.datetime(2024, 3, 4, tzinfo=datetime.timezone.utc).timestamp())
DAYS = 14
BACK_CATALOGUE_DAYS = 7
TOPIC_SHARE_OFFSET = 3.0  # π_t ∝ (t + 3)^-1
POPULARITY_EXPONENT = 1.0  # α
FRESHNESS_DAYS = 2.0  # τ
RANDOM_CLICK = 0.15  # ε
SECTION_PAGE = 0.12
HOME_SHARE = 1 / 3  # of section pages
LOYALTY_SHAPE, LOYALTY_SCALE = 0.5, 2.0
MAX_SESSIONS = 40
SESSION_GAP_S = 3 * 3600
PAGE_STOP = 0.4  # Geometric(0.4) pages per session
MAX_PAGES = 25
DWELL_MEDIAN_MS, DWELL_AFFINITY_GAIN, DWELL_SIGMA = 15_000.0, np.log(4.0), 0.8  # β = log 4
SECTION_DWELL_MEDIAN_MS, SECTION_DWELL_SIGMA = 8_000.0, 0.5
MIN_DWELL_MS, MAX_DWELL_MS = 2_000, 1_800_000
SCROLL_SCALE_MS = 90_000.0
CAMPAIGN_SHARE = 0.2


@dataclass(frozen=True)
class Catalogue:
    """The articles: ``ids[i]`` (9-digit text), ``topic[i]`` (index into SECTIONS),
    ``published[i]`` (day relative to the window start, may be negative), ``popularity[i]`` (q)."""

    ids: np.ndarray
    topic: np.ndarray
    published: np.ndarray
    popularity: np.ndarray


@dataclass(frozen=True)
class Behaviour:
    """The simulated page views. Sessions in export order (by start time); pages of session
    ``s`` are ``page_offset[s]:page_offset[s+1]``, in time order."""

    visitor_ids: np.ndarray  # per visitor, 19-digit text
    session_visitor: np.ndarray  # per session: visitor index
    session_number: np.ndarray  # visitNumber / ga_session_number, from 1
    session_start: np.ndarray  # unix seconds
    page_offset: np.ndarray  # len = sessions + 1
    page_item: np.ndarray  # article index, or -1 for a section page
    page_section: np.ndarray  # section page: topic index, or len(SECTIONS) for home
    page_dwell_ms: np.ndarray
    page_scroll: np.ndarray  # bool
    page_campaign: np.ndarray  # -1, or index into CAMPAIGNS


def topic_shares() -> np.ndarray:
    share = 1.0 / (np.arange(len(SECTIONS)) + TOPIC_SHARE_OFFSET)
    return share / share.sum()


def catalogue(n_items: int = 4_000, seed: int = 42) -> Catalogue:
    """The articles of ``seed`` (their own random stream: independent of the visitor count)."""
    rng = np.random.default_rng([seed, 0])
    # Sampling IDs without replacement from the range, never materialising the range.
    ids = (100_000_000 + rng.choice(300_000_000, size=n_items, replace=False)).astype(str)
    topic = rng.choice(len(SECTIONS), size=n_items, p=topic_shares())
    published = rng.integers(-BACK_CATALOGUE_DAYS, DAYS, size=n_items)
    # Rank inside the topic, in a random order: r_i = position among the topic's articles.
    order = np.lexsort((rng.random(n_items), topic))
    first = np.searchsorted(topic[order], topic[order])  # first position of each one's topic
    rank = np.empty(n_items, dtype=np.int64)
    rank[order] = np.arange(n_items) - first
    popularity = (rank + 2.0) ** -POPULARITY_EXPONENT
    return Catalogue(ids, topic, published, popularity)


def item_topics(n_items: int = 4_000, seed: int = 42) -> dict[str, str]:
    """``{article ID: section name}``: the generator's own topic of each article."""
    cat = catalogue(n_items, seed)
    return {i: SECTIONS[t][1] for i, t in zip(cat.ids.tolist(), cat.topic.tolist())}


class _BlockSampler:
    """Draws from many categorical distributions at once: block ``b`` holds ``items[b]`` with
    ``weights[b]``; ``draw(b, u)`` inverts block ``b``'s CDF at ``u`` for arrays ``b, u``. The CDFs
    are stored as ``b + F_b`` in one increasing array, so one ``searchsorted`` serves all."""

    def __init__(self, blocks: list[tuple[np.ndarray, np.ndarray]]) -> None:
        cums, items, last = [], [], []
        size = 0
        for b, (block_items, weights) in enumerate(blocks):
            total = weights.sum()
            if not total > 0:
                raise ValueError(f"block {b} has no positive weight")
            cum = b + np.cumsum(weights) / total
            cum[-1] = b + 1.0
            cums.append(cum)
            items.append(block_items)
            last.append(size + int(np.flatnonzero(weights > 0)[-1]))
            size += len(weights)
        self.cum = np.concatenate(cums)
        self.items = np.concatenate(items)
        self.last = np.array(last)

    def draw(self, block: np.ndarray, u: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(self.cum, block + u, side="right")
        # b + u may round up to b + 1 (u within 2^-53 of 1): stay on the block's last live item.
        return self.items[np.minimum(pos, self.last[block])]


def _freshness(cat: Catalogue, day: int) -> np.ndarray:
    age = day - cat.published
    return np.where(age >= 0, np.exp(-np.maximum(age, 0) / FRESHNESS_DAYS), 0.0)


def simulate(n_visitors: int = DEFAULT_VISITORS, n_items: int = 4_000, seed: int = 42,
             random_click: float = RANDOM_CLICK) -> Behaviour:
    """Draws the behaviour of the module docstring (vectorised; no per-page Python loop).
    ``random_click = 1`` removes every taste signal (all clicks by popularity and recency)."""
    cat = catalogue(n_items, seed)
    rng = np.random.default_rng([seed, 1])
    n_topics = len(SECTIONS)

    # Visitors: IDs, preferred topics (Gumbel top-k = sampling without replacement ∝ π), θ_u.
    visitor_ids = (10**18 + rng.choice(8 * 10**18, size=n_visitors, replace=False)).astype(str)  # 19 digits, < 2^63
    n_liked = 1 + rng.binomial(2, 0.5, size=n_visitors)
    keys = np.log(topic_shares()) + rng.gumbel(size=(n_visitors, n_topics))
    liked = np.argsort(-keys, axis=1)[:, :3]
    theta = rng.gamma(1.0, size=(n_visitors, 3)) * (np.arange(3) < n_liked[:, None])
    theta /= theta.sum(axis=1, keepdims=True)
    theta_cum = np.cumsum(theta, axis=1)
    theta_cum[:, -1] = 1.0

    # Sessions: S_u = 1 + Poisson(λ_u); starts uniform, sorted, >= 3 h apart, inside the window.
    loyalty = rng.gamma(LOYALTY_SHAPE, LOYALTY_SCALE, size=n_visitors)
    n_sessions = np.minimum(1 + rng.poisson(loyalty), MAX_SESSIONS)
    session_visitor = np.repeat(np.arange(n_visitors), n_sessions)
    n_total = len(session_visitor)
    room = DAYS * 86_400 - n_sessions[session_visitor] * SESSION_GAP_S
    raw_start = np.floor(rng.random(n_total) * room).astype(np.int64)
    order = np.lexsort((raw_start, session_visitor))  # session_visitor is sorted already
    raw_start = raw_start[order]
    first_session = np.repeat(np.cumsum(n_sessions) - n_sessions, n_sessions)
    session_rank = np.arange(n_total) - first_session
    session_start = WINDOW_START + raw_start + session_rank * SESSION_GAP_S
    session_day = (session_start - WINDOW_START) // 86_400

    # Pages of each session.
    n_pages = np.minimum(rng.geometric(PAGE_STOP, size=n_total), MAX_PAGES)
    page_session = np.repeat(np.arange(n_total), n_pages)
    n_page_total = len(page_session)
    page_visitor = session_visitor[page_session]
    page_day = session_day[page_session]

    # The visitor's topic for this page: t ~ Categorical(θ_u).
    k = (rng.random(n_page_total)[:, None] >= theta_cum[page_visitor]).sum(axis=1)
    page_topic = liked[page_visitor, np.minimum(k, 2)]

    # Articles: topical reads from (topic, day) blocks, random clicks from (day) blocks.
    day_weights = [cat.popularity * _freshness(cat, d) for d in range(DAYS)]
    # A tiny catalogue may have no article yet on a day (or in a topic): fall back to all
    # published ones (to all articles).
    day_weights = [w if w.any() else cat.popularity for w in day_weights]
    topical = _BlockSampler([
        (np.flatnonzero(cat.topic == t), day_weights[d][cat.topic == t])
        if day_weights[d][cat.topic == t].any() else (np.arange(n_items), day_weights[d])
        for t in range(n_topics) for d in range(DAYS)
    ])
    random_clicks = _BlockSampler([(np.arange(n_items), w) for w in day_weights])
    u = rng.random(n_page_total)
    is_random = rng.random(n_page_total) < random_click
    item = np.where(
        is_random,
        random_clicks.draw(page_day, u),
        topical.draw(page_topic * DAYS + page_day, u),
    )
    is_section = rng.random(n_page_total) < SECTION_PAGE
    is_home = rng.random(n_page_total) < HOME_SHARE
    page_item = np.where(is_section, -1, item)
    page_section = np.where(is_home, n_topics, page_topic)

    # Dwell: log-normal, median 15 s · 4^θ_{u z_i} for articles.
    affinity = (theta[page_visitor] * (liked[page_visitor] == cat.topic[item][:, None])).sum(axis=1)
    z = rng.standard_normal(n_page_total)
    log_dwell = np.where(
        is_section,
        np.log(SECTION_DWELL_MEDIAN_MS) + SECTION_DWELL_SIGMA * z,
        np.log(DWELL_MEDIAN_MS) + DWELL_AFFINITY_GAIN * affinity + DWELL_SIGMA * z,
    )
    dwell = np.clip(np.rint(np.exp(log_dwell)), MIN_DWELL_MS, MAX_DWELL_MS).astype(np.int64)
    scroll = ~is_section & (rng.random(n_page_total) < 1.0 - np.exp(-dwell / SCROLL_SCALE_MS))
    first_page = np.r_[True, page_session[1:] != page_session[:-1]]
    campaign = np.where(first_page & (rng.random(n_page_total) < CAMPAIGN_SHARE),
                        rng.integers(0, len(CAMPAIGNS), size=n_page_total), -1)

    # Export order: sessions by start time (then visitor), pages kept in time order.
    export = np.lexsort((session_visitor, session_start))
    old_offset = np.r_[0, np.cumsum(n_pages)]
    new_offset = np.r_[0, np.cumsum(n_pages[export])]
    # Page j of the export order is page j - new_offset[s] + old_offset[export[s]] of its session s.
    pages = np.arange(n_page_total) + np.repeat(old_offset[export] - new_offset[:-1], n_pages[export])
    return Behaviour(
        visitor_ids=visitor_ids,
        session_visitor=session_visitor[export],
        session_number=session_rank[export] + 1,
        session_start=session_start[export],
        page_offset=new_offset,
        page_item=page_item[pages],
        page_section=page_section[pages],
        page_dwell_ms=dwell[pages],
        page_scroll=scroll[pages],
        page_campaign=campaign[pages],
    )


def _day_text(unix_s: int) -> str:
    return datetime.datetime.fromtimestamp(unix_s, datetime.timezone.utc).strftime("%Y%m%d")


def _pages(b: Behaviour, cat: Catalogue) -> tuple[list, list, list]:
    """Per page: (path without query, title, article ID or None) as Python lists."""
    item_paths = [f"/news/article-{i}" for i in cat.ids.tolist()]
    item_titles = [f"Artikel {i} | {SECTIONS[t][1]}" for i, t in zip(cat.ids.tolist(), cat.topic.tolist())]
    section_paths = [p for p, _ in SECTIONS] + [HOME[0]]
    section_titles = [f"{t} | News Example" for _, t in SECTIONS] + [HOME[1]]
    ids = cat.ids.tolist()
    paths, titles, articles = [], [], []
    for item, section in zip(b.page_item.tolist(), b.page_section.tolist()):
        if item >= 0:
            paths.append(item_paths[item])
            titles.append(item_titles[item])
            articles.append(ids[item])
        else:
            paths.append(section_paths[section])
            titles.append(section_titles[section])
            articles.append(None)
    return paths, titles, articles


def ga360_lines(b: Behaviour, cat: Catalogue) -> Iterator[str]:
    """GA360 ``ga_sessions`` rows (compact JSON), one per session, in export order."""
    paths, titles, articles = _pages(b, cat)
    dwell, scroll, campaign = b.page_dwell_ms.tolist(), b.page_scroll.tolist(), b.page_campaign.tolist()
    visitors = b.visitor_ids.tolist()
    offsets = b.page_offset.tolist()
    days = {}
    for s, (v, number, start) in enumerate(zip(b.session_visitor.tolist(), b.session_number.tolist(),
                                               b.session_start.tolist())):
        day = (start - WINDOW_START) // 86_400
        date = days.get(day) or days.setdefault(day, _day_text(start))
        hits, time, hit_number = [], 0, 1
        for p in range(offsets[s], offsets[s + 1]):
            path = paths[p] if campaign[p] < 0 else paths[p] + CAMPAIGNS[campaign[p]]
            article = articles[p]
            dims = f'[{{"index":10,"value":"{article}"}}]' if article else "[]"
            hits.append(
                f'{{"hitNumber":{hit_number},"time":{time},"type":"PAGE",'
                f'"page":{{"pagePath":"{path}","pageTitle":"{titles[p]}"}},"customDimensions":{dims}}}'
            )
            hit_number += 1
            if scroll[p]:
                hits.append(
                    f'{{"hitNumber":{hit_number},"time":{time + dwell[p] // 2},"type":"EVENT",'
                    f'"eventInfo":{{"eventCategory":"scroll","eventAction":"90"}}}}'
                )
                hit_number += 1
            time += dwell[p]
        yield (
            f'{{"fullVisitorId":"{visitors[v]}","visitNumber":{number},"visitId":{start},'
            f'"visitStartTime":{start},"date":"{date}","hits":[{",".join(hits)}]}}'
        )


def ga4_lines(b: Behaviour, cat: Catalogue) -> Iterator[str]:
    """GA4 ``events`` rows (compact JSON), one per event, in export order (by session)."""
    paths, titles, articles = _pages(b, cat)
    dwell, scroll, campaign = b.page_dwell_ms.tolist(), b.page_scroll.tolist(), b.page_campaign.tolist()
    visitors = b.visitor_ids.tolist()
    offsets = b.page_offset.tolist()
    dates = [_day_text(WINDOW_START + d * 86_400) for d in range(DAYS + 2)]

    def event(visitor: str, ts_us: int, name: str, params: str) -> str:
        date = dates[(ts_us // 1_000_000 - WINDOW_START) // 86_400]
        return (f'{{"event_date":"{date}","event_timestamp":{ts_us},"event_name":"{name}",'
                f'"event_params":[{params}],"user_pseudo_id":"{visitor}","platform":"WEB"}}')

    for s, (v, number, start) in enumerate(zip(b.session_visitor.tolist(), b.session_number.tolist(),
                                               b.session_start.tolist())):
        visitor = visitors[v]
        session = (f'{{"key":"ga_session_id","value":{{"int_value":{start}}}}},'
                   f'{{"key":"ga_session_number","value":{{"int_value":{number}}}}}')
        t0 = start * 1_000_000
        time, last = 0, offsets[s + 1] - 1
        for p in range(offsets[s], offsets[s + 1]):
            path = paths[p] if campaign[p] < 0 else paths[p] + CAMPAIGNS[campaign[p]]
            page = (f'{session},{{"key":"page_location","value":{{"string_value":"{HOST}{path}"}}}},'
                    f'{{"key":"page_title","value":{{"string_value":"{titles[p]}"}}}}')
            if articles[p]:
                page += f',{{"key":"article_id","value":{{"string_value":"{articles[p]}"}}}}'
            at = t0 + time * 1000
            if p == offsets[s]:
                yield event(visitor, at, "session_start", page)
            yield event(visitor, at, "page_view", page)
            if scroll[p]:
                yield event(visitor, at + dwell[p] // 2 * 1000, "scroll",
                            page + ',{"key":"percent_scrolled","value":{"int_value":90}}')
            time += dwell[p]
            if p != last:  # the last page's engagement beacon is never sent (see module doc)
                yield event(visitor, t0 + (time - 1) * 1000, "user_engagement",
                            page + f',{{"key":"engagement_time_msec","value":{{"int_value":{dwell[p]}}}}}')


def generate_lines(n_visitors: int = DEFAULT_VISITORS, n_items: int = 4_000, seed: int = 42,
                   schema: str = "ga360", random_click: float = RANDOM_CLICK) -> Iterator[str]:
    """The sample's lines (without newlines) in the chosen schema."""
    if schema not in SCHEMAS:
        raise ValueError(f"schema must be one of {SCHEMAS}, got {schema!r}")
    behaviour = simulate(n_visitors, n_items, seed, random_click)
    cat = catalogue(n_items, seed)
    return ga360_lines(behaviour, cat) if schema == "ga360" else ga4_lines(behaviour, cat)


def write_sample(path: str, n_visitors: int = DEFAULT_VISITORS, n_items: int = 4_000, seed: int = 42,
                 schema: str = "ga360", random_click: float = RANDOM_CLICK) -> str:
    """Writes the sample to ``path`` (atomically) and returns the path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    partial = path + ".partial"
    lines = generate_lines(n_visitors, n_items, seed, schema, random_click)
    with open(partial, "w", encoding="utf-8") as out:
        chunk: list[str] = []
        for line in lines:
            chunk.append(line)
            if len(chunk) >= 20_000:  # a few MB per write
                out.write("\n".join(chunk) + "\n")
                chunk = []
        if chunk:
            out.write("\n".join(chunk) + "\n")
    os.replace(partial, path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=None,
                        help=f"output file (default: {DEFAULT_OUTPUT['ga360']}, or {DEFAULT_OUTPUT['ga4']} for ga4)")
    parser.add_argument("--schema", choices=SCHEMAS, default="ga360",
                        help="ga360: GA360 ga_sessions rows; ga4: GA4 events rows (same behaviour)")
    parser.add_argument("--visitors", type=int, default=DEFAULT_VISITORS)
    parser.add_argument("--items", type=int, default=4_000)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    print(write_sample(args.output or DEFAULT_OUTPUT[args.schema], args.visitors, args.items, args.seed, args.schema))


if __name__ == "__main__":
    main()
