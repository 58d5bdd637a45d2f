"""The one interface of a recommendation model, and the shapes it takes and returns.

A model scores from a shopper's *history* (their recent events, read from the event store
at request time), never from a user id it was trained on: a new shopper, a guest session
and an erased shopper (empty history) all go through the same code, and erasure needs no
retraining.

Histories are newest first, as :meth:`indexer.events.store.EventStore.recent_items`
returns them. Items are product ids (strings). Models never return an item of ``exclude``
and never return more than ``k`` items; they may return fewer (even none): the caller
(:mod:`api`) fills from fallbacks so an answer is never empty while the catalog is not.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple, Protocol, runtime_checkable

__all__ = ["HistoryItem", "Recommender", "Scored"]


class HistoryItem(NamedTuple):
    """One event of a shopper's history: the product, what they did, when (UTC, aware)."""

    item: str
    kind: str  # view | click | add_to_cart | purchase
    ts: datetime


class Scored(NamedTuple):
    """One recommended item and its model score (higher is better; scale is per model)."""

    item: str
    score: float


@runtime_checkable
class Recommender(Protocol):
    """A trained recommendation model.

    ``name`` identifies the strategy in responses and reports (``"ease"``, ``"blend"``...);
    ``version`` is the model card's version (shown in responses).
    """

    name: str
    version: str

    def for_history(
        self, history: Sequence[HistoryItem], k: int, exclude: frozenset[str] = frozenset()
    ) -> list[Scored]:
        """The ``k`` best items for a shopper with this history, best first."""
        ...

    def similar(self, item: str, k: int, exclude: frozenset[str] = frozenset()) -> list[Scored]:
        """The ``k`` items most often bought with / most similar to ``item``, best first
        (``item`` itself never included)."""
        ...
