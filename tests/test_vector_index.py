"""FAISS IVF-PQ + refine against the exact NumPy oracle, on seeded synthetic vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shopsearch.retrieval.vector_index import (
    IVF_MIN_SIZE,
    ExactIndex,
    FaissIndex,
    FaissParams,
    VectorIndexError,
    load_vector_index,
    recall_at_k,
)


def clustered(
    n: int, dim: int, seed: int, *, clusters: int = 100, noise: float = 0.35
) -> np.ndarray:
    """Unit vectors around random centres: embedding-like structure, deterministic."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + noise * rng.normal(size=(n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def base() -> np.ndarray:
    return clustered(IVF_MIN_SIZE + 5000, 64, seed=1)


@pytest.fixture(scope="module")
def queries(base: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(2)
    q = base[rng.choice(len(base), 100, replace=False)] + 0.2 * rng.normal(
        size=(100, base.shape[1])
    )
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return q.astype(np.float32)


@pytest.fixture(scope="module")
def ivf(base: np.ndarray) -> FaissIndex:
    return FaissIndex(base, FaissParams.for_size(len(base), base.shape[1]), use_gpu=False)


def test_params_follow_catalog_size() -> None:
    assert FaissParams.for_size(500, 384).nlist == 0  # exact below IVF_MIN_SIZE
    p = FaissParams.for_size(54_667, 384)
    assert p.nlist == 512 and p.pq_m == 96 and p.nprobe == 192 and p.factory == "IVF512,PQ96x4fs"
    assert 39 * p.nlist <= 54_667
    big = FaissParams.for_size(1_000_000, 384)
    assert big.nlist == 2048 and big.nprobe == 512


def test_ivfpq_recall_floor_against_exact(
    ivf: FaissIndex, base: np.ndarray, queries: np.ndarray
) -> None:
    assert ivf.params.nlist > 0, "this test must exercise IVF-PQ, not the Flat path"
    _, exact = ExactIndex(base).search(queries, 100)
    _, approx = ivf.search(queries, 100)
    assert recall_at_k(approx, exact, 100) >= 0.95
    assert recall_at_k(approx, exact, 10) >= 0.95


def test_refine_is_what_keeps_recall(base: np.ndarray, queries: np.ndarray) -> None:
    params = FaissParams.for_size(len(base), base.shape[1])
    index = FaissIndex(base, params, use_gpu=False)
    _, exact = ExactIndex(base).search(queries, 100)
    index.set_search_params(refine_factor=1)
    low = recall_at_k(index.search(queries, 100)[1], exact, 100)
    index.set_search_params(refine_factor=8)
    high = recall_at_k(index.search(queries, 100)[1], exact, 100)
    assert high > low


def test_scores_are_exact_inner_products(
    ivf: FaissIndex, base: np.ndarray, queries: np.ndarray
) -> None:
    scores, rows = ivf.search(queries[:5], 10)
    expected = np.einsum("qd,qkd->qk", queries[:5], base[rows])
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first


def test_id_filter_never_leaks(ivf: FaissIndex, base: np.ndarray, queries: np.ndarray) -> None:
    allowed = np.zeros(len(base), dtype=bool)
    allowed[::97] = True  # ~1% of rows: the refine candidates alone cannot fill k
    for index in (ivf, ExactIndex(base)):
        _, rows = index.search(queries[:10], 20, id_filter=allowed)
        assert (rows >= 0).all(), "a selective filter must still fill k when enough rows pass"
        assert allowed[rows].all()
    _, exact = ExactIndex(base).search(queries[:10], 20, id_filter=allowed)
    _, approx = ivf.search(queries[:10], 20, id_filter=allowed)
    assert recall_at_k(approx, exact, 20) >= 0.9


def test_fewer_results_than_k_are_padded() -> None:
    x = clustered(5, 16, seed=3)
    for index in (ExactIndex(x), FaissIndex(x, FaissParams.for_size(5, 16), use_gpu=False)):
        scores, rows = index.search(x[:2], 8)
        assert rows.shape == (2, 8)
        assert (rows[:, 5:] == -1).all() and np.isneginf(scores[:, 5:]).all()
        assert rows[0, 0] == 0 and rows[1, 0] == 1  # each vector finds itself first


@pytest.mark.parametrize("kind", ["faiss", "exact"])
def test_add_and_remove(kind: str, base: np.ndarray, queries: np.ndarray) -> None:
    if kind == "faiss":
        index: ExactIndex | FaissIndex = FaissIndex(
            base, FaissParams.for_size(len(base), base.shape[1]), use_gpu=False
        )
    else:
        index = ExactIndex(base)
    top = index.search(queries[:1], 5)[1][0, 0]
    index.remove(np.array([top, 10**9]))  # unknown rows are ignored
    assert index.size == len(base) - 1
    assert top not in index.search(queries[:1], 50)[1]
    # An update: the same product's vector comes back under a new row.
    new_row = len(base)
    index.add(base[top : top + 1], np.array([new_row]))
    assert index.size == len(base)
    assert index.search(queries[:1], 5)[1][0, 0] == new_row
    with pytest.raises(VectorIndexError, match="rows must be new"):
        index.add(base[:1], np.array([3]))


def test_flat_index_add_with_gap() -> None:
    x = clustered(10, 16, seed=4)
    index = FaissIndex(x[:5], FaissParams.for_size(5, 16), use_gpu=False)
    index.add(x[9:10], np.array([7]))  # rows 5 and 6 are a gap: never returned
    _, rows = index.search(x[9:10], 8)
    assert rows[0, 0] == 7 and not ({5, 6} & set(rows[0].tolist()))
    assert index.size == 6


def test_save_load_roundtrip(
    tmp_path: Path, ivf: FaissIndex, base: np.ndarray, queries: np.ndarray
) -> None:
    ivf.save(tmp_path / "v")
    loaded = load_vector_index(tmp_path / "v", use_gpu=False)
    a = ivf.search(queries[:20], 10)[1]
    b = loaded.search(queries[:20], 10)[1]
    np.testing.assert_array_equal(a, b)
    exact_dir = tmp_path / "e"
    ExactIndex(base[:100]).save(exact_dir)
    assert load_vector_index(exact_dir).size == 100


def test_bad_shapes_are_named(ivf: FaissIndex) -> None:
    with pytest.raises(VectorIndexError, match="dimension 8"):
        ivf.search(np.zeros((1, 8), np.float32), 5)
    with pytest.raises(VectorIndexError, match="2-D"):
        ExactIndex(np.zeros(5, np.float32))
    with pytest.raises(VectorIndexError, match="not a vector index"):
        load_vector_index(Path("/nonexistent"))
