"""What the trainers measure on dev while they train: the dev sets and their metrics.

- :class:`RetrievalDevSet` and :func:`retrieval_metrics`: the towers, exact search of dev
  queries over a sub-corpus (nDCG@10, recall@100);
- :class:`RerankDevSet` and :func:`rerank_metrics`: the cross-encoder, candidate lists
  reranked (nDCG@10 and MRR@10 over judged + mined candidates, protocol B's nDCG@10 over
  the judged ones).

Both are built from judged queries by ``indexer.training.mined_data.build_dev_data``.
Pure NumPy; the trainers encode or score, these functions only rank and count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from shopsearch.indexer.training.budget import TrainingError

__all__ = [
    "RerankDevSet",
    "RetrievalDevSet",
    "ndcg_at_k",
    "rerank_metrics",
    "retrieval_metrics",
]


def ndcg_at_k(ranked_gains: Sequence[float], all_gains: Sequence[float], k: int = 10) -> float:
    """Linear-gain nDCG@k: ``ranked_gains`` in the system's order, ``all_gains`` every
    relevant item's gain (for the ideal DCG). 0.0 when there is no positive gain.

    >>> round(ndcg_at_k([0.0, 2.0], [2.0], 10), 4)
    0.6309
    """
    ideal = sorted((g for g in all_gains if g > 0), reverse=True)[:k]
    if not ideal:
        return 0.0
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = float(
        np.dot(
            np.asarray(list(ranked_gains)[:k], dtype=float), discounts[: min(k, len(ranked_gains))]
        )
    )
    idcg = float(np.dot(np.asarray(ideal, dtype=float), discounts[: len(ideal)]))
    return dcg / idcg


@dataclass(frozen=True)
class RetrievalDevSet:
    """Dev queries ranked against a sub-corpus of item texts.

    ``gains[i]`` maps corpus rows to the nDCG gain of query ``i`` (positive gains only);
    ``relevant[i]`` are its relevant rows (for recall).
    """

    queries: list[str]
    corpus: list[str]
    gains: list[dict[int, float]]
    relevant: list[frozenset[int]]

    def __post_init__(self) -> None:
        if not (len(self.queries) == len(self.gains) == len(self.relevant)):
            raise TrainingError(
                f"dev set: {len(self.queries)} queries, {len(self.gains)} gain maps and "
                f"{len(self.relevant)} relevant sets; pass one of each per query"
            )


def retrieval_metrics(
    query_vectors: npt.NDArray[np.float32],
    corpus_vectors: npt.NDArray[np.float32],
    dev: RetrievalDevSet,
    *,
    ndcg_k: int = 10,
    recall_k: int = 100,
) -> dict[str, float]:
    """nDCG@``ndcg_k`` and recall@``recall_k`` (mean over queries with a relevant row) of
    exact inner-product search; pure NumPy."""
    k = min(max(ndcg_k, recall_k), len(corpus_vectors))
    scores = query_vectors @ corpus_vectors.T
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    ndcgs, recalls = [], []
    for i in range(len(dev.queries)):
        order = top[i][np.argsort(-scores[i, top[i]], kind="stable")]
        gains = dev.gains[i]
        if gains:
            ranked = [gains.get(int(r), 0.0) for r in order[:ndcg_k]]
            ndcgs.append(ndcg_at_k(ranked, list(gains.values()), ndcg_k))
        if dev.relevant[i]:
            found = len(dev.relevant[i].intersection(int(r) for r in order[:recall_k]))
            recalls.append(found / len(dev.relevant[i]))
    return {
        f"ndcg@{ndcg_k}": float(np.mean(ndcgs)) if ndcgs else 0.0,
        f"recall@{recall_k}": float(np.mean(recalls)) if recalls else 0.0,
    }


@dataclass(frozen=True)
class RerankDevSet:
    """Candidate lists to rerank: per query its item texts, their gains and whether each
    was judged (protocol B ranks only the judged ones)."""

    queries: list[str]
    texts: list[list[str]]
    gains: list[list[float]]
    judged: list[list[bool]]

    def __post_init__(self) -> None:
        if not (len(self.queries) == len(self.texts) == len(self.gains) == len(self.judged)):
            raise TrainingError(
                "rerank dev set: queries, texts, gains and judged must have one entry per query"
            )


def rerank_metrics(
    scores: Sequence[Sequence[float]], dev: RerankDevSet, *, k: int = 10
) -> dict[str, float]:
    """Mean over queries with a positive gain: nDCG@k of each full candidate list (unjudged
    candidates have gain 0), MRR@k (any positive gain counts as relevant) and
    ``b.ndcg@k``, nDCG@k of the judged candidates only (protocol B)."""
    ndcgs, mrrs, b_ndcgs = [], [], []
    for s, gains, judged in zip(scores, dev.gains, dev.judged, strict=True):
        order = np.argsort(-np.asarray(s, dtype=float), kind="stable")
        ranked = [gains[i] for i in order]
        if any(g > 0 for g in gains):
            ndcgs.append(ndcg_at_k(ranked, gains, k))
            first = next((r for r, g in enumerate(ranked[:k], start=1) if g > 0), None)
            mrrs.append(1.0 / first if first else 0.0)
            judged_ranked = [gains[i] for i in order if judged[i]]
            b_ndcgs.append(ndcg_at_k(judged_ranked, gains, k))
    return {
        f"ndcg@{k}": float(np.mean(ndcgs)) if ndcgs else 0.0,
        f"mrr@{k}": float(np.mean(mrrs)) if mrrs else 0.0,
        f"b.ndcg@{k}": float(np.mean(b_ndcgs)) if b_ndcgs else 0.0,
    }
