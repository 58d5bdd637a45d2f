"""Cold start by text: neighbours in the item tower's embedding space.

A product nobody bought yet has a description; its neighbours by the item tower's
embeddings (:meth:`retrieval.encoders.Encoder.encode_document`) are what "similar" can
show before any co-purchase exists. Embeddings are computed by the trainer (cached by
text) and stored in the recommender bundle, so serving never loads the encoder.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from shopsearch.retrieval.recommend.base import HistoryItem, Scored
from shopsearch.retrieval.recommend.interactions import ItemVocab
from shopsearch.retrieval.recommend.scoring import FloatArray, history_weights, top_k

__all__ = ["TextNeighbours"]


@dataclass
class TextNeighbours:
    """Cosine neighbours of unit-length item embeddings (a zero row = no text).

    ``for_history`` ranks by similarity to the recency-weighted mean of the history's
    embeddings. Scores are cosines shifted to ``(0, 2]`` so every item with text is a
    (weak) candidate and the model never returns [] while some item has text.
    """

    vocab: ItemVocab
    embeddings: npt.NDArray[np.float32]
    half_life_days: float = math.inf
    name: str = "text"
    version: str = "unversioned"

    def __post_init__(self) -> None:
        if self.embeddings.shape[0] != len(self.vocab):
            raise ValueError(f"{self.embeddings.shape[0]} embeddings for {len(self.vocab)} items")
        self.has_text = np.linalg.norm(self.embeddings, axis=1) > 0

    def _rank(self, query: npt.NDArray[np.float32]) -> FloatArray:
        cos = (self.embeddings @ query).astype(np.float64)
        # 1 + cos keeps every item with text positive; items without text score 0.
        return np.where(self.has_text, 1.0 + cos + 1e-9, 0.0)

    def for_history(
        self, history: Sequence[HistoryItem], k: int, exclude: frozenset[str] = frozenset()
    ) -> list[Scored]:
        items, weights = history_weights(history, self.vocab, self.half_life_days)
        if len(items) == 0:
            return []
        query = (weights[:, None] * self.embeddings[items]).sum(axis=0)
        norm = float(np.linalg.norm(query))
        if norm == 0:
            return []
        return top_k(self._rank((query / norm).astype(np.float32)), k, self.vocab, exclude)

    def similar(self, item: str, k: int, exclude: frozenset[str] = frozenset()) -> list[Scored]:
        i = self.vocab.index.get(item)
        if i is None or not self.has_text[i]:
            return []
        return top_k(self._rank(self.embeddings[i]), k, self.vocab, exclude | {item})
