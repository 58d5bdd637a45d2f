"""The vector leg in Elasticsearch on a real node: the ``VectorIndex`` contract against the
exact oracle on the sample catalog, request filters inside the kNN search, incremental
adds and removes, snapshots whose alias ``<prefix>-vectors`` moves with promotion and
rollback, and a service (and the CLI) with ``--vector elasticsearch`` end to end.

Needs the node that ``make test`` starts (``SHOPSEARCH_ES_URL``); without one these tests
are skipped, except under ``CI=true`` where they fail.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import ES_URL
from typer.testing import CliRunner

from shopsearch.api.cli import app, sample_catalog_path
from shopsearch.api.schemas import SearchRequest
from shopsearch.api.service import SearchService
from shopsearch.api.settings import Settings
from shopsearch.indexer.catalog import CatalogReport
from shopsearch.indexer.snapshot import SnapshotStore
from shopsearch.indexer.snapshot_build import BuildOptions, build_snapshot
from shopsearch.indexer.snapshot_load import load_snapshot
from shopsearch.indexer.updates import apply_updates
from shopsearch.retrieval.elasticsearch_index import ElasticsearchConnection
from shopsearch.retrieval.encoders import Encoder
from shopsearch.retrieval.es_vector_index import ElasticsearchVectorIndex, EsVectorParams
from shopsearch.retrieval.filters import Filters, ProductTable
from shopsearch.retrieval.types import Product
from shopsearch.retrieval.vector_index import ExactIndex, FilteringVectorIndex, recall_at_k

pytestmark = pytest.mark.elasticsearch

QUERIES = [
    "cordless drill",
    "garden hose",
    "led light bulb",
    "paint brush",
    "kitchen faucet",
    "wood screws",
    "ladder",
    "safety glasses",
    "extension cord",
    "shelf bracket",
]


def delete_prefix(client: Any, prefix: str) -> None:
    existing = client.indices.get(index=f"{prefix}*", allow_no_indices=True, features="settings")
    if existing.body:
        # Named, not wildcard: the node refuses wildcard deletes (destructive_requires_name).
        client.indices.delete(index=",".join(existing.body))


def alias_target(client: Any, alias: str) -> str | None:
    if not client.indices.exists_alias(name=alias):
        return None
    (name,) = client.indices.get_alias(name=alias).body
    return str(name)


@pytest.fixture
def prefix(es_client: Any) -> Iterator[str]:
    name = f"test-esvec-{uuid.uuid4().hex[:10]}"
    yield name
    delete_prefix(es_client, name)


@pytest.fixture
def es(es_client: Any) -> Iterator[ElasticsearchConnection]:
    with ElasticsearchConnection(ES_URL, timeout=10.0) as conn:
        yield conn


@pytest.fixture(scope="module")
def sample_vectors(sample_index: Path) -> tuple[np.ndarray, list[Product]]:
    """The sample snapshot's item vectors and products (row i is product i)."""
    snap = load_snapshot(
        SnapshotStore(sample_index).path(str(SnapshotStore(sample_index).current()))
    )
    vectors = np.asarray(snap.vectors.vectors_of(np.arange(len(snap.table.products))))
    return vectors, list(snap.table.products)


def report_for(products: list[Product], tag: str) -> CatalogReport:
    return CatalogReport(
        path="test", format="jsonl", sha256=tag * 8, rows_read=len(products), products=len(products)
    )


def built(
    es: ElasticsearchConnection,
    prefix: str,
    vectors: np.ndarray,
    products: list[Product],
    **kw: Any,
) -> ElasticsearchVectorIndex:
    return ElasticsearchVectorIndex.build(
        es, f"{prefix}-vectors-t", vectors, products, EsVectorParams(**kw)
    )


