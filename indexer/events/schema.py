"""Versioned schema of the event database.

The version lives in SQLite's ``PRAGMA user_version`` (0 for a new file). ``MIGRATIONS``
is an ordered list; migration ``i`` (1-based) takes a database from version ``i - 1`` to
``i``. Each runs in its own transaction together with the version bump, so a crash
leaves the database at the old or the new version, never between. Migrations are
append-only: once released, a migration is never edited; a change is a new one.

Columns of ``events``: ``id`` (rowid: insertion order), ``event_id`` (idempotency key,
unique), ``kind``, ``user_hash`` (NULL for guests), ``session``, ``product_id``,
``ts_us`` (event time, microseconds since the epoch, UTC), ``quantity``, and from
version 2 ``query_id`` and ``position`` (which search result led to the event).

Any table with a ``user_hash`` column holds shopper data: ``EventStore.erase_user``
deletes that shopper's rows from every such table, so a table of derived data added by
a later migration is erased too, as long as it keys by ``user_hash``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence

from shopsearch.indexer.events.types import EVENT_KINDS, EventStoreError

__all__ = ["LATEST_VERSION", "MIGRATIONS", "migrate", "schema_version"]

_KINDS_SQL = ", ".join(f"'{k}'" for k in EVENT_KINDS)


def _v1_events(conn: sqlite3.Connection) -> None:
    """The events table, with what imports and the interactions export need."""
    conn.execute(
        f"""
        CREATE TABLE events (
            id         INTEGER PRIMARY KEY,
            event_id   TEXT    NOT NULL UNIQUE,
            kind       TEXT    NOT NULL CHECK (kind IN ({_KINDS_SQL})),
            user_hash  TEXT,
            session    TEXT    NOT NULL,
            product_id TEXT    NOT NULL,
            ts_us      INTEGER NOT NULL,
            quantity   REAL    NOT NULL DEFAULT 1.0
        )
        """
    )
    conn.execute("CREATE INDEX events_ts ON events (ts_us)")


def _v2_attribution_and_lookups(conn: sqlite3.Connection) -> None:
    """Search attribution (query id, result position) and the indexes that make a
    shopper's or a session's recent items a point lookup at query time. (Kept apart
    from version 1 so that the upgrade path is exercised by tests from the start.)"""
    conn.execute("ALTER TABLE events ADD COLUMN query_id TEXT")
    conn.execute("ALTER TABLE events ADD COLUMN position INTEGER")
    # Partial: guests (NULL) are most events and are never looked up by user.
    conn.execute(
        "CREATE INDEX events_user_ts ON events (user_hash, ts_us) WHERE user_hash IS NOT NULL"
    )
    conn.execute("CREATE INDEX events_session_ts ON events (session, ts_us)")


#: Ordered migrations; index i takes the schema from version i to i + 1.
MIGRATIONS: Sequence[Callable[[sqlite3.Connection], None]] = (
    _v1_events,
    _v2_attribution_and_lookups,
)
LATEST_VERSION = len(MIGRATIONS)


def schema_version(conn: sqlite3.Connection) -> int:
    """The schema version of the database ``conn`` is open on (0: empty)."""
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection, target: int = LATEST_VERSION) -> list[int]:
    """Bring the database to schema version ``target``; return the versions applied.

    ``conn`` must be in autocommit mode (``isolation_level=None``): each migration is
    one explicit ``BEGIN IMMEDIATE`` .. ``COMMIT`` holding the write lock, so two
    processes opening the same new file do not both migrate it. A database newer than
    this code is refused (downgrades are not supported).
    """
    if not 0 <= target <= LATEST_VERSION:
        raise ValueError(f"target schema version {target} is not in 0..{LATEST_VERSION}")
    applied: list[int] = []
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            current = schema_version(conn)  # re-read under the lock
            if current > LATEST_VERSION:
                raise EventStoreError(
                    f"the event database has schema version {current}, newer than this "
                    f"shopsearch knows ({LATEST_VERSION}); upgrade shopsearch, or point "
                    "SHOPSEARCH_EVENTS_DB at another file"
                )
            if current >= target:
                conn.execute("COMMIT")
                return applied
            MIGRATIONS[current](conn)
            # PRAGMA user_version is part of the transaction: rolled back with it.
            conn.execute(f"PRAGMA user_version = {current + 1}")
            conn.execute("COMMIT")
            applied.append(current + 1)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
