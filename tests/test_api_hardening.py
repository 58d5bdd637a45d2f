"""Requests that used to crash or hang the server: bounded paging, non-finite numbers,
unbounded lists and bodies, the admin token checked before the body, deadlines.

Each test here failed before its fix (the probe's requests, replayed in-process on the
real service over the sample catalog).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from shopsearch.api.app import create_app
from shopsearch.api.guard import RequestGuard
from shopsearch.api.schemas import MAX_RESULT_WINDOW, SearchRequest
from shopsearch.api.service import DeadlineExceeded, SearchService
from shopsearch.api.settings import Settings
from shopsearch.rerank.cross_encoder import Reranker
from shopsearch.retrieval.deadline import Deadline
from shopsearch.retrieval.encoders import Encoder

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def client(sample_service: SearchService) -> Iterator[TestClient]:
    settings = sample_service.settings.model_copy(
        update={"admin_token": SecretStr(TOKEN), "max_body_bytes": 64 * 1024}
    )
    with TestClient(create_app(settings, service=sample_service)) as c:
        yield c


@pytest.mark.parametrize("mode", ["hybrid", "lexical", "dense"])
def test_page_past_the_result_window_is_422_not_a_crash(client: TestClient, mode: str) -> None:
    r = client.get("/v1/search", params={"q": "drill", "page": 1_000_000_000_000, "mode": mode})
    assert r.status_code == 422
    r = client.post("/v1/search", json={"q": "drill", "page": 20_000_000, "size": 100})
    assert r.status_code == 422
    r = client.post("/v1/search", json={"q": "drill", "page": 11, "size": 100, "mode": mode})
    assert r.status_code == 422
    assert str(MAX_RESULT_WINDOW) in json.dumps(r.json())
    # The last page inside the window is served.
    r = client.post("/v1/search", json={"q": "drill", "page": 10, "size": 100, "mode": mode})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('{"q":"drill","filters":{"price":{"max":NaN}}}', "max"),
        ('{"q":"drill","lexical_weight":NaN}', "lexical_weight"),
        ('{"q":"drill","rerank_weight":Infinity}', "rerank_weight"),
        ('{"q":"drill","price_ranges":[[0, NaN]]}', "price_ranges"),
    ],
)
def test_non_finite_numbers_are_422_naming_the_field(
    client: TestClient, body: str, field: str
) -> None:
    r = client.post("/v1/search", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert any(field in map(str, e["loc"]) for e in r.json()["detail"])


def test_lists_are_bounded(client: TestClient) -> None:
    r = client.post("/v1/search", json={"q": "drill", "facets": ["brand"] * 21})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"][:2] == ["body", "facets"]
    r = client.post("/v1/search", json={"q": "drill", "filters": {"brand": ["b"] * 101}})
    assert r.status_code == 422
    r = client.post("/v1/search", json={"q": "drill", "filters": {"color": ["x" * 300]}})
    assert r.status_code == 422


def test_body_over_the_limit_is_413(client: TestClient) -> None:
    big = {"q": "drill", "facets": ["brand"] * 20_000}  # ~200 kB, limit 64 kB here
    r = client.post("/v1/search", json=big)
    assert r.status_code == 413
    assert "limit" in r.json()["detail"]


def test_wrong_token_is_401_with_www_authenticate(client: TestClient) -> None:
    r = client.post("/v1/admin/reload", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    r = client.post("/v1/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200


def test_admin_token_is_checked_before_the_body_is_read() -> None:
    """A 20 MB unauthenticated body is refused from the headers alone."""
    reached: list[str] = []

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        reached.append("app")

    async def receive():  # type: ignore[no-untyped-def]
        reached.append("body read")
        return {"type": "http.request", "body": b"x" * 1024, "more_body": True}

    sent: list[dict] = []

    async def send(message):  # type: ignore[no-untyped-def]
        sent.append(message)

    guard = RequestGuard(
        app, admin_token=TOKEN, max_body_bytes=1 << 20, max_admin_body_bytes=1 << 30
    )
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/admin/products",
        "headers": [(b"content-length", str(20 << 20).encode())],
    }
    asyncio.run(guard(scope, receive, send))
    assert reached == []
    assert sent[0]["status"] == 401


def test_snapshot_errors_do_not_show_server_paths(sample_index: Path, encoder: Encoder) -> None:
    svc = SearchService(Settings(index_dir=sample_index, reload_interval_s=0), encoder=encoder)
    svc.load()
    settings = svc.settings.model_copy(update={"admin_token": SecretStr(TOKEN)})
    with TestClient(create_app(settings, service=svc)) as c:
        r = c.post(
            "/v1/admin/promote/19990101T000000Z", headers={"Authorization": f"Bearer {TOKEN}"}
        )
    assert r.status_code == 409
    assert str(sample_index) not in r.text


def test_expired_deadline_before_any_leg_is_deadline_exceeded(
    sample_service: SearchService,
) -> None:
    deadline = Deadline.after_ms(1000)
    deadline.cancel("client disconnected")
    with pytest.raises(DeadlineExceeded, match="client disconnected"):
        sample_service.search(SearchRequest(q="drill"), deadline)


def test_rerank_is_cut_to_what_fits_the_deadline(
    sample_index: Path, encoder: Encoder, cross_encoder_dir: Path
) -> None:
    svc = SearchService(
        # The same request is asked under ever shorter deadlines: each must compute (the
        # result cache would serve the first, full answer to all of them).
        Settings(index_dir=sample_index, reload_interval_s=0, result_cache_size=0),
        encoder=encoder,
        reranker=Reranker(cross_encoder_dir, device="cpu", backend="torch"),
    )
    svc.load()
    full = svc.search(SearchRequest(q="cordless drill", rerank_depth=40), Deadline.after_ms(60_000))
    assert full.cut == []
    assert full.rerank.startswith("applied (40")
    # As if the reranker had been measured at 50 ms a candidate: 1 s fits about 15 of 40 (cordless drill matches 48 products).
    svc._rerank_ms = 50.0
    part = svc.search(SearchRequest(q="cordless drill", rerank_depth=40), Deadline.after_ms(1000))
    assert len(part.cut) == 1 and part.cut[0].startswith("rerank depth 40 -> ")
    fitted = int(part.cut[0].split("-> ")[1])
    assert 5 <= fitted < 20
    assert part.rerank == f"applied ({fitted} candidates)"
    # Too little time for even a few candidates: rerank is cut, the fused order answers.
    svc._rerank_ms = 1000.0
    none = svc.search(SearchRequest(q="cordless drill", rerank_depth=40), Deadline.after_ms(1000))
    assert none.cut == ["rerank"]
    assert none.rerank.startswith("skipped (deadline")
    assert [h.id for h in none.hits] == [
        h.id for h in svc.search(SearchRequest(q="cordless drill", rerank=False)).hits
    ]
