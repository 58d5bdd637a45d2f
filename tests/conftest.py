"""Shared fixtures: the real MiniLM loaded once per session, the sample catalog, data paths.

Tests that need ../shared/datasets or a service FAIL when CI=true and it is missing
(a green CI must mean the test ran), and skip otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from api.cli import sample_catalog_path
from api.service import SearchService
from api.settings import Settings
from indexer.catalog import load_catalog
from indexer.snapshot import BuildOptions, build_snapshot
from retrieval.encoders import Encoder, default_model_path
from retrieval.types import Product

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO.parent / "shared" / "datasets"
#: The Elasticsearch node `make test` starts (see .ci/elasticsearch.sh).
ES_URL = os.environ.get("SHOPSEARCH_ES_URL", "http://127.0.0.1:9201")


def require(condition: bool, why: str) -> None:
    """Fail under CI, skip elsewhere, when a test's data or service is missing."""
    if condition:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{why} (CI=true: a missing prerequisite is a failure)")
    pytest.skip(why)


def es_unavailable(why: str) -> None:
    """Skip (fail under CI=true) an Elasticsearch test that has no node, saying how to get one."""
    require(
        False,
        f"{why}; run `make test`, or `.ci/elasticsearch.sh start` and "
        "SHOPSEARCH_ES_URL=$(.ci/elasticsearch.sh url)",
    )


@pytest.fixture(scope="session")
def es_client() -> Iterator[Any]:
    """A client on the test node (``SHOPSEARCH_ES_URL``)."""
    from elasticsearch import Elasticsearch

    client = Elasticsearch(ES_URL, request_timeout=10)
    try:
        client.cluster.health(wait_for_status="yellow", timeout="5s")
    except Exception as exc:
        client.close()
        es_unavailable(
            f"no Elasticsearch node at {ES_URL} ({type(exc).__name__}: {str(exc)[:200]})"
        )
    yield client
    client.close()


@pytest.fixture(scope="session")
def homedepot_dir() -> Path:
    path = DATASETS / "homedepot"
    require((path / "products.csv").is_file(), f"Home Depot data not found at {path}")
    return path


@pytest.fixture(scope="session")
def encoder() -> Encoder:
    """The real all-MiniLM-L6-v2 on CPU, loaded once (it is read-only in use)."""
    return Encoder(device="cpu")


@pytest.fixture(scope="session")
def sample_products() -> list[Product]:
    products, _ = load_catalog(sample_catalog_path())
    return products


@pytest.fixture(scope="session")
def sample_index(tmp_path_factory: pytest.TempPathFactory, encoder: Encoder) -> Path:
    """An index dir with one promoted snapshot of the sample catalog (do not modify)."""
    index_dir = tmp_path_factory.mktemp("sample-index")
    products, report = load_catalog(sample_catalog_path())
    build_snapshot(products, report, index_dir, encoder, BuildOptions(probe_count=50))
    return index_dir


@pytest.fixture(scope="session")
def sample_service(sample_index: Path, encoder: Encoder) -> SearchService:
    """A service over ``sample_index`` with default settings (search only; do not modify)."""
    svc = SearchService(Settings(index_dir=sample_index, reload_interval_s=0), encoder=encoder)
    svc.load()
    return svc


@pytest.fixture(scope="session")
def cross_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real CrossEncoder directory: MiniLM weights with a fresh (seeded) one-logit head."""
    import torch
    from sentence_transformers import CrossEncoder

    torch.manual_seed(0)
    model = CrossEncoder(
        str(default_model_path()), num_labels=1, device="cpu", local_files_only=True
    )
    path = tmp_path_factory.mktemp("cross-encoder")
    model.save(str(path))
    return path
