"""Protocol R3, shopper-aware search, exactly as ``shared/datasets/README.md`` defines it.

The queries are built by :func:`indexer.training.personal.word_queries` (one code for the
protocol and for the re-scorer's training queries; its docstring states the rules). This
module adds the strategies, the metrics and the run:

- metrics: MRR@10 and nDCG@10 on binary relevance, with ranx; a ranking is the candidates
  by score descending, ties by item id ascending (as :func:`indexer.judgments.ranked_ids`);
- a shopper's history at a query is their lines strictly before the query's invoice
  (history lines and the test month's earlier invoices), newest first, the newest
  ``history_limit`` of them: what :meth:`EventStore.recent_items` returns at that moment.
  The statistics (popularity, co-purchase counts, the models) stay frozen at the end of
  the history, as a nightly build's. (With the history lines only, own-then-copurchase
  scores 0.513 instead of 0.523; the README's 0.526 matches this reading best.)
- the base relevance of every personal strategy is the plain search relevance of
  :func:`indexer.training.personal.search_relevance`: popularity within the matches over
  the last :data:`RECENT_DAYS` days of history (every candidate matches the query word)
  plus the item tower's query similarity, with the weight the re-scorer's training
  fitted without history (its card's ``trained_on.search_relevance``).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pandas as pd
import scipy.sparse as sp

from shopsearch.indexer.retail import item_descriptions
from shopsearch.indexer.training.personal import (
    HISTORY_LIMIT,
    RECENT_DAYS,
    ShopperTimelines,
    WordQuery,
    popularity,
    search_relevance,
    word_queries,
)
from shopsearch.indexer.training.personal_model import fit_blend
from shopsearch.rerank.personal import ForYouScorer, PersonalRescorer
from shopsearch.rerank.personal import Strategy as PersonalStrategy
from shopsearch.retrieval.encoders import Encoder
from shopsearch.retrieval.recommend.base import HistoryItem
from shopsearch.retrieval.recommend.interactions import ItemVocab, basket_item_matrix, cooccurrence

__all__ = [
    "R3_METRICS",
    "ForYouRankers",
    "R3Data",
    "R3Result",
    "Strategy",
    "WordVectors",
    "evaluate_rankings",
    "personal_strategies",
    "rank_candidates",
    "reference_strategies",
    "run_r3",
    "run_strategies",
]

R3_METRICS = ("mrr@10", "ndcg@10")
FloatArray = npt.NDArray[np.float64]
R3Query = WordQuery


@dataclass(frozen=True)
class ForYouRankers:
    """The for-you rankers of the re-scorer's ``foryou`` feature: ``full``, fitted on the
    whole history, and ``fit_before``, which fits the one that knew only the months before
    the re-scorer's validation month (minutes: called only once the history has enough
    training queries for a re-scorer; None when it is too short for a ranker)."""

    full: ForYouScorer
    fit_before: Callable[[], ForYouScorer | None]


@dataclass
class R3Data:
    """What every strategy may read: the catalog, the popularity tables, co-purchase
    counts (from history lines only) and every shopper's timeline."""

    descriptions: dict[str, str]
    vocab: ItemVocab
    cooc: sp.csr_matrix
    popularity_all: dict[str, int]
    popularity_recent: dict[str, int]
    timelines: ShopperTimelines
    history_limit: int

    @classmethod
    def build(
        cls, history: pd.DataFrame, test: pd.DataFrame, history_limit: int = HISTORY_LIMIT
    ) -> R3Data:
        descriptions = item_descriptions(history, test)
        vocab = ItemVocab.of(sorted(descriptions))
        _, baskets = basket_item_matrix(
            list(history["invoice"]), list(history["stock_code"]), vocab
        )
        return cls(
            descriptions=descriptions,
            vocab=vocab,
            cooc=cooccurrence(baskets),
            popularity_all=popularity(history),
            popularity_recent=popularity(history, RECENT_DAYS),
            timelines=ShopperTimelines(history, test),
            history_limit=history_limit,
        )

    def popularity_log(self, query: R3Query) -> FloatArray:
        """log(1 + recent popularity) of each candidate (the ``popularity-recent`` order)."""
        pop = self.popularity_recent
        return np.log1p(np.array([pop.get(i, 0) for i in query.candidates], dtype=np.float64))


