"""Evaluation protocols A and B (../shared/datasets/README.md), computed with ranx.

Protocol A, full-corpus retrieval: the run ranks the whole catalog for each query.
  - nDCG@10 with gain = ``dataset.gain(grade)`` (Home Depot: relevance - 1); unjudged = 0.
  - recall@k and MRR@10 on binary relevance: relevant = grade >= ``threshold`` (2.5).
  - Queries with no relevant product are left out of recall and MRR (``n_left_out``);
    queries with no positive gain are left out of nDCG (``n_left_out_ndcg``; nDCG is
    undefined for them: the ideal DCG is 0). None of the Home Depot dev queries is in
    the second case; 28 train queries are.
  - A query missing from the run, or with an empty result list, scores 0.
Protocol B, re-rank: only each query's judged products are ranked; nDCG@10 with the
same gains. Its metric keys carry the prefix ``PROTOCOL_B_PREFIX`` (``"b.ndcg@10"``) so
results of both protocols can share one flat metrics dict.

Choices made on ranx (0.3.x):
  - ``ndcg`` (Järvelin & Kekäläinen: DCG = sum gain_i / log2(i + 1)), the linear-gain
    form trec_eval's ``ndcg_cut`` uses; not ``ndcg_burges`` (gain 2^g - 1).
  - ranx qrels hold integers, so gains are passed as ``round(gain * GAIN_SCALE)``
    (milli-gains). Linear nDCG is scale-invariant (DCG and ideal DCG scale alike), so
    this changes nothing but rounding beyond the 3rd decimal; Home Depot's ratings
    have 2 decimals (2.33 -> gain 1.33 -> 1330), so they pass exactly.
  - ranx breaks score ties arbitrarily; every run is first re-scored by rank after
    ``runs.ranked_ids`` (score descending, doc id ascending), so ties are deterministic
    and identical to the order of the TREC run files.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from shopsearch.indexer.judgments import EvalDataset, JudgedQuery, Run, ranked_ids

__all__ = [
    "DEFAULT_THRESHOLD",
    "GAIN_SCALE",
    "PROTOCOL_B_PREFIX",
    "RECALL_CUTOFFS",
    "MetricsResult",
    "evaluate_protocol_a",
    "evaluate_protocol_b",
    "rerank_run",
    "stage_recall",
]

logger = logging.getLogger(__name__)

#: Protocol A: a product is relevant when its grade is at least this.
DEFAULT_THRESHOLD = 2.5
#: Cutoffs of the recall@k curve; includes protocol A's 10, 100 and 1000.
RECALL_CUTOFFS: tuple[int, ...] = (10, 20, 50, 100, 200, 500, 1000)
#: Gains are handed to ranx as integers in units of 1 / GAIN_SCALE.
GAIN_SCALE = 1000
#: Prefix of protocol B metric keys.
PROTOCOL_B_PREFIX = "b."

_Qrels = dict[str, dict[str, int]]


@dataclass(frozen=True)
class MetricsResult:
    """Mean metrics of one run on one dataset.

    ``metrics`` maps a ranx metric name (``"ndcg@10"``, ``"recall@100"``, ``"mrr@10"``;
    protocol B: ``"b.ndcg@10"``) to its mean over the queries it applies to.
    ``per_query`` maps the same names to ``{qid: value}``. ``n_queries`` is the
    dataset's query count; ``n_left_out`` the queries left out of recall and MRR
    (protocol B: of nDCG); ``n_left_out_ndcg`` those left out of nDCG.
    """

    protocol: str
    metrics: dict[str, float]
    n_queries: int
    n_left_out: int
    n_left_out_ndcg: int
    per_query: dict[str, dict[str, float]] = field(default_factory=dict, repr=False)


def _gain_qrels(dataset: EvalDataset) -> _Qrels:
    """Integer gains of the products with a positive gain; queries without one are absent."""
    qrels: _Qrels = {}
    for query in dataset.queries:
        gains = {
            pid: round(dataset.gain(grade) * GAIN_SCALE) for pid, grade in query.judgments.items()
        }
        gains = {pid: g for pid, g in gains.items() if g > 0}
        if gains:
            qrels[query.qid] = gains
    return qrels


def _binary_qrels(dataset: EvalDataset, threshold: float) -> _Qrels:
    """Relevant products (grade >= threshold); queries without one are absent."""
    qrels: _Qrels = {}
    for query in dataset.queries:
        relevant = {pid: 1 for pid, grade in query.judgments.items() if grade >= threshold}
        if relevant:
            qrels[query.qid] = relevant
    return qrels


def _rank_scores(ids: Sequence[str]) -> dict[str, float]:
    return {doc_id: float(len(ids) - i) for i, doc_id in enumerate(ids)}


def _ranx_evaluate(
    qrels: _Qrels, rankings: Mapping[str, Sequence[str]], metrics: Sequence[str]
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Means and per-query values of ranx ``metrics`` for ranked id lists.

    Every query of ``qrels`` is scored; one without a (non-empty) ranking scores 0.
    """
    if not qrels:
        return {m: 0.0 for m in metrics}, {m: {} for m in metrics}
    run_dict = {qid: _rank_scores(rankings[qid]) for qid in qrels if rankings.get(qid)}
    if not run_dict:
        return {m: 0.0 for m in metrics}, {m: dict.fromkeys(qrels, 0.0) for m in metrics}

    import ranx  # deferred: importing ranx loads numba (about a second)
    from numba.core.errors import NumbaTypeSafetyWarning

    ranx_qrels = ranx.Qrels(qrels)
    ranx_run = ranx.Run(run_dict)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NumbaTypeSafetyWarning)
        ranx.evaluate(ranx_qrels, ranx_run, list(metrics), make_comparable=True)
    means = {m: float(ranx_run.mean_scores[m]) for m in metrics}
    per_query = {m: {q: float(v) for q, v in ranx_run.scores[m].items()} for m in metrics}
    return means, per_query


