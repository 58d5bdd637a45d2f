"""Repurchase: the shopper's own items again, the strongest signal of this kind of shop
(wholesale gift buyers re-stock the same lines).

Score of an item = sum over the shopper's events of it of kind weight x recency decay
(:func:`retrieval.recommend.scoring.history_weights`): frequency and recency in one
number. A tiny popularity term breaks ties between items bought equally often and
equally long ago. With ``half_life_days=inf`` this is "the customer's own most-bought
items" of the datasets README (counted per event).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from shopsearch.retrieval.recommend.base import HistoryItem, Scored
from shopsearch.retrieval.recommend.interactions import ItemVocab
from shopsearch.retrieval.recommend.scoring import FloatArray, history_weights, top_k

__all__ = ["Repurchase"]

#: Weight of the normalised popularity tie-break: below any one-event difference.
_TIE_BREAK = 1e-6


@dataclass
class Repurchase:
    """Ranks the history's own items; ``similar`` has nothing to say (returns [])."""

    vocab: ItemVocab
    popularity: FloatArray
    half_life_days: float = math.inf
    name: str = "repurchase"
    version: str = "unversioned"

    def scores(self, history: Sequence[HistoryItem]) -> FloatArray:
        """Dense scores over the vocabulary (0 for items not in the history)."""
        out = np.zeros(len(self.vocab))
        items, weights = history_weights(history, self.vocab, self.half_life_days)
        if len(items):
            top = float(self.popularity.max()) or 1.0
            out[items] = weights / weights.max() + _TIE_BREAK * self.popularity[items] / top
        return out

    def for_history(
        self, history: Sequence[HistoryItem], k: int, exclude: frozenset[str] = frozenset()
    ) -> list[Scored]:
        return top_k(self.scores(history), k, self.vocab, exclude)

    def similar(self, item: str, k: int, exclude: frozenset[str] = frozenset()) -> list[Scored]:
        return []
