"""The rerank stage with a real CrossEncoder directory (MiniLM weights, fresh one-logit head).

Its scores are untrained noise; what is tested is the stage's contract: it scores the
top-N candidates in batches, merges its order with the fused order (``rerank.merge``),
reports it, and leaves the rest.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shopsearch.api.schemas import SearchRequest
from shopsearch.api.service import SearchService
from shopsearch.api.settings import Settings
from shopsearch.rerank.cross_encoder import (
    CPU_BATCH_SIZE,
    FALLBACK_MAX_LENGTH,
    GPU_BATCH_SIZE,
    Reranker,
)
from shopsearch.rerank.merge import merge_rerank, merge_scores, standardize
from shopsearch.retrieval.encoders import Encoder, ModelError


def test_reranker_scores_pairs(cross_encoder_dir: Path) -> None:
    reranker = Reranker(cross_encoder_dir, device="cpu", batch_size=4)
    scores = reranker.score("cordless drill", ["DeWalt drill", "garden hose", "LED bulb", "a", "b"])
    assert scores.shape == (5,) and scores.dtype == np.float32 and np.isfinite(scores).all()
    assert reranker.score("q", []).shape == (0,)
    again = reranker.score("cordless drill", ["DeWalt drill", "garden hose", "LED bulb", "a", "b"])
    np.testing.assert_allclose(scores, again, rtol=1e-5)


def test_rerank_stage_reorders_the_head(
    sample_index: Path, encoder: Encoder, cross_encoder_dir: Path
) -> None:
    reranker = Reranker(cross_encoder_dir, device="cpu")
    svc = SearchService(
        Settings(index_dir=sample_index, reload_interval_s=0, rerank_depth=10),
        encoder=encoder,
        reranker=reranker,
    )
    svc.load()
    response = svc.search(SearchRequest(q="cordless drill", size=20, explain=True))
    assert response.rerank == "applied (10 candidates)"
    assert response.models["reranker"] is not None
    assert response.timings_ms["rerank"] > 0
    head, tail = response.hits[:10], response.hits[10:]
    assert all(h.explain and h.explain.rerank_score is not None for h in head)
    assert all(h.explain and h.explain.rerank_score is None for h in tail)
    finals = [h.score for h in head]
    assert finals == sorted(finals, reverse=True)
    assert all(h.explain and h.explain.final_score == h.score for h in head)
    off = svc.search(SearchRequest(q="cordless drill", size=20, rerank=False, explain=True))
    assert off.rerank == "off"
    assert {h.id for h in off.hits[:10]} == {h.id for h in head}  # same candidates, new order
    # Weight 1: the reranker's order alone; weight 0 with the rank merge: the fused order.
    only = svc.search(SearchRequest(q="cordless drill", size=20, rerank_weight=1.0, explain=True))
    scores = [h.explain.rerank_score for h in only.hits[:10] if h.explain]
    assert scores == sorted(scores, reverse=True)  # type: ignore[type-var]
    kept = svc.search(
        SearchRequest(q="cordless drill", size=20, rerank_weight=0.0, rerank_merge="ranks")
    )
    assert [h.id for h in kept.hits] == [h.id for h in off.hits]
    assert [h.id for h in only.hits[:10]] != [h.id for h in off.hits[:10]]  # noise reorders


def test_merge_rerank_weights_the_two_orders() -> None:
    # c: fused rank 3, reranker rank 1; a: 1 and 3 -> tie at weight 0.5; b: 2 and 2 below.
    a, b, c = merge_rerank([0.1, 0.2, 0.9], weight=0.5)
    assert a == pytest.approx(c)
    assert a > b
    assert merge_rerank([], weight=0.5) == []
    a, b, c = merge_rerank([0.1, 0.2, 0.9], weight=0.8)
    assert c > b > a
    a, b, c = merge_rerank([0.1, 0.2, 0.9], weight=0.2)
    assert a > b > c
    with pytest.raises(ValueError, match="rerank weight must be in"):
        merge_rerank([1.0], weight=1.5)


def test_standardize_puts_missing_values_last_and_constants_at_zero() -> None:
    z = standardize([2.0, None, 4.0])
    assert z[1] == z[0] < z[2] and z.mean() == pytest.approx(0.0)
    assert standardize([3.0, 3.0]).tolist() == [0.0, 0.0]
    assert standardize([None, None]).tolist() == [0.0, 0.0]
    assert standardize([]).tolist() == []


def test_merge_scores_weights_the_reranker_against_both_legs() -> None:
    rerank = [0.0, 0.1, 5.0]  # c is far ahead for the reranker
    lexical = [9.0, 8.0, 1.0]  # a ahead for BM25
    dense = [0.5, 0.9, 0.1]  # b ahead for the cosine
    a, b, c = merge_scores(rerank, lexical, dense, weight=1.0)
    assert c > b > a
    a, b, c = merge_scores(rerank, lexical, dense, weight=0.0, lexical_share=1.0)
    assert a > b > c
    a, b, c = merge_scores(rerank, lexical, dense, weight=0.0, lexical_share=0.0)
    assert b > a > c
    # A leg that returned nothing (here dense) leaves BM25 as the first stage.
    merged = merge_scores(rerank, lexical, [None, None, None], weight=0.3)
    expected = 0.3 * standardize(rerank) + 0.7 * standardize(lexical)
    assert merged == pytest.approx(expected.tolist())
    assert merge_scores([], [], [], weight=0.5) == []


def test_merge_scores_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="rerank weight must be in"):
        merge_scores([1.0], [1.0], [1.0], weight=-0.1)
    with pytest.raises(ValueError, match="lexical share"):
        merge_scores([1.0], [1.0], [1.0], lexical_share=2.0)
    with pytest.raises(ValueError, match="differ in length"):
        merge_scores([1.0, 2.0], [1.0], [1.0, 2.0])


def test_reranker_takes_max_length_from_its_card(cross_encoder_dir: Path, tmp_path: Path) -> None:
    import json
    import shutil

    assert Reranker(cross_encoder_dir, device="cpu").max_length == FALLBACK_MAX_LENGTH
    carded = tmp_path / "carded"
    shutil.copytree(cross_encoder_dir, carded)
    (carded / "model_card.json").write_text(json.dumps({"max_length": 48}))
    reranker = Reranker(carded, device="cpu")
    assert reranker.max_length == 48
    assert reranker.model.max_seq_length == 48
    assert Reranker(carded, device="cpu", max_length=64).max_length == 64


def test_batch_size_follows_the_device_and_never_changes_scores(cross_encoder_dir: Path) -> None:
    # On a CPU the default is the measured 32; a GPU takes a whole list in one pass. The
    # batch is how the pairs are grouped, never what they score (the GPU path's CPU twin).
    cpu = Reranker(cross_encoder_dir, device="cpu", backend="torch")
    assert cpu.batch_size == CPU_BATCH_SIZE
    one_pass = Reranker(cross_encoder_dir, device="cpu", backend="torch", batch_size=GPU_BATCH_SIZE)
    texts = [f"cordless drill {i} volt kit with {'battery ' * (i % 5)}charger" for i in range(70)]
    np.testing.assert_allclose(
        cpu.score("cordless drill", texts), one_pass.score("cordless drill", texts), atol=1e-5
    )


def test_missing_reranker_dir_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="nope does not exist"):
        Reranker(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="holds no weight files"):
        Reranker(tmp_path / "empty")
