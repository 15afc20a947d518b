"""The bundled sample generator (preprocess/sample_data.py): its two forms read the same, it is
seeded, it has GA scale, and its behaviour has a taste structure that popularity cannot see.

Oracles: the project's GA360 reader against its GA4 reader on the two forms of one seed
(flags of the generator's docstring); plain ``json`` parsing of the written files with the
generator's topics and publication days (:func:`sample_data.catalogue`), scored in NumPy; a
control without taste (``random_click=1``) on which the same comparison must come out the
other way, so the taste test can fail.
"""
from __future__ import annotations

import datetime
import json
import pathlib
import subprocess
import sys
from collections import defaultdict

import apache_beam as beam
import numpy as np
import pandas as pd
import pytest

from preprocess import ga4, sample_data, sessionize, sources
from tests import oracles
from tests.pipelines import REPO

SMALL = dict(n_visitors=2_000, n_items=800, seed=5)


@pytest.fixture(scope="module")
def small_forms(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("small_forms")
    return {schema: sample_data.write_sample(str(d / f"{schema}.json"), schema=schema, **SMALL)
            for schema in sample_data.SCHEMAS}


def rows_of(pcoll, label: str, path: str) -> None:
    _ = (pcoll
         | f"Rows{label}" >> beam.FlatMap(lambda kv: [json.dumps([kv[0], item, d]) for item, d in kv[1]])
         | f"Write{label}" >> beam.io.WriteToText(path, shard_name_template=""))


def read_rows(path: str) -> list[tuple[str, str, float]]:
    with open(path, encoding="utf-8") as handle:
        return sorted((v, i, float(d)) for v, i, d in map(json.loads, handle))


def test_both_readers_give_the_same_interactions(small_forms, tmp_path):
    """GA360 reader (defaults: custom dimension 10, PAGE hits, next-hit gaps) on the GA360 form
    equals the GA4 reader on the GA4 form: with event_param:article_id and engagement_time
    (what run_dataflow.sh uses), with next_event on page_view/user_engagement, and with the
    default page_location item (the URL without its ?utm_... query) on the article URLs."""
    out = {name: str(tmp_path / f"{name}.jsonl") for name in ("ga360", "engagement", "next_event", "location")}
    with beam.Pipeline("FnApiRunner") as p:
        hits = p | "ReadGa360" >> sources.ReadGaSessions(small_forms["ga360"], "custom_dimension", 10, "PAGE")
        rows_of((hits.hits | "Sessionize" >> sessionize.SessionizeHits()).interactions, "ga360", out["ga360"])
        for name, item_source, duration, names in (
            ("engagement", "event_param:article_id", "engagement_time", ()),
            ("next_event", "event_param:article_id", "next_event", ("page_view", "user_engagement")),
            ("location", "page_location", "engagement_time", ()),
        ):
            events = p | f"Read{name}" >> ga4.ReadGa4Events(small_forms["ga4"], item_source, duration,
                                                            "user_pseudo_id", names)
            rows_of((events.events | f"Time{name}" >> ga4.TimeOnItems(duration)).interactions, name, out[name])
    ga360 = read_rows(out["ga360"])
    assert len(ga360) > 3_000 and len({v for v, _, _ in ga360}) > 1_000  # not vacuous
    assert read_rows(out["engagement"]) == ga360
    assert read_rows(out["next_event"]) == ga360
    prefix = sample_data.HOST + "/news/article-"
    location = [(v, i[len(prefix):], d) for v, i, d in read_rows(out["location"]) if i.startswith(prefix)]
    assert sorted(location) == ga360
    # The GA360 reader's rows are the plain pandas grouping of the file's hits (independent).
    expected = oracles.durations_from_hits(oracles.ga_json_hits(small_forms["ga360"]))
    assert sorted(zip(expected.visitorId, expected.contentId, expected.session_duration.astype(float))) == ga360


def ga4_events(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def params(event: dict) -> dict:
    return {p["key"]: next(v for v in p["value"].values() if v is not None) for p in event["event_params"]}


def test_ga4_form_looks_like_the_export(small_forms):
    events = ga4_events(small_forms["ga4"])
    assert {e["event_name"] for e in events} == {"session_start", "page_view", "scroll", "user_engagement"}
    sessions = defaultdict(set)
    for e in events:
        p = params(e)
        assert type(e["event_timestamp"]) is int and type(p["ga_session_id"]) is int
        assert type(p["ga_session_number"]) is int and p["ga_session_number"] >= 1
        assert p["page_location"].startswith(sample_data.HOST + "/")
        assert ("engagement_time_msec" in p) == (e["event_name"] == "user_engagement")
        day = datetime.datetime.fromtimestamp(e["event_timestamp"] / 1e6, datetime.timezone.utc)
        assert e["event_date"] == day.strftime("%Y%m%d")
        if "article_id" in p:
            assert p["page_location"].split("?")[0] == f"{sample_data.HOST}/news/article-{p['article_id']}"
        sessions[e["user_pseudo_id"], p["ga_session_id"]].add(p["ga_session_number"])
    assert all(len(numbers) == 1 for numbers in sessions.values())  # one number per session
    locations = [params(e)["page_location"] for e in events]
    assert any("?utm_source=" in url for url in locations)
    assert any("/news/article-" not in url for url in locations)  # section pages
    # Same visitors and sessions as the GA360 form.
    with open(small_forms["ga360"], encoding="utf-8") as handle:
        ga360 = [json.loads(line) for line in handle]
    assert {(s["fullVisitorId"], s["visitStartTime"]) for s in ga360} == set(sessions)


@pytest.mark.parametrize("schema", sample_data.SCHEMAS)
def test_same_seed_same_bytes(tmp_path, schema):
    a, b, c = (sample_data.write_sample(str(tmp_path / f"{n}.json"), 300, 200, seed, schema)
               for n, seed in (("a", 11), ("b", 11), ("c", 12)))
    with open(a, "rb") as fa, open(b, "rb") as fb, open(c, "rb") as fc:
        first = fa.read()
        assert first == fb.read() and first != fc.read() and len(first) > 10_000
    # The catalogue has its own random stream: the same articles whatever the visitor count.
    assert sample_data.item_topics(200, 11) == sample_data.item_topics(200, 11)
    assert sample_data.catalogue(200, 11).ids.tolist() != sample_data.catalogue(200, 12).ids.tolist()


def test_cli_writes_both_forms(tmp_path):
    for schema in sample_data.SCHEMAS:
        out = tmp_path / f"cli-{schema}.json"
        subprocess.run([sys.executable, "-m", "preprocess.sample_data", "--output", str(out), "--schema", schema,
                        "--visitors", "100", "--items", "50", "--seed", "3"], cwd=REPO, check=True,
                       capture_output=True)
        expected = sample_data.write_sample(str(tmp_path / f"api-{schema}.json"), 100, 50, 3, schema)
        assert out.read_bytes() == pathlib.Path(expected).read_bytes()


def test_default_scale(bundled_sample):
    """The default GA360 form (the session fixture), counted with plain json + pandas."""
    hits = oracles.ga_json_hits(bundled_sample)
    interactions = oracles.durations_from_hits(hits)
    assert hits["visitorId"].nunique() == sample_data.DEFAULT_VISITORS >= 100_000
    assert interactions["visitorId"].nunique() >= 100_000
    assert interactions["contentId"].nunique() >= 3_900  # of 4,000 articles
    assert len(interactions) >= 250_000
    assert set(hits["contentId"].dropna()) <= set(sample_data.catalogue().ids.tolist())


# ------------------------------------------------------------------------------ structure
def article_views(path: str) -> pd.DataFrame:
    """(visitor, session start, item, dwell or NaN) of every article page view, from plain json;
    dwell = the next PAGE hit's time minus this one's (NaN on a session's last page)."""
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            s = json.loads(line)
            pages = [h for h in s["hits"] if h["type"] == "PAGE"]
            for k, h in enumerate(pages):
                dwell = pages[k + 1]["time"] - h["time"] if k + 1 < len(pages) else np.nan
                for cd in h["customDimensions"]:
                    rows.append((s["fullVisitorId"], s["visitStartTime"], cd["value"], dwell))
    return pd.DataFrame(rows, columns=["visitor", "start", "item", "dwell"])


def recall_at_10(views: pd.DataFrame, topic_of: dict, seed: int = 0) -> tuple[float, float]:
    """Mean recall@10 of held-out clicks (20% of each user's distinct items, seeded) for global
    popularity and for a per-user topic-affinity oracle: ``score(u, i) = pop(i) · (n_u,z_i + 0.1)``,
    ``n_u,t`` = the user's training clicks in topic t. Training items are not recommended."""
    items = sorted(set(views["item"]))
    index = {item: n for n, item in enumerate(items)}
    names = sorted(set(topic_of.values()))
    topic = np.array([names.index(topic_of[item]) for item in items])
    rng = np.random.default_rng(seed)
    train, test = [], []
    for _, group in views.groupby("visitor"):
        mine = np.array(sorted({index[i] for i in group["item"]}))
        held = rng.random(len(mine)) < 0.2
        if len(mine) >= 2 and held.any() and not held.all():
            train.append(mine[~held])
            test.append(mine[held])
    popularity = np.bincount(np.concatenate(train), minlength=len(items)).astype(float)
    recalls = np.zeros((len(train), 2))
    for n, (seen, held) in enumerate(zip(train, test)):
        affinity = np.bincount(topic[seen], minlength=len(names)) + 0.1
        for m, score in enumerate((popularity.copy(), popularity * affinity[topic])):
            score[seen] = -np.inf
            top = np.argsort(-score, kind="stable")[:10]
            recalls[n, m] = np.isin(held, top).sum() / min(10, len(held))
    assert len(train) > 1_000
    return tuple(recalls.mean(axis=0))


@pytest.mark.parametrize("random_click", [sample_data.RANDOM_CLICK, 1.0])
def test_taste_beats_popularity_only_when_there_is_taste(tmp_path, random_click):
    path = sample_data.write_sample(str(tmp_path / "s.json"), 4_000, 1_000, 3, random_click=random_click)
    popularity, oracle = recall_at_10(article_views(path), sample_data.item_topics(1_000, 3))
    if random_click < 1:
        assert oracle > 1.8 * popularity  # about 0.29 vs 0.11
    else:  # control: no taste in the data, the topic oracle only adds noise
        assert oracle < popularity


def test_freshness_and_dwell_follow_the_model(tmp_path):
    path = sample_data.write_sample(str(tmp_path / "s.json"), 4_000, 1_000, 4)
    views = article_views(path)
    cat = sample_data.catalogue(1_000, 4)
    published = dict(zip(cat.ids.tolist(), cat.published.tolist()))
    topic_of = dict(zip(cat.ids.tolist(), cat.topic.tolist()))
    day = (views["start"] - sample_data.WINDOW_START) // 86_400
    age = day - views["item"].map(published)
    assert (age >= 0).all()  # nobody reads an article before it is published
    assert (age <= 3).mean() > 0.7  # mostly recent ones (τ = 2 days)
    # Control: a uniform pick among the articles published by the visit's day is far older.
    uniform = {d: np.mean(d - cat.published[cat.published <= d] <= 3) for d in range(sample_data.DAYS)}
    assert (age <= 3).mean() > day.map(uniform).mean() + 0.25
    # Dwell rises with the visitor's share of clicks on the article's topic.
    views["topic"] = views["item"].map(topic_of)
    counts = views.groupby(["visitor", "topic"])["item"].transform("size")
    share = counts / views.groupby("visitor")["item"].transform("size")
    timed = views["dwell"].notna() & (views.groupby("visitor")["item"].transform("size") >= 5)
    high = views.loc[timed & (share >= 0.5), "dwell"].median()
    low = views.loc[timed & (share <= 0.2), "dwell"].median()
    assert high > 1.5 * low
