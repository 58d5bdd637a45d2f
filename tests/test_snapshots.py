"""Snapshot lifecycle: promote, rollback, prune, failed builds, the embedding cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shopsearch.indexer.catalog import CatalogReport
from shopsearch.indexer.embedding_cache import EmbeddingCache
from shopsearch.indexer.snapshot import SnapshotError, SnapshotStore
from shopsearch.indexer.snapshot_build import BuildOptions, build_snapshot
from shopsearch.indexer.snapshot_load import load_snapshot
from shopsearch.retrieval.encoders import Encoder
from shopsearch.retrieval.types import Product


def report_for(products: list[Product], tag: str) -> CatalogReport:
    return CatalogReport(
        path="test", format="jsonl", sha256=tag * 8, rows_read=len(products), products=len(products)
    )


def test_manifest_records_what_was_built(sample_index: Path) -> None:
    store = SnapshotStore(sample_index)
    version = store.current()
    assert version is not None
    manifest = json.loads((store.path(version) / "manifest.json").read_text())
    assert manifest["counts"]["products"] == 352
    assert manifest["models"]["item_tower"]["sha256"]
    assert manifest["vector_index"]["kind"] == "faiss" and manifest["vector_index"]["exact_below"]
    assert manifest["approx_vs_exact"]["recall@100"] == 1.0
    assert manifest["validation"]["dense_answered"] == 1.0
    assert {"encode_s", "vector_index_s", "lexical_index_s", "validate_s", "total_s"} <= set(
        manifest["build"]["timings_s"]
    )
    assert manifest["code"]["package"] == "0.1.0"


def test_promote_rollback_prune(
    tmp_path: Path, encoder: Encoder, sample_products: list[Product]
) -> None:
    products = sample_products[:40]
    versions = []
    for tag in "abcd":
        manifest = build_snapshot(
            products,
            report_for(products, tag),
            tmp_path,
            encoder,
            BuildOptions(keep=3, probe_count=10),
        )
        versions.append(manifest["version"])
    store = SnapshotStore(tmp_path)
    assert store.current() == versions[-1]
    assert store.versions() == versions[1:]  # keep=3 pruned the oldest
    assert store.rollback().version == versions[2]
    assert store.current() == versions[2]
    assert store.rollback().version == versions[1]
    with pytest.raises(SnapshotError, match="oldest snapshot kept"):
        store.rollback()
    with pytest.raises(SnapshotError, match="not found"):
        store.promote("no-such-version")
    # The second build reused every vector from the embedding cache.
    second = json.loads((store.path(versions[1]) / "manifest.json").read_text())
    assert second["build"]["embedding_cache_hits"] == 40


def test_failed_validation_leaves_serving_untouched(
    tmp_path: Path, encoder: Encoder, sample_products: list[Product]
) -> None:
    products = sample_products[:30]
    first = build_snapshot(
        products, report_for(products, "a"), tmp_path, encoder, BuildOptions(probe_count=10)
    )
    with pytest.raises(SnapshotError, match="below --min-recall"):
        build_snapshot(
            products,
            report_for(products, "b"),
            tmp_path,
            encoder,
            BuildOptions(probe_count=10, min_recall=1.01),
        )
    store = SnapshotStore(tmp_path)
    assert store.current() == first["version"]
    assert store.versions() == [first["version"]]
    assert not [p for p in store.snapshots_dir.iterdir() if p.name.startswith(".building-")]
    assert load_snapshot(store.path(first["version"])).table.size == 30


def test_damaged_snapshot_is_refused(
    tmp_path: Path, encoder: Encoder, sample_products: list[Product]
) -> None:
    products = sample_products[:20]
    manifest = build_snapshot(
        products, report_for(products, "a"), tmp_path, encoder, BuildOptions(probe_count=5)
    )
    path = SnapshotStore(tmp_path).path(manifest["version"])
    data = json.loads((path / "manifest.json").read_text())
    data["counts"]["products"] = 21
    (path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(SnapshotError, match="counts disagree"):
        load_snapshot(path)


def test_embedding_cache_encodes_only_misses(tmp_path: Path) -> None:
    calls: list[list[str]] = []

    def fake_encode(texts: list[str]) -> np.ndarray:  # deterministic stand-in for a model
        calls.append(list(texts))
        return np.array([[len(t), 1.0] for t in texts], dtype=np.float32)

    cache = EmbeddingCache(tmp_path, "f" * 64, dim=2)
    vectors, hits = cache.encode(["a", "bb", "a"], fake_encode)
    assert hits == 0 and calls == [["a", "bb"]]
    np.testing.assert_array_equal(vectors[:, 0], [1, 2, 1])
    vectors, hits = cache.encode(["bb", "ccc"], fake_encode)
    assert hits == 1 and calls[-1] == ["ccc"]
    np.testing.assert_array_equal(vectors[:, 0], [2, 3])
    other_model = EmbeddingCache(tmp_path, "0" * 64, dim=2)
    assert other_model.encode(["a"], fake_encode)[1] == 0


def test_embedding_cache_keeps_keys_with_trailing_zero_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shopsearch.indexer.embedding_cache as module

    # A key that ends in zero bytes (about 1 text in 256 has one) must hit the cache again.
    monkeypatch.setattr(module, "_key", lambda text: text.encode().ljust(16, b"\0")[:16])
    cache = EmbeddingCache(tmp_path, "e" * 64, dim=2)
    encode = lambda texts: np.ones((len(texts), 2), dtype=np.float32)  # noqa: E731
    assert cache.encode(["ab", "cd"], encode)[1] == 0
    assert cache.encode(["ab", "cd"], encode)[1] == 2
