"""Run configurations of the engine over a judged dataset, in-process.

Each :class:`Configuration` is a way of answering (mode, fusion, rerank, exact or
approximate dense index). :func:`evaluate_configurations` runs every query of the
dataset through :meth:`api.service.SearchService.retrieve` for each configuration,
keeps the top ``depth`` products as a run, the candidates after each stage (for stage
recall) and the per-query latency, and scores them with protocol A (and B where a
scorer exists).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from api.schemas import SearchRequest
from api.service import SearchService, normalize_query
from eval.loadtest import summarize_latencies
from eval.metrics import (
    MetricsResult,
    evaluate_protocol_a,
    evaluate_protocol_b,
    rerank_run,
    stage_recall,
)
from eval.report import ConfigResult
from indexer.judgments import EvalDataset, JudgedQuery, Run
from retrieval.item_text import item_text
from retrieval.vector_index import ExactIndex, FaissIndex

__all__ = [
    "Configuration",
    "EvalOutcome",
    "default_configurations",
    "evaluate_configurations",
]

log = logging.getLogger(__name__)

#: Evaluation asks each leg for this many candidates, so recall@1000 is measurable.
EVAL_DEPTH = 1000
#: Stage recall is reported at this cut-off: what reaches the reranker's window matters.
STAGE_RECALL_K = 100


@dataclass(frozen=True, slots=True)
class Configuration:
    """One way of answering, evaluated as a whole."""

    name: str
    mode: str = "hybrid"
    #: None: the service's default fusion (``SearchService.default_fusion``).
    fusion: str | None = "rrf"
    lexical_weight: float | None = None
    rerank: bool = False
    #: Weight of the reranker in ``rerank.merge``; None: the service's setting.
    rerank_weight: float | None = None
    #: ``rerank.merge`` method ("scores" or "ranks"); None: the service's setting.
    rerank_merge: str | None = None
    exact_dense: bool = False
    #: Query rewriting (units, spelling); None: the service's settings (on by default).
    rewrite: bool | None = None
    #: Ask exactly as ``serve`` answers a request that sets nothing: the service's leg
    #: depth, fusion, rerank depth and merge (the run's depth is ignored).
    serve_defaults: bool = False

    def params(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "name" and v is not None}


def default_configurations(
    *,
    with_reranker: bool,
    weights: Sequence[float] = (0.3, 0.5, 0.7),
    rerank_weights: Sequence[float | None] = (None,),
) -> list[Configuration]:
    """``default`` (exactly what ``serve`` answers with its defaults for the snapshot:
    the default fusion, the reranker when one is configured, the serving leg depth),
    lexical (on the query as typed, and rewritten), dense exact, dense IVF-PQ, hybrid
    RRF and a sweep of both weighted fusions over ``weights``, and when a reranker is configured each hybrid once
    more with rerank per entry of ``rerank_weights`` (``None``: the service's setting,
    named ``<hybrid>+rerank``; a number ``w``: named ``<hybrid>+rerank-w<w>``), and once
    with the rank merge at the service's weight (``<hybrid>+rerank-ranks``)."""
    configs = [
        Configuration("default", fusion=None, rerank=with_reranker, serve_defaults=True),
        # BM25 on the query as typed: the reference the product's gains are measured against.
        Configuration("lexical-typed", mode="lexical", rewrite=False),
        Configuration("lexical", mode="lexical"),
        Configuration("dense-exact", mode="dense", exact_dense=True),
        Configuration("dense-ivfpq", mode="dense"),
        Configuration("hybrid-rrf", mode="hybrid", fusion="rrf"),
        *[
            Configuration(f"hybrid-weighted-{w:g}", fusion="weighted", lexical_weight=w)
            for w in weights
        ],
        *[
            Configuration(f"hybrid-weighted-rrf-{w:g}", fusion="weighted-rrf", lexical_weight=w)
            for w in weights
        ],
    ]
    if with_reranker:
        configs += [
            dataclasses.replace(
                c,
                name=f"{c.name}+rerank" + ("" if rw is None else f"-w{rw:g}"),
                rerank=True,
                rerank_weight=rw,
            )
            for c in configs
            if c.mode == "hybrid" and not c.serve_defaults
            for rw in rerank_weights
        ] + [
            dataclasses.replace(c, name=f"{c.name}+rerank-ranks", rerank=True, rerank_merge="ranks")
            for c in configs
            if c.mode == "hybrid" and not c.serve_defaults
        ]
    return configs


