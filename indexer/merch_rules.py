"""Versioned merchandising rules on disk, with an audit log of who changed what, when.

Layout (``Settings.merch_rules_dir``, by default ``<index-dir>/merch``)::

    merch/
      CURRENT          # the serving version number (replaced atomically)
      v000001.json     # every version ever stored, never rewritten
      v000002.json     # {"version", "created_at", "actor", "index_version", "document"}
      audit.jsonl      # one JSON line per change (appended, fsynced)
      .lock            # serialises writers (processes and threads)

A change (:meth:`RulesStore.put`) writes the next numbered version file, then switches
``CURRENT`` to it (both with :func:`indexer.durable.write_atomic`: temp file, fsync,
rename, fsync of the directory), then appends its audit line and fsyncs it. ``CURRENT``
is the commit point: a process killed before it leaves the previous version serving (and
an orphan version file that is never served; its number is not reused); one killed after
it but before the audit line leaves a served version whose file still says who made it
and when. Going back to an old version is a new change (``put`` of its document), so
the versions and the log only ever grow.

**Versions and snapshots.** Rules are their own versioned artifact, applied live to
whichever snapshot serves: a rules change needs no rebuild, and rolling back or promoting
a snapshot keeps the rules that serve (a ``hide`` of a recalled product must survive an
index rollback). Every search answer names both its ``index_version`` and its
``rules_version``, so the pair reproduces it; each rules version records the snapshot that
was serving when it was made.

The store knows nothing of what the rules mean: it keeps JSON documents and hands each
to ``parse(document, version)`` (``rerank.merchandising.Rulebook.parse``), which
validates it; a document ``parse`` rejects is never stored. A reader (the search service)
calls :meth:`RulesStore.current` on every request: one ``stat`` of ``CURRENT`` while
nothing changed, so a change made by another process (``shopsearch rules apply``) serves
from the next request on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

from shopsearch.indexer.durable import (
    exclusive_lock,
    fsync_dir,
    remove_stale_temp_files,
    write_atomic,
)
from shopsearch.retrieval.types import ShopsearchError

__all__ = [
    "AUDIT_LOG",
    "MAX_ACTOR_CHARS",
    "RulesError",
    "RulesStore",
    "RulesVersion",
    "check_actor",
]

log = logging.getLogger(__name__)

AUDIT_LOG = "audit.jsonl"
MAX_ACTOR_CHARS = 100
_VERSION_FILE = re.compile(r"^v(\d{6,})\.json$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

T = TypeVar("T")


class RulesError(ShopsearchError):
    """The rules on disk cannot be read (a damaged or missing version file)."""


@dataclass(frozen=True, slots=True)
class RulesVersion(Generic[T]):
    """One stored version: its number (0: nothing was ever stored), what ``parse`` made
    of it, the document as stored, and who made it when (empty for version 0)."""

    version: int
    value: T
    document: dict[str, Any]
    created_at: str = ""
    actor: str = ""
    index_version: str | None = None
    #: The version it replaced, and what changed from it (as ``put``'s ``describe`` said).
    previous: int = 0
    change: dict[str, Any] = field(default_factory=dict)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _sha256(document: Mapping[str, Any]) -> str:
    text = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def check_actor(actor: str) -> str:
    """``actor`` if it can go into the log as is: 1 to :data:`MAX_ACTOR_CHARS` characters,
    no control characters (a newline would forge a log line); else ``ValueError``."""
    if not actor.strip() or len(actor) > MAX_ACTOR_CHARS or _CONTROL.search(actor):
        raise ValueError(
            f"actor must be 1 to {MAX_ACTOR_CHARS} printable characters, got {actor[:120]!r}"
        )
    return actor


class RulesStore(Generic[T]):
    """The rule versions under ``root`` (created on the first :meth:`put`; reading a
    store that does not exist gives version 0, ``parse({}, 0)``)."""

    def __init__(self, root: Path, parse: Callable[[Mapping[str, Any], int], T]) -> None:
        self.root = Path(root)
        self._parse = parse
        self._lock = threading.Lock()
        self._cached: RulesVersion[T] | None = None
        # What CURRENT was (inode, mtime, size) when _cached was read; a new rename
        # gives a new inode, so a change is seen even within one mtime tick.
        self._stat: tuple[int, int, int] | None = None
        self._bad_stat: tuple[int, int, int] | None = None

    @property
    def current_file(self) -> Path:
        return self.root / "CURRENT"

    def _path(self, version: int) -> Path:
        return self.root / f"v{version:06d}.json"

    def _stat_current(self) -> tuple[int, int, int] | None:
        try:
            st = self.current_file.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def current(self) -> RulesVersion[T]:
        """The serving version (cached while ``CURRENT`` is unchanged).

        When ``CURRENT`` names a version that cannot be read or parsed (edited by hand),
        the version read before keeps serving and the error is logged once; with none
        read before, :class:`RulesError` is raised.
        """
        stat = self._stat_current()
        cached = self._cached
        if cached is not None and stat == self._stat:
            return cached
        with self._lock:
            stat = self._stat_current()
            if self._cached is not None and stat in (self._stat, self._bad_stat):
                return self._cached
            try:
                loaded = self._read_current() if stat is not None else self._empty()
            except RulesError:
                if self._cached is None:
                    raise
                self._bad_stat = stat
                log.exception("rules in %s cannot be read; still serving version %d",
                              self.root, self._cached.version)  # fmt: skip
                return self._cached
            self._cached, self._stat = loaded, stat
            return loaded

    def _empty(self) -> RulesVersion[T]:
        return RulesVersion(version=0, value=self._parse({}, 0), document={})

    def _current_number(self) -> int:
        try:
            text = self.current_file.read_text().strip()
        except FileNotFoundError:
            return 0
        if not text.isdigit():
            raise RulesError(f"{self.current_file} holds {text[:40]!r}, not a version number")
        return int(text)

    def _read_current(self) -> RulesVersion[T]:
        number = self._current_number()
        return self.get(number) if number else self._empty()

    def get(self, version: int) -> RulesVersion[T]:
        """Stored version ``version`` (0: the empty set). Raises :class:`RulesError` when
        it does not exist or cannot be read."""
        if version == 0:
            return self._empty()
        path = self._path(version)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            document = data["document"]
            value = self._parse(document, version)
        except FileNotFoundError as exc:
            raise RulesError(f"rules version {version} does not exist in {self.root}") from exc
        except Exception as exc:  # unreadable JSON, a missing key, a document parse rejects
            raise RulesError(f"{path} cannot be read: {exc}") from exc
        return RulesVersion(
            version=version,
            value=value,
            document=document,
            created_at=str(data.get("created_at", "")),
            actor=str(data.get("actor", "")),
            index_version=data.get("index_version"),
            previous=int(data.get("previous", 0)),
            change=dict(data.get("change", {})),
        )

    @contextmanager
    def _write_lock(self) -> Iterator[None]:
        with exclusive_lock(self.root / ".lock"):
            yield

    def _highest(self) -> int:
        numbers = [
            int(m.group(1)) for p in self.root.iterdir() if (m := _VERSION_FILE.match(p.name))
        ]
        return max(numbers, default=0)

    def put(
        self,
        document: Mapping[str, Any],
        *,
        actor: str,
        describe: Callable[[T, T], Mapping[str, Any]] | None = None,
        index_version: str | None = None,
    ) -> RulesVersion[T]:
        """Store ``document`` as the next version and serve it; append the audit line
        (``actor``, the time, the version and the one it replaced, ``change``: what
        ``describe(previous value, new value)`` says changed, computed under the write
        lock so concurrent writers each describe their own step, and ``index_version``:
        the snapshot serving now).

        Raises whatever ``parse`` raises for a bad document (nothing is written),
        ``ValueError`` for a bad ``actor``, ``OSError`` when the directory is not writable.
        """
        check_actor(actor)
        stored_doc: dict[str, Any] = json.loads(json.dumps(document))  # a plain JSON copy
        with self._write_lock():
            remove_stale_temp_files(self.root)
            try:
                previous = self._read_current()
            except RulesError:  # damaged by hand: a new version is how to repair it
                log.exception("the serving rules cannot be read; replacing them")
                previous = RulesVersion(version=0, value=self._parse({}, 0), document={})
            version = max(previous.version, self._highest()) + 1
            value = self._parse(stored_doc, version)  # validate before anything is written
            change = dict(describe(previous.value, value)) if describe is not None else {}
            at = _now()
            record = {
                "version": version,
                "created_at": at,
                "actor": actor,
                "index_version": index_version,
                "previous": previous.version,
                "change": change,
                "document": stored_doc,
            }
            text = json.dumps(record, indent=2, ensure_ascii=False)
            write_atomic(self._path(version), lambda fh: fh.write(text.encode("utf-8")))
            write_atomic(self.current_file, lambda fh: fh.write(f"{version}\n".encode()))
            self._append_audit(
                {
                    "at": at,
                    "actor": actor,
                    "version": version,
                    "previous": previous.version,
                    "index_version": index_version,
                    "sha256": _sha256(stored_doc),
                    "change": change,
                }
            )
        stored = RulesVersion(
            version=version,
            value=value,
            document=stored_doc,
            created_at=at,
            actor=actor,
            index_version=index_version,
            previous=previous.version,
            change=change,
        )
        log.info("rules version %d stored by %s", version, actor)
        return stored

    def _append_audit(self, entry: Mapping[str, Any]) -> None:
        path = self.root / AUDIT_LOG
        new = not path.exists()
        line = json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n"
        with path.open("a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        if new:
            fsync_dir(self.root)

    def history(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest ``limit`` audit entries, newest first (a line torn by a crash
        mid-append is skipped)."""
        path = self.root / AUDIT_LOG
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        entries: list[dict[str, Any]] = []
        for line in reversed(lines):
            if len(entries) >= limit:
                break
            try:
                entries.append(json.loads(line))
            except ValueError:
                log.warning("skipping a torn line of %s", path)
        return entries
