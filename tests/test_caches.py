"""The caches of issue 14: reranker scores (rerank/score_cache.py) and whole answers of
head queries without a shopper (api/result_cache.py), both on the scoped LRU of
retrieval/scoped_cache.py: bounds, eviction, expiry, threads, what is (not) cached, that
a hit is the answer, that snapshot swaps and updates are never answered from a stale
cache, and the hit counters on /metrics."""

from __future__ import annotations

import dataclasses
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from shopsearch.api.app import create_app
from shopsearch.api.result_cache import _NOT_IN_KEY, ResultCache, cacheable, result_key
from shopsearch.api.schemas import SearchRequest, SearchResponse
from shopsearch.api.service import SearchService
from shopsearch.api.settings import Settings
from shopsearch.indexer.catalog import CatalogReport
from shopsearch.indexer.snapshot_build import BuildOptions, build_snapshot
from shopsearch.rerank.cross_encoder import Reranker
from shopsearch.rerank.score_cache import ScoreCache
from shopsearch.retrieval.deadline import Deadline
from shopsearch.retrieval.encoders import Encoder
from shopsearch.retrieval.scoped_cache import ScopedCache
from shopsearch.retrieval.types import Product

# -- the scoped LRU ---------------------------------------------------------------------


class Clock:
    """A clock the test moves by hand (TTL expiry without sleeping)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_lru_is_bounded_and_evicts_the_least_recently_used() -> None:
    scope = object()
    cache: ScopedCache[str, int] = ScopedCache(3)
    cache.reset(scope)
    for i, key in enumerate("abc"):
        assert cache.put(key, i, scope)
    assert cache.get("a", scope) == 0  # "a" is now the most recently used; "b" the least
    cache.put("d", 3, scope)
    assert len(cache) == 3
    assert cache.get("b", scope) is None
    assert [cache.get(k, scope) for k in "acd"] == [0, 2, 3]
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.entries, stats.maxsize) == (4, 1, 3, 3)
    cache.clear()
    assert len(cache) == 0 and cache.get("a", scope) is None
    assert cache.stats().hits == 4  # counters back Prometheus counters: they never go back


def test_entries_belong_to_the_scope_they_were_put_in() -> None:
    old, new = object(), object()
    cache: ScopedCache[str, int] = ScopedCache(10)
    assert not cache.put("k", 1, old)  # no scope yet: nothing is kept
    cache.reset(old)
    assert cache.put("k", 1, old)
    cache.reset(new)
    assert len(cache) == 0
    # A request that pinned the old snapshot and finishes after the swap: dropped.
    assert not cache.put("k", 1, old)
    assert cache.get("k", new) is None
    assert cache.put("k", 2, new)
    assert cache.get("k", old) is None  # a request still on the old snapshot: a miss
    assert cache.get("k", new) == 2
    with pytest.raises(ValueError, match="None means a miss"):
        cache.put("n", None, new)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="maxsize"):
        ScopedCache(0)


def test_ttl_expires_entries() -> None:
    clock, scope = Clock(), object()
    cache: ScopedCache[str, int] = ScopedCache(10, ttl_s=5.0, timer=clock)
    cache.reset(scope)
    cache.put("k", 1, scope)
    clock.now = 4.9
    assert cache.get("k", scope) == 1
    clock.now = 5.1
    assert cache.get("k", scope) is None
    assert len(cache) == 0


def test_threads_share_one_cache_safely() -> None:
    scope = object()
    cache: ScopedCache[int, int] = ScopedCache(50)
    cache.reset(scope)
    errors: list[BaseException] = []
    gets_per_thread = 2000

    def work(seed: int) -> None:
        try:
            for i in range(gets_per_thread):
                key = (seed * 7 + i) % 40
                value = cache.get(key, scope)
                assert value is None or value == key * 2
                cache.put(key, key * 2, scope)
                if i % 500 == 0:
                    cache.reset(scope)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    stats = cache.stats()
    assert stats.entries <= 50
    assert stats.hits + stats.misses == 8 * gets_per_thread
    assert stats.hits > 0


# -- the score cache --------------------------------------------------------------------


class HashScorer:
    """A real, deterministic pair scorer (a checksum of the pair): the cache's logic is
    under test here, not a model. Records what it was asked to score."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def score(self, query: str, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        self.calls.append(list(texts))
        return np.asarray(
            [zlib.crc32(f"{query}\x00{t}".encode()) / 2**32 - 0.5 for t in texts],
            dtype=np.float32,
        )