class _RerankMemo:
    """The service's reranker with its scores remembered per ``(query, text)``.

    Configurations that rerank the same candidates (a sweep of the merge weight, or of
    fusion methods that share a head) score each pair once. ``hits`` counts the pairs
    served from memory, so a configuration whose latency they would flatter can say so.
    """

    def __init__(self, reranker: Any) -> None:
        self.reranker = reranker
        self.memo: dict[tuple[str, str], float] = {}
        self.hits = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.reranker, name)

    def score(self, query: str, texts: Sequence[str]) -> np.ndarray:
        distinct = list(dict.fromkeys(texts))  # identical titles are scored once per call
        missing = [t for t in distinct if (query, t) not in self.memo]
        self.hits += len(distinct) - len(missing)
        if missing:
            for text, value in zip(
                missing, self.reranker.score(query, missing).tolist(), strict=True
            ):
                self.memo[(query, text)] = value
        return np.asarray([self.memo[(query, t)] for t in texts], dtype=np.float32)


@dataclass(slots=True)
class EvalOutcome:
    """What one configuration produced."""

    config: Configuration
    run: Run
    protocol_a: MetricsResult
    protocol_b: MetricsResult | None
    stage_recall: dict[str, float]
    latency_ms: list[float] = field(default_factory=list)

    def result(self) -> ConfigResult:
        metrics = dict(self.protocol_a.metrics)
        if self.protocol_b is not None:
            metrics.update(self.protocol_b.metrics)
        metrics.update(
            {f"stage.{k}": v for k, v in self.stage_recall.items()}
        )  # recall@100 after each stage
        lat = summarize_latencies(self.latency_ms)
        return ConfigResult(
            name=self.config.name,
            metrics=metrics,
            latency_p50_ms=lat.p50_ms,
            latency_p95_ms=lat.p95_ms,
            n_queries=self.protocol_a.n_queries,
            n_left_out=self.protocol_a.n_left_out,
            params=self.config.params(),
        )


def _serve_request(service: SearchService, text: str) -> SearchRequest:
    """The request ``serve`` gets for ``text`` when the client sets nothing but a page
    size of up to 100 (so recall@100 is measurable): every stage runs as configured.
    The service's leg depth is at least 100 by default, so the ranked list is the one
    every page of the default answer is cut from."""
    return SearchRequest(q=text, size=min(100, service.settings.leg_depth))


def _searched(service: SearchService, text: str) -> str:
    """``text`` as the service's stages would search it (normalized, then rewritten)."""
    query = normalize_query(text)
    done = service.rewrite_query(query)
    return done.text if done is not None else query


def _dense_scorer(
    service: SearchService,
) -> Callable[[JudgedQuery, Sequence[str]], Sequence[float]]:
    """Protocol B with the two towers: cosine of the query and each judged product."""
    snap = service.snapshot
    vectors = snap.vectors.vectors if isinstance(snap.vectors, (ExactIndex, FaissIndex)) else None

    def score(query: JudgedQuery, ids: Sequence[str]) -> Sequence[float]:
        qvec = service.encoder.encode_query([_searched(service, query.text)])[0]
        rows = [snap.table.row_of.get(pid) for pid in ids]
        if vectors is None:
            return [0.0] * len(ids)
        return [float(vectors[r] @ qvec) if r is not None else -1.0 for r in rows]

    return score


def _rerank_scorer(
    service: SearchService,
) -> Callable[[JudgedQuery, Sequence[str]], Sequence[float]]:
    """Protocol B with the cross-encoder over each judged product's item text."""
    reranker = service.reranker
    table = service.snapshot.table
    if reranker is None:
        raise ValueError("no reranker is configured")

    def score(query: JudgedQuery, ids: Sequence[str]) -> Sequence[float]:
        texts = [
            item_text(table.products[table.row_of[pid]]) if pid in table.row_of else ""
            for pid in ids
        ]
        return reranker.score(_searched(service, query.text), texts).tolist()

    return score


def _run_scorer(run: Run) -> Callable[[JudgedQuery, Sequence[str]], Sequence[float]]:
    """Protocol B from a configuration's own ranking: its score, or -1 when not retrieved."""

    def score(query: JudgedQuery, ids: Sequence[str]) -> Sequence[float]:
        ranked = run.get(query.qid, {})
        return [ranked.get(pid, -1.0) for pid in ids]

    return score


def evaluate_configurations(
    service: SearchService,
    dataset: EvalDataset,
    configs: Sequence[Configuration],
    *,
    depth: int = EVAL_DEPTH,
    rerank_depth: int = 50,
    protocol_b: bool = True,
    progress: Callable[[str, int], Any] | None = None,
) -> list[EvalOutcome]:
    """Evaluate each configuration on every judged query of ``dataset``.

    The service must have its snapshot loaded; for ``exact_dense`` configurations the
    vector index is swapped for the exact oracle over the same stored vectors, and put
    back afterwards.
    """
    outcomes: list[EvalOutcome] = []
    queries = [q for q in dataset.queries if q.judgments]
    real_reranker = service.reranker
    memo = _RerankMemo(real_reranker) if real_reranker is not None else None
    service.reranker = memo  # type: ignore[assignment]
    # The memo must see every pair (its hits mark latencies it flatters): the service's
    # own score cache would answer repeats before it.
    score_cache, service.score_cache = service.score_cache, None
    try:
        _run_configurations(
            service,
            dataset,
            queries,
            configs,
            depth,
            rerank_depth,
            protocol_b,
            progress,
            outcomes,
            memo,
        )
    finally:
        service.reranker = real_reranker
        service.score_cache = score_cache
    return outcomes


