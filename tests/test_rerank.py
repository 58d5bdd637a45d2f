"""The rerank stage with a real CrossEncoder directory (MiniLM weights, fresh one-logit head).

Its scores are untrained noise; what is tested is the stage's contract: it scores the
top-N candidates in batches, reorders them by its score, reports it, and leaves the rest.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from api.schemas import SearchRequest
from api.service import SearchService
from api.settings import Settings
from rerank.cross_encoder import Reranker
from retrieval.encoders import Encoder, ModelError, default_model_path


@pytest.fixture(scope="module")
def cross_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from sentence_transformers import CrossEncoder

    torch.manual_seed(0)
    model = CrossEncoder(
        str(default_model_path()), num_labels=1, device="cpu", local_files_only=True
    )
    path = tmp_path_factory.mktemp("cross-encoder")
    model.save(str(path))
    return path


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
    rerank_scores = [h.explain.rerank_score for h in head if h.explain]
    assert all(s is not None for s in rerank_scores)
    assert rerank_scores == sorted(rerank_scores, reverse=True)  # type: ignore[type-var]
    assert all(h.explain and h.explain.rerank_score is None for h in tail)
    off = svc.search(SearchRequest(q="cordless drill", size=20, rerank=False))
    assert off.rerank == "off"
    assert {h.id for h in off.hits[:10]} == {h.id for h in head}  # same candidates, new order


def test_missing_reranker_dir_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="nope does not exist"):
        Reranker(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="holds no weight files"):
        Reranker(tmp_path / "empty")