#: A strategy scores a query's candidates (same order as ``query.candidates``) for a
#: shopper history (possibly empty) and the base relevance scores.
Strategy = Callable[[R3Query, Sequence[HistoryItem], FloatArray], FloatArray]


def rank_candidates(candidates: Sequence[str], scores: FloatArray) -> list[str]:
    """Candidates by score descending, ties by id ascending."""
    order = sorted(range(len(candidates)), key=lambda k: (-scores[k], candidates[k]))
    return [candidates[k] for k in order]


def evaluate_rankings(
    queries: Sequence[R3Query], rankings: Mapping[str, Sequence[str]]
) -> dict[str, float]:
    """Mean MRR@10 and nDCG@10 (binary relevance, ranx) of ``rankings`` ({qid: ids});
    a query without a ranking scores 0."""
    if not queries:
        return dict.fromkeys(R3_METRICS, 0.0)
    import ranx  # deferred: importing ranx loads numba
    from numba.core.errors import NumbaTypeSafetyWarning

    run_dict = {
        q.qid: {item: float(len(ids) - k) for k, item in enumerate(ids)}
        for q in queries
        if (ids := list(rankings.get(q.qid, ())))
    }
    if not run_dict:
        return dict.fromkeys(R3_METRICS, 0.0)
    # ranx scores only the ranked queries; the others count as 0 in the mean (done here,
    # not with make_comparable, so the rule is visible).
    qrels = ranx.Qrels({q.qid: dict.fromkeys(q.relevant, 1) for q in queries if q.qid in run_dict})
    run = ranx.Run(run_dict)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NumbaTypeSafetyWarning)
        ranx.evaluate(qrels, run, list(R3_METRICS))
    return {m: float(sum(run.scores[m].values())) / len(queries) for m in R3_METRICS}


@dataclass
class R3Result:
    """``metrics``: {strategy: {metric: value}}; ``latency_ms``: {strategy: {p50, p95}}
    of the strategy's scoring call per query (base relevance and ranking excluded)."""

    metrics: dict[str, dict[str, float]]
    latency_ms: dict[str, dict[str, float]]
    n_queries: int
    n_shoppers: int
    rankings: dict[str, dict[str, list[str]]] = field(default_factory=dict, repr=False)


def run_strategies(
    data: R3Data,
    queries: Sequence[R3Query],
    strategies: Mapping[str, tuple[Strategy, bool]],
    bases: Mapping[str, FloatArray],
) -> R3Result:
    """Run every strategy on every query. ``strategies`` maps a name to (strategy,
    with_history): without history a strategy gets an empty history. ``bases``: each
    query's base relevance ({qid: scores of its candidates})."""
    metrics: dict[str, dict[str, float]] = {}
    latency: dict[str, dict[str, float]] = {}
    rankings: dict[str, dict[str, list[str]]] = {}
    for name, (strategy, with_history) in strategies.items():
        ranked: dict[str, list[str]] = {}
        times = np.empty(len(queries))
        for n, query in enumerate(queries):
            history = (
                data.timelines.history_at(query.customer, query.ts, data.history_limit)
                if with_history
                else []
            )
            start = time.perf_counter()
            scores = strategy(query, history, bases[query.qid])
            times[n] = time.perf_counter() - start
            ranked[query.qid] = rank_candidates(query.candidates, scores)
        metrics[name] = evaluate_rankings(queries, ranked)
        latency[name] = (
            {
                "p50": float(np.percentile(times, 50) * 1e3),
                "p95": float(np.percentile(times, 95) * 1e3),
            }
            if len(queries)
            else {"p50": 0.0, "p95": 0.0}
        )
        rankings[name] = ranked
    return R3Result(
        metrics=metrics,
        latency_ms=latency,
        n_queries=len(queries),
        n_shoppers=len({q.customer for q in queries}),
        rankings=rankings,
    )


