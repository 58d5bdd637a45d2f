"""Click-through per snapshot version, from the ``query_id`` that click events carry.

Every search answer has a ``query_id``; a shop's front end sends it back on the click
event it leads to (``POST /v1/events``, field ``query_id``). :class:`ClickThrough`
remembers which snapshot version answered each recent ``query_id`` of this process and,
when a click naming one is committed, counts that search as clicked for that version.
Click-through rate per version = clicked searches / searches, both by ``snapshot``.

Limits, by design: only the last :data:`REMEMBERED` searches are remembered (a click on
an older one is not attributed), and only this process's searches (behind a load
balancer without sticky sessions a click lands on the replica that served its search
1/N of the time: the ratio is then low by that factor for every version alike, so
versions stay comparable). A search counts as clicked once, however many clicks or
resent events name it, so the rate stays within [0, 1].
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

__all__ = ["REMEMBERED", "ClickThrough", "ClickThroughCollector", "VersionClicks"]

#: Recent searches whose snapshot version is remembered (about 150 bytes each).
REMEMBERED = 50_000
#: Snapshot versions that keep series (see api/quality_monitor.py's VERSIONS_KEPT).
VERSIONS_KEPT = 8


@dataclass(slots=True)
class VersionClicks:
    """Searches one snapshot version answered, and how many of them got a click."""

    searches: int = 0
    clicked: int = 0


class ClickThrough:
    """Searches and clicked searches by snapshot version (thread-safe; O(1) a call)."""

    def __init__(self, *, remembered: int = REMEMBERED, versions_kept: int = VERSIONS_KEPT) -> None:
        if remembered < 1 or versions_kept < 1:
            raise ValueError("remembered and versions_kept must be >= 1")
        self._remembered = remembered
        self._versions_kept = versions_kept
        self._lock = threading.Lock()
        # query_id -> (version, clicked already); oldest first, evicted past `remembered`.
        self._queries: OrderedDict[str, tuple[str, bool]] = OrderedDict()
        self._versions: OrderedDict[str, VersionClicks] = OrderedDict()

    def searched(self, query_id: str, version: str) -> None:
        """Count a search answered by ``version`` (on the request path: a dict insert)."""
        with self._lock:
            self._version(version).searches += 1
            self._queries[query_id] = (version, False)
            if len(self._queries) > self._remembered:
                self._queries.popitem(last=False)

    def clicked(self, query_ids: Iterable[str]) -> int:
        """Count the remembered searches among ``query_ids`` (of committed click events)
        not counted before as clicked; returns how many were newly counted."""
        newly = 0
        with self._lock:
            for query_id in query_ids:
                seen = self._queries.get(query_id)
                if seen is None or seen[1]:
                    continue
                version = seen[0]
                self._queries[query_id] = (version, True)
                stats = self._versions.get(version)
                if stats is not None:  # else: a version already dropped from the series
                    stats.clicked += 1
                    newly += 1
        return newly

    def _version(self, version: str) -> VersionClicks:
        stats = self._versions.get(version)
        if stats is not None:
            self._versions.move_to_end(version)  # the least recently serving goes first
            return stats
        stats = self._versions[version] = VersionClicks()
        while len(self._versions) > self._versions_kept:
            self._versions.popitem(last=False)
        return stats

    def stats(self) -> dict[str, VersionClicks]:
        """A copy of the counts, by version."""
        with self._lock:
            return {v: VersionClicks(s.searches, s.clicked) for v, s in self._versions.items()}


class ClickThroughCollector(Collector):
    """``shopsearch_snapshot_searches_total`` and
    ``shopsearch_snapshot_clicked_searches_total`` by ``snapshot``, read at each scrape."""

    def __init__(self, tracker: Callable[[], ClickThrough]) -> None:
        self._tracker = tracker

    def collect(self) -> Iterator[CounterMetricFamily]:
        searches = CounterMetricFamily(
            "shopsearch_snapshot_searches",
            "Searches answered, by the snapshot version that answered them.",
            labels=["snapshot"],
        )
        clicked = CounterMetricFamily(
            "shopsearch_snapshot_clicked_searches",
            "Searches of this process that a committed click event named by query_id "
            "(each counted once), by the snapshot version that answered them.",
            labels=["snapshot"],
        )
        for version, stats in self._tracker().stats().items():
            searches.add_metric([version], stats.searches)
            clicked.add_metric([version], stats.clicked)
        yield from (searches, clicked)
