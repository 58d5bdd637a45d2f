"""The for-you blend and the fallback chain.

:class:`ForYou` mixes three normalised signals for a shopper's history:
repurchase (their own items, recency x frequency), co-purchase neighbours of the history
(recency-weighted), and popularity (trending). Each is scaled to a maximum of 1 within
the request, so the weights (tuned on a validation month by the trainer) are
comparable; an empty history leaves popularity alone, so a new shopper gets exactly the
popular list.

:class:`Chain` fills a model's answer from the next models when it has fewer than ``k``
items: item-to-item, then text neighbours (cold start), then popularity, so an answer
is never empty while the catalog is not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from shopsearch.retrieval.recommend.base import HistoryItem, Recommender, Scored
from shopsearch.retrieval.recommend.interactions import ItemVocab
from shopsearch.retrieval.recommend.item2item import ItemToItem
from shopsearch.retrieval.recommend.repurchase import Repurchase
from shopsearch.retrieval.recommend.scoring import FloatArray, discovery_request, top_k

__all__ = ["BLEND_COMPONENTS", "Chain", "ForYou"]

#: The components of :class:`ForYou`, in the order of its ``weights``.
BLEND_COMPONENTS: tuple[str, ...] = ("repurchase", "neighbours", "popularity")


def _unit_max(x: FloatArray) -> FloatArray:
    top = float(x.max()) if len(x) else 0.0
    return x / top if top > 0 else x


@dataclass
class ForYou:
    """``weights[c] x normalised score of component c`` summed over :data:`BLEND_COMPONENTS`.

    ``weights_discovery`` (same keys) is used instead when every history item the model
    knows is excluded (``exclude_bought=true``): the repurchase signal is then empty and
    the balance of neighbours and popularity is tuned for discovery. ``similar`` is the
    ``similar`` of ``similar_model``.
    """

    vocab: ItemVocab
    repurchase: Repurchase
    neighbours: ItemToItem
    popularity: FloatArray
    weights: Mapping[str, float]
    similar_model: Recommender
    weights_discovery: Mapping[str, float] | None = None
    name: str = "for-you"
    version: str = "unversioned"
    _pop_unit: FloatArray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for w in (self.weights, self.weights_discovery or self.weights):
            if set(w) != set(BLEND_COMPONENTS):
                raise ValueError(f"blend weights need keys {BLEND_COMPONENTS}, got {sorted(w)}")
        self._pop_unit = _unit_max(np.asarray(self.popularity, dtype=np.float64))

    def scores(self, history: Sequence[HistoryItem], weights: Mapping[str, float]) -> FloatArray:
        """Dense blended scores over the vocabulary."""
        out = weights["popularity"] * self._pop_unit
        if history:
            if weights["repurchase"]:
                out = out + weights["repurchase"] * self.repurchase.scores(history)
            if weights["neighbours"]:
                out = out + weights["neighbours"] * _unit_max(self.neighbours.scores(history))
        return out

    def for_history(
        self, history: Sequence[HistoryItem], k: int, exclude: frozenset[str] = frozenset()
    ) -> list[Scored]:
        weights = self.weights
        if self.weights_discovery is not None and discovery_request(history, self.vocab, exclude):
            weights = self.weights_discovery
        return top_k(self.scores(history, weights), k, self.vocab, exclude)

    def similar(self, item: str, k: int, exclude: frozenset[str] = frozenset()) -> list[Scored]:
        return self.similar_model.similar(item, k, exclude)


@dataclass
class Chain:
    """The first model's items, then the next model's new ones, ... up to ``k``.

    Scores are rescaled so the order is kept and higher is better: stage ``s`` of ``n``
    maps its scores into ``(n - s - 1, n - s]``.
    """

    stages: Sequence[Recommender]
    name: str = "chain"
    version: str = "unversioned"

    def _fill(self, answers: Sequence[Sequence[Scored]], k: int) -> list[Scored]:
        out: list[Scored] = []
        seen: set[str] = set()
        n = len(answers)
        for s, answer in enumerate(answers):
            top = max((a.score for a in answer), default=0.0) or 1.0
            for a in answer:
                if len(out) >= k:
                    return out
                if a.item not in seen:
                    seen.add(a.item)
                    out.append(Scored(a.item, (n - s - 1) + max(a.score, 0.0) / top))
        return out

    def for_history(
        self, history: Sequence[HistoryItem], k: int, exclude: frozenset[str] = frozenset()
    ) -> list[Scored]:
        answers: list[list[Scored]] = []
        got: set[str] = set()
        for stage in self.stages:
            if len(got) >= k:
                break
            answer = stage.for_history(history, k, exclude | got)
            answers.append(answer)
            got.update(a.item for a in answer)
        return self._fill(answers, k)

    def similar(self, item: str, k: int, exclude: frozenset[str] = frozenset()) -> list[Scored]:
        answers: list[list[Scored]] = []
        got: set[str] = set()
        for stage in self.stages:
            if len(got) >= k:
                break
            answer = stage.similar(item, k, exclude | got)
            answers.append(answer)
            got.update(a.item for a in answer)
        return self._fill(answers, k)


def popular_top(vocab: ItemVocab, popularity: FloatArray, k: int) -> list[Scored]:
    """The ``k`` most popular items (a convenience for callers without a model)."""
    return top_k(popularity, k, vocab)
