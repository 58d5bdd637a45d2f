"""Popular and trending products: what a shopper without history is shown.

Each (basket, item) pair counts once (a basket of 12 mugs is one vote, as is a line
repeated in one invoice), weighted by its kind (:data:`KIND_WEIGHTS`) and decayed by age
from the end of the training data: a half-life of a few weeks follows what sells now
(seasonal gifts) while a longer one is the all-time best-seller list. ``window_days``
cuts off older events entirely ("popular last month", a reference point).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from shopsearch.retrieval.recommend.base import HistoryItem, Scored
from shopsearch.retrieval.recommend.interactions import ItemVocab
from shopsearch.retrieval.recommend.scoring import DAY_S, FloatArray, Interactions, decay, top_k

__all__ = ["Popularity", "popularity_scores"]


def popularity_scores(
    events: Interactions,
    vocab: ItemVocab,
    *,
    as_of: float,
    half_life_days: float = math.inf,
    window_days: float = math.inf,
) -> FloatArray:
    """Decayed vote per item (vocabulary order) at time ``as_of`` (epoch seconds).

    Events after ``as_of`` or older than ``window_days`` do not count.
    """
    age = as_of - events.ts
    keep = (age >= 0) & (age <= window_days * DAY_S)
    idx = vocab.indices(events.item.tolist())
    keep &= idx >= 0
    w = events.weights() * decay(age, half_life_days)
    # One vote per (basket, item): keep the strongest event of each pair.
    pairs = np.char.add(np.char.add(events.basket.astype(str), "\x1f"), events.item.astype(str))
    order = np.lexsort((-w, pairs))
    first = np.ones(len(order), bool)
    first[1:] = pairs[order][1:] != pairs[order][:-1]
    chosen = order[first]
    chosen = chosen[keep[chosen]]
    return np.bincount(idx[chosen], weights=w[chosen], minlength=len(vocab)).astype(np.float64)


@dataclass
class Popularity:
    """Recommends the most popular items whatever the history; ``similar`` likewise."""

    vocab: ItemVocab
    scores: FloatArray
    name: str = "popularity"
    version: str = "unversioned"

    def __post_init__(self) -> None:
        if len(self.scores) != len(self.vocab):
            raise ValueError(f"{len(self.scores)} scores for {len(self.vocab)} items")

    def for_history(
        self, history: Sequence[HistoryItem], k: int, exclude: frozenset[str] = frozenset()
    ) -> list[Scored]:
        return top_k(self.scores, k, self.vocab, exclude)

    def similar(self, item: str, k: int, exclude: frozenset[str] = frozenset()) -> list[Scored]:
        return top_k(self.scores, k, self.vocab, exclude | {item})
