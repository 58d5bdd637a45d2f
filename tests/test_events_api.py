"""``POST /v1/events`` and ``DELETE /v1/users/{user}`` through the router the app mounts
(a real SQLite store behind it), and pseudonymisation."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import pytest
from fastapi import FastAPI, Header, HTTPException
from fastapi.testclient import TestClient
from pydantic import SecretStr

from shopsearch.api.events_routes import events_router
from shopsearch.api.settings import Settings
from shopsearch.indexer.events import EventStore, check_key, pseudonymise

KEY = "test-key-0123456789abcdef"
NOW = datetime.now(UTC).replace(microsecond=0)


def event(i: int, **fields: Any) -> dict[str, Any]:
    body = {
        "event_id": f"e{i}",
        "type": "view",
        "session": "sess-1",
        "product_id": "p1",
        "timestamp": (NOW - timedelta(minutes=i)).isoformat(),
    }
    return {**body, **fields}


class Harness:
    def __init__(self, tmp_path: Path, key: str | None = KEY) -> None:
        self.store: EventStore | None = EventStore(
            tmp_path / "events.db", known_products={"p1", "p2"}
        )
        self.erased: list[str] = []
        settings = Settings(user_key=SecretStr(key) if key else None)

        def admin(authorization: Annotated[str | None, Header()] = None) -> None:
            if authorization != "Bearer admin":
                raise HTTPException(status_code=401, detail="no")

        app = FastAPI()
        app.include_router(
            events_router(lambda: self.store, settings, admin, on_erase=self.erased.append)
        )
        self.client = TestClient(app)


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    assert harness.store is not None
    harness.store.close()


def test_a_batch_is_stored_and_resending_it_is_harmless(h: Harness) -> None:
    batch = {"events": [event(0, user="alice"), event(1, product_id="p-new"), event(2)]}
    r = h.client.post("/v1/events", json=batch)
    assert r.status_code == 200, r.text
    assert r.json() == {"stored": 3, "duplicates": 0, "unknown_products": 1}
    r = h.client.post("/v1/events", json=batch)
    assert r.json() == {"stored": 0, "duplicates": 3, "unknown_products": 1}
    assert h.store is not None and h.store.count() == 3


def test_events_are_stored_as_sent_with_the_user_pseudonymised(h: Harness) -> None:
    naive = (NOW - timedelta(hours=1)).replace(tzinfo=None).isoformat()  # taken as UTC
    batch = [
        event(0, user="alice@example.com", type="purchase", quantity=2, query_id="q1", position=4),
        event(1, timestamp=naive, type="add_to_cart", user=""),  # "" is a guest
    ]
    assert h.client.post("/v1/events", json={"events": batch}).status_code == 200
    assert h.store is not None
    df = h.store.interactions()
    alice = pseudonymise("alice@example.com", KEY.encode())
    assert list(df["user"]) == ["", alice]
    assert list(df["kind"]) == ["add_to_cart", "purchase"]
    assert list(df["quantity"]) == [1.0, 2.0]
    assert df["ts"].iloc[0] == NOW - timedelta(hours=1)
    # The raw id is nowhere in the database.
    raw = b"".join(
        p.read_bytes() for p in h.store.path.parent.iterdir() if p.name.startswith("events.db")
    )
    assert b"alice@example.com" not in raw and alice.encode() in raw


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"timestamp": (NOW + timedelta(days=2)).isoformat()}, "timestamp"),
        ({"timestamp": "1970-01-02T00:00:00Z"}, "timestamp"),
        ({"timestamp": "yesterday"}, "timestamp"),
        ({"type": "buy"}, "type"),
        ({"position": 0}, "position"),
        ({"event_id": "x" * 129}, "event_id"),
        ({"user": "u" * 257}, "user"),
        ({"session": ""}, "session"),
        ({"quantity": -1}, "quantity"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_a_bad_event_is_a_422_naming_index_and_field_and_nothing_is_stored(
    h: Harness, bad: dict[str, Any], field: str
) -> None:
    batch = [event(i) for i in range(5)]
    batch[3] = {**batch[3], **bad}
    r = h.client.post("/v1/events", json={"events": batch})
    assert r.status_code == 422
    locs = [e["loc"] for e in r.json()["detail"]]
    assert ["body", "events", 3, field] in locs, locs
    assert h.store is not None and h.store.count() == 0


def test_missing_field_and_batch_size_limits(h: Harness) -> None:
    no_session = event(0)
    del no_session["session"]
    r = h.client.post("/v1/events", json={"events": [event(1), no_session]})
    assert ["body", "events", 1, "session"] in [e["loc"] for e in r.json()["detail"]]
    for size in (0, 1001):
        r = h.client.post("/v1/events", json={"events": [event(i) for i in range(size)]})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "events"]
    r = h.client.post("/v1/events", json={"events": [event(i) for i in range(1000)]})
    assert r.status_code == 200 and r.json()["stored"] == 1000


def test_erasure_is_admin_only_and_erases_one_shopper(h: Harness) -> None:
    h.client.post(
        "/v1/events",
        json={
            "events": [
                event(0, user="alice", session="a"),
                event(1, user="alice", session="a2"),
                event(2, user="bob", session="b"),
            ]
        },
    )
    assert h.client.delete("/v1/users/alice").status_code == 401
    r = h.client.delete("/v1/users/alice", headers={"Authorization": "Bearer admin"})
    assert r.status_code == 200 and r.json() == {"erased": 2}
    assert h.erased == [pseudonymise("alice", KEY.encode())]
    assert h.store is not None
    assert set(h.store.interactions()["user"]) == {pseudonymise("bob", KEY.encode())}
    # Ids with slashes and other characters reach the endpoint whole.
    h.client.post("/v1/events", json={"events": [event(9, user="shop/42 x")]})
    r = h.client.delete("/v1/users/shop%2F42%20x", headers={"Authorization": "Bearer admin"})
    assert r.json() == {"erased": 1}


def test_without_a_key_or_a_store_events_are_503(tmp_path: Path) -> None:
    h = Harness(tmp_path, key=None)
    r = h.client.post("/v1/events", json={"events": [event(0)]})
    assert r.status_code == 503 and "SHOPSEARCH_USER_KEY" in r.json()["detail"]
    assert h.store is not None
    h.store.close()
    h.store = None
    h2 = Harness(tmp_path / "2")
    h2.store.close()  # type: ignore[union-attr]
    h2.store = None
    assert h2.client.post("/v1/events", json={"events": [event(0)]}).status_code == 503


def test_pseudonymise_is_keyed_stable_and_refuses_weak_keys() -> None:
    a = pseudonymise("17850", b"k" * 16)
    assert a == pseudonymise("17850", b"k" * 16) and len(a) == 32 and int(a, 16) >= 0
    assert a != pseudonymise("17850", b"j" * 16) and a != pseudonymise("17851", b"k" * 16)
    for weak in (b"", b"short"):
        with pytest.raises(ValueError, match="at least 16"):
            check_key(weak)
    with pytest.raises(ValueError, match="guest"):
        pseudonymise("", b"k" * 16)


def test_the_startup_check_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHOPSEARCH_USER_KEY", raising=False)
    with pytest.raises(ValueError, match="SHOPSEARCH_USER_KEY is not set"):
        Settings().require_user_key()
    monkeypatch.setenv("SHOPSEARCH_USER_KEY", "tooshort")
    with pytest.raises(ValueError, match=r"SHOPSEARCH_USER_KEY: .*only 8 bytes"):
        Settings().require_user_key()
    monkeypatch.setenv("SHOPSEARCH_USER_KEY", KEY)
    assert Settings().require_user_key() == KEY.encode()
    assert KEY not in repr(Settings())  # a SecretStr: never printed
