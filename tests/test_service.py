"""The query path in-process over the sample catalog: legs, fusion, filters, facets, rerank."""

from __future__ import annotations

from pathlib import Path

import pytest

from shopsearch.api.schemas import SearchRequest
from shopsearch.api.service import SearchService
from shopsearch.api.settings import Settings
from shopsearch.indexer.snapshot import SnapshotError
from shopsearch.retrieval.encoders import Encoder, ModelInfo
from shopsearch.retrieval.filters import InvalidFilterError
from shopsearch.retrieval.lexical_index import filters_hold
from shopsearch.retrieval.types import Product


def test_cordless_drill_finds_drills_first(sample_service: SearchService) -> None:
    for mode in ("hybrid", "dense", "lexical"):
        response = sample_service.search(SearchRequest(q="cordless drill", size=5, mode=mode))
        assert len(response.hits) == 5
        assert all(h.category == "Tools > Power Tools > Drills" for h in response.hits[:3]), mode
        assert response.index_version == sample_service.snapshot.version
        assert response.rerank == "off"


def test_timings_and_models_are_reported(sample_service: SearchService) -> None:
    response = sample_service.search(SearchRequest(q="garden hose 50 ft", explain=True))
    assert {"encode", "dense", "lexical", "fuse", "filter", "facets", "total"} <= set(
        response.timings_ms
    )
    assert response.timings_ms["total"] >= response.timings_ms["dense"]
    query_tower, item_tower = response.models["query_tower"], response.models["item_tower"]
    assert query_tower["weights_sha256"] == item_tower["sha256"]  # same weights, any runtime
    top = response.hits[0]
    assert top.explain is not None and top.explain.fused_score == pytest.approx(top.score)
    assert top.explain.dense_rank is not None or top.explain.lexical_rank is not None


def test_filters_never_leak_and_widen(
    sample_service: SearchService, sample_products: list[Product]
) -> None:
    by_id = {p.id: p for p in sample_products}
    # Each filter with a query that has matches passing it (only matches are answered).
    cases = [
        ("cordless drill", {"brand": "Ryobi"}),
        ("kitchen", {"category": "Kitchen > Small Appliances"}),
        ("drill", {"price": {"min": 10, "max": 30}}),
        ("cordless", {"in_stock": False}),
        ("cordless", {"color": ["Red", "Blue"]}),
        (
            "cordless drill",
            {"brand": ["DeWalt", "Milwaukee"], "in_stock": True, "price": {"max": 200}},
        ),
    ]
    from shopsearch.api.retrieval_stages import to_filters
    from shopsearch.api.schemas import FilterSpec

    for q, spec in cases:
        request = SearchRequest(q=q, size=20, filters=spec)
        response = sample_service.search(request)
        filters = to_filters(FilterSpec.model_validate(spec))
        assert response.hits, f"no hits for {spec}"
        for hit in response.hits:
            assert filters_hold(by_id[hit.id], filters), (spec, hit.id)
        matching = sum(filters_hold(p, filters) for p in sample_products)
        # `total` counts the products that match the query and pass the filters; widening
        # fills the page with them when the first candidates held too few.
        assert 0 < response.total <= matching, spec
        assert len(response.hits) == min(20, response.total), spec


def test_facets_count_the_filtered_candidates(sample_service: SearchService) -> None:
    response = sample_service.search(
        SearchRequest(
            q="drill", size=5, filters={"category": "Tools"}, facets=["brand", "price", "color"]
        )
    )
    brand_total = sum(b.count for b in response.facets["brand"])
    assert brand_total <= response.total
    assert (
        sum(b.count for b in response.facets["price"]) == response.total
    )  # every sample product is priced
    assert response.facets["price"][0].value == "0-25"
    counts = [b.count for b in response.facets["brand"]]
    assert counts == sorted(counts, reverse=True)


def test_paging_is_consistent(sample_service: SearchService) -> None:
    first = sample_service.search(SearchRequest(q="led light bulb", size=5, page=1))
    second = sample_service.search(SearchRequest(q="led light bulb", size=5, page=2))
    both = sample_service.search(SearchRequest(q="led light bulb", size=10, page=1))
    assert [h.id for h in first.hits + second.hits] == [h.id for h in both.hits]


def test_unknown_filter_and_facet_fields(sample_service: SearchService) -> None:
    with pytest.raises(InvalidFilterError, match="unknown filter field") as info:
        sample_service.search(SearchRequest(q="drill", filters={"colour": "red"}))
    assert info.value.field == "filters.colour"
    with pytest.raises(InvalidFilterError, match="unknown facet field"):
        sample_service.search(SearchRequest(q="drill", facets=["weight"]))


