"""The rerank stage of a search request: a cross-encoder scores the head of the filtered
candidates (as deep as the request's deadline leaves time for) and its scores merge with
the fused order (``rerank/merge.py``).

:meth:`api.service.SearchService.retrieve` runs it after the retrieval stages
(``api/retrieval_stages.py``) with the service's reranker and score cache, or with a
caller's :class:`Scorer`; the service keeps the reranker's recent cost per candidate,
which decides how deep the next deadline lets it go.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

from shopsearch.api.retrieval_stages import Retrieval, ServiceError, elapsed_ms
from shopsearch.rerank.cross_encoder import Reranker
from shopsearch.rerank.merge import merge_rerank, merge_scores
from shopsearch.rerank.score_cache import ScoreCache, model_key
from shopsearch.retrieval.deadline import Deadline
from shopsearch.retrieval.item_text import item_text
from shopsearch.retrieval.search_params import SearchParams
from shopsearch.retrieval.types import Candidate

__all__ = ["Scorer", "rerank", "reranker_key"]

log = logging.getLogger(__name__)

#: Fewer candidates than this are not worth a rerank call when the deadline is short.
_MIN_RERANK = 5


class Scorer(Protocol):
    """What the rerank stage needs of a cross-encoder: one score per ``(query, text)``
    pair, higher is more relevant. :class:`rerank.cross_encoder.Reranker` is one;
    evaluation passes a memo over one (``eval/runner.py``)."""

    def score(self, query: str, texts: Sequence[str]) -> npt.NDArray[np.float32]: ...


def rerank(
    params: SearchParams,
    result: Retrieval,
    deadline: Deadline,
    scorer: Scorer | None,
    *,
    reranker: Reranker | None,
    score_cache: ScoreCache | None,
    cost_ms: float | None,
) -> float | None:
    """Rerank the head of ``result.filtered`` in place as ``params`` say, with ``scorer``
    (uncached) or else ``reranker`` (through ``score_cache`` when not None), as many
    candidates as fit before ``deadline`` at ``cost_ms`` per candidate (None: unknown,
    all of them); sets ``result.rerank_status`` and lists what was left out in
    ``result.cut``, a failure in ``result.degraded`` (the fused order is then served).

    Returns the cost per candidate (ms) ``reranker`` just took, for deciding what fits
    the next deadline; None when it scored nothing (off, skipped, failed, all from the
    cache) or ``scorer`` scored (a caller's scorer, e.g. eval's memo, costs its own).
    """
    if not params.rerank:
        result.rerank_status = "off"
        return None
    if scorer is None and reranker is None:
        result.rerank_status = "skipped (no model)"
        return None
    depth = min(params.rerank_depth, len(result.filtered))
    fits = _rerank_fits(depth, deadline, cost_ms)
    if fits < _MIN_RERANK:
        result.cut.append("rerank")
        result.rerank_status = f"skipped ({deadline.reason})"
        return None
    if fits < depth:
        result.cut.append(f"rerank depth {depth} -> {fits}")
        depth = fits
    head = result.filtered[:depth]
    t = time.perf_counter()
    try:
        scores, scored = _score_pairs(scorer, result, head, reranker, score_cache)
    except Exception:
        log.exception("rerank failed; serving the fused order")
        result.degraded.append("rerank")
        result.rerank_status = "skipped (error)"
        return None
    finally:
        result.timings_ms["rerank"] = elapsed_ms(t)
    # The cost per candidate scored, for deciding what fits the next deadline: of the
    # service's own reranker only (a caller's scorer, e.g. eval's memo, costs its own).
    per = result.timings_ms["rerank"] / scored if scored and scorer is None else None
    weight = params.rerank_weight
    if params.rerank_merge == "scores":
        merged = merge_scores(
            scores.tolist(),
            [c.lexical_score for c in head],
            [c.dense_score for c in head],
            weight=weight,
        )
    else:
        # The head arrives in fused order, which the rank merge reads as its evidence.
        merged = merge_rerank(scores.tolist(), weight=weight)
    for cand, score, final in zip(head, scores.tolist(), merged, strict=True):
        cand.rerank_score = score
        cand.final_score = final
    order = sorted(range(len(head)), key=lambda i: -merged[i])  # stable: ties keep fused order
    result.filtered = [head[i] for i in order] + result.filtered[depth:]
    result.rerank_status = f"applied ({len(head)} candidates)"
    return per


def _score_pairs(
    scorer: Scorer | None,
    result: Retrieval,
    head: Sequence[Candidate],
    reranker: Reranker | None,
    score_cache: ScoreCache | None,
) -> tuple[npt.NDArray[np.float32], int]:
    """The scores of ``head`` for the text searched, by ``scorer`` (uncached) or else
    ``reranker``, and how many pairs were computed: the others came from
    ``score_cache``, with the same scores."""
    products = result.snapshot.table.products
    texts = [item_text(products[c.row]) for c in head]
    if scorer is not None:
        return scorer.score(result.search_text, texts), len(texts)
    if reranker is None:  # rerank checked; kept for the type checker
        raise ServiceError("no reranker is configured")
    if score_cache is None:
        return reranker.score(result.search_text, texts), len(texts)
    cached = score_cache.score(
        reranker,
        result.search_text,
        [products[c.row].id for c in head],
        texts,
        model=reranker_key(reranker),
        scope=result.snapshot,
    )
    return cached.scores, cached.scored


def _rerank_fits(depth: int, deadline: Deadline, cost_ms: float | None) -> int:
    """How many of ``depth`` candidates the reranker can score before ``deadline``,
    from its recent cost per candidate ``cost_ms`` (all of them until that is known)."""
    if deadline.expired():
        return 0
    remaining = deadline.remaining_ms()
    if cost_ms is None or cost_ms <= 0 or math.isinf(remaining):
        return depth
    # Keep a fifth of what is left for facets, paging and the answer itself.
    return min(depth, int(0.8 * remaining / cost_ms))


def reranker_key(reranker: Reranker) -> str:
    """``reranker``'s key in the score cache and the result cache: the model and its
    length bound."""
    # getattr: a test's stand-in for the reranker may have no length bound.
    return model_key(reranker.info, getattr(reranker, "max_length", None))
