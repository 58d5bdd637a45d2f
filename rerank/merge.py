"""How the reranker's scores change the order of the head of the fused list.

The cross-encoder's order is not used alone: it is merged with the first-stage (fused)
order by weighted reciprocal-rank fusion. Measured on the Home Depot dev split
(protocol A, README "Training"), the merge beats replacing the order: the trained
cross-encoder adds topical evidence, while the first stage carries the exact lexical
match that shoppers' judgments favour.
"""

from __future__ import annotations

from collections.abc import Sequence

from retrieval.fusion import RRF_K

__all__ = ["DEFAULT_RERANK_WEIGHT", "merge_rerank"]

#: Weight of the reranker's order in the merge (0: first stage only, 1: reranker only).
#: Chosen on the Home Depot dev split; see README "Training".
DEFAULT_RERANK_WEIGHT = 0.5


def merge_rerank(
    rerank_scores: Sequence[float], *, weight: float = DEFAULT_RERANK_WEIGHT, k: int = RRF_K
) -> list[float]:
    """Merged score of each head candidate; the head is given in first-stage order.

    ``score[i] = (1 - weight) / (k + i + 1) + weight / (k + r_i)`` where ``r_i`` is the
    1-based rank of candidate ``i`` by ``rerank_scores`` (descending; ties keep the
    first-stage order). Sorting by the result descending gives the served order.

    >>> [round(s, 5) for s in merge_rerank([0.1, 0.9], weight=1.0)]
    [0.01613, 0.01639]

    Raises:
        ValueError: ``weight`` is outside [0, 1] or ``k`` is negative.
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"rerank weight must be in [0, 1], got {weight}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    by_reranker = sorted(range(len(rerank_scores)), key=lambda i: -rerank_scores[i])
    rerank_rank = [0] * len(rerank_scores)
    for rank, i in enumerate(by_reranker, start=1):
        rerank_rank[i] = rank
    return [
        (1.0 - weight) / (k + i + 1) + weight / (k + rerank_rank[i])
        for i in range(len(rerank_scores))
    ]