def test_score_cache_sends_only_missing_pairs_and_returns_the_same_scores() -> None:
    scorer, scope = HashScorer(), object()
    cache = ScoreCache(100)
    cache.reset(scope)
    ids = [f"p{i}" for i in range(6)]
    texts = [f"text of {i}" for i in ids]
    first = cache.score(scorer, "drill", ids[:4], texts[:4], model="m1", scope=scope)
    assert first.scored == 4 and scorer.calls == [texts[:4]]
    second = cache.score(scorer, "drill", ids, texts, model="m1", scope=scope)
    assert second.scored == 2 and scorer.calls[-1] == texts[4:]
    assert second.scores.dtype == np.float32
    assert np.array_equal(second.scores, HashScorer().score("drill", texts))  # bit for bit
    # Another query, another model: other keys.
    assert cache.score(scorer, "saw", ids[:1], texts[:1], model="m1", scope=scope).scored == 1
    assert cache.score(scorer, "drill", ids[:1], texts[:1], model="m2", scope=scope).scored == 1
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.entries) == (4, 8, 8)
    cache.reset(object())
    assert len(cache) == 0
    assert cache.score(scorer, "drill", ids[:1], texts[:1], model="m1", scope=scope).scored == 1


def test_score_cache_keeps_nothing_from_a_failed_or_wrong_scorer() -> None:
    class Broken:
        def score(self, query: str, texts: Sequence[str]) -> npt.NDArray[np.float32]:
            raise RuntimeError("model crashed")

    class Short:
        def score(self, query: str, texts: Sequence[str]) -> npt.NDArray[np.float32]:
            return np.zeros(len(texts) - 1, dtype=np.float32)

    scope = object()
    cache = ScoreCache(10)
    cache.reset(scope)
    with pytest.raises(RuntimeError, match="crashed"):
        cache.score(Broken(), "q", ["a"], ["A"], model="m", scope=scope)
    with pytest.raises(ValueError, match="shape"):
        cache.score(Short(), "q", ["a", "b"], ["A", "B"], model="m", scope=scope)
    with pytest.raises(ValueError, match="2 product ids for 1 texts"):
        cache.score(HashScorer(), "q", ["a", "b"], ["A"], model="m", scope=scope)
    assert len(cache) == 0


# -- the result cache: keys -------------------------------------------------------------


def _req(**fields: Any) -> SearchRequest:
    return SearchRequest.model_validate({"q": "drill", **fields})


def test_every_field_that_changes_the_answer_is_in_the_key() -> None:
    base = result_key(_req(), "drill")
    variants: dict[str, dict[str, Any]] = {
        "page": {"page": 2},
        "size": {"size": 5},
        "mode": {"mode": "lexical"},
        "filters": {"filters": {"brand": "DeWalt"}},
        "attribute filter": {"filters": {"color": "red"}},
        "facets": {"facets": ["brand"]},
        "price_ranges": {"price_ranges": [[0, 10]]},
        "rerank": {"rerank": False},
        "rerank_depth": {"rerank_depth": 5},
        "rerank_weight": {"rerank_weight": 0.3},
        "rerank_merge": {"rerank_merge": "ranks"},
        "rewrite": {"rewrite": False},
        "fusion": {"fusion": "rrf"},
        "lexical_weight": {"lexical_weight": 0.2},
        "depth": {"depth": 50},
        "nprobe": {"nprobe": 4},
        "explain": {"explain": True},
    }
    keys = {name: result_key(_req(**fields), "drill") for name, fields in variants.items()}
    keys["q"] = result_key(_req(), "saw")
    keys["reranker"] = result_key(_req(), "drill", context="another-model")
    assert base not in keys.values()
    assert len(set(keys.values())) == len(keys)
    # A field added to SearchRequest later must join the key (or _NOT_IN_KEY, knowingly).
    assert set(variants) - {"attribute filter"} | {"q"} | _NOT_IN_KEY == set(
        SearchRequest.model_fields
    )


def test_what_does_not_change_the_answer_is_not_in_the_key() -> None:
    base = result_key(_req(), "drill")
    assert result_key(_req(deadline_ms=50), "drill") == base
    assert result_key(_req(q="  drill "), "drill") == base  # q as normalized by the caller
    # A shopper who turned personalisation off gets the anonymous answer.
    assert result_key(_req(user="u-1", personalize=False), "drill") == base
    assert result_key(_req(user="u-1"), "drill") is None
    assert result_key(_req(session="s-1"), "drill") is None


