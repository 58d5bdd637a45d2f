"""The cross-encoder as a teacher of the two towers (margin-MSE distillation).

The towers learn from judged positives and mined negatives, a yes/no signal. The
trained cross-encoder knows more: *how much* better a positive is than each negative.
:func:`teacher_margins` writes that down for every training triplet, so
``indexer.training.towers`` can fit the towers' score margins to it (Hofstätter et
al., 2020, "Improving Efficient Neural Ranking Models with Cross-Architecture
Knowledge Distillation").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

__all__ = ["PairScorer", "teacher_margins"]


class PairScorer(Protocol):
    """What a teacher must do: score item texts for one query (``rerank.Reranker``)."""

    def score(self, query: str, texts: Sequence[str]) -> npt.NDArray[np.float32]: ...


def teacher_margins(
    teacher: PairScorer,
    triplets: Sequence[tuple[str, str, str]],
    *,
    progress: Callable[[int], None] | None = None,
) -> npt.NDArray[np.float32]:
    """``teacher(q, positive) - teacher(q, negative)`` for each ``(q, positive, negative)``
    triplet, shape ``(len(triplets),)``, in the units of ``teacher.score`` (for
    :class:`rerank.Reranker`, the one-logit head's sigmoid: margins in [-1, 1]).

    Triplets are grouped by query and each distinct text is scored once per query (the
    same positive recurs with several negatives), so the cost is one teacher call per
    query. ``progress`` is called with the number of triplets done after each query.
    """
    by_query: dict[str, list[int]] = {}
    for i, (query, _, _) in enumerate(triplets):
        by_query.setdefault(query, []).append(i)
    margins = np.zeros(len(triplets), dtype=np.float32)
    for query, rows in by_query.items():
        texts = list(dict.fromkeys(t for i in rows for t in triplets[i][1:]))
        scores = dict(zip(texts, teacher.score(query, texts).tolist(), strict=True))
        for i in rows:
            margins[i] = scores[triplets[i][1]] - scores[triplets[i][2]]
        if progress is not None:
            progress(len(rows))
    return margins
