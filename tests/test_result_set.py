"""Result sets: what ``total`` and the facets count (retrieval/match_set.py,
retrieval/match_calibration.py, retrieval/result_set.py), on the sample catalog."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from shopsearch.api.schemas import SearchRequest
from shopsearch.api.service import SearchService
from shopsearch.api.settings import Settings
from shopsearch.indexer.match_threshold import dense_threshold
from shopsearch.indexer.snapshot import SnapshotStore
from shopsearch.retrieval.encoders import Encoder
from shopsearch.retrieval.item_text import DESCRIPTION_CHARS
from shopsearch.retrieval.match_calibration import MATCH_SET_KEY, calibrate_dense_threshold
from shopsearch.retrieval.match_set import analyze, min_should_match, stem_analyzer
from shopsearch.retrieval.types import Product


def _words(product: Product) -> set[str]:
    """Every analysed term of the product's indexed text (analyze() keeps six)."""
    parts = [product.title, product.brand or "", product.category or ""]
    parts.append((product.description or "")[:DESCRIPTION_CHARS])
    return set(stem_analyzer().analyze(" ".join(parts)))


def test_min_should_match() -> None:
    assert [min_should_match(n) for n in range(1, 8)] == [1, 2, 2, 2, 3, 3, 4]
    assert analyze("Cordless DRILLS, cordless") == ["cordless", "drill"]


def test_cordless_drill_counts_drills_not_faucets(
    sample_service: SearchService, sample_products: list[Product]
) -> None:
    answer = sample_service.search(SearchRequest(q="cordless drill", size=100, explain=True))
    by_id = {p.id: p for p in sample_products}
    # Every product that holds both words is counted; nothing else but close neighbours.
    holders = {p.id for p in sample_products if {"cordless", "drill"} <= _words(p)}
    threshold = dense_threshold(sample_service.snapshot)
    assert threshold is not None and 0.0 < threshold < 1.0
    hits = {h.id: h for h in answer.hits}
    assert holders <= set(hits)
    for hit in answer.hits:
        assert hit.explain is not None
        close = hit.explain.dense_score is not None and hit.explain.dense_score >= threshold
        assert hit.id in holders or close, by_id[hit.id].title
    assert answer.total == len(answer.hits) < 100
    facets = {f: {b.value for b in buckets} for f, buckets in answer.facets.items()}
    assert "Moen" not in facets["brand"] and "Cuisinart" not in facets["brand"]
    assert not any("Faucet" in c for c in facets["category"])
    assert sum(b.count for b in answer.facets["in_stock"]) == answer.total


def test_every_candidate_without_the_result_set(sample_service: SearchService) -> None:
    request = SearchRequest(q="cordless drill", size=100)
    params = sample_service.search_params(request)
    cut = sample_service.retrieve(request, params=params)
    whole = sample_service.retrieve(request, params=params.with_overrides({"match_only": False}))
    assert cut.total == len(cut.filtered) < len(whole.filtered)
    assert whole.total is None
    assert {c.row for c in cut.filtered} < {c.row for c in whole.filtered}


def test_a_query_nothing_matches_answers_nothing(sample_service: SearchService) -> None:
    answer = sample_service.search(SearchRequest(q="qwxzv plmokn"))
    assert answer.total == 0 and answer.hits == []


def test_threshold_is_measured_at_build_and_deterministic(
    sample_index: Path, sample_service: SearchService, encoder: Encoder
) -> None:
    store = SnapshotStore(sample_index)
    stored = store.manifest(store.current() or "")[MATCH_SET_KEY]
    snap = sample_service.snapshot
    # Served: the build's, or the one measured at load with an int8 query tower.
    served = snap.extra.get(MATCH_SET_KEY, stored)
    assert served["dense_threshold"] == dense_threshold(snap)
    assert stored["positives"] > 100
    again = calibrate_dense_threshold(
        snap.table.products,
        snap.table.row_of,
        encoder.encode_query,
        snap.vectors.vectors_of,
        snap.lexical,
    )
    assert again == stored
    # Titles of one word give no pseudo-queries: no dense matches, lexical ones only.
    one_word = [Product(id=str(i), title="Widget") for i in range(5)]
    none = calibrate_dense_threshold(
        one_word, {}, encoder.encode_query, snap.vectors.vectors_of, snap.lexical
    )
    assert none["dense_threshold"] is None and none["pseudo_queries"] == 0


