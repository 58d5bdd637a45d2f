"""The event store: idempotent all-or-nothing batches, lookups, the interactions
contract, erasure, retention, schema migrations and concurrent use (real SQLite files)."""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from shopsearch.indexer.events import INTERACTION_COLUMNS, Event, EventStore, EventStoreError
from shopsearch.indexer.events.schema import LATEST_VERSION, migrate, schema_version

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def ev(
    event_id: str,
    *,
    user: str | None = None,
    session: str = "s1",
    product: str = "p1",
    kind: str = "view",
    minutes: int = 0,
    quantity: float = 1.0,
) -> Event:
    return Event(
        event_id=event_id,
        kind=kind,  # type: ignore[arg-type]
        session=session,
        product_id=product,
        ts=T0 + timedelta(minutes=minutes),
        user_hash=user,
        quantity=quantity,
    )


@pytest.fixture
def store(tmp_path: Path) -> EventStore:
    with EventStore(tmp_path / "events.db", known_products={"p1", "p2", "p3"}) as s:
        yield s  # type: ignore[misc]


def test_duplicates_are_stored_once(store: EventStore) -> None:
    first = store.add([ev("a"), ev("b", product="p2"), ev("a")])  # repeated within a batch
    assert (first.stored, first.duplicates) == (2, 1)
    again = store.add([ev("b", product="p2"), ev("c", product="p3")])  # across batches
    assert (again.stored, again.duplicates) == (1, 1)
    assert store.count() == 3


def test_unknown_products_are_kept_and_counted(store: EventStore) -> None:
    report = store.add([ev("a"), ev("b", product="new-1"), ev("c", product="new-2")])
    assert report.to_dict() == {"stored": 3, "duplicates": 0, "unknown_products": 2}
    assert set(store.interactions()["item"]) == {"p1", "new-1", "new-2"}


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (Event("x", "buy", "s1", "p1", T0), "kind"),  # type: ignore[arg-type]
        (Event("x", "view", "s1", "p1", T0.replace(tzinfo=None)), "ts"),
        (Event("", "view", "s1", "p1", T0), "event_id"),
        (Event("x", "view", "", "p1", T0), "session"),
        (Event("x", "view", "s1", "p1", T0, user_hash=""), "user_hash"),
        (Event("x", "view", "s1", "p1", T0, quantity=float("nan")), "quantity"),
    ],
)
def test_a_bad_event_rejects_the_whole_batch(store: EventStore, bad: Event, field: str) -> None:
    with pytest.raises(EventStoreError, match=rf"event 2 .*{field}"):
        store.add([ev("a"), ev("b"), bad])
    assert store.count() == 0


def test_recent_items_newest_first_per_user_session_and_both(store: EventStore) -> None:
    store.add(
        [
            ev("u1", user="U", session="s1", product="p1", minutes=1),
            ev("u2", user="U", session="s2", product="p2", minutes=5, kind="purchase"),
            ev("g1", session="s1", product="p3", minutes=3),  # guest in U's session
            ev("o1", user="O", session="s9", product="p1", minutes=9),
        ]
    )
    assert [r.product_id for r in store.recent_items(user_hash="U")] == ["p2", "p1"]
    assert [r.product_id for r in store.recent_items(session="s1")] == ["p3", "p1"]
    both = store.recent_items(user_hash="U", session="s1")
    assert [(r.product_id, r.kind) for r in both] == [
        ("p2", "purchase"),
        ("p3", "view"),
        ("p1", "view"),  # in both scans, listed once
    ]
    assert both[0].ts == T0 + timedelta(minutes=5) and both[0].ts.tzinfo is not None
    assert len(store.recent_items(user_hash="U", session="s1", limit=2)) == 2
    assert store.recent_items(user_hash="nobody") == []
    with pytest.raises(ValueError, match="user_hash, session"):
        store.recent_items()


def test_recent_items_are_index_lookups(store: EventStore) -> None:
    conn = sqlite3.connect(store.path)
    for column, index in (("user_hash", "events_user_ts"), ("session", "events_session_ts")):
        plan = " ".join(
            str(row[3])
            for row in conn.execute(
                f"EXPLAIN QUERY PLAN SELECT product_id FROM events WHERE {column} = ? "
                "ORDER BY ts_us DESC LIMIT 50",
                ("x",),
            )
        )
        assert f"USING INDEX {index}" in plan and "TEMP B-TREE" not in plan, plan
    conn.close()


def test_interactions_follow_the_contract(store: EventStore) -> None:
    empty = store.interactions()
    assert list(empty.columns) == list(INTERACTION_COLUMNS) and len(empty) == 0
    store.add(
        [
            ev("b", user="U", session="s1", product="p2", minutes=2, kind="purchase", quantity=3),
            ev("a", session="s1", product="p1", minutes=1, kind="add_to_cart"),
        ]
    )
    df = store.interactions()
    assert list(df.columns) == list(INTERACTION_COLUMNS)
    assert str(df["ts"].dtype) == "datetime64[ns, UTC]"
    assert df["quantity"].dtype == "float64"
    assert all(pd.api.types.is_string_dtype(df[c]) for c in ("user", "item", "basket", "kind"))
    assert df.to_dict("records") == [
        {
            "user": "",
            "item": "p1",
            "ts": pd.Timestamp(T0 + timedelta(minutes=1)),
            "basket": "s1",
            "kind": "add_to_cart",
            "quantity": 1.0,
        },
        {
            "user": "U",
            "item": "p2",
            "ts": pd.Timestamp(T0 + timedelta(minutes=2)),
            "basket": "s1",
            "kind": "purchase",
            "quantity": 3.0,
        },
    ]
    since = store.interactions(since=T0 + timedelta(minutes=2))
    until = store.interactions(until=T0 + timedelta(minutes=2))  # exclusive
    assert list(since["item"]) == ["p2"] and list(until["item"]) == ["p1"]


