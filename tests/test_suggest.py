"""Suggestions as you type (``GET /v1/suggest``): the contract, typo tolerance, past
queries (counted only when they found something, suggested only after enough distinct
searchers, never when the catalog lost them), bounds, persistence, and the promise that
every suggestion, searched, finds products: on the sample catalog through the real app,
and (slow) on Home Depot dev-query prefixes through the real service.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from shopsearch.api.app import create_app
from shopsearch.api.service import SearchService
from shopsearch.api.settings import Settings
from shopsearch.api.suggestions import Suggestions
from shopsearch.eval.suggest_bench import prefixes_of, run_suggest_bench
from shopsearch.indexer.catalog import ColumnMapping, load_catalog
from shopsearch.indexer.judgments import load_homedepot
from shopsearch.indexer.snapshot_build import BuildOptions, build_snapshot
from shopsearch.retrieval.encoders import Encoder
from shopsearch.retrieval.popular_queries import PopularQueries, merge, verify_queries
from shopsearch.retrieval.suggest import KINDS as KINDS_ORDER
from shopsearch.retrieval.suggest import SuggestIndex, tokens
from shopsearch.retrieval.types import Product

KINDS = {"query", "phrase", "brand", "category"}


def _settings(index_dir: Path, **overrides: Any) -> Settings:
    return Settings(index_dir=index_dir, reload_interval_s=0, suggest_refresh_s=0.05, **overrides)


@pytest.fixture(scope="module")
def service(sample_index: Path, encoder: Encoder) -> SearchService:
    svc = SearchService(_settings(sample_index), encoder=encoder)
    svc.load()
    return svc


@pytest.fixture(scope="module")
def client(service: SearchService) -> Iterator[TestClient]:
    with TestClient(create_app(service.settings, service=service)) as c:
        _wait_ready(c)
        yield c


def _wait_ready(client: TestClient) -> None:
    deadline = time.monotonic() + 30
    while client.get("/v1/suggest", params={"q": "a"}).headers["X-Suggest-Index"] != "ready":
        assert time.monotonic() < deadline, "the suggestion index was not built in 30 s"
        time.sleep(0.02)


def _suggest(client: TestClient, q: str, **params: Any) -> dict[str, Any]:
    r = client.get("/v1/suggest", params={"q": q, **params})
    assert r.status_code == 200, r.text
    return r.json()


def _texts(body: dict[str, Any], kind: str | None = None) -> list[str]:
    return [s["text"] for s in body["suggestions"] if kind is None or s["kind"] == kind]


def test_contract(client: TestClient, service: SearchService) -> None:
    r = client.get("/v1/suggest", params={"q": "  Cordless   DR"})
    assert r.status_code == 200 and r.headers["X-Suggest-Index"] == "ready"
    body = r.json()
    assert set(body) == {"q", "suggestions", "index_version", "timings_ms"}
    assert body["q"] == "cordless dr" and body["index_version"] == service.snapshot.version
    assert isinstance(body["timings_ms"]["total"], float) and set(body["timings_ms"]) == {"total"}
    found = body["suggestions"]
    assert 1 <= len(found) <= 8 and "cordless drill" in _texts(body)
    for s in found:
        assert set(s) == {"text", "kind", "products"} and s["kind"] in KINDS
        assert s["text"].startswith("cordless dr") and s["products"] >= 1
    products = [s["products"] for s in found]
    assert products == sorted(products, reverse=True)  # most used first
    assert len(_suggest(client, "c", size=3)["suggestions"]) == 3
    assert len(_suggest(client, "c", size=20)["suggestions"]) == 20
    # A trailing space finishes the word: completions of "drill", not of "dril".
    finished = _suggest(client, "drill ")
    assert finished["q"] == "drill " and all(t.startswith("drill ") for t in _texts(finished))
    assert _suggest(client, "qqqzzzxxx")["suggestions"] == []  # nothing matches: 200, empty
    assert _suggest(client, "?!")["suggestions"] == []  # no words at all


def test_brands_and_categories(client: TestClient) -> None:
    assert "milwaukee" in _texts(_suggest(client, "milw"), "brand")
    assert "power tools" in _texts(_suggest(client, "power t"), "category")


def test_typos(client: TestClient) -> None:
    assert any(t.startswith("cordless dr") for t in _texts(_suggest(client, "cordles dr")))
    assert any(t.startswith("drill") for t in _texts(_suggest(client, "drlil")))
    assert any(t.startswith("milwaukee") for t in _texts(_suggest(client, "milwuakee ")))


def test_every_suggestion_finds_products(
    client: TestClient, sample_products: list[Product]
) -> None:
    """Prefixes of product titles and of typed queries (typos included): each
    suggestion, searched on the lexical leg alone, has hits."""
    typed = [p.title for p in sample_products[::12]] + [
        "cordles dr",
        "drlil",
        "stainles steel",
        "xyzzy cordless dr",
        "led bulb 60",
        "dewalt 20v max cordless drill driver kit",
    ]
    texts: set[str] = set()
    for prefix in prefixes_of(typed)[::3]:
        texts.update(_texts(_suggest(client, prefix)))
    assert len(texts) > 100
    for text in sorted(texts):
        r = client.get("/v1/search", params={"q": text, "mode": "lexical", "size": 1})
        assert r.status_code == 200, r.text
        assert r.json()["total"] >= 1, f"suggestion {text!r} finds nothing"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"q": ""}, "q"),
        ({"q": "   "}, "q"),
        ({"q": "a" * 101}, "q"),
        ({}, "q"),
        ({"q": "drill", "size": 0}, "size"),
        ({"q": "drill", "size": 21}, "size"),
        ({"q": "drill", "size": "many"}, "size"),
    ],
)
def test_bad_parameters_are_422_naming_the_field(
    client: TestClient, params: dict[str, Any], field: str
) -> None:
    r = client.get("/v1/suggest", params=params)
    assert r.status_code == 422, r.text
    assert [e["loc"] for e in r.json()["detail"]] == [["query", field]]


def test_503_before_a_snapshot_is_served(tmp_path: Path, encoder: Encoder) -> None:
    svc = SearchService(_settings(tmp_path), encoder=encoder)  # nothing built or loaded
    with TestClient(create_app(svc.settings, service=svc)) as c:
        r = c.get("/v1/suggest", params={"q": "drill"})
        assert r.status_code == 503 and "snapshot" in r.json()["detail"]


def test_building_then_ready(service: SearchService) -> None:
    """Before its index is built a snapshot is answered at once, empty, and says so."""
    suggestions = Suggestions(service.settings, lambda: service)
    try:
        first = suggestions.suggest(service.snapshot, "cord", 8)
        assert first.index == "building" and first.suggestions == []
        assert suggestions.wait_ready(30)
        ready = suggestions.suggest(service.snapshot, "cord", 8)
        assert ready.index == "ready" and ready.suggestions
    finally:
        suggestions.close()


def test_updates_are_suggested_after_the_rebuild(sample_index_copy: Path, encoder: Encoder) -> None:
    """An update is served at once by the previous generation's index (``stale``), then
    by its own: a new product's words are suggested, a deleted one's no longer counted."""
    svc = SearchService(_settings(sample_index_copy), encoder=encoder)
    svc.load()
    suggestions = Suggestions(svc.settings, lambda: svc)
    try:
        assert suggestions.wait_ready(30)
        before = suggestions.suggest(svc.snapshot, "dewalt", 8).suggestions
        assert before[0].text == "dewalt" and before[0].kind == "brand"
        assert suggestions.suggest(svc.snapshot, "zebraw", 8).suggestions == []
        new = Product(id="NEW-1", title="Zebrawood Cutting Board", brand="Woodsy")
        svc.apply_updates([new], ["SKU-10001"])  # SKU-10001 is a DeWalt drill
        assert suggestions.suggest(svc.snapshot, "zebraw", 8).index in ("stale", "ready")
        assert suggestions.wait_ready(30)
        after = suggestions.suggest(svc.snapshot, "zebraw", 8)
        assert after.index == "ready" and [s.text for s in after.suggestions] == ["zebrawood"]
        dewalt = suggestions.suggest(svc.snapshot, "dewalt", 8).suggestions[0]
        assert dewalt.products == before[0].products - 1
    finally:
        suggestions.close()


def test_metrics(client: TestClient) -> None:
    _suggest(client, "dril")
    text = client.get("/metrics").text
    assert 'shopsearch_suggest_latency_seconds_count{index="ready"}' in text


def _search(client: TestClient, q: str, **params: Any) -> dict[str, Any]:
    r = client.get("/v1/search", params={"q": q, "personalize": "false", **params})
    assert r.status_code == 200, r.text
    return r.json()


def test_past_queries(client: TestClient) -> None:
    """Suggested once three searchers sent them; one shopper's repeats, queries that
    found nothing and later pages are not enough."""
    for _ in range(5):  # one shopper, five times
        _search(client, "dewalt cordless hammer", user="solo")
    nothing = "qqzzxv dwwqk"
    for user in ("u1", "u2", "u3"):
        assert _search(client, nothing, user=user, mode="lexical")["total"] == 0
        _search(client, "milwaukee cordless", user=user, page=2, size=1)  # paging only
    for user in ("u1", "u2", "u3"):  # three shoppers; as typed, then normalized
        _search(client, "  DeWalt   Cordless Drill KIT ", user=user)
    deadline = time.monotonic() + 15
    while "dewalt cordless drill kit" not in _texts(_suggest(client, "dewalt co"), "query"):
        assert time.monotonic() < deadline, "a query three shoppers searched is not suggested"
        time.sleep(0.05)
    body = _suggest(client, "dewalt co")
    assert body["suggestions"][0] == {
        "text": "dewalt cordless drill kit",
        "kind": "query",
        "products": body["suggestions"][0]["products"],
    }
    assert body["suggestions"][0]["products"] >= 1
    # Recorded in order, verified together: the ones before it were seen, and refused.
    assert "dewalt cordless hammer" not in _texts(_suggest(client, "dewalt cordless h"), "query")
    assert _texts(_suggest(client, "qqzz"), "query") == []
    assert _texts(_suggest(client, "milwaukee cordless"), "query") == []


def test_popular_queries_are_bounded_and_keep_no_searcher() -> None:
    popular = PopularQueries(min_count=3, max_entries=50)
    for i in range(10):
        popular.record("Cordless  Drill", searcher=f"shopper-{i}")
    for _ in range(10):
        popular.record("odd thing", searcher="shopper-0")  # one searcher: never eligible
    for i in range(500):  # a flood of one-off queries
        popular.record(f"one off {i}", searcher="flood")
    for _ in range(3):
        popular.record("anonymous query")  # no user nor session: each search counts
    assert len(popular) <= 50
    assert popular.eligible() == [("cordless drill", 10), ("anonymous query", 3)]
    dumped = json.dumps(popular.dump())
    assert "shopper" not in dumped and "flood" not in dumped and "odd" not in dumped
    popular.record("x" * 101)  # longer than a suggestion: not counted
    popular.record("!!!")  # no words
    assert len(popular.eligible()) == 2


def test_past_queries_the_catalog_lost_are_not_suggested() -> None:
    products = [
        Product(id="1", title="Cordless Drill Kit", brand="DeWalt"),
        Product(id="2", title="Walnut Table"),
    ]
    index = SuggestIndex.build(products)
    queries = [("dewalt drill", 5), ("walnut table", 4), ("walnut drill", 9), ("oak table", 3)]
    verified = verify_queries(queries, index)
    assert verified.texts == ["dewalt drill", "walnut table"]  # words of one product each
    assert [s.text for s in verified.suggest("d", 5)] == ["dewalt drill"]
    without_walnut = SuggestIndex.build(products[:1])  # the table is gone
    assert verify_queries(queries, without_walnut).texts == ["dewalt drill"]


def test_index_is_bounded_and_ranked(sample_products: list[Product]) -> None:
    full = SuggestIndex.build(sample_products)
    capped = SuggestIndex.build(sample_products, max_phrases=1000)
    assert len(full) > 1000 and len(capped) == 1000
    assert int(np.min(capped.df)) >= int(np.sort(full.df)[-1000])  # the most used kept
    # Title phrases of two or more words used by one product only are not suggestions
    # (single words, brands and category levels are).
    rows = zip(full.texts, full.df, full.kinds, strict=True)
    assert all(df >= 2 for t, df, kind in rows if " " in t and KINDS_ORDER[kind] == "phrase")
    assert min(full.df) == 1
    assert tokens("Drill/Driver, 1/2 in. JELD-WEN") == [
        "drill",
        "driver",
        "1/2",
        "in",
        "jeld",
        "wen",
    ]


def test_merge_shares_places_and_lists_each_text_once() -> None:
    from shopsearch.retrieval.suggest import Suggestion

    past = [Suggestion(f"q{i}", "query", 1) for i in range(6)]
    catalog = [
        Suggestion("q0", "phrase", 40),
        *(Suggestion(f"c{i}", "phrase", 9) for i in range(6)),
    ]
    out = merge(past, catalog, 6)
    assert [s.text for s in out] == ["q0", "q1", "q2", "c0", "c1", "c2"]
    assert out[0] == Suggestion("q0", "query", 40)
    assert [s.text for s in merge(past[:1], catalog, 3)] == ["q0", "c0", "c1"]


def test_counts_survive_a_restart_in_the_file(service: SearchService, tmp_path: Path) -> None:
    path = tmp_path / "popular.json"
    settings = service.settings.model_copy(update={"suggest_queries_file": path})
    first = Suggestions(settings, lambda: service)
    assert first.popular is not None
    for i in range(3):
        first.popular.record("led bulb", searcher=f"s{i}")
    first.popular.record("led strip", searcher="s0")  # not eligible: not saved
    first.close()
    saved = json.loads(path.read_text())
    assert saved["queries"] == {"led bulb": 3}
    second = Suggestions(settings, lambda: service)
    try:
        assert second.popular is not None and second.popular.eligible() == [("led bulb", 3)]
        assert second.wait_ready(30)
        deadline = time.monotonic() + 10
        while "led bulb" not in [
            s.text for s in second.suggest(service.snapshot, "led b", 8).suggestions
        ]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        second.close()
    path.write_text("not json")
    broken = Suggestions(settings, lambda: service)  # a damaged file: start afresh
    assert broken.popular is not None and broken.popular.eligible() == []


# -- Home Depot (slow) ---------------------------------------------------------------

N_QUERIES = 150
N_PRODUCTS = 2000


@pytest.mark.slow
def test_homedepot_prefixes_never_suggest_nothing(
    homedepot_dir: Path, encoder: Encoder, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Every prefix of 150 dev queries on a 2,000-product Home Depot subset (their
    judged products and random others): each suggestion, searched in lexical mode by
    the real service, finds products; lookups stay fast."""
    dev = load_homedepot(homedepot_dir / "dev.csv")
    queries = [q for q in dev.queries if q.judgments][:N_QUERIES]
    products, report = load_catalog(
        homedepot_dir / "products.csv", ColumnMapping(id="product_uid", title="product_title")
    )
    judged = {pid for q in queries for pid in q.judgments}
    rng = np.random.default_rng(11)
    others = [i for i, p in enumerate(products) if p.id not in judged]
    extra = set(rng.choice(len(others), N_PRODUCTS - len(judged), replace=False).tolist())
    keep = [p for p in products if p.id in judged] + [products[others[i]] for i in sorted(extra)]
    index_dir = tmp_path_factory.mktemp("hd-suggest")
    build_snapshot(keep, report, index_dir, encoder, BuildOptions(probe_count=20))
    service = SearchService(_settings(index_dir), encoder=encoder)
    service.load()
    result = run_suggest_bench(service, [q.text for q in queries])
    assert result.prefixes > 2000 and result.suggestions_checked > 1000
    assert result.zero_result == []
    assert result.answered > 0.5
    assert result.p50_ms < 5.0, result