def _check_run_queries(dataset: EvalDataset, run: Mapping[str, object]) -> None:
    extra = len(set(run) - {q.qid for q in dataset.queries})
    if extra:
        logger.warning("run has %d queries that are not in dataset %s", extra, dataset.name)


def evaluate_protocol_a(
    dataset: EvalDataset,
    run: Mapping[str, Mapping[str, float]],
    *,
    threshold: float = DEFAULT_THRESHOLD,
    recall_cutoffs: Iterable[int] = RECALL_CUTOFFS,
    ndcg_cutoff: int = 10,
    mrr_cutoff: int = 10,
) -> MetricsResult:
    """Protocol A metrics of a full-corpus ``run`` (``{qid: {product_id: score}}``).

    Returns ``ndcg@{ndcg_cutoff}``, ``mrr@{mrr_cutoff}`` and ``recall@k`` for each k in
    ``recall_cutoffs`` (default ``RECALL_CUTOFFS``), as defined in the module docstring.
    Run queries that the dataset lacks are ignored (and logged).

    Raises:
        ValueError: a cutoff is not a positive integer.
    """
    cutoffs = sorted(set(recall_cutoffs))
    if any(k <= 0 for k in [*cutoffs, ndcg_cutoff, mrr_cutoff]):
        raise ValueError(
            f"cutoffs must be positive integers, got {cutoffs}, {ndcg_cutoff}, {mrr_cutoff}"
        )
    _check_run_queries(dataset, run)
    rankings = {qid: ranked_ids(scores) for qid, scores in run.items()}

    gain_qrels = _gain_qrels(dataset)
    binary_qrels = _binary_qrels(dataset, threshold)
    ndcg_name, mrr_name = f"ndcg@{ndcg_cutoff}", f"mrr@{mrr_cutoff}"
    recall_names = [f"recall@{k}" for k in cutoffs]
    ndcg_mean, ndcg_per_query = _ranx_evaluate(gain_qrels, rankings, [ndcg_name])
    bin_mean, bin_per_query = _ranx_evaluate(binary_qrels, rankings, [mrr_name, *recall_names])

    n_queries = len(dataset.queries)
    result = MetricsResult(
        protocol="A",
        metrics={**ndcg_mean, **bin_mean},
        n_queries=n_queries,
        n_left_out=n_queries - len(binary_qrels),
        n_left_out_ndcg=n_queries - len(gain_qrels),
        per_query={**ndcg_per_query, **bin_per_query},
    )
    logger.info(
        "protocol A on %s: %s (%d queries, %d left out of recall/MRR)",
        dataset.name,
        {k: round(v, 4) for k, v in result.metrics.items()},
        n_queries,
        result.n_left_out,
    )
    return result


