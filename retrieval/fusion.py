"""Fusion of the dense and lexical rankings: pure functions over ranked lists.

Both take rankings as sequences of ``(key, score)`` pairs, best first, and return
``{key: fused_score}``; the caller sorts. Keys are whatever identifies a product
(rows in the engine, ids in tests).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from enum import StrEnum
from typing import TypeVar

__all__ = ["FusionMethod", "minmax_normalize", "reciprocal_rank_fusion", "weighted_fusion"]

K = TypeVar("K", bound=Hashable)

#: The usual RRF constant (Cormack et al., 2009): damps the head of each list.
RRF_K = 60


class FusionMethod(StrEnum):
    """How the two legs' rankings are combined."""

    rrf = "rrf"
    weighted = "weighted"


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[tuple[K, float]]], *, k: int = RRF_K
) -> dict[K, float]:
    """Sum of ``1 / (k + rank)`` over the rankings a key appears in (rank is 1-based).

    >>> reciprocal_rank_fusion([[("a", 9.0), ("b", 1.0)], [("b", 3.0)]], k=60)["b"]
    0.03252247488101534
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    fused: dict[K, float] = {}
    for ranking in rankings:
        for rank, (key, _score) in enumerate(ranking, start=1):
            fused[key] = fused.get(key, 0.0) + 1.0 / (k + rank)
    return fused


def minmax_normalize(ranking: Sequence[tuple[K, float]]) -> dict[K, float]:
    """Scores scaled to [0, 1] within the list (all 1.0 when every score is equal)."""
    if not ranking:
        return {}
    scores = [s for _, s in ranking]
    lo, hi = min(scores), max(scores)
    if hi == lo:
        return {key: 1.0 for key, _ in ranking}
    return {key: (s - lo) / (hi - lo) for key, s in ranking}


def weighted_fusion(
    dense: Sequence[tuple[K, float]],
    lexical: Sequence[tuple[K, float]],
    *,
    lexical_weight: float = 0.5,
) -> dict[K, float]:
    """``lexical_weight * norm(lexical) + (1 - lexical_weight) * norm(dense)``.

    Scores are min-max normalised within each list; a key missing from a list gets 0
    from it. ``lexical_weight`` must be in [0, 1].
    """
    if not 0.0 <= lexical_weight <= 1.0:
        raise ValueError(f"lexical_weight must be in [0, 1], got {lexical_weight}")
    fused: dict[K, float] = {}
    for key, s in minmax_normalize(dense).items():
        fused[key] = fused.get(key, 0.0) + (1.0 - lexical_weight) * s
    for key, s in minmax_normalize(lexical).items():
        fused[key] = fused.get(key, 0.0) + lexical_weight * s
    return fused
