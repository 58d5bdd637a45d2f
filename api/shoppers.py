"""What the serving process knows about shoppers: their recent items (from the event
store), the shopper-aware re-scorer of the serving snapshot, and the recommender.

Privacy: a raw shopper id is pseudonymised here with the configured key before it
touches the store, and it is never logged. An erased shopper has no events, so the next
answer for them is the anonymous one (nothing is cached per shopper).

The re-scorer (:class:`rerank.personal.PersonalRescorer`) is rebuilt for each snapshot
the service loads: its items are the snapshot's rows, its item vectors the snapshot's
item-tower vectors (the query vector's space), its co-purchase counts come from the
event store's baskets, its blend weights from the trained personal model
(``SHOPSEARCH_PERSONAL_MODEL``, ``personal/latest`` by default, registered by `shopsearch
train recommender`) or the defaults below, and its ``foryou`` feature from the served
recommender's for-you ranker. It is rebuilt when the snapshot, the personal model or the
recommender changes, so a promoted snapshot and its personal scores always describe the
same catalog.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shopsearch.api.settings import Settings
from shopsearch.indexer.events.privacy import pseudonymise
from shopsearch.indexer.events.store import EventStore
from shopsearch.indexer.snapshot_load import LoadedSnapshot
from shopsearch.rerank.personal import (
    PersonalParams,
    PersonalRescorer,
    default_weights,
    load_blend,
)
from shopsearch.retrieval.model_registry import SpecWatch
from shopsearch.retrieval.recommend.base import HistoryItem
from shopsearch.retrieval.recommend.bundle import RecommenderBundle
from shopsearch.retrieval.recommend.interactions import ItemVocab, basket_item_matrix, cooccurrence

__all__ = ["DEFAULT_PERSONAL_WEIGHTS", "Shopper", "ShopperSignals", "personalize"]

log = logging.getLogger(__name__)

#: Blend weights when no trained personal model is configured (base relevance weighs 1):
#: the shopper's own items first, then items bought with them, then the query-attended
#: taste. Trained weights (`shopsearch train recommender`) replace them.
DEFAULT_PERSONAL_WEIGHTS = {
    "bought": 0.5,
    "bought_before": 0.5,
    "copurchase": 1.0,
    "attention": 0.5,
    "nearest": 0.25,
}
#: Event kinds that make a basket (views and clicks are browsing, not buying together).
_BASKET_KINDS = ("add_to_cart", "purchase")


@dataclass(frozen=True)
class Shopper:
    """Who a request is for: the pseudonym of the signed-in shopper and/or the session."""

    user_hash: str | None
    session: str | None

    @property
    def known(self) -> bool:
        return self.user_hash is not None or self.session is not None


class ShopperSignals:
    """Histories and the re-scorer for the current snapshot (thread-safe to read)."""

    def __init__(
        self,
        settings: Settings,
        store_provider: Callable[[], EventStore | None],
        recommender: Callable[[], RecommenderBundle | None] = lambda: None,
    ) -> None:
        self.settings = settings
        self._store = store_provider
        self._recommender = recommender
        try:
            self._key: bytes | None = settings.require_user_key()
        except ValueError:
            self._key = None
        self._lock = threading.Lock()
        self._rescorer: PersonalRescorer | None = None
        self._rescorer_key: tuple[str, str | None, Path | None] | None = None
        # The trained personal model's directory (None: the built-in weights), looked up
        # at most once per reload interval, not on every search.
        self._model = SpecWatch(
            settings.personal_model, settings.models_dir, settings.registry_recheck_s
        )

    # ---- who and what they did --------------------------------------------------------

    def shopper(self, user: str | None, session: str | None) -> Shopper:
        """The pseudonymised identity of a request (``user`` is never kept raw)."""
        user_hash = pseudonymise(user, self._key) if user and self._key else None
        return Shopper(user_hash, session or None)

    def history(self, shopper: Shopper) -> list[HistoryItem]:
        """The shopper's newest events (at most ``settings.personal_history``), newest
        first; empty for an unknown shopper, without a store, or when it cannot be read."""
        store = self._store()
        if store is None or not shopper.known:
            return []
        try:
            recent = store.recent_items(
                shopper.user_hash, shopper.session, limit=self.settings.personal_history
            )
        except Exception:  # a failing store must not fail the search: answer unpersonalised
            log.exception("could not read a shopper's recent items; answering without them")
            return []
        return [HistoryItem(r.product_id, r.kind, r.ts) for r in recent]

    # ---- the re-scorer of the serving snapshot -----------------------------------------

    def rescorer(self, snapshot: LoadedSnapshot) -> PersonalRescorer:
        """The re-scorer over ``snapshot``'s items, built once per snapshot version,
        personal model and recommender version."""
        bundle = self._recommender()
        model = self._model.current()
        key = (snapshot.version, bundle.version if bundle is not None else None, model)
        with self._lock:
            if self._rescorer is None or self._rescorer_key != key:
                started = time.perf_counter()
                self._rescorer = self._build(snapshot, model, bundle)
                self._rescorer_key = key
                log.info(
                    "shopper-aware re-scorer for %s ready in %.0f ms (weights: %s, for-you "
                    "ranker: %s)",
                    snapshot.version,
                    (time.perf_counter() - started) * 1000,
                    model or "defaults",
                    bundle.version if bundle and self._rescorer.foryou else "not used",
                )
            return self._rescorer

    def _build(
        self, snapshot: LoadedSnapshot, model: Path | None, bundle: RecommenderBundle | None
    ) -> PersonalRescorer:
        # The live products only, each at its serving row (an updated product may have an
        # older, tombstoned row under the same id).
        row_of = snapshot.table.row_of
        vocab = ItemVocab.of(row_of)
        rows = np.fromiter((row_of[i] for i in vocab.items), np.int64, len(vocab))
        counts, baskets = _basket_counts(self._store(), vocab)
        weights = default_weights(DEFAULT_PERSONAL_WEIGHTS)
        params = PersonalParams()
        card: dict[str, object] = {"weights": "defaults"}
        if model is not None:
            trained = load_blend(model)
            weights, params, card = trained.weights, trained.params, trained.card
        vectors = snapshot.vectors.vectors  # type: ignore[attr-defined]
        return PersonalRescorer(
            items=list(vocab.items),
            item_vectors=np.asarray(vectors[rows], dtype=np.float32),
            copurchase=counts,
            baskets=baskets,
            weights=weights,
            params=params,
            card=card,
            # Only when the weights use it: scoring it costs the ranker's features.
            foryou=bundle.ranked if bundle is not None and _weighs_foryou(weights) else None,
        )

    def forget(self) -> None:
        """Drop the re-scorer (rebuilt at the next request): after an erasure or an
        events import, so co-purchase counts do not keep an erased shopper's baskets."""
        with self._lock:
            self._rescorer = None
            self._rescorer_key = None