def _judged_ranking(query: JudgedQuery, scores: Mapping[str, float]) -> tuple[list[str], int, int]:
    """The judged products ranked by ``scores``; the unscored ones follow in id order.

    Also returns how many scored ids were unjudged (dropped) and how many judged
    products had no score.
    """
    judged_scores = {pid: s for pid, s in scores.items() if pid in query.judgments}
    unscored = sorted(pid for pid in query.judgments if pid not in judged_scores)
    return (
        ranked_ids(judged_scores) + unscored,
        len(scores) - len(judged_scores),
        len(unscored),
    )


def evaluate_protocol_b(
    dataset: EvalDataset,
    run: Mapping[str, Mapping[str, float]],
    *,
    ndcg_cutoff: int = 10,
) -> MetricsResult:
    """Protocol B (re-rank) nDCG of ``run``, which scores each query's judged products.

    Only judged products are ranked: run entries for unjudged products are dropped,
    and judged products the run does not score are placed after the scored ones, in
    product id order (both are logged). The metric key is ``"b.ndcg@{ndcg_cutoff}"``.

    Raises:
        ValueError: ``ndcg_cutoff`` is not positive.
    """
    if ndcg_cutoff <= 0:
        raise ValueError(f"ndcg_cutoff must be a positive integer, got {ndcg_cutoff}")
    _check_run_queries(dataset, run)
    gain_qrels = _gain_qrels(dataset)
    rankings: dict[str, list[str]] = {}
    dropped = unscored = 0
    for query in dataset.queries:
        if query.qid in gain_qrels:
            ranking, n_dropped, n_unscored = _judged_ranking(query, run.get(query.qid, {}))
            rankings[query.qid] = ranking
            dropped, unscored = dropped + n_dropped, unscored + n_unscored
    if dropped or unscored:
        logger.warning(
            "protocol B on %s: dropped %d scores of unjudged products; %d judged products "
            "had no score and were ranked last",
            dataset.name,
            dropped,
            unscored,
        )
    name = f"ndcg@{ndcg_cutoff}"
    means, per_query = _ranx_evaluate(gain_qrels, rankings, [name])
    n_left_out = len(dataset.queries) - len(gain_qrels)
    return MetricsResult(
        protocol="B",
        metrics={PROTOCOL_B_PREFIX + name: means[name]},
        n_queries=len(dataset.queries),
        n_left_out=n_left_out,
        n_left_out_ndcg=n_left_out,
        per_query={PROTOCOL_B_PREFIX + name: per_query[name]},
    )


def rerank_run(
    dataset: EvalDataset, scorer: Callable[[JudgedQuery, Sequence[str]], Sequence[float]]
) -> Run:
    """Build a protocol B run: ``scorer(query, product_ids)`` scores one query's judged
    products (in sorted id order) and must return one score per product.

    Raises:
        ValueError: the scorer returned the wrong number of scores.
    """
    run: Run = {}
    for query in dataset.queries:
        ids = sorted(query.judgments)
        scores = list(scorer(query, ids))
        if len(scores) != len(ids):
            raise ValueError(
                f"scorer returned {len(scores)} scores for the {len(ids)} judged products of "
                f"query {query.qid!r}; return one score per product"
            )
        run[query.qid] = {pid: float(s) for pid, s in zip(ids, scores, strict=True)}
    return run


def stage_recall(
    dataset: EvalDataset,
    stage_candidates: Mapping[str, Mapping[str, Sequence[str]]],
    k: int | None = None,
    *,
    threshold: float = DEFAULT_THRESHOLD,
) -> dict[str, float]:
    """Recall of relevant products after each stage of the query path.

    ``stage_candidates`` maps a stage name (e.g. ``"dense"``, ``"lexical"``, ``"fused"``,
    ``"filtered"``, ``"reranked"``) to ``{qid: ranked product ids}``; the result maps
    each stage, in the given order, to its mean recall@k (all candidates when ``k`` is
    None). Relevance and left-out queries as in protocol A; a query a stage has no
    list for scores 0 there.

    Raises:
        ValueError: ``k`` is not positive, or a candidate list repeats an id.
    """
    if k is not None and k <= 0:
        raise ValueError(f"k must be a positive integer or None, got {k}")
    name = f"recall@{k}" if k is not None else "recall"
    qrels = _binary_qrels(dataset, threshold)
    result: dict[str, float] = {}
    for stage, candidates in stage_candidates.items():
        for qid, ids in candidates.items():
            if len(set(ids)) != len(ids):
                raise ValueError(f"stage {stage!r}, query {qid!r}: a product id is listed twice")
        means, _ = _ranx_evaluate(qrels, candidates, [name])
        result[stage] = means[name]
    return result
