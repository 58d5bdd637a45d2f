"""Recommendations served over the current snapshot: "similar / bought together" next to
a product and "for you" for a shopper.

Each answer walks a fixed chain of sources and says which ones it used (``sources``,
``fallbacks``), so it is never empty while the catalog (after filters) is not:

- similar: co-purchase (the trained recommender's item-to-item model) -> text neighbours
  (the snapshot's item-tower vectors: a product nobody bought yet is covered, cold start)
  -> popular;
- for you: the learned ranker over the shopper's history (when the trained recommender
  has one) -> the trained blend (repurchase, co-purchase neighbours, popularity) ->
  popular -> catalog order.

Model answers are restricted to products of the serving snapshot and to the request's
filters (the same filters as search); a model's item that left the catalog is dropped.
Without a trained recommender (``shopsearch train recommender``) the chains start at
text neighbours and popularity (counted from the event store).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from shopsearch.api.settings import Settings
from shopsearch.indexer.events.store import EventStore
from shopsearch.indexer.snapshot_load import LoadedSnapshot
from shopsearch.indexer.training.recommender import load_recommender
from shopsearch.retrieval.filters import Filters
from shopsearch.retrieval.model_registry import SpecWatch
from shopsearch.retrieval.recommend.base import HistoryItem, Scored
from shopsearch.retrieval.recommend.bundle import RecommenderBundle

__all__ = ["FOR_YOU_STRATEGIES", "SIMILAR_STRATEGIES", "Recommendation", "Recommendations"]

log = logging.getLogger(__name__)

SimilarStrategy = Literal["auto", "co-purchase", "text", "popular"]
ForYouStrategy = Literal["auto", "ranker", "blend", "repurchase", "popular"]
SIMILAR_STRATEGIES: tuple[str, ...] = ("auto", "co-purchase", "text", "popular")
FOR_YOU_STRATEGIES: tuple[str, ...] = ("auto", "ranker", "blend", "repurchase", "popular")
#: How many more candidates than asked a source returns, so filters leave enough.
_OVERFETCH = 5
_MAX_FETCH = 2000


@dataclass
class Recommendation:
    """Rows of the snapshot, best first, with their score and the source of each."""

    rows: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    fallbacks: list[str] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)

    def add(self, source: str, picks: Sequence[tuple[int, float]], size: int) -> None:
        seen = set(self.rows)
        for row, score in picks:
            if len(self.rows) >= size:
                break
            if row not in seen:
                seen.add(row)
                self.rows.append(row)
                self.scores.append(score)
                self.sources.append(source)

    def used(self, first: str) -> None:
        """Record as fallbacks the sources used other than the chain's ``first``."""
        self.fallbacks = [s for s in dict.fromkeys(self.sources) if s != first]