def _weighs_foryou(weights: dict[str, dict[str, float]]) -> bool:
    return any(w.get("foryou", 0.0) != 0.0 for w in weights.values())


def _basket_counts(store: EventStore | None, vocab: ItemVocab) -> tuple[object, np.ndarray]:
    """Item x item basket co-counts and baskets per item, over ``vocab``, from the
    store's carts and purchases (empty without a store)."""
    import scipy.sparse as sp

    n = len(vocab)
    if store is None:
        return sp.csr_matrix((n, n)), np.zeros(n)
    frame = store.interactions()
    frame = frame[frame["kind"].isin(_BASKET_KINDS)]
    baskets_of, matrix = basket_item_matrix(frame["basket"].tolist(), frame["item"].tolist(), vocab)
    del baskets_of
    return cooccurrence(matrix), np.asarray(matrix.sum(axis=0)).ravel()


def personalize(
    result: Any,
    history: Sequence[HistoryItem],
    rescorer: PersonalRescorer,
    depth: int,
    query_vector: Callable[[], np.ndarray],
) -> int:
    """Re-score the head (``depth`` first) of ``result.filtered`` (an
    :class:`api.retrieval_stages.Retrieval`) for a shopper with ``history``; re-order it by the new
    scores, set each head candidate's ``personal_score`` and ``final_score``; return how
    many distinct history items took part. Only re-orders: the set of hits is unchanged."""
    head = result.filtered[:depth]
    if not head or not history:
        return 0
    snap = result.snapshot
    rows = np.fromiter((c.row for c in head), np.int64, len(head))
    ids = [snap.table.products[r].id for r in rows.tolist()]
    base = np.array(
        [c.final_score if c.final_score is not None else c.fused_score for c in head],
        dtype=np.float64,
    )
    vectors = snap.vectors.vectors[rows]
    qvec = np.asarray(query_vector(), dtype=np.float32).reshape(-1)
    scored = rescorer.rescore(qvec, ids, vectors, base, history)
    for cand, score, extra in zip(
        head, scored.scores.tolist(), scored.personal.tolist(), strict=True
    ):
        cand.personal_score = float(extra)
        cand.final_score = float(score)
    order = sorted(range(len(head)), key=lambda i: -scored.scores[i])  # stable on ties
    result.filtered = [head[i] for i in order] + result.filtered[depth:]
    return len({h.item for h in history})
