"""Fusion of the dense and lexical rankings: pure functions over ranked lists.

Both take rankings as sequences of ``(key, score)`` pairs, best first, and return
``{key: fused_score}``; the caller sorts. Keys are whatever identifies a product
(rows in the engine, ids in tests).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal, TypeVar, get_args

__all__ = [
    "BASE_TOWERS_LEXICAL_WEIGHT",
    "FUSION_NAMES",
    "WEIGHTED_RRF_K",
    "FusionChoice",
    "FusionMethod",
    "FusionName",
    "default_fusion",
    "fuse",
    "minmax_normalize",
    "reciprocal_rank_fusion",
    "weighted_fusion",
]

K = TypeVar("K", bound=Hashable)

#: The usual RRF constant (Cormack et al., 2009): damps the head of each list.
RRF_K = 60
#: RRF constant of ``weighted-rrf``: a small k keeps the gap between a leg's first ranks
#: wide, so the leading leg's head stays ahead (chosen with the weight below).
WEIGHTED_RRF_K = 10

#: The fusion names a request or a setting may use (one list for the API, the settings
#: and eval; :class:`FusionMethod` has the same values, checked by tests/test_search_params.py).
FusionName = Literal["rrf", "weighted", "weighted-rrf"]
FUSION_NAMES: tuple[FusionName, ...] = get_args(FusionName)


class FusionMethod(StrEnum):
    """How the two legs' rankings are combined."""

    #: ``1/(60 + rank)`` summed over the legs: both legs trusted alike.
    rrf = "rrf"
    #: Min-max normalised scores, ``w * bm25 + (1 - w) * cosine``.
    weighted = "weighted"
    #: ``w / (10 + lexical rank) + (1 - w) / (10 + dense rank)``: ranks only, one leg leads.
    weighted_rrf = "weighted-rrf"


#: BM25's weight in the default fusion (``weighted-rrf``) of towers that were not
#: fine-tuned on the shop's queries. Base MiniLM towers are weaker than BM25 on product
#: queries (Home Depot dev, rewritten queries, serving depth 100: dense alone well below
#: BM25's nDCG@10 0.417), so plain RRF, which trusts both legs alike, answers worse than
#: BM25 alone (0.374). Chosen on the Home Depot *train* queries (the base towers never
#: saw them) and checked on dev: weights 0.8-0.85 with k 5-20 are at or above BM25 on
#: both (README, "Defaults that never lose").
BASE_TOWERS_LEXICAL_WEIGHT = 0.8


@dataclass(frozen=True, slots=True)
class FusionChoice:
    """The fusion a request gets when it names none: method, BM25 weight (used by
    ``weighted`` only) and why, in words for the response and logs."""

    method: FusionMethod
    lexical_weight: float
    reason: str

    def describe(self) -> str:
        """``"rrf"``, ``"weighted (bm25 0.5)"`` or ``"weighted-rrf (bm25 0.8)"``."""
        return describe(self.method, self.lexical_weight)


def describe(method: FusionMethod, lexical_weight: float) -> str:
    """A fusion in words, as responses report it."""
    if method is FusionMethod.rrf:
        return "rrf"
    return f"{method.value} (bm25 {lexical_weight:g})"


def default_fusion(
    *, fine_tuned: bool, base_lexical_weight: float = BASE_TOWERS_LEXICAL_WEIGHT
) -> FusionChoice:
    """The default fusion for towers that are (or are not) fine-tuned on this shop's
    queries: RRF for fine-tuned towers (the best hybrid measured with them), a
    lexical-dominant weighted fusion for base towers, so a new shop's first answers are
    never worse than its lexical leg alone.

    Raises:
        ValueError: ``base_lexical_weight`` outside [0, 1].
    """
    if not 0.0 <= base_lexical_weight <= 1.0:
        raise ValueError(f"base_lexical_weight must be in [0, 1], got {base_lexical_weight}")
    if fine_tuned:
        return FusionChoice(FusionMethod.rrf, 0.5, "fine-tuned towers")
    return FusionChoice(
        FusionMethod.weighted_rrf,
        base_lexical_weight,
        "base towers (not fine-tuned): BM25 leads",
    )


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[tuple[K, float]]],
    *,
    k: int = RRF_K,
    weights: Sequence[float] | None = None,
) -> dict[K, float]:
    """Sum of ``weight / (k + rank)`` over the rankings a key appears in (rank is
    1-based; every weight 1 by default).

    >>> reciprocal_rank_fusion([[("a", 9.0), ("b", 1.0)], [("b", 3.0)]], k=60)["b"]
    0.03252247488101534
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if weights is not None and len(weights) != len(rankings):
        raise ValueError(f"{len(weights)} weights for {len(rankings)} rankings")
    fused: dict[K, float] = {}
    for i, ranking in enumerate(rankings):
        weight = 1.0 if weights is None else weights[i]
        for rank, (key, _score) in enumerate(ranking, start=1):
            fused[key] = fused.get(key, 0.0) + weight / (k + rank)
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


def fuse(
    method: FusionMethod,
    dense: Sequence[tuple[K, float]],
    lexical: Sequence[tuple[K, float]],
    *,
    lexical_weight: float = 0.5,
) -> dict[K, float]:
    """The two legs fused by ``method`` (``lexical_weight`` is BM25's share for the
    weighted methods and ignored by ``rrf``).

    Raises:
        ValueError: ``lexical_weight`` outside [0, 1].
    """
    if method is FusionMethod.rrf:
        return reciprocal_rank_fusion([r for r in (dense, lexical) if r])
    if method is FusionMethod.weighted:
        return weighted_fusion(dense, lexical, lexical_weight=lexical_weight)
    if not 0.0 <= lexical_weight <= 1.0:
        raise ValueError(f"lexical_weight must be in [0, 1], got {lexical_weight}")
    return reciprocal_rank_fusion(
        [dense, lexical], k=WEIGHTED_RRF_K, weights=[1.0 - lexical_weight, lexical_weight]
    )
