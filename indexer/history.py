"""Promotion history: which snapshots served, in order, so that a rollback goes to the
version that served before -- never to a snapshot that was built but never promoted.

``<index-dir>/HISTORY`` holds the *served stack*, oldest first, one JSON object a line
(``{"version": ..., "at": ...}``): a promotion pushes its version, a rollback pops back
to the version it restores. It is replaced as a whole, atomically (temp file, fsync,
rename), and always *after* ``CURRENT`` switched, so a process killed between the two
leaves a HISTORY that lags ``CURRENT`` by one switch. :func:`served_stack` reconciles
that lag on every read: ``CURRENT`` is the truth, so a stack that does not end with it is
cut back to its last occurrence of ``CURRENT`` (a rollback that did not get to write)
or has it pushed (a promotion that did not get to write). Nothing that never served
(``CURRENT`` never named it) ever enters the stack.

An index directory from before HISTORY existed has none: every snapshot older than
``CURRENT`` then counts as served (the old rule), until the first promotion writes it.

The functions here are pure over version lists, except :func:`read_history` and
:func:`write_history`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shopsearch.indexer.durable import write_atomic

__all__ = [
    "HISTORY",
    "HISTORY_LIMIT",
    "now",
    "prune_plan",
    "read_history",
    "rollback_candidates",
    "served_stack",
    "write_history",
]

log = logging.getLogger(__name__)

HISTORY = "HISTORY"
#: Entries kept (the oldest are dropped; they name snapshots pruned long ago).
HISTORY_LIMIT = 200

Entry = dict[str, Any]


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def read_history(root: Path) -> list[Entry] | None:
    """The entries of ``root/HISTORY``, oldest first; None when there is none (an index
    directory from before HISTORY, or before the first promotion). An unreadable file is
    logged and treated as absent (the old rule then applies; the next promotion rewrites
    it)."""
    path = Path(root) / HISTORY
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("%s cannot be read (%s); treating every older snapshot as served", path, exc)
        return None
    entries: list[Entry] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            if not isinstance(entry, dict) or not isinstance(entry.get("version"), str):
                raise ValueError("not an object with a string 'version'")
        except ValueError as exc:
            log.warning(
                "%s line %d is not a history entry (%s); treating every older snapshot as served",
                path,
                number,
                exc,
            )
            return None
        entries.append(entry)
    return entries


def write_history(root: Path, entries: Sequence[Entry]) -> None:
    """Replace ``root/HISTORY`` atomically with ``entries`` (the newest
    :data:`HISTORY_LIMIT`)."""
    text = "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries[-HISTORY_LIMIT:])
    write_atomic(Path(root) / HISTORY, lambda fh: fh.write(text.encode("utf-8")))


def served_stack(
    entries: Sequence[Entry] | None, current: str | None, versions: Sequence[str]
) -> list[Entry]:
    """The served stack reconciled with ``CURRENT`` (see the module docstring): its last
    entry is ``current`` (empty when there is no ``current``). ``versions`` (the snapshots
    on disk) seed the stack of a directory without HISTORY."""
    if current is None:
        return []
    if entries is None:
        seeded = [{"version": v, "at": ""} for v in sorted(versions) if v < current]
        return [*seeded, {"version": current, "at": ""}]
    stack = list(entries)
    names = [e["version"] for e in stack]
    if current in names:
        last = len(names) - 1 - names[::-1].index(current)
        return stack[: last + 1]
    return [*stack, {"version": current, "at": now(), "recovered": True}]


def rollback_candidates(stack: Sequence[Entry]) -> list[str]:
    """Versions a rollback may go to, the most recently served first (each once, never
    the serving one, the stack's last)."""
    if not stack:
        return []
    serving = stack[-1]["version"]
    out: list[str] = []
    for entry in reversed(stack[:-1]):
        version = entry["version"]
        if version != serving and version not in out:
            out.append(version)
    return out


def prune_plan(
    versions: Sequence[str], stack: Sequence[Entry], current: str | None, keep: int
) -> list[str]:
    """The snapshots (of ``versions``, on disk) that pruning to ``keep`` deletes, oldest
    first.

    * ``CURRENT`` is never deleted; with ``keep >= 2`` neither is the rollback target
      (the most recently served snapshot still on disk before ``CURRENT``). ``keep == 1``
      asks for no rollback.
    * A snapshot that never served and is older than the newest served one (a build
      killed before its promotion, a ``--no-promote`` build superseded by a newer
      promotion, a version rolled back from and then superseded) is always deleted and
      takes no ``--keep`` slot.
    * The other snapshots (served ones, and never-served ones newer than every served
      one: a ``--no-promote`` build waiting for promotion, the version just rolled back
      from) keep the newest ``keep`` by version, besides the protected ones above.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    on_disk = sorted(versions)
    served = {e["version"] for e in stack} & set(on_disk)
    newest_served = max(served, default=None)
    stale = {
        v
        for v in on_disk
        if v not in served and newest_served is not None and v < newest_served and v != current
    }
    ranked = [v for v in on_disk if v not in stale]
    kept = set(ranked[-keep:])
    if current is not None:
        kept.add(current)
    if keep >= 2:
        target = next((v for v in rollback_candidates(stack) if v in set(on_disk)), None)
        if target is not None:
            kept.add(target)
    return [v for v in on_disk if v not in kept]