# -- the result cache on a real service -------------------------------------------------


def _service(index_dir: Path, encoder: Encoder, **settings: Any) -> SearchService:
    svc = SearchService(
        Settings(index_dir=index_dir, reload_interval_s=0, **settings), encoder=encoder
    )
    svc.load()
    return svc


def _answer(response: SearchResponse) -> dict[str, Any]:
    """What a cached hit must repeat: everything but the per-response fields."""
    return response.model_dump(exclude={"query_id", "timings_ms", "cached"})


def test_a_repeated_search_is_a_hit_with_the_same_answer(
    sample_index: Path, encoder: Encoder
) -> None:
    svc = _service(sample_index, encoder)
    request = SearchRequest(q="cordless drill", size=5, explain=True)
    first = svc.search(request)
    assert not first.cached and "dense" in first.timings_ms
    again = svc.search(
        SearchRequest(q=" cordless   drill", size=5, explain=True, deadline_ms=200),
        Deadline.after_ms(200),
    )
    assert again.cached
    assert _answer(again) == _answer(first)
    assert again.query_id != first.query_id
    assert set(again.timings_ms) == {"cache", "total"}
    # A hit is a fresh copy: what its caller changes is not what the next caller gets.
    again.hits.clear()
    again.facets.clear()
    third = svc.search(request)
    assert third.cached and _answer(third) == _answer(first)
    # Another page is another answer.
    second_page = svc.search(SearchRequest(q="cordless drill", size=5, page=2, explain=True))
    assert not second_page.cached
    assert {h.id for h in second_page.hits}.isdisjoint(h.id for h in first.hits)
    assert svc.result_cache is not None
    stats = svc.result_cache.stats()
    assert (stats.hits, stats.misses, stats.entries) == (2, 2, 2)


def test_a_shoppers_search_is_not_cached_and_a_gone_client_is_not_served(
    sample_index: Path, encoder: Encoder
) -> None:
    svc = _service(sample_index, encoder)
    assert svc.result_cache is not None
    for _ in range(2):
        mine = svc.search(SearchRequest(q="garden hose", user="shopper-1"))
        assert not mine.cached and mine.personalized == "no history"
    assert len(svc.result_cache) == 0 and svc.result_cache.stats().misses == 0
    anonymous = svc.search(SearchRequest(q="garden hose"))
    opted_out = svc.search(SearchRequest(q="garden hose", user="shopper-1", personalize=False))
    assert opted_out.cached and _answer(opted_out) == _answer(anonymous)
    gone = Deadline.after_ms(1000)
    gone.cancel("client disconnected")
    with pytest.raises(Exception, match="client disconnected"):
        svc.search(SearchRequest(q="garden hose"), gone)