def _order_scores(order: Sequence[int]) -> FloatArray:
    """Scores that reproduce a given order of candidate positions (first = highest)."""
    scores = np.empty(len(order), dtype=np.float64)
    scores[np.asarray(order, dtype=np.int64)] = np.arange(len(order), 0, -1, dtype=np.float64)
    return scores


def reference_strategies(data: R3Data) -> dict[str, Strategy]:
    """The README's reference points, no learning.

    - ``popularity``: invoices holding the item over all history (README: 0.388);
    - ``popularity-recent``: invoices holding the item in the last :data:`RECENT_DAYS` days;
    - ``search-relevance``: the base relevance (that popularity and the query similarity);
    - ``own-then-copurchase``: the candidates the shopper bought before (most lines in the
      history first), then by co-purchase count with the history's items, then by base
      relevance (README: 0.526).
    """
    pop_all = data.popularity_all

    def by_popularity(
        query: R3Query, history: Sequence[HistoryItem], base: FloatArray
    ) -> FloatArray:
        return np.log1p(np.array([pop_all.get(i, 0) for i in query.candidates], dtype=np.float64))

    def by_recent(query: R3Query, history: Sequence[HistoryItem], base: FloatArray) -> FloatArray:
        return data.popularity_log(query)

    def by_base(query: R3Query, history: Sequence[HistoryItem], base: FloatArray) -> FloatArray:
        return base

    def own_then_copurchase(
        query: R3Query, history: Sequence[HistoryItem], base: FloatArray
    ) -> FloatArray:
        if not history:
            return base
        own: dict[str, int] = {}
        for event in history:
            own[event.item] = own.get(event.item, 0) + 1
        cands = query.candidates
        owned = np.array([own.get(i, 0) for i in cands], dtype=np.float64)
        hist_idx = data.vocab.indices(list(own))
        hist_idx = hist_idx[hist_idx >= 0]
        cand_idx = data.vocab.indices(list(cands))
        co = np.zeros(len(cands))
        known = cand_idx >= 0
        if len(hist_idx) and known.any():
            # Row slices of a CSR matrix are cheap; column fancy-indexing is not.
            totals = np.asarray(data.cooc[hist_idx].sum(axis=0)).ravel()
            co[known] = totals[cand_idx[known]]
        order = sorted(range(len(cands)), key=lambda k: (-owned[k], -co[k], -base[k], cands[k]))
        return _order_scores(order)

    return {
        "popularity": by_popularity,
        "popularity-recent": by_recent,
        "search-relevance": by_base,
        "own-then-copurchase": own_then_copurchase,
    }


@dataclass
class WordVectors:
    """Per query word: its query vector (``encode_query(word)``) and its candidates' item
    vectors (the re-scorer's rows; zeros for an item it lacks). Both depend on the word
    only, so they are computed once per word before the run (the timed call is the
    re-scoring, as at serving time where both vectors already exist)."""

    query: dict[str, npt.NDArray[np.float32]]
    candidates: dict[str, npt.NDArray[np.float32]]

    @classmethod
    def build(
        cls, queries: Sequence[R3Query], rescorer: PersonalRescorer, encoder: Encoder
    ) -> WordVectors:
        words = sorted({q.word for q in queries})
        encoded = encoder.encode_query([w.lower() for w in words]) if words else None
        word_vecs = {w: encoded[k] for k, w in enumerate(words)} if encoded is not None else {}
        cand_vecs: dict[str, npt.NDArray[np.float32]] = {}
        for query in queries:
            if query.word not in cand_vecs:
                idx = rescorer.vocab.indices(query.candidates)
                vecs = np.zeros((len(idx), rescorer.item_vectors.shape[1]), dtype=np.float32)
                vecs[idx >= 0] = rescorer.item_vectors[idx[idx >= 0]]
                cand_vecs[query.word] = vecs
        return cls(word_vecs, cand_vecs)

    def similarity(self, query: R3Query) -> FloatArray:
        """``c . q`` of each candidate."""
        return (self.candidates[query.word] @ self.query[query.word]).astype(np.float64)