@pytest.mark.parametrize("index_options", ["int8_hnsw", "hnsw", "bbq_hnsw"])
def test_knn_agrees_with_the_exact_oracle(
    es: ElasticsearchConnection,
    prefix: str,
    encoder: Encoder,
    sample_vectors: tuple[np.ndarray, list[Product]],
    index_options: str,
) -> None:
    vectors, products = sample_vectors
    index = built(es, prefix, vectors, products, index_options=index_options)
    assert isinstance(index, FilteringVectorIndex)
    assert index.size == len(products) == index.count()
    queries = encoder.encode_query(QUERIES)
    oracle = ExactIndex(vectors)
    for k in (10, 100):
        scores, rows = index.search(queries, k)
        exact_scores, exact_rows = oracle.search(queries, k)
        assert rows.shape == (len(QUERIES), k) and (rows >= 0).all()
        assert recall_at_k(rows, exact_rows, k) >= 0.95, (index_options, k)
        # The refine re-scores with the stored vectors: exact cosines, best first.
        np.testing.assert_allclose(
            scores, np.einsum("qd,qkd->qk", queries, vectors[rows]), atol=1e-5
        )
        assert (np.diff(scores, axis=1) <= 1e-6).all()
        assert scores[:, 0] == pytest.approx(exact_scores[:, 0], abs=1e-5)
    # exact=True is the oracle itself; k larger than the index is padded with -1.
    np.testing.assert_array_equal(
        index.search(queries, 10, exact=True)[1], oracle.search(queries, 10)[1]
    )
    _, rows = index.search(queries[:1], len(products) + 5, refine_factor=1)
    assert (rows[0, len(products) :] == -1).all()


def test_filters_run_inside_the_knn_search(
    es: ElasticsearchConnection,
    prefix: str,
    encoder: Encoder,
    sample_vectors: tuple[np.ndarray, list[Product]],
) -> None:
    vectors, products = sample_vectors
    index = built(es, prefix, vectors, products)
    table = ProductTable(products)
    brand = max(
        {p.brand for p in products if p.brand}, key=lambda b: sum(p.brand == b for p in products)
    )
    category = products[0].category.split(">")[0].strip()
    attr_key, attr_value = next((k, v) for p in products for k, v in p.attributes.items() if v)
    cases = [
        Filters(brand=(brand.upper(),)),  # case-insensitive, as the table compares
        Filters(category=category.lower()),
        Filters(price_min=10.0, price_max=60.0),
        Filters(in_stock=True, price_max=100.0),
        Filters(attributes={attr_key: (attr_value,)}),
    ]
    queries = encoder.encode_query(QUERIES[:4])
    k = 10
    for filters in cases:
        allowed = table.mask(filters)
        assert allowed.any(), filters
        want = min(k, int(allowed.sum()))
        _, rows = index.search(queries, k, filters=filters)
        _, exact = ExactIndex(vectors).search(queries, k, id_filter=allowed)
        for got in rows:
            got = got[got >= 0]
            # k results (or every passing product) although most of the catalog fails.
            assert len(got) == want, filters
            assert allowed[got].all(), filters
        assert recall_at_k(rows, exact, k) >= 0.95, filters
    # Without the filters inside, the unfiltered top 10 has far fewer passing rows.
    narrow = cases[0]
    _, plain = index.search(queries, k)
    assert table.mask(narrow)[plain[plain >= 0]].sum() < len(queries) * k


def test_add_put_products_and_remove(
    tmp_path: Path,
    es: ElasticsearchConnection,
    prefix: str,
    encoder: Encoder,
    sample_vectors: tuple[np.ndarray, list[Product]],
) -> None:
    vectors, products = sample_vectors
    index = built(es, prefix, vectors[:300], products[:300])
    query = encoder.encode_query(["cordless drill"])
    _, rows = index.search(query, 5)
    top = int(rows[0, 0])
    index.remove(np.array([top, 10_000]))  # an unknown row is ignored
    assert index.size == 299 and index.count() == 299
    _, rows = index.search(query, 5)
    assert top not in rows[0]
    # A product re-added under a new row (as an update re-encodes it) comes back there.
    new_row = np.array([300], np.int64)
    index.add(vectors[top : top + 1], new_row)
    moved = Product(id="moved", title="moved", brand="Zzz-new-brand", price=1.0)
    index.put_products(new_row, [moved])
    _, rows = index.search(query, 5)
    assert rows[0, 0] == 300
    _, rows = index.search(query, 5, filters=Filters(brand=("zzz-new-brand",)))
    assert rows[0].tolist() == [300, -1, -1, -1, -1]
    with pytest.raises(Exception, match="new and distinct"):
        index.add(vectors[:1], np.array([5], np.int64))
    # Saved and loaded without a request: the same answers.
    index.save(tmp_path / "saved")
    again = ElasticsearchVectorIndex.load(tmp_path / "saved", es)
    assert again.size == index.size
    np.testing.assert_array_equal(again.search(query, 5)[1], index.search(query, 5)[1])