def test_cut_or_degraded_answers_are_not_cached(
    sample_index: Path, encoder: Encoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = _service(sample_index, encoder)
    assert svc.result_cache is not None
    late = Deadline.after_ms(1)
    time.sleep(0.01)
    cut = svc.search(SearchRequest(q="paint roller"), late)  # spent before it started
    assert cut.cut == ["dense"] and len(svc.result_cache) == 0
    full = svc.search(SearchRequest(q="paint roller"))
    assert not full.cached and full.cut == [] and len(svc.result_cache) == 1

    def down(*args: object, **kwargs: object) -> None:
        raise RuntimeError("lexical engine down")

    monkeypatch.setattr(svc.snapshot.lexical, "search", down)
    for _ in range(2):
        degraded = svc.search(SearchRequest(q="ladder"))
        assert degraded.degraded == ["lexical"] and not degraded.cached
    assert len(svc.result_cache) == 1
    assert not cacheable(degraded) and cacheable(full)


def test_an_answer_that_would_not_read_back_equal_is_not_kept(
    sample_index: Path, encoder: Encoder
) -> None:
    svc = _service(sample_index, encoder, result_cache_size=0)
    answer = svc.search(SearchRequest(q="drill"))
    answer.hits[0].score = float("nan")  # JSON has no NaN: it would come back as null
    cache = ResultCache(10)
    cache.reset(svc.snapshot)
    assert not cache.put("k", answer, svc.snapshot)
    assert cache.get("k", svc.snapshot, started=time.perf_counter()) is None


def test_the_result_cache_expires_after_its_ttl(sample_index: Path, encoder: Encoder) -> None:
    svc = _service(sample_index, encoder, result_cache_size=0)
    answer = svc.search(SearchRequest(q="drill"))
    clock = Clock()
    cache = ResultCache(10, ttl_s=60.0, timer=clock)
    cache.reset(svc.snapshot)
    assert cache.put("k", answer, svc.snapshot)
    hit = cache.get("k", svc.snapshot, started=time.perf_counter())
    assert hit is not None and _answer(hit) == _answer(answer)
    clock.now = 61.0
    assert cache.get("k", svc.snapshot, started=time.perf_counter()) is None


def test_a_snapshot_swap_empties_the_caches(sample_index: Path, encoder: Encoder) -> None:
    svc = _service(sample_index, encoder)
    assert svc.result_cache is not None and svc.score_cache is not None
    request = SearchRequest(q="led light bulb")
    first = svc.search(request)
    assert svc.search(request).cached and len(svc.result_cache) == 1
    old = svc.snapshot
    svc.load()  # the same version loaded again: a new snapshot object serves
    assert svc.snapshot is not old
    assert len(svc.result_cache) == 0 and len(svc.score_cache) == 0
    # A request that pinned the old snapshot and finishes now cannot put its answer back.
    key = svc._result_key(request)
    assert key is not None and not svc.result_cache.put(key, first, old)
    assert not svc.search(request).cached
    svc.use_snapshot(old)  # eval's way of swapping
    assert len(svc.result_cache) == 0
    assert not svc.search(request).cached


def test_threads_searching_at_once_get_the_same_answer(
    sample_index: Path, encoder: Encoder
) -> None:
    svc = _service(sample_index, encoder)
    answers: list[SearchResponse] = []
    lock = threading.Lock()

    def ask() -> None:
        answer = svc.search(SearchRequest(q="cordless drill", size=5))
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=ask) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(answers) == 6
    # Misses computed at once share forward passes (retrieval/batching.py), whose
    # scores differ from a lone query's in the last float bits: the same ranking.
    first = answers[0]
    for answer in answers:
        assert [h.id for h in answer.hits] == [h.id for h in first.hits]
        np.testing.assert_allclose(
            [h.score for h in answer.hits], [h.score for h in first.hits], rtol=1e-6
        )
    assert len({a.query_id for a in answers}) == 6
    assert svc.search(SearchRequest(q="cordless drill", size=5)).cached


@pytest.fixture
def small_index(tmp_path: Path, encoder: Encoder, sample_products: list[Product]) -> Path:
    """A promoted snapshot of 30 sample products in its own directory (updates write it)."""
    products = list(sample_products[:30])
    report = CatalogReport(path="test", format="jsonl", sha256="c" * 64, rows_read=30, products=30)
    build_snapshot(products, report, tmp_path, encoder, BuildOptions(probe_count=5))
    return tmp_path


def test_an_update_is_served_at_once_not_from_the_cache(
    small_index: Path, encoder: Encoder, sample_products: list[Product]
) -> None:
    svc = _service(small_index, encoder)
    assert svc.result_cache is not None
    product = sample_products[5]
    request = SearchRequest(q=product.title, size=30)

    def hit_of(response: SearchResponse) -> Any:
        return next(h for h in response.hits if h.id == product.id)

    before = svc.search(request)
    assert svc.search(request).cached
    assert hit_of(before).title == product.title
    new_price = round((product.price or 0.0) + 12.5, 2)
    changed = dataclasses.replace(product, title=f"{product.title} Xq", price=new_price)
    report = svc.apply_updates([changed], [])
    assert report.generation == 1
    assert len(svc.result_cache) == 0
    after = svc.search(request)
    assert not after.cached
    assert hit_of(after).title == changed.title and hit_of(after).price == new_price
    # An update that changes nothing swaps nothing and keeps the cache.
    assert svc.search(request).cached
    svc.apply_updates([changed], [])
    assert svc.search(request).cached
    # A delete is an update too.
    svc.apply_updates([], [product.id])
    gone = svc.search(request)
    assert not gone.cached and product.id not in {h.id for h in gone.hits}


# -- the score cache on a real service, with a real cross-encoder --------------------------