def test_lexical_failure_degrades_to_dense(
    own_sample_service: SearchService, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("lexical engine down")

    # The service's own snapshot: the shared sample_service is never patched.
    monkeypatch.setattr(own_sample_service.snapshot.lexical, "search", broken)
    response = own_sample_service.search(SearchRequest(q="cordless drill"))
    assert response.degraded == ["lexical"]
    assert response.hits and response.hits[0].category.startswith("Tools")


def test_refuses_snapshot_of_another_item_tower(sample_index: Path, own_encoder: Encoder) -> None:
    # A copy of the session encoder under another identity (the session one stays as is).
    own_encoder.info = ModelInfo(id="other-tower", path="/models/other", sha256="0" * 64)
    svc = SearchService(Settings(index_dir=sample_index, reload_interval_s=0), encoder=own_encoder)
    with pytest.raises(SnapshotError, match=r"built with item tower .* query tower is other-tower"):
        svc.load()
    assert not svc.ready


def test_rerank_skipped_without_model(sample_service: SearchService) -> None:
    response = sample_service.search(SearchRequest(q="cordless drill", rerank=True))
    assert response.rerank == "skipped (no model)"
    assert "rerank" not in response.timings_ms


def test_default_fusion_with_base_towers_is_bm25_led(sample_service: SearchService) -> None:
    # The sample snapshot is built with the bundled (not fine-tuned) MiniLM towers.
    default = sample_service.default_fusion
    assert (
        default.method == "weighted-rrf"
        and default.lexical_weight == Settings().base_lexical_weight
    )
    plain = sample_service.search(SearchRequest(q="cordless drill", size=10))
    assert plain.fusion == f"weighted-rrf (bm25 {default.lexical_weight:g})"
    named = sample_service.search(
        SearchRequest(
            q="cordless drill",
            size=10,
            fusion="weighted-rrf",
            lexical_weight=default.lexical_weight,
        )
    )
    assert [h.id for h in plain.hits] == [h.id for h in named.hits]
    rrf = sample_service.search(SearchRequest(q="cordless drill", size=10, fusion="rrf"))
    assert rrf.fusion == "rrf"
    lexical = sample_service.search(SearchRequest(q="cordless drill", size=10, mode="lexical"))
    assert lexical.fusion == ""  # one leg: nothing fused


def test_fusion_setting_overrides_auto(sample_index: Path, encoder: Encoder) -> None:
    service = SearchService(
        Settings(index_dir=sample_index, fusion="rrf", reload_interval_s=0.0), encoder=encoder
    )
    assert service.default_fusion.method == "rrf"
    assert "SHOPSEARCH_FUSION" in service.default_fusion.reason


def test_query_tower_runs_on_onnx_with_the_same_vectors(
    sample_index: Path, encoder: Encoder
) -> None:
    import numpy as np

    settings = Settings(index_dir=sample_index, reload_interval_s=0.0, result_cache_size=0)
    # "auto" on a CPU with base towers: int8, close to torch's vectors.
    base = SearchService(settings, encoder=encoder)
    assert base.query_encoder.backend == "onnx-int8"
    assert base.query_encoder.info.base_sha256 == encoder.info.sha256
    cosines = (
        base.query_encoder.encode_query(["cordless drill"])
        * encoder.encode_query(["cordless drill"])
    ).sum()
    assert cosines > 0.95
    # fp32 ONNX (auto's choice for fine-tuned towers): the same vectors as torch.
    auto = SearchService(settings.model_copy(update={"query_backend": "onnx"}), encoder=encoder)
    assert auto.query_encoder is not encoder and auto.query_encoder.backend == "onnx"
    assert auto.query_encoder.info.base_sha256 == encoder.info.sha256
    same = SearchService(settings.model_copy(update={"query_backend": "same"}), encoder=encoder)
    assert same.query_encoder is encoder
    queries = ["cordless drill", "garden hose 50 ft", "led bulb"]
    np.testing.assert_allclose(
        auto.query_encoder.encode_query(queries), encoder.encode_query(queries), atol=1e-4
    )
    auto.load()
    same.load()
    for q in queries:
        a = auto.search(SearchRequest(q=q, size=10))
        b = same.search(SearchRequest(q=q, size=10))
        assert [h.id for h in a.hits] == [h.id for h in b.hits], q
    assert a.models["query_tower"]["id"].endswith("+onnx")


def test_auto_query_tower_keeps_fp32_for_fine_tuned_towers(tmp_path: Path) -> None:
    import json
    import shutil

    from shopsearch.api.serving_models import query_tower
    from shopsearch.retrieval.encoders import default_model_path

    # The bundled weights with a card saying `shopsearch train towers` made them.
    towers = tmp_path / "towers"
    shutil.copytree(default_model_path(), towers)
    (towers / "model_card.json").write_text(json.dumps({"kind": "towers", "version": "v"}))
    tuned = Encoder(towers, device="cpu")
    assert query_tower(Settings(index_dir=tmp_path), tuned).backend == "onnx"


def test_query_tower_session_threads_follow_the_setting(
    sample_index: Path, encoder: Encoder
) -> None:
    def session_threads(service: SearchService) -> str:
        from shopsearch.retrieval.onnx_export import OrtTransformerModel

        sessions = [
            m.session
            for m in service.query_encoder.model.modules()
            if isinstance(m, OrtTransformerModel)
        ]
        assert sessions, "the query tower does not run on onnxruntime"
        return str(sessions[0].get_session_options().intra_op_num_threads)

    base = Settings(index_dir=sample_index, reload_interval_s=0.0, result_cache_size=0)
    assert session_threads(SearchService(base, encoder=encoder)) == "1"  # the default
    two = base.model_copy(update={"onnx_threads": 2})
    assert session_threads(SearchService(two, encoder=encoder)) == "2"
    default = base.model_copy(update={"onnx_threads": 0})
    assert session_threads(SearchService(default, encoder=encoder)) == "0"  # onnxruntime's own