def test_snapshots_promote_and_roll_back_the_vector_alias(
    tmp_path: Path,
    encoder: Encoder,
    sample_products: list[Product],
    es: ElasticsearchConnection,
    es_client: Any,
    prefix: str,
) -> None:
    options = BuildOptions(probe_count=50, vector="elasticsearch", es_index_prefix=prefix, keep=2)
    first = build_snapshot(
        sample_products, report_for(sample_products, "a"), tmp_path, encoder, options, es=es
    )
    meta = first["vector_index"]
    assert meta["kind"] == "elasticsearch" and meta["params"]["index_options"] == "int8_hnsw"
    assert meta["index"] == f"{prefix}-vectors-{first['version'].lower()}"
    assert meta["alias"] == f"{prefix}-vectors"
    assert first["approx_vs_exact"]["recall@100"] >= 0.95
    assert alias_target(es_client, f"{prefix}-vectors") == meta["index"]
    second = build_snapshot(
        sample_products[:-2], report_for(sample_products, "b"), tmp_path, encoder, options, es=es
    )
    assert alias_target(es_client, f"{prefix}-vectors") == second["vector_index"]["index"]
    store = SnapshotStore(tmp_path, es=es)
    assert store.rollback().version == first["version"]
    assert alias_target(es_client, f"{prefix}-vectors") == meta["index"]
    store.promote(second["version"])
    assert alias_target(es_client, f"{prefix}-vectors") == second["vector_index"]["index"]
    # A third build prunes the oldest snapshot (keep=2) and deletes its vector index.
    build_snapshot(
        sample_products, report_for(sample_products, "c"), tmp_path, encoder, options, es=es
    )
    assert not es_client.indices.exists(index=meta["index"])


def test_service_with_the_vector_leg_on_the_cluster(
    tmp_path: Path,
    encoder: Encoder,
    sample_products: list[Product],
    sample_service: SearchService,
    es: ElasticsearchConnection,
    prefix: str,
) -> None:
    runner = CliRunner()
    catalog = sample_catalog_path()
    index_dir = tmp_path / "index"
    result = runner.invoke(
        app,
        [
            "build",
            "--catalog",
            str(catalog),
            "--index-dir",
            str(index_dir),
            "--vector",
            "elasticsearch",
            "--es-url",
            ES_URL,
            "--es-index-prefix",
            prefix,
            "--es-num-candidates",
            "200",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout[result.stdout.index("{") :])
    assert manifest["vector_index"]["kind"] == "elasticsearch"
    assert manifest["vector_index"]["params"]["num_candidates"] == 200
    assert manifest["lexical_index"]["backend"] == "tantivy"

    svc = SearchService(
        Settings(index_dir=index_dir, reload_interval_s=0, es_url=ES_URL, es_timeout=10.0),
        encoder=encoder,
    )
    svc.load()
    for q in QUERIES:
        for mode in ("hybrid", "dense"):
            ours = svc.search(SearchRequest(q=q, size=10, mode=mode))  # type: ignore[arg-type]
            embedded = sample_service.search(SearchRequest(q=q, size=10, mode=mode))  # type: ignore[arg-type]
            assert ours.degraded == []
            # The same candidates, exactly re-scored, the same fusion: the embedded answer.
            assert [h.id for h in ours.hits] == [h.id for h in embedded.hits], (q, mode)
    # A filtered query: the filters run inside the kNN search; the same answer.
    request = SearchRequest(q="cordless drill", size=5, mode="dense", filters={"brand": "Ryobi"})
    ryobi = svc.search(request)
    assert len(ryobi.hits) == 5 and all(h.brand == "Ryobi" for h in ryobi.hits)
    assert [h.id for h in ryobi.hits] == [h.id for h in sample_service.search(request).hits]
    # An update reaches the cluster's vector index: a new product is found by both legs.
    new = Product(
        id="esvec-new", title="Titanium cordless drill driver kit", brand="Newbrand",
        category="Tools > Power Tools > Drills", price=99.0,
    )  # fmt: skip
    update = apply_updates(
        SnapshotStore(index_dir).path(manifest["version"]),
        [new],
        [sample_products[0].id],
        encoder,
        es=es,
    )
    assert update.report.added == ["esvec-new"]
    svc.load()
    hits = svc.search(
        SearchRequest(
            q="titanium cordless drill", size=5, mode="dense", filters={"brand": "newbrand"}
        )
    )
    assert [h.id for h in hits.hits] == ["esvec-new"]
    gone = svc.search(SearchRequest(q=sample_products[0].title, size=50, mode="dense"))
    assert sample_products[0].id not in {h.id for h in gone.hits}
    # serve --vector checks the manifest: a mismatch exits with the reason.
    refused = runner.invoke(app, ["serve", "--index-dir", str(index_dir), "--vector", "faiss"])
    assert refused.exit_code == 2 and "elasticsearch vector leg" in refused.output
    svc.close()
