"""The durable behaviour-event store: SQLite in WAL mode, one file.

Why SQLite and not DuckDB: the store's load is many small concurrent writes that must
each be durable on return (a batch of events per request), plus point lookups of one
shopper's recent items at query time. That is an OLTP row-store load: SQLite commits a
small transaction in well under a millisecond plus one fsync, serves indexed point
reads concurrently with the writer (WAL), and is in the standard library. DuckDB is a
columnar engine built for scans and aggregates; its small single-row writes and point
lookups are far slower and it allows one writing process. The nightly jobs that want
columns get them from :meth:`EventStore.interactions` as a DataFrame.

Durability: ``journal_mode=WAL`` with ``synchronous=FULL``. A 200 from the API means
"committed", and committed must survive anything short of the disk dying. In WAL mode
``synchronous=NORMAL`` already survives a killed process (the WAL write reaches the OS
before the commit returns), but it fsyncs only at checkpoints, so a power cut or kernel
crash can lose the last transactions that were acknowledged. ``FULL`` fsyncs the WAL on
every commit; at one commit per batch (up to 1,000 events) that costs one fsync per
request, which the throughput benchmark shows is affordable (eval/events_bench.py).

Concurrency: one writer connection behind a lock (SQLite has a single writer anyway;
queueing in Python is cheaper than SQLite's busy-retry sleeps), and one read-only
connection per reading thread, which WAL lets read while the writer commits. Other
processes (``shopsearch events import`` beside a running server) wait up to
``busy_timeout_s`` for the write lock.

Erasure really deletes: ``secure_delete`` overwrites freed pages with zeros, and an
erasure checkpoints the WAL so old page images do not linger there.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import pandas as pd

from shopsearch.indexer.events.schema import migrate, schema_version
from shopsearch.indexer.events.types import (
    EVENT_KINDS,
    INTERACTION_COLUMNS,
    AddReport,
    Event,
    EventStoreError,
    RecentItem,
)

__all__ = ["EventStore", "KnownProducts"]

log = logging.getLogger(__name__)

#: Which products the catalog has: a set of ids, or a predicate (e.g. one asking the
#: serving snapshot, so the answer follows snapshot swaps).
KnownProducts = Callable[[str], bool] | Collection[str]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_INSERT = (
    "INSERT INTO events (event_id, kind, user_hash, session, product_id, ts_us, quantity, "
    "query_id, position) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (event_id) DO NOTHING"
)
#: Host parameters per statement, kept well under SQLite's limit.
_CHUNK = 500


def to_us(ts: datetime) -> int:
    """Microseconds since the epoch of a timezone-aware datetime (exact, no float)."""
    return (ts - _EPOCH) // _US


def from_us(us: int) -> datetime:
    """The UTC datetime of microseconds since the epoch."""
    return _EPOCH + timedelta(microseconds=us)


def _check(index: int, event: Event) -> tuple[object, ...]:
    """The row of one event, or an error naming the event and the field."""

    def bad(field: str, why: str) -> EventStoreError:
        return EventStoreError(f"event {index} ({event.event_id!r}): {field} {why}")

    for field in ("event_id", "session", "product_id"):
        value = getattr(event, field)
        if not isinstance(value, str) or not value:
            raise bad(field, "must be a non-empty string")
    if event.kind not in EVENT_KINDS:
        raise bad("kind", f"{event.kind!r} is not one of {', '.join(EVENT_KINDS)}")
    if event.ts.tzinfo is None or event.ts.utcoffset() is None:
        raise bad("ts", "must be timezone-aware (a naive time is ambiguous)")
    if event.user_hash == "":
        raise bad("user_hash", "is empty; a guest has user_hash None")
    if not (math.isfinite(event.quantity) and event.quantity > 0):
        raise bad("quantity", f"must be a positive finite number, not {event.quantity!r}")
    return (
        event.event_id,
        event.kind,
        event.user_hash,
        event.session,
        event.product_id,
        to_us(event.ts),
        float(event.quantity),
        event.query_id,
        event.position,
    )


class EventStore:
    """Durable, idempotent store of behaviour events in one SQLite file.

    Thread-safe: share one instance among the server's threads. Open it once per
    process (``with EventStore(path) as store: ...`` or :meth:`close`).

    Args:
        path: the database file; created (with its directory) and migrated to the
            latest schema when needed.
        known_products: the catalog's product ids (or a predicate); events naming
            other products are stored all the same and counted in
            :attr:`AddReport.unknown_products`. ``None``: not counted.
        synchronous: ``"FULL"`` (default: a returned commit survives power loss) or
            ``"NORMAL"`` (survives a killed process only; see the module docstring).
        busy_timeout_s: how long to wait for another process's write lock.

    Raises:
        EventStoreError: the file is not a database this code can open or migrate.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        known_products: KnownProducts | None = None,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        busy_timeout_s: float = 10.0,
    ) -> None:
        self.path = Path(path)
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be 'FULL' or 'NORMAL', not {synchronous!r}")
        self._synchronous = synchronous
        self._busy_timeout_s = busy_timeout_s
        if known_products is None or callable(known_products):
            self._known: Callable[[str], bool] | None = known_products
        else:
            self._known = frozenset(known_products).__contains__
        self._lock = threading.Lock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._closed = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._writer = self._connect()
            mode = self._writer.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise EventStoreError(
                    f"{self.path}: SQLite could not switch to WAL mode (got {mode!r}); "
                    "put SHOPSEARCH_EVENTS_DB on a local file system"
                )
            applied = migrate(self._writer)
        except sqlite3.DatabaseError as exc:
            raise EventStoreError(
                f"{self.path} is not an event database SQLite can open ({exc}); "
                "point SHOPSEARCH_EVENTS_DB at another file"
            ) from exc
        if applied:
            log.info("event store %s: schema migrated to version %d", self.path, applied[-1])

    def _connect(self) -> sqlite3.Connection:
        # Autocommit mode: transactions are explicit BEGIN .. COMMIT below.
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=self._busy_timeout_s
        )
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        conn.execute("PRAGMA secure_delete=ON")
        return conn

    # -- connections ------------------------------------------------------------------

    def _reader(self) -> sqlite3.Connection:
        """This thread's read-only connection (opened on first use)."""
        if self._closed:
            raise EventStoreError(f"the event store {self.path} is closed")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only=ON")
            self._local.conn = conn
            with self._lock:
                self._readers.append(conn)
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed on success, rolled back on any error."""
        with self._lock:
            if self._closed:
                raise EventStoreError(f"the event store {self.path} is closed")
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # a failed COMMIT may leave it open
                    conn.execute("ROLLBACK")
                raise

    def close(self) -> None:
        """Close every connection; later calls raise :class:`EventStoreError`."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for conn in self._readers:
                conn.close()
            self._readers.clear()
            self._writer.close()

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        """The database's schema version (always :data:`LATEST_VERSION` once open)."""
        return schema_version(self._reader())

    # -- writes -----------------------------------------------------------------------

    def add(self, events: Sequence[Event]) -> AddReport:
        """Store a batch of events in one transaction; return what happened.

        All or nothing: when any event is invalid (empty id, unknown kind, naive time,
        ...), :class:`EventStoreError` names it and nothing of the batch is stored. An
        event whose ``event_id`` is already stored (or repeats one earlier in the
        batch) is a duplicate: skipped, counted. On return the batch is committed.
        """
        rows = [_check(i, event) for i, event in enumerate(events)]
        unknown = 0
        if self._known is not None:
            known = self._known
            unknown = sum(1 for event in events if not known(event.product_id))
        if not rows:
            return AddReport(stored=0, duplicates=0, unknown_products=unknown)
        with self._write() as conn:
            before = conn.total_changes
            conn.executemany(_INSERT, rows)
            stored = conn.total_changes - before
        return AddReport(stored=stored, duplicates=len(rows) - stored, unknown_products=unknown)

    def erase_user(self, user_hash: str) -> int:
        """Delete every event of one shopper; return how many events were deleted.

        Deleted: the shopper's events, and the guest events of sessions in which the
        shopper was signed in (what they did before signing in is theirs too); other
        shoppers' signed-in events in a shared session are kept. Rows of any other
        table with a ``user_hash`` column (derived data) go too. Afterwards the WAL
        is checkpointed so no copy of the deleted pages stays in it.
        """
        if not user_hash:
            raise ValueError("user_hash is empty; give the pseudonym of the shopper to erase")
        with self._write() as conn:
            sessions = [
                row[0]
                for row in conn.execute(
                    "SELECT DISTINCT session FROM events WHERE user_hash = ?", (user_hash,)
                )
            ]
            erased = conn.execute("DELETE FROM events WHERE user_hash = ?", (user_hash,)).rowcount
            for start in range(0, len(sessions), _CHUNK):
                chunk = sessions[start : start + _CHUNK]
                erased += conn.execute(
                    "DELETE FROM events WHERE user_hash IS NULL AND session IN "
                    f"({', '.join('?' * len(chunk))})",
                    chunk,
                ).rowcount
            for table in self._derived_tables(conn):
                conn.execute(f'DELETE FROM "{table}" WHERE user_hash = ?', (user_hash,))
        self._checkpoint()
        return erased

    @staticmethod
    def _derived_tables(conn: sqlite3.Connection) -> list[str]:
        """Tables other than ``events`` that hold shopper data (a ``user_hash`` column)."""
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name != 'events' "
                "AND name NOT LIKE 'sqlite_%'"
            )
        ]
        return [
            t
            for t in tables
            if any(col[1] == "user_hash" for col in conn.execute(f'PRAGMA table_info("{t}")'))
        ]

    def _checkpoint(self) -> None:
        with self._lock:
            busy, _, _ = self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            log.debug("WAL checkpoint after an erasure was blocked by a reader; it runs later")

    def apply_retention(self, days: int, *, now: datetime | None = None) -> int:
        """Delete events that happened more than ``days`` days before ``now`` (default:
        the current time); return how many were deleted."""
        if days < 1:
            raise ValueError(f"retention must be at least 1 day, not {days}")
        now = now or datetime.now(UTC)
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        cutoff = to_us(now - timedelta(days=days))
        with self._write() as conn:
            return conn.execute("DELETE FROM events WHERE ts_us < ?", (cutoff,)).rowcount

    # -- reads ------------------------------------------------------------------------

    def count(self) -> int:
        """Number of events stored."""
        return int(self._reader().execute("SELECT count(*) FROM events").fetchone()[0])

    def recent_items(
        self, user_hash: str | None = None, session: str | None = None, limit: int = 50
    ) -> list[RecentItem]:
        """The newest events of a shopper, of a session, or of both together, newest
        first: ``[(product_id, kind, ts), ...]``, at most ``limit``.

        Two index range scans (``(user_hash, ts)`` and ``(session, ts)``), each reading
        at most ``limit`` rows: constant time in the size of the store.
        """
        if user_hash is None and session is None:
            raise ValueError("give user_hash, session or both")
        if not 1 <= limit <= 10_000:
            raise ValueError(f"limit must be in 1..10000, not {limit}")
        parts: list[str] = []
        params: list[object] = []
        if user_hash is not None:
            parts.append(
                "SELECT * FROM (SELECT id, product_id, kind, ts_us FROM events "
                "WHERE user_hash = ? ORDER BY ts_us DESC LIMIT ?)"
            )
            params += [user_hash, limit]
        if session is not None:
            parts.append(
                "SELECT * FROM (SELECT id, product_id, kind, ts_us FROM events "
                "WHERE session = ? ORDER BY ts_us DESC LIMIT ?)"
            )
            params += [session, limit]
        # UNION (not ALL): an event of the shopper in that session comes once.
        sql = f"{' UNION '.join(parts)} ORDER BY ts_us DESC, id DESC LIMIT ?"
        rows = self._reader().execute(sql, [*params, limit]).fetchall()
        return [RecentItem(pid, kind, from_us(us)) for _, pid, kind, us in rows]

    def interactions(
        self, since: datetime | None = None, until: datetime | None = None
    ) -> pd.DataFrame:
        """Events with ``since <= ts < until`` (either open) as the interactions table
        (columns :data:`INTERACTION_COLUMNS`, see :mod:`indexer.events.types`), in time
        order. ``since``/``until`` must be timezone-aware."""
        clauses: list[str] = []
        params: list[int] = []
        for bound, op in ((since, ">="), (until, "<")):
            if bound is not None:
                if bound.tzinfo is None:
                    raise ValueError("since/until must be timezone-aware")
                clauses.append(f"ts_us {op} ?")
                params.append(to_us(bound))
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = (
            self._reader()
            .execute(
                "SELECT COALESCE(user_hash, ''), product_id, ts_us, session, kind, quantity "
                f"FROM events {where} ORDER BY ts_us, id",
                params,
            )
            .fetchall()
        )
        return _interactions_frame(rows)


def _interactions_frame(rows: Iterable[tuple[object, ...]]) -> pd.DataFrame:
    """Rows of (user, item, ts_us, basket, kind, quantity) as the contract's DataFrame."""
    columns = list(zip(*rows, strict=True)) or [()] * len(INTERACTION_COLUMNS)
    user, item, ts_us, basket, kind, quantity = columns
    return pd.DataFrame(
        {
            "user": pd.array(user, dtype="str"),
            "item": pd.array(item, dtype="str"),
            "ts": pd.to_datetime(pd.array(ts_us, dtype="int64"), unit="us", utc=True).astype(
                "datetime64[ns, UTC]"
            ),
            "basket": pd.array(basket, dtype="str"),
            "kind": pd.array(kind, dtype="str"),
            "quantity": pd.array(quantity, dtype="float64"),
        },
        columns=list(INTERACTION_COLUMNS),
    )