@pytest.fixture(scope="module")
def reranker(cross_encoder_dir: Path) -> Reranker:
    return Reranker(cross_encoder_dir, device="cpu", backend="torch")


def test_cached_rerank_scores_are_the_uncached_scores(
    sample_index: Path, encoder: Encoder, reranker: Reranker
) -> None:
    settings = Settings(
        index_dir=sample_index, reload_interval_s=0, rerank_depth=10, result_cache_size=0
    )
    cached = SearchService(settings, encoder=encoder, reranker=reranker)
    cached.load()
    uncached = SearchService(
        settings.model_copy(update={"rerank_cache_size": 0}), encoder=encoder, reranker=reranker
    )
    uncached.load()
    assert uncached.score_cache is None and cached.score_cache is not None

    def scores(response: SearchResponse) -> dict[str, float | None]:
        return {h.id: h.explain.rerank_score for h in response.hits if h.explain}

    request = SearchRequest(q="cordless drill", size=20, explain=True)
    reference = uncached.search(request)
    assert reference.rerank == "applied (10 candidates)"
    first = cached.search(request)
    assert (cached.score_cache.stats().hits, cached.score_cache.stats().misses) == (0, 10)
    second = cached.search(request)
    assert cached.score_cache.stats().hits == 10
    # The same batch was scored, so the very same floats; the same answer.
    assert scores(first) == scores(second) == scores(reference)
    assert _answer(second) == _answer(reference)
    # A deeper rerank: 10 pairs from the cache, 5 scored in a batch of their own (the
    # cross-encoder's padding differs by batch, so equal to float precision).
    deeper = SearchRequest(q="cordless drill", size=20, explain=True, rerank_depth=15)
    mixed, plain = cached.search(deeper), uncached.search(deeper)
    assert cached.score_cache.stats().hits == 20
    got, want = scores(mixed), scores(plain)
    assert got.keys() == want.keys()
    ids = [i for i in want if want[i] is not None]
    assert len(ids) == 15
    np.testing.assert_allclose(
        np.array([got[i] for i in ids], dtype=float),
        np.array([want[i] for i in ids], dtype=float),
        rtol=1e-5,
        atol=1e-6,
    )


# -- /metrics ----------------------------------------------------------------------------


@pytest.fixture
def client(sample_index: Path, encoder: Encoder, reranker: Reranker) -> Iterator[TestClient]:
    settings = Settings(index_dir=sample_index, reload_interval_s=0, rerank_depth=5)
    svc = SearchService(settings, encoder=encoder, reranker=reranker)
    svc.load()
    with TestClient(create_app(settings, service=svc)) as c:
        yield c


def _cache_metrics(client: TestClient) -> dict[tuple[str, str], float]:
    r = client.get("/metrics")
    assert r.status_code == 200
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            if sample.name.startswith("shopsearch_cache_"):
                out[(sample.name, sample.labels["cache"])] = sample.value
    return out


def test_metrics_count_hits_and_misses_per_cache(client: TestClient) -> None:
    before = _cache_metrics(client)
    assert before == {
        (f"shopsearch_cache_{name}", cache): 0.0
        for name in ("hits_total", "misses_total", "entries")
        for cache in ("rerank", "result")
    }
    for _ in range(2):
        r = client.get("/v1/search", params={"q": "drill", "size": 5})
        assert r.status_code == 200
    assert r.json()["cached"] is True and set(r.json()["timings_ms"]) == {"cache", "total"}
    # Page 2 is another answer of the same reranked head: a result miss, rerank hits.
    r = client.post("/v1/search", json={"q": "drill", "size": 5, "page": 2})
    assert r.status_code == 200 and r.json()["cached"] is False
    # A shopper's search is neither looked up nor kept; no label carries who asked.
    r = client.get("/v1/search", params={"q": "drill", "user": "shopper-42"})
    assert r.status_code == 200 and r.json()["cached"] is False
    after = _cache_metrics(client)
    assert after[("shopsearch_cache_hits_total", "result")] == 1
    assert after[("shopsearch_cache_misses_total", "result")] == 2
    assert after[("shopsearch_cache_entries", "result")] == 2
    assert after[("shopsearch_cache_misses_total", "rerank")] == 5
    assert after[("shopsearch_cache_hits_total", "rerank")] == 10
    assert after[("shopsearch_cache_entries", "rerank")] == 5
    assert "shopper-42" not in client.get("/metrics").text
