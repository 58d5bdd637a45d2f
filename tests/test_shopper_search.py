"""Shopper-aware search over HTTP on the sample catalog with the demo shoppers' events in
a real SQLite event store: personalize=false and a shopper without history get exactly
the plain answer; a shopper's history re-orders (never adds) hits; explain shows the
personal part; erasure makes the next answer anonymous."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
from fastapi.testclient import TestClient
from pydantic import SecretStr

from shopsearch.api.app import create_app
from shopsearch.api.service import SearchService
from shopsearch.api.settings import Settings
from shopsearch.api.shoppers import ShopperSignals
from shopsearch.indexer.events.demo import demo_events
from shopsearch.indexer.events.store import EventStore
from shopsearch.rerank.personal import PersonalRescorer, default_weights
from shopsearch.retrieval.encoders import Encoder
from shopsearch.retrieval.model_registry import new_version, register, staging_dir
from shopsearch.retrieval.types import Product

KEY = "shopper-search-test-key-0123"
TOKEN = "shopper-admin-token"


@pytest.fixture(scope="module")
def service(
    sample_index: Path, encoder: Encoder, sample_products: list[Product], tmp_path_factory: Any
) -> SearchService:
    db = tmp_path_factory.mktemp("shopper-events") / "events.db"
    with EventStore(db) as store:
        store.add(demo_events(sample_products, KEY.encode()))
    settings = Settings(
        index_dir=sample_index,
        reload_interval_s=0,
        events_db=db,
        user_key=SecretStr(KEY),
        admin_token=SecretStr(TOKEN),
        # No registered personal model: the built-in weights (a test below registers one).
        models_dir=tmp_path_factory.mktemp("no-models"),
    )
    svc = SearchService(settings, encoder=encoder)
    svc.load()
    return svc


@pytest.fixture(scope="module")
def client(service: SearchService) -> Iterator[TestClient]:
    with TestClient(create_app(service.settings, service=service)) as c:
        yield c


def _search(client: TestClient, **body: Any) -> dict[str, Any]:
    # "cordless" matches drills and saws (the DIY shopper's) and mowers and trimmers (the
    # gardener's): a query whose result set two tastes order differently.
    r = client.post("/v1/search", json={"q": "cordless", "size": 20, "explain": True, **body})
    assert r.status_code == 200, r.text
    return r.json()


def _ids(answer: dict[str, Any]) -> list[str]:
    return [h["id"] for h in answer["hits"]]


def test_personalize_false_and_unknown_shopper_equal_the_plain_search(client: TestClient) -> None:
    plain = _search(client)
    assert plain["personalized"] == "off"
    off = _search(client, user="demo-garden", personalize=False)
    assert off["personalized"] == "off"
    unknown = _search(client, user="nobody-ever-seen")
    assert unknown["personalized"] == "no history"
    for other in (off, unknown):
        assert _ids(other) == _ids(plain)
        assert [h["score"] for h in other["hits"]] == [h["score"] for h in plain["hits"]]


def test_history_reorders_the_same_hits_and_explains_the_personal_part(client: TestClient) -> None:
    # size = the re-scored head (personal_depth, 50): the page holds the whole head.
    plain = _search(client, size=50)
    garden = _search(client, user="demo-garden", size=50)
    assert garden["personalized"].startswith("applied (")
    assert "personal" in garden["timings_ms"]
    # Only re-ordered: the same products, the same total (filters cannot leak).
    assert sorted(_ids(garden)) == sorted(_ids(plain)) and garden["total"] == plain["total"]
    personal = [h["explain"].get("personal_score") for h in garden["hits"]]
    assert any(p not in (None, 0.0) for p in personal)
    diy = _search(client, user="demo-diy", size=50)
    assert _ids(garden) != _ids(diy)  # two tastes, two orders


def test_filters_hold_for_a_shopper(client: TestClient) -> None:
    answer = _search(client, user="demo-garden", filters={"in_stock": True})
    assert answer["hits"] and all(h["in_stock"] for h in answer["hits"])


def test_get_search_takes_the_shopper(client: TestClient) -> None:
    r = client.get("/v1/search", params={"q": "cordless", "user": "demo-garden"})
    assert r.status_code == 200 and r.json()["personalized"].startswith("applied")


def test_erased_shopper_gets_the_anonymous_answer(client: TestClient) -> None:
    before = _search(client, user="demo-cook")
    assert before["personalized"].startswith("applied")
    r = client.delete("/v1/users/demo-cook", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200 and r.json()["erased"] > 0
    after = _search(client, user="demo-cook")
    assert after["personalized"] == "no history"
    assert _ids(after) == _ids(_search(client))


def test_the_registered_personal_model_gives_the_served_weights(
    service: SearchService, tmp_path: Path
) -> None:
    weights = default_weights({"bought_before": 3.0, "foryou": 1.5})
    trained = PersonalRescorer(
        items=["any"],
        item_vectors=np.ones((1, 4), dtype=np.float32),
        copurchase=sp.csr_matrix((1, 1)),
        baskets=np.zeros(1),
        weights=weights,
    )
    version = new_version(tmp_path, "personal")
    trained.save(staging_dir(tmp_path, "personal", version))
    register(tmp_path, "personal", version, {"name": "personal-rescorer"})
    snapshot = service.snapshot
    signals = ShopperSignals(
        service.settings.model_copy(update={"models_dir": tmp_path}), lambda: None
    )
    served = signals.rescorer(snapshot)
    # The trained weights over the snapshot's items; no recommender, so no for-you ranker.
    assert served.weights == weights and served.card["version"] == version
    assert list(served.items) == list(snapshot.table.row_of) and served.foryou is None
    assert signals.rescorer(snapshot) is served  # built once per snapshot and model
    empty = ShopperSignals(service.settings, lambda: None)
    assert empty.rescorer(snapshot).card == {"weights": "defaults"}