class Recommendations:
    """Loads the trained recommender (lazily, once per resolved version) and answers."""

    def __init__(self, settings: Settings, store_provider: Callable[[], EventStore | None]) -> None:
        self.settings = settings
        self._store = store_provider
        self._lock = threading.Lock()
        self._bundle: RecommenderBundle | None = None
        self._bundle_path: Path | None = None
        self._popular_rows: dict[str, list[int]] = {}
        self._warned = False
        self._watch = SpecWatch(
            settings.recommender, settings.models_dir, settings.registry_recheck_s
        )

    def bundle(self) -> RecommenderBundle | None:
        """The configured recommender, or None when none is trained (logged once).

        The registry is looked up at most once per ``registry_recheck_s``
        (:class:`SpecWatch`); a newly trained ``recommender/latest`` is picked up at the
        next look, and loaded once per resolved version."""
        path = self._watch.current()
        with self._lock:
            if path is None:
                if not self._warned:
                    log.warning(
                        "%s; until then recommendations use text neighbours and popularity",
                        self._watch.error,
                    )
                    self._warned = True
                self._bundle = self._bundle_path = None
                return None
            if self._bundle is None or self._bundle_path != path:
                self._bundle = load_recommender(path)
                self._bundle_path = path
                log.info("recommender %s loaded", self._bundle.version)
            return self._bundle

    def versions(self) -> dict[str, str | None]:
        bundle = self._bundle
        return {"recommender": bundle.version if bundle is not None else None}

    # ---- sources -------------------------------------------------------------------------

    @staticmethod
    def _keep(
        snap: LoadedSnapshot, scored: Sequence[Scored], filters: Filters, exclude: set[int]
    ) -> list[tuple[int, float]]:
        row_of = snap.table.row_of
        pairs = [(row_of[s.item], s.score) for s in scored if s.item in row_of]
        pairs = [(r, s) for r, s in pairs if r not in exclude]
        if not pairs or filters.is_empty():
            return pairs
        rows = np.fromiter((r for r, _ in pairs), np.int64, len(pairs))
        keep = snap.table.mask(filters, rows)
        return [p for p, ok in zip(pairs, keep.tolist(), strict=True) if ok]

    def _text_neighbours(
        self, snap: LoadedSnapshot, row: int, k: int, filters: Filters, exclude: set[int]
    ) -> list[tuple[int, float]]:
        vectors = snap.vectors.vectors  # type: ignore[attr-defined]
        scores, rows = snap.vectors.search(np.asarray(vectors[row : row + 1]), k)
        keep = rows[0] >= 0
        ids = [snap.table.products[r].id for r in rows[0][keep].tolist()]
        scored = [Scored(i, float(s)) for i, s in zip(ids, scores[0][keep].tolist(), strict=True)]
        return self._keep(snap, scored, filters, exclude | {row})

    def _popular(
        self, snap: LoadedSnapshot, k: int, filters: Filters, exclude: set[int]
    ) -> list[tuple[int, float]]:
        bundle = self.bundle()
        if bundle is not None:
            scored = bundle.popular.for_history([], min(_MAX_FETCH, k), frozenset())
        else:
            scored = self._store_popular(snap, min(_MAX_FETCH, k))
        picks = self._keep(snap, scored, filters, exclude)
        if len(picks) < k:  # nobody bought anything yet: the catalog's own order
            n = len(snap.table.products)
            more = [Scored(snap.table.products[r].id, 0.0) for r in range(min(n, _MAX_FETCH))]
            picks += self._keep(snap, more, filters, exclude | {r for r, _ in picks})
        return picks

    def _store_popular(self, snap: LoadedSnapshot, k: int) -> list[Scored]:
        store = self._store()
        if store is None:
            return []
        cached = self._popular_rows.get(snap.version)
        if cached is None:
            frame = store.interactions()
            counts = Counter(frame.loc[frame["kind"] == "purchase", "item"].tolist())
            row_of = snap.table.row_of
            cached = [row_of[i] for i, _ in counts.most_common() if i in row_of]
            self._popular_rows = {snap.version: cached}
        return [Scored(snap.table.products[r].id, 1.0 / (1 + i)) for i, r in enumerate(cached[:k])]

    # ---- answers -------------------------------------------------------------------------

    def similar(
        self,
        snap: LoadedSnapshot,
        product_id: str,
        size: int,
        filters: Filters,
        strategy: str = "auto",
    ) -> Recommendation:
        """Products to show next to ``product_id`` (which must be in the snapshot)."""
        row = snap.table.row_of[product_id]
        k = min(_MAX_FETCH, size * _OVERFETCH + 1)
        out = Recommendation()
        bundle = self.bundle()
        chain = ["co-purchase", "text", "popular"] if strategy == "auto" else [strategy]
        for source in chain:
            t = time.perf_counter()
            if source == "co-purchase" and bundle is not None and _bought(bundle, product_id):
                scored = bundle.item2item.similar(product_id, k, frozenset())
                out.add(source, self._keep(snap, scored, filters, {row}), size)
            elif source == "text":
                out.add(source, self._text_neighbours(snap, row, k, filters, set()), size)
            elif source == "popular":
                out.add(source, self._popular(snap, k, filters, {row}), size)
            out.timings_ms[source] = round((time.perf_counter() - t) * 1000, 3)
            if len(out.rows) >= size:
                break
        out.used(chain[0])
        return out

    def for_you(
        self,
        snap: LoadedSnapshot,
        history: Sequence[HistoryItem],
        size: int,
        filters: Filters,
        *,
        exclude_bought: bool = False,
        strategy: str = "auto",
    ) -> Recommendation:
        """Products for a shopper with ``history`` (newest first; may be empty)."""
        bought = {h.item for h in history if h.kind == "purchase"}
        row_of = snap.table.row_of
        exclude_rows = {row_of[i] for i in bought if i in row_of} if exclude_bought else set()
        exclude = frozenset(bought) if exclude_bought else frozenset()
        k = min(_MAX_FETCH, size * _OVERFETCH + len(exclude))
        out = Recommendation()
        bundle = self.bundle()
        if strategy != "auto":
            chain = [strategy]
        elif bundle is not None and bundle.ranked is not None:
            chain = ["ranker", "blend", "popular"]
        else:
            chain = ["blend", "popular"]
        for source in chain:
            t = time.perf_counter()
            if source == "ranker" and bundle is not None and bundle.ranked and history:
                scored = bundle.ranked.for_history(history, k, exclude)
                out.add(source, self._keep(snap, scored, filters, exclude_rows), size)
            elif source == "blend" and bundle is not None and history:
                scored = bundle.blend.for_history(history, k, exclude)
                out.add(source, self._keep(snap, scored, filters, exclude_rows), size)
            elif source == "repurchase" and bundle is not None and history:
                scored = bundle.repurchase.for_history(history, k, exclude)
                out.add(source, self._keep(snap, scored, filters, exclude_rows), size)
            elif source == "popular":
                out.add(source, self._popular(snap, k, filters, exclude_rows), size)
            out.timings_ms[source] = round((time.perf_counter() - t) * 1000, 3)
            if len(out.rows) >= size:
                break
        out.used(chain[0])
        return out


def _bought(bundle: RecommenderBundle, item: str) -> bool:
    """Whether anyone bought ``item`` in the recommender's data (else: cold start)."""
    i = bundle.vocab.index.get(item)
    return i is not None and bool(bundle.popularity[i] > 0)
