"""Popular past queries as suggestions: counted, bounded, verified per snapshot.

:class:`PopularQueries` counts past searches that returned results (the text and counts
only, never who searched) and :class:`PopularIndex` serves those that still match on a
snapshot (:func:`verify_queries`); :func:`merge` puts them before the catalog's own
phrases (:mod:`retrieval.suggest`). Pure: no I/O, no threads of its own.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import secrets
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

from shopsearch.retrieval.suggest import (
    MAX_QUERY_CHARS,
    MAX_QUERY_WORDS,
    PREFIX_END,
    SuggestIndex,
    Suggestion,
    normalize,
    tokens,
    top_by_count,
)

__all__ = ["PopularIndex", "PopularQueries", "merge", "verify_queries"]


class _Counted:
    """One past query: searches, distinct searchers, the searchers' hashes until it is
    eligible (then None), and when it was last searched (a counter, not a time)."""

    __slots__ = ("count", "distinct", "seen", "tick")

    def __init__(
        self, seen: set[bytes] | None, count: int = 0, distinct: int = 0, tick: int = 0
    ) -> None:
        self.seen = seen
        self.count = count
        self.distinct = distinct
        self.tick = tick


class PopularQueries:
    """Counts of past searches that returned results: normalized text and counts only.

    A query becomes *eligible* (may be suggested to anyone) once ``min_count`` distinct
    searchers have sent it, so one shopper's odd query, however often they repeat it,
    is never shown to others. Telling searchers apart needs something of theirs; it is
    kept as small as it can be: a 64-bit keyed hash of the user or session under a key
    drawn at random per process (never stored, never logged), held only while the query
    is not yet eligible and dropped as soon as it is; a search without user or session
    counts as a searcher of its own. Nothing here can be tied to a shopper after a
    restart, and :meth:`dump` writes eligible queries' text and count only.

    Bounded: at most ``max_entries`` queries; past that the tenth with the fewest
    searches (not-yet-eligible first, then the least recent) is dropped. Thread-safe.
    """

    def __init__(self, *, min_count: int = 3, max_entries: int = 10_000) -> None:
        if min_count < 1 or max_entries < 1:
            raise ValueError(f"min_count and max_entries must be >= 1: {min_count}, {max_entries}")
        self.min_count = min_count
        self.max_entries = max_entries
        self._key = secrets.token_bytes(16)
        self._lock = threading.Lock()
        self._entries: dict[str, _Counted] = {}
        self._tick = 0
        #: Bumped by every change: readers rebuild only when it moved.
        self.version = 0

    def __len__(self) -> int:
        return len(self._entries)

    def record(self, query: str, searcher: str | None = None) -> None:
        """Count one search of ``query`` (any form: it is normalized here) that returned
        results. Queries without words, or longer than a suggestion, are ignored."""
        text = normalize(query)
        if not text or len(text) > MAX_QUERY_CHARS or text.count(" ") >= MAX_QUERY_WORDS:
            return
        tag = (
            None
            if searcher is None
            else hashlib.blake2b(searcher.encode(), key=self._key, digest_size=8).digest()
        )
        with self._lock:
            self._tick += 1
            self.version += 1
            entry = self._entries.get(text)
            if entry is None:
                entry = self._entries[text] = _Counted(set())
                if len(self._entries) > self.max_entries:
                    self._evict()
            entry.count += 1
            entry.tick = self._tick
            if entry.seen is not None and (tag is None or tag not in entry.seen):
                if tag is not None:
                    entry.seen.add(tag)
                entry.distinct += 1
                if entry.distinct >= self.min_count:
                    entry.seen = None  # eligible: who sent it is no longer needed

    def _evict(self) -> None:
        drop = max(1, len(self._entries) // 10)
        victims = heapq.nsmallest(
            drop,
            self._entries.items(),
            key=lambda item: (item[1].seen is None, item[1].count, item[1].tick),
        )
        for text, _ in victims:
            del self._entries[text]

    def eligible(self, limit: int | None = None) -> list[tuple[str, int]]:
        """``(text, count)`` of the eligible queries, most searched first."""
        with self._lock:
            items = [(t, e.count) for t, e in self._entries.items() if e.seen is None]
        items.sort(key=lambda item: (-item[1], item[0]))
        return items if limit is None else items[:limit]

    def dump(self) -> dict[str, int]:
        """The eligible queries and their counts (what may be persisted)."""
        return dict(self.eligible())

    def load(self, counts: Mapping[str, int]) -> None:
        """Add persisted :meth:`dump` output: each query eligible with its count."""
        with self._lock:
            for query, count in counts.items():
                text = normalize(str(query))
                if text and isinstance(count, int) and count > 0:
                    self._tick += 1
                    self._entries[text] = _Counted(None, count, self.min_count, self._tick)
            while len(self._entries) > self.max_entries:
                self._evict()
            self.version += 1


class PopularIndex:
    """Eligible past queries verified on one snapshot, sorted for prefix lookup."""

    def __init__(self, queries: Iterable[tuple[str, int, int]] = ()) -> None:
        rows = sorted(queries)
        self.texts = [text for text, _, _ in rows]
        self.counts = np.array([count for _, count, _ in rows], dtype=np.int32)
        self.products = np.array([products for _, _, products in rows], dtype=np.int32)

    def __len__(self) -> int:
        return len(self.texts)

    def suggest(self, typed: str, size: int) -> list[Suggestion]:
        """Up to ``size`` past queries starting with ``typed`` (normalized; a trailing
        space finishes the last word), most searched first."""
        words = tokens(typed)
        if not words or not self.texts:
            return []
        key = " ".join(words) + (" " if typed[-1:].isspace() else "")
        lo = bisect.bisect_left(self.texts, key)
        hi = bisect.bisect_left(self.texts, key + PREFIX_END, lo)
        return [
            Suggestion(self.texts[i], "query", int(self.products[i]))
            for i in top_by_count(self.counts, lo, hi, size)
        ]


def verify_queries(
    queries: Iterable[tuple[str, int]],
    index: SuggestIndex,
    checked: dict[str, int] | None = None,
    searched: Callable[[str], str] | None = None,
) -> PopularIndex:
    """The past ``queries`` (text, count) that still match on ``index``'s snapshot: those
    whose every word is in one live product's title, brand or category (``products`` =
    how many such products). That product matches the query under any rule that asks for
    some or all of its words, so a query that matched when searched but whose products
    are gone is never suggested. A past query that matched only through descriptions or
    the dense leg is left out too (a few good queries lost, never a suggestion that
    finds nothing). ``searched`` is the service's query rewriting (the words checked are
    those it will search). ``checked`` (text -> products) caches one snapshot's answers.
    """
    checked = {} if checked is None else checked
    kept: list[tuple[str, int, int]] = []
    for text, count in queries:
        products = checked.get(text)
        if products is None:
            query = text if searched is None else searched(text)
            products = checked[text] = index.count_all(query)
        if products > 0:
            kept.append((text, count, products))
    return PopularIndex(kept)


def merge(
    popular: Sequence[Suggestion], catalog: Sequence[Suggestion], size: int
) -> list[Suggestion]:
    """One list of ``size``: past queries take up to half the places (rounded up), the
    catalog the rest, then whichever has more fills in. A text is listed once, as a
    past query when it is both (with the larger ``products``)."""
    share = (size + 1) // 2
    past = {s.text: s.products for s in popular}
    in_catalog = {s.text: s.products for s in catalog}
    out: dict[str, Suggestion] = {}
    for s in (*popular[:share], *catalog, *popular[share:]):
        if s.text in out:
            continue
        if s.text in past:
            s = Suggestion(s.text, "query", max(past[s.text], in_catalog.get(s.text, 0)))
        out[s.text] = s
        if len(out) == size:
            break
    return list(out.values())
