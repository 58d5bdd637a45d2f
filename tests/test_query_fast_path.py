"""The direct query tower (retrieval/query_fast_path.py): the same vectors as
sentence-transformers' ``encode_query``, on the plain towers and on separate towers under
a Router, solo session or not; models of another shape keep sentence-transformers' path;
the service counts its searches in flight for the solo hint."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from shopsearch.retrieval.encoders import Encoder, default_model_path
from shopsearch.retrieval.query_fast_path import DirectQueryTower, direct_query_tower

pytest.importorskip("onnxruntime", reason="the ONNX backends need onnxruntime")

QUERIES = [
    "cordless drill",
    "x",
    "",
    "pvc pipe 1/2 in. x 10 ft.",
    "BEHR Premium Textured DeckOver 1-gal. #SC-141 Tugboat Wood and Concrete Coating " * 12,
]


def _st_path(encoder: Encoder, texts: list[str]) -> np.ndarray:
    """``encode_query`` through sentence-transformers, as before the direct path."""
    return np.asarray(
        encoder.model.encode_query(texts, normalize_embeddings=True, convert_to_numpy=True)
    )


def _direct(encoder: Encoder) -> DirectQueryTower:
    direct = encoder._direct
    assert direct is not None, "an ONNX query tower of this shape takes the direct path"
    return direct


def test_direct_path_gives_sentence_transformers_vectors(onnx_cache: Path) -> None:
    encoder = Encoder(device="cpu", backend="onnx", onnx_threads=1, solo_threads=2)
    assert _direct(encoder).has_solo
    expected = _st_path(encoder, QUERIES)
    for solo in (False, True):
        batched = encoder.encode_query(QUERIES, solo=solo)  # padded together
        one_by_one = np.vstack([encoder.encode_query([q], solo=solo) for q in QUERIES])
        for got in (batched, one_by_one):
            assert got.shape == expected.shape and got.dtype == np.float32
            assert np.min((got * expected).sum(axis=1)) > 0.99999
            np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # A long list (training, evaluation) keeps the length-sorted batches: same vectors.
    many = encoder.encode_query(QUERIES * 20)
    assert np.min((many[: len(QUERIES)] * expected).sum(axis=1)) > 0.99999


def test_no_solo_session_unless_asked(onnx_cache: Path) -> None:
    encoder = Encoder(device="cpu", backend="onnx")
    assert not _direct(encoder).has_solo
    # solo=True without a solo session runs on the shared one, same vectors.
    np.testing.assert_allclose(
        encoder.encode_query(["drill"], solo=True), _st_path(encoder, ["drill"]), atol=1e-5
    )


def test_torch_backend_keeps_sentence_transformers(encoder: Encoder) -> None:
    assert encoder._direct is None


def test_other_shapes_keep_sentence_transformers(onnx_cache: Path) -> None:
    encoder = Encoder(device="cpu", backend="onnx")
    model = copy.copy(encoder.model)
    pooling = model[1]
    saved = pooling.pooling_mode
    try:
        pooling.pooling_mode = "max"
        assert direct_query_tower(model) is None
        pooling.pooling_mode = "cls"
        assert direct_query_tower(model) is not None
        pooling.pooling_mode = saved
        # A query prompt that pooling leaves out is not computed here.
        model.prompts = {"query": "query: "}
        pooling.include_prompt = False
        assert direct_query_tower(model) is None
        pooling.include_prompt = True
        direct = direct_query_tower(model)
        assert direct is not None
        expected = model.encode_query(["drill"], normalize_embeddings=True)
        assert float((direct.encode(["drill"]) * expected).sum()) > 0.99999
    finally:
        pooling.pooling_mode = saved
        pooling.include_prompt = True
    with pytest.raises(ValueError, match="at least one"):
        _direct(encoder).encode([])


@pytest.mark.slow
def test_separate_towers_take_the_query_route(onnx_cache: Path, tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Router

    shared = SentenceTransformer(str(default_model_path()), device="cpu", local_files_only=True)
    query_modules = [copy.deepcopy(m) for m in shared]
    # A query tower unlike the item tower, so taking the wrong route shows.
    with torch.no_grad():
        emb = query_modules[0].model.embeddings.word_embeddings.weight
        emb.add_(torch.randn(emb.shape, generator=torch.Generator().manual_seed(0)) * 0.05)
    router = Router.for_query_document(
        query_modules=query_modules, document_modules=[copy.deepcopy(m) for m in shared]
    )
    SentenceTransformer(modules=[router], device="cpu").save(str(tmp_path / "sep"))

    encoder = Encoder(tmp_path / "sep", device="cpu", backend="onnx", solo_threads=2)
    direct = _direct(encoder)
    expected = _st_path(encoder, QUERIES)
    got = encoder.encode_query(QUERIES, solo=True)
    assert np.min((got * expected).sum(axis=1)) > 0.99999
    items = encoder.encode_document(QUERIES[:1])
    assert float((direct.encode(QUERIES[:1]) * items).sum()) < 0.999  # the other tower


def test_service_says_solo_only_for_a_lone_search(own_sample_service: Any) -> None:
    from shopsearch.api.schemas import SearchRequest
    from shopsearch.retrieval.filters import InvalidFilterError

    svc = own_sample_service
    seen: list[tuple[int, bool]] = []
    encode = svc.query_encoder.encode_query

    def spy(texts: list[str], **kwargs: Any) -> np.ndarray:
        seen.append((len(texts), kwargs.get("solo", False)))
        return encode(texts, **kwargs)

    svc.query_encoder.encode_query = spy
    try:
        svc.search(SearchRequest(q="garden hose", size=2))
        assert seen == [(1, True)] and svc._searching == 0
        # Another search in flight: not solo, and through the batcher when there is one.
        svc._searching = 1
        svc.search(SearchRequest(q="cordless drill", size=2))
        assert seen[1] == (1, False) and svc._searching == 1
        svc._searching = 0
        with pytest.raises(InvalidFilterError):
            svc.search(SearchRequest(q="hammer", filters={"no_such_field": "x"}))
        assert svc._searching == 0  # a failed search leaves the count
    finally:
        del svc.query_encoder.encode_query