def test_erasure_removes_the_shopper_and_nothing_of_others(store: EventStore) -> None:
    secret = "5f4dcc3b5aa765d61d8327deb882cf99"
    store.add(
        [
            ev("u1", user=secret, session="s1"),
            ev("u2", user=secret, session="s2", product="p2"),
            ev("g1", session="s1", product="p3"),  # U browsing before signing in
            ev("o1", user="other", session="s1"),  # someone else later in that session
            ev("o2", user="other", session="s3"),
            ev("g2", session="s4"),  # an unrelated guest
        ]
    )
    # Derived data kept in the same database is keyed by user_hash and goes too.
    conn = sqlite3.connect(store.path)
    conn.execute("CREATE TABLE profiles (user_hash TEXT, top_item TEXT)")
    conn.executemany("INSERT INTO profiles VALUES (?, ?)", [(secret, "p1"), ("other", "p2")])
    conn.commit()
    conn.close()

    assert store.erase_user(secret) == 3
    left = store.interactions()
    assert sorted(left["basket"] + "/" + left["user"]) == ["s1/other", "s3/other", "s4/"]
    conn = sqlite3.connect(store.path)
    assert conn.execute("SELECT user_hash FROM profiles").fetchall() == [("other",)]
    conn.close()
    # No copy of the pseudonym is left in the database file or its WAL.
    for suffix in ("", "-wal"):
        path = Path(f"{store.path}{suffix}")
        if path.exists():
            assert secret.encode() not in path.read_bytes(), path
    assert store.erase_user(secret) == 0  # idempotent


def test_retention_deletes_only_old_events(store: EventStore) -> None:
    now = T0 + timedelta(days=400)
    store.add([ev("old", minutes=-1), ev("edge"), ev("new", minutes=60 * 24)])
    assert store.apply_retention(400, now=now) == 1  # T0 itself is exactly 400 days old: kept
    assert sorted(store.interactions()["ts"]) == [
        pd.Timestamp(T0),
        pd.Timestamp(T0 + timedelta(days=1)),
    ]
    with pytest.raises(ValueError, match="at least 1 day"):
        store.apply_retention(0)


def _v1_database(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn, target=1)
    conn.execute(
        "INSERT INTO events (event_id, kind, user_hash, session, product_id, ts_us, quantity) "
        "VALUES ('old-1', 'purchase', 'U', 'inv-1', 'p1', 1714564800000000, 2.0)"
    )
    conn.close()


def test_an_older_schema_is_migrated_with_its_data(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    _v1_database(path)
    with EventStore(path) as store:
        assert store.schema_version == LATEST_VERSION == 2
        assert store.recent_items(user_hash="U") == [("p1", "purchase", T0)]
        store.add([Event("new-1", "click", "s", "p2", T0, query_id="q", position=3)])
        assert store.count() == 2
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT query_id, position FROM events ORDER BY id").fetchall() == [
        (None, None),
        ("q", 3),
    ]
    conn.close()


def test_a_failed_migration_leaves_the_old_version(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    _v1_database(path)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE events_user_ts (x)")  # takes the name v2's index needs
    conn.close()
    with pytest.raises(EventStoreError, match="not an event database"):
        EventStore(path)
    conn = sqlite3.connect(path)
    assert schema_version(conn) == 1
    columns = [row[1] for row in conn.execute("PRAGMA table_info(events)")]
    assert "query_id" not in columns  # the ALTER TABLE of v2 was rolled back with it
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 1
    conn.close()


def test_a_newer_schema_or_another_file_is_refused(tmp_path: Path) -> None:
    newer = tmp_path / "newer.db"
    conn = sqlite3.connect(newer)
    conn.execute(f"PRAGMA user_version = {LATEST_VERSION + 1}")
    conn.close()
    with pytest.raises(EventStoreError, match="newer than this shopsearch"):
        EventStore(newer)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(EventStoreError, match="SHOPSEARCH_EVENTS_DB"):
        EventStore(junk)


def test_concurrent_writers_and_readers(store: EventStore) -> None:
    errors: list[BaseException] = []

    def write(worker: int) -> None:
        try:
            for b in range(20):
                batch = [ev(f"w{worker}-{b}-{i}", user=f"u{worker}") for i in range(25)]
                assert store.add(batch).stored == 25
        except BaseException as exc:
            errors.append(exc)

    def read(worker: int) -> None:
        try:
            for _ in range(50):
                store.recent_items(user_hash=f"u{worker}", limit=10)
                store.count()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    threads += [threading.Thread(target=read, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.count() == 4 * 20 * 25


def test_a_closed_store_says_so(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "e.db")
    store.close()
    with pytest.raises(EventStoreError, match="closed"):
        store.count()
    with pytest.raises(EventStoreError, match="closed"):
        store.add([ev("a")])
