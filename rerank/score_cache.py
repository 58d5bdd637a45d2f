"""Cross-encoder scores remembered per ``(query, product id, reranker model)``.

The reranker is the costliest stage of a search (tens of milliseconds for 50 pairs on a
CPU), and the same pairs come back often: a head query is asked again and again, and
its next page, another sort of its facets or a filter on it rerank mostly the same
candidates. A cross-encoder's score of a pair depends only on the query text, the
product's text and the model, so a remembered score is the score.

Keys are ``(query, product id, model)``: ``query`` is the text the reranker read (the
rewritten query), ``model`` says which weights, runtime and length limit scored it
(:func:`model_key`). The product's text is not in the key, so the cache is scoped to
one snapshot (:class:`retrieval.scoped_cache.ScopedCache`): the service resets it
whenever the serving snapshot changes, updates included.

Only the pairs missing from the cache are sent to the scorer, in one call. A cached
score is exactly the float32 the scorer returned for that pair; whether it equals what
the scorer would return now, in another batch, is the scorer's own property (a
cross-encoder on torch fp32 varies with the batch's padding in the last bits, as
uncached scoring of different candidate lists already does).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from shopsearch.retrieval.encoders import ModelInfo
from shopsearch.retrieval.scoped_cache import ScopedCache, ScopedCacheFront

__all__ = ["CachedScores", "PairScorer", "ScoreCache", "model_key"]

#: (query text as the reranker read it, product id, :func:`model_key`)
PairKey = tuple[str, str, str]


class PairScorer(Protocol):
    """What scores pairs: :class:`rerank.cross_encoder.Reranker`, or any object with
    its ``score``."""

    def score(self, query: str, texts: Sequence[str]) -> npt.NDArray[np.float32]: ...


def model_key(info: ModelInfo, max_length: int | None = None) -> str:
    """Which model scores: its id (which names an ONNX runtime), weights checksum,
    runtime and word-piece limit, since each changes the scores."""
    return f"{info.id}@{info.sha256}:{info.backend}:{max_length}"


@dataclass(frozen=True, slots=True)
class CachedScores:
    """One score per text, and how many of them the scorer computed in this call."""

    scores: npt.NDArray[np.float32]
    scored: int


class ScoreCache(ScopedCacheFront[PairKey, float]):
    """At most ``maxsize`` (>= 1) remembered pair scores of the current snapshot."""

    def __init__(self, maxsize: int) -> None:
        super().__init__(ScopedCache(maxsize))

    def score(
        self,
        scorer: PairScorer,
        query: str,
        ids: Sequence[str],
        texts: Sequence[str],
        *,
        model: str,
        scope: object,
    ) -> CachedScores:
        """Scores of ``query`` against ``texts`` (the texts of products ``ids``, same
        order), like ``scorer.score(query, texts)``: cached ones from memory, the rest
        from one ``scorer.score`` call, then kept if ``scope`` still serves.

        Raises what ``scorer.score`` raises (nothing is cached then), and ValueError when
        ``ids`` and ``texts`` differ in length or the scorer returns the wrong number
        of scores.
        """
        if len(ids) != len(texts):
            raise ValueError(f"{len(ids)} product ids for {len(texts)} texts")
        keys = [(query, pid, model) for pid in ids]
        found = self._cache.get_many(keys, scope)
        missing = [i for i, value in enumerate(found) if value is None]
        out = np.empty(len(keys), dtype=np.float32)
        for i, value in enumerate(found):
            if value is not None:
                out[i] = value
        if missing:
            fresh = np.asarray(scorer.score(query, [texts[i] for i in missing]), dtype=np.float32)
            if fresh.shape != (len(missing),):
                raise ValueError(
                    f"the scorer returned shape {fresh.shape} for {len(missing)} texts"
                )
            out[missing] = fresh
            # float32 -> Python float -> float32 is exact: a hit returns the same bits.
            self._cache.put_many(
                ((keys[i], float(s)) for i, s in zip(missing, fresh.tolist(), strict=True)),
                scope,
            )
        return CachedScores(out, len(missing))
