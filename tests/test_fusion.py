from __future__ import annotations

from pathlib import Path

import pytest

from shopsearch.retrieval.fusion import minmax_normalize, reciprocal_rank_fusion, weighted_fusion


def test_rrf_on_hand_made_rankings() -> None:
    dense = [("a", 0.9), ("b", 0.8), ("c", 0.1)]
    lexical = [("c", 12.0), ("a", 3.0)]
    fused = reciprocal_rank_fusion([dense, lexical], k=60)
    assert fused["a"] == pytest.approx(1 / 61 + 1 / 62)
    assert fused["b"] == pytest.approx(1 / 62)
    assert fused["c"] == pytest.approx(1 / 63 + 1 / 61)
    order = sorted(fused, key=lambda key: -fused[key])
    assert order == ["a", "c", "b"]  # in both lists beats one list; rank 1+2 beats 1+3


def test_rrf_ignores_scores_only_ranks() -> None:
    a = reciprocal_rank_fusion([[("x", 100.0), ("y", 0.0)]])
    b = reciprocal_rank_fusion([[("x", 0.2), ("y", 0.1)]])
    assert a == b


def test_rrf_rejects_negative_k() -> None:
    with pytest.raises(ValueError, match="k must be"):
        reciprocal_rank_fusion([], k=-1)


def test_minmax_normalize() -> None:
    assert minmax_normalize([("a", 5.0), ("b", 3.0), ("c", 1.0)]) == {"a": 1.0, "b": 0.5, "c": 0.0}
    assert minmax_normalize([("a", 2.0), ("b", 2.0)]) == {"a": 1.0, "b": 1.0}
    assert minmax_normalize([]) == {}


def test_weighted_fusion_weights_and_missing_keys() -> None:
    dense = [("a", 0.9), ("b", 0.5)]  # normalised: a 1, b 0
    lexical = [("b", 10.0), ("c", 5.0)]  # normalised: b 1, c 0
    fused = weighted_fusion(dense, lexical, lexical_weight=0.7)
    assert fused == pytest.approx({"a": 0.3, "b": 0.7, "c": 0.0})
    only_dense = weighted_fusion(dense, lexical, lexical_weight=0.0)
    assert only_dense["a"] == pytest.approx(1.0) and only_dense["b"] == pytest.approx(0.0)


def test_weighted_fusion_rejects_bad_weight() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        weighted_fusion([], [], lexical_weight=1.5)


def test_default_fusion_trusts_bm25_until_towers_are_fine_tuned() -> None:
    from shopsearch.retrieval.fusion import FusionMethod, default_fusion

    tuned = default_fusion(fine_tuned=True)
    assert tuned.method is FusionMethod.rrf and tuned.describe() == "rrf"
    base = default_fusion(fine_tuned=False, base_lexical_weight=0.75)
    assert base.method is FusionMethod.weighted_rrf and base.lexical_weight == 0.75
    assert base.describe() == "weighted-rrf (bm25 0.75)" and "base towers" in base.reason
    with pytest.raises(ValueError, match="base_lexical_weight"):
        default_fusion(fine_tuned=False, base_lexical_weight=1.2)


def test_towers_fine_tuned_reads_the_model_card(tmp_path: Path) -> None:
    import json

    from shopsearch.retrieval.encoders import default_model_path
    from shopsearch.retrieval.model_registry import towers_fine_tuned

    assert towers_fine_tuned(default_model_path()) is False  # the bundled base model
    assert towers_fine_tuned(tmp_path) is False  # no card
    (tmp_path / "model_card.json").write_text(json.dumps({"kind": "reranker"}))
    assert towers_fine_tuned(tmp_path) is False
    (tmp_path / "model_card.json").write_text("{not json")
    assert towers_fine_tuned(tmp_path) is False
    (tmp_path / "model_card.json").write_text(json.dumps({"kind": "towers", "version": "v"}))
    assert towers_fine_tuned(tmp_path) is True


def test_weighted_rrf_lets_the_heavier_leg_lead() -> None:
    from shopsearch.retrieval.fusion import WEIGHTED_RRF_K, FusionMethod, fuse

    dense = [("d1", 0.9), ("both", 0.8)]
    lexical = [("l1", 12.0), ("l2", 11.0), ("both", 3.0)]
    fused = fuse(FusionMethod.weighted_rrf, dense, lexical, lexical_weight=0.8)
    k = WEIGHTED_RRF_K
    assert fused["both"] == pytest.approx(0.2 / (k + 2) + 0.8 / (k + 3))
    order = sorted(fused, key=lambda key: -fused[key])
    # Found by both legs first; BM25's head ahead of dense's first hit.
    assert order == ["both", "l1", "l2", "d1"]
    assert fuse(FusionMethod.rrf, dense, lexical) == reciprocal_rank_fusion([dense, lexical])
    with pytest.raises(ValueError, match="lexical_weight"):
        fuse(FusionMethod.weighted_rrf, dense, lexical, lexical_weight=-0.1)
    with pytest.raises(ValueError, match="weights"):
        reciprocal_rank_fusion([dense], weights=[0.5, 0.5])
