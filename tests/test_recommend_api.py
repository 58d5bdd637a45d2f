"""The recommendation endpoints over HTTP: a recommender trained (for real, briefly) on
the demo shoppers' events of the sample catalog, served with the snapshot. Never empty
while the catalog is not: a shopper without history gets popular products, a product
nobody bought gets text neighbours; filters hold; erasure changes the next answer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from shopsearch.api.app import create_app
from shopsearch.api.service import SearchService
from shopsearch.api.settings import Settings
from shopsearch.indexer.events.demo import demo_events
from shopsearch.indexer.events.store import EventStore
from shopsearch.indexer.training.recommender import train_recommender
from shopsearch.retrieval.encoders import Encoder
from shopsearch.retrieval.types import Product

KEY = "recommend-api-test-key-012345"
TOKEN = "recommend-admin-token"


@pytest.fixture(scope="module")
def client(
    sample_index: Path, encoder: Encoder, sample_products: list[Product], tmp_path_factory: Any
) -> Iterator[TestClient]:
    root = tmp_path_factory.mktemp("recommend-api")
    db, models = root / "events.db", root / "models"
    with EventStore(db) as store:
        store.add(demo_events(sample_products, KEY.encode()))
        interactions = store.interactions()
    train_recommender(
        interactions,
        {p.id: p.title for p in sample_products},
        models,
        encoder=encoder,
        max_minutes=0.5,
    )
    settings = Settings(
        index_dir=sample_index,
        reload_interval_s=0,
        events_db=db,
        user_key=SecretStr(KEY),
        admin_token=SecretStr(TOKEN),
        models_dir=models,
    )
    svc = SearchService(settings, encoder=encoder)
    svc.load()
    with TestClient(create_app(settings, service=svc)) as c:
        yield c


def _get(client: TestClient, url: str, **params: Any) -> dict[str, Any]:
    r = client.get(url, params=params)
    assert r.status_code == 200, r.text
    return r.json()


def test_for_you_uses_the_history_and_falls_back_to_popular(client: TestClient) -> None:
    cook = _get(client, "/v1/recommend/for-you", user="demo-cook", size=10)
    assert len(cook["hits"]) == 10 and cook["history_items"] > 0
    assert cook["hits"][0]["source"] in ("ranker", "blend") and cook["models"]["recommender"]
    for strategy in ("ranker", "blend", "repurchase"):  # each alone still never empty
        alone = _get(client, "/v1/recommend/for-you", user="demo-cook", size=10, strategy=strategy)
        assert len(alone["hits"]) == 10 and alone["strategy"] == strategy
    assert "total" in cook["timings_ms"]
    kitchen = sum(h["category"].startswith("Kitchen") for h in cook["hits"])
    assert kitchen >= 5, cook["hits"]  # their taste, not the shop's average
    stranger = _get(client, "/v1/recommend/for-you", user="never-seen", size=10)
    assert len(stranger["hits"]) == 10 and stranger["history_items"] == 0
    assert {h["source"] for h in stranger["hits"]} == {"popular"}
    assert stranger["fallbacks"] == ["popular"]


def test_exclude_bought_and_filters(client: TestClient) -> None:
    bought = _get(client, "/v1/recommend/for-you", user="demo-diy", size=30)
    fresh = _get(client, "/v1/recommend/for-you", user="demo-diy", size=30, exclude_bought=True)
    assert {h["id"] for h in fresh["hits"]} != {h["id"] for h in bought["hits"]}
    cheap = _get(client, "/v1/recommend/for-you", user="demo-diy", size=10, max_price=20)
    assert cheap["hits"] and all(h["price"] <= 20 for h in cheap["hits"])
    bad = client.get("/v1/recommend/for-you", params={"min_price": 5, "max_price": 1})
    assert bad.status_code == 422


def test_similar_is_never_empty_and_covers_unbought_products(
    client: TestClient, sample_products: list[Product]
) -> None:
    bought = {e.product_id for e in demo_events(sample_products, KEY.encode())}
    unbought = next(p.id for p in sample_products if p.id not in bought)
    answer = _get(client, f"/v1/recommend/similar/{unbought}", size=5)
    assert len(answer["hits"]) == 5 and unbought not in {h["id"] for h in answer["hits"]}
    assert answer["hits"][0]["source"] == "text" and "text" in answer["fallbacks"]
    some = next(iter(sorted(bought)))
    together = _get(client, f"/v1/recommend/similar/{some}", size=5)
    assert together["hits"][0]["source"] == "co-purchase"
    assert client.get("/v1/recommend/similar/NO-SUCH-SKU").status_code == 404


def test_erasure_changes_the_next_recommendation(client: TestClient) -> None:
    before = _get(client, "/v1/recommend/for-you", user="demo-garden", size=10)
    assert before["history_items"] > 0
    r = client.delete("/v1/users/demo-garden", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200
    after = _get(client, "/v1/recommend/for-you", user="demo-garden", size=10)
    assert after["history_items"] == 0 and after["hits"] != before["hits"]