def personal_strategies(rescorer: PersonalRescorer, vectors: WordVectors) -> dict[str, Strategy]:
    """The re-scorer's strategies on R3, ``copurchase-boost`` and ``attention-blend``,
    through :meth:`PersonalRescorer.rescore` (the served path)."""
    word_vecs, cand_vecs = vectors.query, vectors.candidates

    def make(strategy: PersonalStrategy) -> Strategy:
        def score(query: R3Query, history: Sequence[HistoryItem], base: FloatArray) -> FloatArray:
            return rescorer.rescore(
                word_vecs[query.word],
                query.candidates,
                cand_vecs[query.word],
                base,
                history,
                strategy=strategy,
                now=query.ts,
            ).scores

        return score

    return {"copurchase-boost": make("copurchase"), "attention-blend": make("blend")}


def run_r3(
    history_lines: pd.DataFrame,
    test_lines: pd.DataFrame,
    *,
    encoder: Encoder,
    rescorer: PersonalRescorer | None = None,
    seed: int = 0,
    history_limit: int = HISTORY_LIMIT,
    max_train_minutes: float | None = None,
    foryou: ForYouRankers | None = None,
) -> R3Result:
    """Protocol R3 for every strategy side by side.

    Strategies: ``popularity`` (all history; README 0.388), ``popularity-recent``,
    ``search-relevance`` (the base relevance), ``own-then-copurchase`` (README 0.526),
    ``copurchase-boost`` and ``attention-blend`` (the re-scorer), and each personal one
    again with an empty history (``<name>/no-history``), which must equal
    ``search-relevance``. Without a ``rescorer``, one is trained on ``history_lines`` alone
    (statistics before its last month, validation queries of that month; never a test
    line), with ``foryou``'s rankers for its ``foryou`` feature.

    Raises:
        ValueError: no month before the history's last, or no validation query.
        PersonalError: fewer usable validation queries than a re-scorer needs
            (:data:`rerank.personal_fit.MIN_EXAMPLES`); raised before ``foryou``'s
            before-month ranker is fitted.
    """
    data = R3Data.build(history_lines, test_lines, history_limit)
    queries = word_queries(history_lines, test_lines, data.descriptions, seed=seed)
    if rescorer is None:
        rescorer, _ = fit_blend(
            history_lines,
            data.descriptions,
            encoder,
            foryou_full=foryou.full if foryou is not None else None,
            fit_before=foryou.fit_before if foryou is not None else None,
            seed=seed,
            max_minutes=max_train_minutes,
        )
    relevance = rescorer.card.get("trained_on", {}).get("search_relevance", {})
    query_weight = float(relevance.get("query_similarity", 0.0))
    vectors = WordVectors.build(queries, rescorer, encoder)
    bases = {
        q.qid: search_relevance(data.popularity_log(q), vectors.similarity(q), query_weight)
        for q in queries
    }
    strategies: dict[str, tuple[Strategy, bool]] = {}
    personal = {**reference_strategies(data), **personal_strategies(rescorer, vectors)}
    for name, strategy in personal.items():
        strategies[name] = (strategy, True)
    for name in ("own-then-copurchase", "copurchase-boost", "attention-blend"):
        strategies[f"{name}/no-history"] = (personal[name], False)
    return run_strategies(data, queries, strategies, bases)