def test_a_snapshot_built_before_result_sets_is_measured_when_it_loads(
    sample_index_copy: Path, encoder: Encoder
) -> None:
    store = SnapshotStore(sample_index_copy)
    version = store.current() or ""
    path = store.path(version) / "manifest.json"
    manifest = json.loads(path.read_text())
    measured = manifest.pop(MATCH_SET_KEY)
    path.write_text(json.dumps(manifest))
    # fp32 query tower: the build's vectors, so the build's threshold (int8, auto's
    # choice for base towers, moves query vectors and so the threshold slightly).
    settings = Settings(index_dir=sample_index_copy, reload_interval_s=0, query_backend="onnx")
    svc = SearchService(settings, encoder=encoder)
    svc.load()
    assert dense_threshold(svc.snapshot) == measured["dense_threshold"]
    assert MATCH_SET_KEY not in json.loads(path.read_text())  # nothing written to the snapshot


def test_an_int8_query_tower_measures_its_own_threshold_at_load(
    sample_index_copy: Path, encoder: Encoder, sample_products: list[Product]
) -> None:
    """The build measured the threshold with fp32 query vectors; a server whose query
    tower is int8 measures it again with its own (kept in memory, the manifest untouched),
    keeps it across an update, and an fp32 server keeps the build's."""
    from shopsearch.indexer.snapshot_build import calibrate_snapshot

    store = SnapshotStore(sample_index_copy)
    path = store.path(store.current() or "") / "manifest.json"
    built = json.loads(path.read_text())[MATCH_SET_KEY]["dense_threshold"]
    fp32 = SearchService(
        Settings(index_dir=sample_index_copy, reload_interval_s=0, query_backend="onnx"),
        encoder=encoder,
    )
    fp32.load()
    assert dense_threshold(fp32.snapshot) == built
    assert MATCH_SET_KEY not in fp32.snapshot.extra

    settings = Settings(index_dir=sample_index_copy, reload_interval_s=0, query_backend="onnx-int8")
    svc = SearchService(settings, encoder=encoder)
    svc.load()
    entry = svc.snapshot.extra[MATCH_SET_KEY]
    assert entry["query_backend"] == "onnx-int8" == svc.query_encoder.backend
    own = calibrate_snapshot(svc.snapshot, svc.query_encoder.encode_query)["dense_threshold"]
    assert dense_threshold(svc.snapshot) == own == entry["dense_threshold"]
    assert own != built  # int8 moves it (0.3941 against 0.3995 when measured)
    assert json.loads(path.read_text())[MATCH_SET_KEY]["dense_threshold"] == built

    changed = dataclasses.replace(sample_products[0], title="Cordless drill, renamed")
    svc.apply_updates([changed], [])
    assert svc.snapshot.extra[MATCH_SET_KEY] is entry  # carried, not measured again


def test_eval_facets_measures_both_ways_of_counting(
    sample_service: SearchService, sample_products: list[Product]
) -> None:
    from shopsearch.eval.facet_honesty import measure_facet_mass
    from shopsearch.indexer.judgments import EvalDataset, JudgedQuery

    by_title = {p.title: p.id for p in sample_products}
    drill = next(pid for title, pid in by_title.items() if "Cordless Drill" in title)
    faucet = next(pid for title, pid in by_title.items() if "Faucet" in title)
    dataset = EvalDataset(
        name="tiny",
        queries=(JudgedQuery("q1", "cordless drill", {drill: 3.0, faucet: 1.0}),),
        gain_offset=1.0,
    )
    result = measure_facet_mass(sample_service, dataset)
    before, after = result["before"], result["after"]
    assert before.listed > after.listed == after.counted
    # The faucet (judged irrelevant) was counted before, not after; the drill stays.
    assert before.judged_irrelevant == 1 and after.judged_irrelevant == 0
    assert before.relevant_kept == after.relevant_kept == 1.0
    assert after.share_relevant > before.share_relevant
