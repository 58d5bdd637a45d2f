"""Run configurations of the engine over a judged dataset, in-process.

Each :class:`Configuration` is a way of answering: overrides of the service's
:class:`~retrieval.search_params.SearchParams` (mode, fusion, rerank, exact or
approximate dense index, nprobe, ...). :func:`evaluate_configurations` runs every query
of the dataset through :meth:`api.service.SearchService.retrieve` with each
configuration's parameters, keeps the top ``depth`` products as a run, the candidates
after each stage (for stage recall) and the per-query latency, and scores them with
protocol A (and B where a scorer exists). The service is only searched, never changed:
the reranker memo is passed per call, the exact dense leg is a parameter.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shopsearch.api.rerank_stage import Scorer
from shopsearch.api.retrieval_stages import normalize_query
from shopsearch.api.schemas import SearchRequest
from shopsearch.api.service import SearchService
from shopsearch.eval.loadtest import summarize_latencies
from shopsearch.eval.metrics import (
    MetricsResult,
    evaluate_protocol_a,
    evaluate_protocol_b,
    rerank_run,
    stage_recall,
)
from shopsearch.eval.report import ConfigResult
from shopsearch.indexer.judgments import EvalDataset, JudgedQuery, Run
from shopsearch.retrieval.item_text import item_text
from shopsearch.retrieval.search_params import (
    PARAM_NAMES,
    FusionName,
    MergeName,
    ModeName,
    SearchParams,
    parse_param,
)

__all__ = [
    "Configuration",
    "EvalOutcome",
    "default_configurations",
    "evaluate_configurations",
    "parse_sweep",
    "sweep_configurations",
]

log = logging.getLogger(__name__)

#: Evaluation asks each leg for this many candidates, so recall@1000 is measurable.
EVAL_DEPTH = 1000
#: Stage recall is reported at this cut-off: what reaches the reranker's window matters.
STAGE_RECALL_K = 100


@dataclass(frozen=True, slots=True)
class Configuration:
    """One way of answering, evaluated as a whole: :class:`SearchParams` overrides.

    The named fields are the overrides every evaluation sets (each is the
    :class:`SearchParams` field of the same name; None: the service's); ``overrides``
    sets any other field (``{"nprobe": 4}``: what ``--sweep`` adds) and wins over them.
    Unless ``serve_defaults``, the legs are asked for the run's depth and the reranker
    scores the evaluation's rerank depth.
    """

    name: str
    mode: ModeName = "hybrid"
    #: None: the service's default fusion (``SearchService.default_fusion``).
    fusion: FusionName | None = "rrf"
    lexical_weight: float | None = None
    rerank: bool = False
    #: Weight of the reranker in ``rerank.merge``; None: the service's setting.
    rerank_weight: float | None = None
    #: ``rerank.merge`` method; None: the service's setting.
    rerank_merge: MergeName | None = None
    exact_dense: bool = False
    #: Query rewriting (units, spelling); None: the service's settings (on by default).
    rewrite: bool | None = None
    #: Ask exactly as ``serve`` answers a request that sets nothing: the service's leg
    #: depth, fusion, rerank depth and merge (the run's depth is ignored).
    serve_defaults: bool = False
    #: Any :class:`SearchParams` field by name (checked at construction).
    overrides: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.overrides) - set(PARAM_NAMES))
        if unknown:
            raise ValueError(
                f"configuration {self.name}: unknown search parameter(s) {unknown}; choose "
                f"from {', '.join(PARAM_NAMES)}"
            )

    def params(self) -> dict[str, Any]:
        """What this configuration sets, as reported in metrics.json (``overrides``
        flattened in, so a swept ``nprobe`` reads as one)."""
        fields = {
            k: v
            for k, v in dataclasses.asdict(self).items()
            if k not in ("name", "overrides") and v is not None
        }
        return {**fields, **self.overrides}

    def search_overrides(self, depth: int, rerank_depth: int) -> dict[str, object]:
        """The :class:`SearchParams` overrides of this configuration in a run of
        ``depth`` whose reranker scores ``rerank_depth`` candidates."""
        named: dict[str, object] = {
            "mode": self.mode,
            "fusion": self.fusion,
            "lexical_weight": self.lexical_weight,
            "rerank": self.rerank,
            "rerank_weight": self.rerank_weight,
            "rerank_merge": self.rerank_merge,
            "exact_dense": self.exact_dense or None,
            "rewrite": self.rewrite,
        }
        if self.serve_defaults:
            return dict(self.overrides)  # as serve answers a request that sets nothing
        # A leg or a fusion is measured on its whole ranking (recall@1000 of the legs);
        # only `default` is cut to the query's result set, as serve answers.
        named.update(
            leg_depth=depth,
            rerank_depth=rerank_depth if self.rerank else None,
            match_only=False,
        )
        return {**{k: v for k, v in named.items() if v is not None}, **self.overrides}


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


def parse_sweep(text: str) -> tuple[str, tuple[object, ...]]:
    """``"nprobe=1,4,16"`` as ``("nprobe", (1, 4, 16))``: a :class:`SearchParams` field
    and values of its type (ranges are checked when the configurations are evaluated).

    Raises:
        ValueError: not ``NAME=V1,V2,...``, an unknown field, or a value of another type.
    """
    name, sep, values = text.partition("=")
    parts = [v for v in values.split(",") if v.strip()]
    if not sep or not name.strip() or not parts:
        raise ValueError(
            f"sweep {text!r} is not NAME=V1,V2,...; e.g. nprobe=1,4,16 "
            f"(NAME: one of {', '.join(PARAM_NAMES)})"
        )
    return name.strip(), tuple(parse_param(name.strip(), v) for v in parts)


def sweep_configurations(
    configs: Sequence[Configuration], sweeps: Sequence[tuple[str, Sequence[object]]]
) -> list[Configuration]:
    """Each configuration followed by one copy per combination of the swept values (the
    product over ``sweeps``), named ``<name>-<field>-<value>`` per swept field, e.g.
    ``default-nprobe-4``; a swept value overrides the configuration's own."""
    choices = [[(name, value) for value in values] for name, values in sweeps]
    out: list[Configuration] = []
    for config in configs:
        out.append(config)
        if not choices:
            continue
        for combo in itertools.product(*choices):
            suffix = "".join(f"-{name}-{_label(value)}" for name, value in combo)
            out.append(
                dataclasses.replace(
                    config, name=config.name + suffix, overrides={**config.overrides, **dict(combo)}
                )
            )
    return out


def _label(value: object) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


class _RerankMemo:
    """A reranker with its scores remembered per ``(query, text)``: the scorer eval
    passes to each search (:class:`api.rerank_stage.Scorer`).

    Configurations that rerank the same candidates (a sweep of the merge weight, or of
    fusion methods that share a head) score each pair once. ``hits`` counts the pairs
    served from memory, so a configuration whose latency they would flatter can say so.
    """

    def __init__(self, reranker: Scorer) -> None:
        self.reranker = reranker
        self.memo: dict[tuple[str, str], float] = {}
        self.hits = 0

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


def _request(service: SearchService, config: Configuration, text: str, depth: int) -> SearchRequest:
    """The request of ``config`` for ``text``: one page of up to 100 hits (so recall@100
    is measurable); the configuration's parameters go beside it (``search_overrides``).

    A ``serve_defaults`` configuration asks what ``serve`` gets when the client sets
    nothing but that page size: every stage runs as configured. The service's leg depth
    is at least 100 by default, so the ranked list is the one every page of the default
    answer is cut from."""
    size = service.settings.leg_depth if config.serve_defaults else depth
    return SearchRequest(q=text, size=min(100, size))


def _searched(service: SearchService, text: str) -> str:
    """``text`` as the service's stages would search it (normalized, then rewritten)."""
    query = normalize_query(text)
    done = service.rewrite_query(query)
    return done.text if done is not None else query


def _dense_scorer(
    service: SearchService,
) -> Callable[[JudgedQuery, Sequence[str]], Sequence[float]]:
    """Protocol B with the two towers: cosine of the query and each judged product
    (its stored vector, not the index's quantized copy)."""
    snap = service.snapshot

    def score(query: JudgedQuery, ids: Sequence[str]) -> Sequence[float]:
        qvec = service.encoder.encode_query([_searched(service, query.text)])[0]
        rows = [snap.table.row_of.get(pid) for pid in ids]
        found = np.asarray([r for r in rows if r is not None], dtype=np.int64)
        stored = iter(snap.vectors.vectors_of(found))
        # One product at a time, as ever: a matrix product may round differently.
        return [float(next(stored) @ qvec) if r is not None else -1.0 for r in rows]

    return score


def _rerank_scorer(
    service: SearchService, reranker: Scorer
) -> Callable[[JudgedQuery, Sequence[str]], Sequence[float]]:
    """Protocol B with the cross-encoder over each judged product's item text."""
    table = service.snapshot.table

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

    The service must have its snapshot loaded; it is only searched (each configuration's
    parameters and the reranker memo go with every call), so it serves as before after.

    Raises:
        ValueError: a configuration reranks and the service has no reranker, or sets a
            search parameter out of range.
    """
    outcomes: list[EvalOutcome] = []
    queries = [q for q in dataset.queries if q.judgments]
    # Passed as the scorer of each search, so the service's own score cache is bypassed:
    # the memo must see every pair (its hits mark latencies it flatters).
    memo = _RerankMemo(service.reranker) if service.reranker is not None else None
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
    return outcomes


def _params(
    service: SearchService,
    config: Configuration,
    depth: int,
    rerank_depth: int,
    memo: _RerankMemo | None,
) -> SearchParams:
    """What ``config`` searches with (the same for every query: only the text differs),
    resolved before any query runs so a bad configuration fails at once."""
    try:
        params = service.search_params(
            _request(service, config, "probe", depth), config.search_overrides(depth, rerank_depth)
        )
    except ValueError as exc:
        raise ValueError(f"configuration {config.name}: {exc}") from exc
    if (config.rerank or params.rerank) and memo is None:
        raise ValueError(f"configuration {config.name} needs a reranker; pass --reranker")
    return params


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
    ids = service.snapshot.table.products
    b_cache: dict[str, MetricsResult] = {}
    resolved = [_params(service, config, depth, rerank_depth, memo) for config in configs]
    for config, params in zip(configs, resolved, strict=True):
        hits_before = memo.hits if memo is not None else 0
        run: Run = {}
        stages: dict[str, dict[str, list[str]]] = {
            "dense": {},
            "lexical": {},
            "fused": {},
            "final": {},
        }
        latencies: list[float] = []
        advance = progress(config.name, len(queries)) if progress is not None else None
        for query in queries:
            request = _request(service, config, query.text, depth)
            started = time.perf_counter()
            result = service.retrieve(request, params=params, scorer=memo)
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
        reused = memo is not None and memo.hits > hits_before  # before protocol B scores more
        a = evaluate_protocol_a(dataset, run)
        # Protocol B orders each query's judged products by one scorer: the two towers'
        # cosine for dense configurations, the cross-encoder for reranked ones.
        b = None
        scorer_kind = "rerank" if params.rerank else ("dense" if params.mode == "dense" else None)
        if protocol_b and scorer_kind is not None:
            if scorer_kind not in b_cache:
                scorer = (
                    _rerank_scorer(service, memo)
                    if scorer_kind == "rerank" and memo is not None
                    else _dense_scorer(service)
                )
                b_cache[scorer_kind] = evaluate_protocol_b(dataset, rerank_run(dataset, scorer))
            b = b_cache[scorer_kind]
        elif protocol_b:
            # Other configurations order the judged products as their own run does (a
            # judged product the run did not retrieve goes last).
            b = evaluate_protocol_b(dataset, rerank_run(dataset, _run_scorer(run)))
        used = {k: v for k, v in stages.items() if any(v.values())}
        recall = stage_recall(dataset, used, k=STAGE_RECALL_K)
        if params.rerank and reused:
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