def _run_configurations(
    service: SearchService,
    dataset: EvalDataset,
    queries: Sequence[JudgedQuery],
    configs: Sequence[Configuration],
    depth: int,
    rerank_depth: int,
    protocol_b: bool,
    progress: Callable[[str, int], Any] | None,
    outcomes: list[EvalOutcome],
    memo: _RerankMemo | None,
) -> None:
    original = service.snapshot
    exact_snapshot = None
    b_cache: dict[str, MetricsResult] = {}
    for config in configs:
        hits_before = memo.hits if memo is not None else 0
        if config.rerank and service.reranker is None:
            raise ValueError(f"configuration {config.name} needs a reranker; pass --reranker")
        if config.exact_dense:
            if exact_snapshot is None:
                vectors = getattr(original.vectors, "vectors", None)
                if vectors is None:
                    raise ValueError(
                        "the snapshot's vector index keeps no stored vectors for an exact oracle"
                    )
                exact = ExactIndex(vectors)
                exact.alive = original.vectors.alive.copy()  # type: ignore[attr-defined]
                exact_snapshot = dataclasses.replace(original, vectors=exact)
            service.use_snapshot(exact_snapshot)
        run: Run = {}
        stages: dict[str, dict[str, list[str]]] = {
            "dense": {},
            "lexical": {},
            "fused": {},
            "final": {},
        }
        latencies: list[float] = []
        ids = original.table.products
        advance = progress(config.name, len(queries)) if progress is not None else None
        try:
            for query in queries:
                request = (
                    _serve_request(service, query.text)
                    if config.serve_defaults
                    else SearchRequest(
                        q=query.text,
                        size=min(100, depth),
                        mode=config.mode,  # type: ignore[arg-type]
                        fusion=config.fusion,  # type: ignore[arg-type]
                        lexical_weight=config.lexical_weight,
                        rerank=config.rerank,
                        rerank_depth=rerank_depth if config.rerank else None,
                        rerank_weight=config.rerank_weight,
                        rerank_merge=config.rerank_merge,  # type: ignore[arg-type]
                        rewrite=config.rewrite,
                        depth=depth,
                    )
                )
                started = time.perf_counter()
                result = service.retrieve(request)
                latencies.append((time.perf_counter() - started) * 1000.0)
                final = result.filtered[:depth]
                # Rank-based scores: exact ties in fused scores must not reorder the run.
                run[query.qid] = {ids[c.row].id: float(depth - i) for i, c in enumerate(final)}
                stages["dense"][query.qid] = [ids[r].id for r, _ in result.dense]
                stages["lexical"][query.qid] = [ids[r].id for r, _ in result.lexical]
                stages["fused"][query.qid] = [ids[c.row].id for c in result.fused]
                stages["final"][query.qid] = [ids[c.row].id for c in final]
                if advance is not None:
                    advance(1)
        finally:
            service.use_snapshot(original)
        reused = memo is not None and memo.hits > hits_before  # before protocol B scores more
        a = evaluate_protocol_a(dataset, run)
        # Protocol B orders each query's judged products by one scorer: the two towers'
        # cosine for dense configurations, the cross-encoder for reranked ones.
        b = None
        scorer_kind = "rerank" if config.rerank else ("dense" if config.mode == "dense" else None)
        if protocol_b and scorer_kind is not None:
            if scorer_kind not in b_cache:
                scorer = (
                    _rerank_scorer(service) if scorer_kind == "rerank" else _dense_scorer(service)
                )
                b_cache[scorer_kind] = evaluate_protocol_b(dataset, rerank_run(dataset, scorer))
            b = b_cache[scorer_kind]
        elif protocol_b:
            # Other configurations order the judged products as their own run does (a
            # judged product the run did not retrieve goes last).
            b = evaluate_protocol_b(dataset, rerank_run(dataset, _run_scorer(run)))
        used = {k: v for k, v in stages.items() if any(v.values())}
        recall = stage_recall(dataset, used, k=STAGE_RECALL_K)
        if config.rerank and reused:
            # Scores came from an earlier configuration: its latency would flatter this one.
            log.info("%s: rerank scores reused from memory; latency not reported", config.name)
            latencies = []
        outcomes.append(EvalOutcome(config, run, a, b, recall, latencies))
        log.info(
            "%s: nDCG@10 %.4f recall@100 %.4f (p50 %.1f ms)",
            config.name,
            a.metrics.get("ndcg@10", float("nan")),
            a.metrics.get("recall@100", float("nan")),
            float(np.median(latencies)) if latencies else float("nan"),
        )
