"""Suggestions of the serving snapshot: when the indexes are built, past queries counted,
verified and saved. The candidates and their ranking are in :mod:`retrieval.suggest`.

One worker thread per app does everything slow, so neither ``/v1/suggest`` nor
``/v1/search`` waits for it:

- **Catalog index, per snapshot.** The worker builds a
  :class:`~retrieval.suggest.SuggestIndex` from the serving snapshot's live products when
  the app starts (after the snapshot loads) and whenever the serving ``(version,
  generation)`` changes (it looks every second, and at once when a suggestion finds it
  missing). 1.3 to 4 s on Home Depot's 54,667 products, in the background: snapshot
  loading is not slowed. Until it is ready, a request answers from what is cheap: the
  previous generation's index of the same snapshot (an update changed a few products;
  ``X-Suggest-Index: stale``), or nothing for a snapshot not indexed yet (``building``).
- **Past queries.** ``/v1/search`` hands each first-page answer with at least one hit to
  :meth:`Suggestions.record`: a put on a bounded queue (a full queue drops the count),
  under a microsecond. The worker counts them in a
  :class:`~retrieval.suggest.PopularQueries` (the query as searched, i.e. after
  spelling and unit rewriting; eligible once ``suggest_min_searchers`` distinct
  searchers sent it), and every ``suggest_refresh_s`` re-verifies the eligible ones on
  the serving snapshot (:func:`~retrieval.suggest.verify_queries`, answers cached per
  snapshot) into the :class:`~retrieval.suggest.PopularIndex` requests read.

Why the counts are kept in memory and saved to a JSON file rather than in the events
database: the events store is open only with ``SHOPSEARCH_USER_KEY`` (suggestions must
not depend on it), its tables are the shop's per-shopper record (erased by user hash,
migrations append-only), while these are anonymous aggregates that lose little when a
crash drops the last ``suggest_refresh_s`` of counts. ``suggest_queries_file`` unset
(the default): memory only, counts start afresh at each restart.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from shopsearch.api.schemas import SearchRequest, SearchResponse
from shopsearch.api.service import SearchService
from shopsearch.api.settings import Settings
from shopsearch.api.snapshot_prep import REWRITER_KEY
from shopsearch.indexer.snapshot_load import LoadedSnapshot
from shopsearch.retrieval.popular_queries import (
    PopularIndex,
    PopularQueries,
    merge,
    verify_queries,
)
from shopsearch.retrieval.query_rewrite import QueryRewriter
from shopsearch.retrieval.suggest import SuggestIndex, Suggestion

__all__ = ["IndexState", "SuggestAnswer", "Suggestions"]

log = logging.getLogger(__name__)

#: How the answer's catalog index relates to the serving snapshot (``X-Suggest-Index``).
IndexState = Literal["ready", "stale", "building"]
#: Searches waiting to be counted at most; more are dropped (counts are best effort).
MAX_PENDING = 10_000
#: Past queries verified per refresh at most (the most searched).
MAX_VERIFIED = 5_000
#: Rewritten suggestion texts remembered per snapshot.
MAX_REWRITES = 20_000
#: The worker looks for a new serving snapshot at least this often (seconds).
POLL_S = 1.0
_FILE_FORMAT = "shopsearch-popular-queries/1"


@dataclass(slots=True)
class _Built:
    """The suggestion indexes of one ``(version, generation)`` of a snapshot."""

    version: str
    generation: int
    index: SuggestIndex
    #: The service's rewriting of a text on this snapshot (None: it rewrites nothing).
    searched: Callable[[str], str] | None
    popular: PopularIndex = field(default_factory=PopularIndex)
    popular_from: int = -1  # PopularQueries.version the popular index was made from
    checked: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SuggestAnswer:
    suggestions: list[Suggestion]
    index: IndexState


class Suggestions:
    """Suggestions over whatever snapshot ``service()`` serves (module docstring).

    Thread-safe: :meth:`suggest` and :meth:`record` run on request threads, everything
    else on the worker. :meth:`start` and :meth:`close` bracket the app's life (the
    suggest router's lifespan); used without them, the worker starts on first use.
    """

    def __init__(self, settings: Settings, service: Callable[[], SearchService | None]) -> None:
        self.settings = settings
        self._service = service
        self.popular = (
            PopularQueries(
                min_count=settings.suggest_min_searchers,
                max_entries=settings.suggest_max_queries,
            )
            if settings.suggest_max_queries > 0
            else None
        )
        self._file = settings.suggest_queries_file
        if self.popular is not None and self._file is not None:
            self._load(self.popular, self._file)
        self._saved = self.popular.version if self.popular is not None else 0
        self._pending: queue.Queue[tuple[str, str | None] | None] = queue.Queue(MAX_PENDING)
        self._built: _Built | None = None
        self._ready = threading.Condition()
        self._stop = threading.Event()
        self._kicked = threading.Event()
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- request threads --------------------------------------------------------------

    def record(self, request: SearchRequest, response: SearchResponse) -> None:
        """Count ``response``'s query if it found something (first pages only: paging
        through one search is one search). Never blocks."""
        if self.popular is None or response.total < 1 or request.page != 1:
            return
        text = response.rewrite.searched_q if response.rewrite is not None else response.q
        try:
            self._pending.put_nowait((text, request.user or request.session))
        except queue.Full:
            return
        self._ensure_worker()

    def suggest(self, snap: LoadedSnapshot, typed: str, size: int) -> SuggestAnswer:
        """Up to ``size`` suggestions for ``typed`` on ``snap`` (the request's pinned
        snapshot): past queries and catalog phrases, merged (:func:`retrieval.suggest.merge`)."""
        built = self._built
        if built is None or built.version != snap.version:
            self._wake()
            return SuggestAnswer([], "building")
        state: IndexState = "ready" if built.generation == snap.generation else "stale"
        if state == "stale":
            self._wake()
        rewriter: QueryRewriter | None = snap.extra.get(REWRITER_KEY)
        correct = rewriter.spelling.suggest if rewriter is not None else None
        catalog = built.index.suggest(typed, size, correct=correct, searched=built.searched)
        popular = built.popular.suggest(typed, size)
        return SuggestAnswer(merge(popular, catalog, size), state)

    def _searched(self, snap: LoadedSnapshot) -> Callable[[str], str] | None:
        """The text the service searches for a query on ``snap`` (after rewriting),
        memoised: the same few thousand suggestions come back all day."""
        svc = self._service()
        if svc is None or REWRITER_KEY not in snap.extra:
            return None

        @functools.lru_cache(maxsize=MAX_REWRITES)
        def searched(text: str) -> str:
            rewrite = svc.rewrite_query(text, snap)
            return text if rewrite is None else rewrite.text

        return searched

    def wait_ready(self, timeout: float) -> bool:
        """Wait until the serving snapshot's index is built; False after ``timeout`` s."""
        self._ensure_worker()
        deadline = time.monotonic() + timeout
        with self._ready:
            while not self._is_current():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._wake()
                self._ready.wait(min(left, 0.1))
        return True

    @property
    def built_for(self) -> tuple[str, int] | None:
        """``(version, generation)`` of the snapshot the serving suggestion index was
        built from (None before the first build)."""
        built = self._built
        return None if built is None else (built.version, built.generation)

    def _is_current(self) -> bool:
        svc = self._service()
        built = self._built
        if svc is None or not svc.ready or built is None:
            return False
        snap = svc.snapshot
        return (built.version, built.generation) == (snap.version, snap.generation)

    def _wake(self) -> None:
        self._ensure_worker()
        if not self._kicked.is_set():  # one wake-up in the queue is enough
            self._kick()

    def _kick(self) -> None:
        self._kicked.set()
        with contextlib.suppress(queue.Full):  # full: the worker has work anyway
            self._pending.put_nowait(None)

    # -- life cycle ----------------------------------------------------------------

    def start(self) -> None:
        """Start the worker (it builds the serving snapshot's index at once)."""
        self._stop.clear()
        self._ensure_worker()

    def _ensure_worker(self) -> None:
        if (self._worker is not None and self._worker.is_alive()) or self._stop.is_set():
            return
        with self._lock:
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._run, name="suggestions", daemon=True)
                self._worker.start()

    def close(self) -> None:
        """Stop the worker and save the counts (when a file is set)."""
        self._stop.set()
        self._kick()
        worker = self._worker
        if worker is not None:
            worker.join(timeout=10)
        self._save()

    # -- the worker ----------------------------------------------------------------

    def _run(self) -> None:
        last_refresh = 0.0
        while not self._stop.is_set():
            try:
                item = self._pending.get(timeout=POLL_S)
                while True:  # count everything waiting, then do the rest once
                    if item is not None and self.popular is not None:
                        self.popular.record(*item)
                    item = self._pending.get_nowait()
            except queue.Empty:
                pass
            self._kicked.clear()
            if self._stop.is_set():
                break
            try:
                self._build_if_needed()
                if time.monotonic() - last_refresh >= self.settings.suggest_refresh_s:
                    last_refresh = time.monotonic()
                    self._refresh_popular()
                    self._save()
            except Exception:  # keep serving what was built; say why in the log
                log.exception("suggestions: could not update the indexes")
                self._stop.wait(POLL_S)

    def _build_if_needed(self) -> None:
        svc = self._service()
        if svc is None or not svc.ready or self._is_current():
            return
        snap = svc.snapshot
        t = time.perf_counter()
        table = snap.table
        index = SuggestIndex.build(
            (table.products[row] for row in table.row_of.values()),
            max_phrases=self.settings.suggest_max_phrases,
        )
        built = _Built(snap.version, snap.generation, index, self._searched(snap))
        self._verify(built)
        with self._ready:
            self._built = built
            self._ready.notify_all()
        log.info(
            "suggestions: %d phrases from snapshot %s generation %d (%.0f ms)",
            len(index),
            snap.version,
            snap.generation,
            (time.perf_counter() - t) * 1000,
        )

    def _refresh_popular(self) -> None:
        built = self._built
        popular = self.popular
        if built is not None and popular is not None and built.popular_from != popular.version:
            self._verify(built)

    def _verify(self, built: _Built) -> None:
        if self.popular is None:
            return
        version = self.popular.version
        eligible = self.popular.eligible(MAX_VERIFIED)
        built.popular = verify_queries(eligible, built.index, built.checked, built.searched)
        built.popular_from = version

    # -- the file ------------------------------------------------------------------

    @staticmethod
    def _load(popular: PopularQueries, path: Path) -> None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("suggestions: cannot read %s (%s); counting past queries afresh", path, exc)
            return
        if not isinstance(data, dict) or data.get("format") != _FILE_FORMAT:
            log.warning("suggestions: %s is not a %s file; ignored", path, _FILE_FORMAT)
            return
        queries = data.get("queries")
        if isinstance(queries, dict):
            popular.load(queries)

    def _save(self) -> None:
        """Write the eligible queries (text and count) atomically when they changed."""
        popular, path = self.popular, self._file
        if popular is None or path is None or popular.version == self._saved:
            return
        version = popular.version
        body = json.dumps({"format": _FILE_FORMAT, "queries": popular.dump()}, indent=0)
        tmp = path.with_name(path.name + ".tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(body, encoding="utf-8")
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("suggestions: cannot save past queries to %s: %s", path, exc)
            return
        self._saved = version
