"""The retrieval stages of one search request on one pinned snapshot: the dense and
lexical legs, their fusion, the filters (widening the legs while filters eat the
candidates) and the cut to the query's result set.

:meth:`api.service.SearchService.retrieve` runs them in order, then the rerank stage
(``api/rerank_stage.py``). Each stage adds its time to the request's :class:`Retrieval`;
a stage that fails is listed in its ``degraded`` and the answer comes from the stages
that worked (only when both legs fail is it an error); work the deadline left out is
listed in its ``cut``.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from shopsearch.api.schemas import FilterSpec
from shopsearch.indexer.match_threshold import dense_threshold
from shopsearch.indexer.snapshot_load import LoadedSnapshot
from shopsearch.retrieval.circuit_breaker import CircuitBreaker
from shopsearch.retrieval.deadline import Deadline
from shopsearch.retrieval.filters import Filters, ProductTable
from shopsearch.retrieval.fusion import FusionMethod, describe, fuse
from shopsearch.retrieval.lexical_index import LexicalIndexError
from shopsearch.retrieval.log_throttle import LogThrottle
from shopsearch.retrieval.result_set import restrict_to_matches
from shopsearch.retrieval.search_params import SearchParams
from shopsearch.retrieval.types import Candidate, QueryRewrite, ShopsearchError

__all__ = [
    "DeadlineExceeded",
    "DenseObserver",
    "Retrieval",
    "ServiceError",
    "elapsed_ms",
    "normalize_query",
    "retrieve_candidates",
    "to_filters",
]

log = logging.getLogger(__name__)

#: Told of each computed search whose dense leg answered: (the snapshot searched, the
#: query vector (1, d), the rows the leg returned best first, the k it was asked for).
#: Runs on the request path, so it must return at once (api/quality_monitor.py only
#: queues a sample); the arrays are the request's own and must not be written to.
DenseObserver = Callable[
    [LoadedSnapshot, npt.NDArray[np.float32], npt.NDArray[np.int64], int], object
]


class ServiceError(ShopsearchError):
    """The service cannot answer at all (no snapshot, or every retrieval leg failed)."""


class DeadlineExceeded(ServiceError):
    """The request's deadline passed (or it was cancelled) before any leg answered."""


_SPACES = re.compile(r"\s+")


def normalize_query(q: str) -> str:
    """Trim and collapse whitespace; case is left to each leg's analyzer."""
    return _SPACES.sub(" ", q).strip()


def to_filters(spec: FilterSpec | None) -> Filters:
    """The engine's :class:`Filters` from the API's filter spec."""
    if spec is None:
        return Filters()
    brand: tuple[str, ...] = ()
    if spec.brand is not None:
        brand = (spec.brand,) if isinstance(spec.brand, str) else tuple(spec.brand)
    return Filters(
        brand=brand,
        category=spec.category,
        price_min=spec.price.min if spec.price else None,
        price_max=spec.price.max if spec.price else None,
        in_stock=spec.in_stock,
        attributes=spec.attributes(),
    )


@dataclass(slots=True)
class Retrieval:
    """Everything a request's stages produced, before paging (eval reads the stages)."""

    snapshot: LoadedSnapshot
    #: The normalized query as typed.
    query: str
    #: Query rewriting's result; ``search_text`` is what the stages searched.
    rewrite: QueryRewrite | None = None
    dense: list[tuple[int, float]] = field(default_factory=list)
    lexical: list[tuple[int, float]] = field(default_factory=list)
    fused: list[Candidate] = field(default_factory=list)
    filtered: list[Candidate] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    degraded: list[str] = field(default_factory=list)
    rerank_status: str = "off"
    depth: int = 0
    #: Work left out to meet the deadline ("rerank", "rerank depth 50 -> 20", "widen").
    cut: list[str] = field(default_factory=list)
    #: The fusion that combined the legs ("rrf", "weighted (bm25 0.8)"); "" for one leg.
    fusion: str = ""
    #: What the request was answered with (None only before retrieve() fills it).
    params: SearchParams | None = None
    #: Products matching the query (``retrieval/result_set.py``); None: not counted
    #: (``match_only`` off, or unknown), so the answer's total is ``len(filtered)``.
    total: int | None = None

    @property
    def search_text(self) -> str:
        """The text every stage searched: the rewritten query, else the typed one."""
        return self.rewrite.text if self.rewrite is not None else self.query


def retrieve_candidates(
    result: Retrieval,
    params: SearchParams,
    filters: Filters,
    deadline: Deadline,
    need: int,
    encode: Callable[[str], npt.NDArray[np.float32]],
    *,
    breaker: CircuitBreaker | None,
    degraded_log: LogThrottle,
    on_dense: DenseObserver | None,
) -> None:
    """Run the retrieval stages for ``result`` (its snapshot and ``search_text``) as
    ``params`` say, leaving the candidates that pass ``filters``, best first, in
    ``result.filtered`` (at least ``need`` when the legs have them; rerank comes after).

    ``encode`` gives the dense leg's query vector. ``deadline`` is checked between the
    stages: a deadline already passed at the start still gets the cheapest leg (lexical
    in hybrid mode; dense is listed in ``cut``). ``breaker`` is the lexical leg's
    circuit breaker (None: none): the result set (``params.match_only``) is asked of the
    lexical index only while it is closed. A leg's failure is logged through
    ``degraded_log`` when it is the backend's (rate-limited). ``on_dense`` (see
    :data:`DenseObserver`) is called once, after retrieval, with the dense leg's last
    answer (the widest, when filters widened the search).

    Raises:
        DeadlineExceeded: the request was cancelled (the client left), or no leg
            answered before the deadline.
        ServiceError: every leg failed.
    """
    snap = result.snapshot
    query = result.search_text
    timings = result.timings_ms
    use_dense = params.mode in ("hybrid", "dense")
    use_lexical = params.mode in ("hybrid", "lexical")

    qvec = None
    if deadline.cancelled:  # the client is gone: no one to answer
        raise DeadlineExceeded(f"{deadline.reason} before the search started")
    if deadline.expired() and use_dense and use_lexical:
        # Out of time already (a tiny budget, or a long wait in line): answer from the
        # cheapest leg alone rather than not at all. A single-leg mode runs its leg.
        result.cut.append("dense")
        use_dense = False
    if use_dense:
        t = time.perf_counter()
        try:
            qvec = encode(query)
        except Exception:
            log.exception("query encoding failed; serving without the dense leg")
            result.degraded.append("dense")
            use_dense = False
        timings["encode"] = elapsed_ms(t)

    dense_rows = _search_legs(
        result,
        params,
        filters,
        deadline,
        need,
        qvec,
        use_dense=use_dense,
        use_lexical=use_lexical,
        degraded_log=degraded_log,
    )

    # Without a whole lexical answer (the cluster failed, was cut or answered from
    # some shards) the result set cannot be known: every candidate stays, and the
    # cluster is not asked again within the same budget.
    lexical_whole = not any(s.startswith("lexical") for s in (*result.degraded, *result.cut))
    lexical_whole = lexical_whole and (breaker is None or breaker.state == "closed")
    if params.match_only and lexical_whole:
        _keep_matches(result, filters, degraded_log)
    if on_dense is not None and qvec is not None and dense_rows is not None:
        on_dense(snap, qvec, dense_rows, result.depth)


def _search_legs(
    result: Retrieval,
    params: SearchParams,
    filters: Filters,
    deadline: Deadline,
    need: int,
    qvec: npt.NDArray[np.float32] | None,
    *,
    use_dense: bool,
    use_lexical: bool,
    degraded_log: LogThrottle,
) -> npt.NDArray[np.int64] | None:
    """Search the legs still to run (``use_dense`` with the query vector ``qvec``,
    ``use_lexical``) on ``result.snapshot`` for ``result.search_text``, ``params.leg_depth``
    deep, then fuse and filter into ``result``. While the filters leave fewer than
    ``need`` candidates and a leg had more, the legs are searched again four times as
    deep, up to ``params.max_depth`` (``widen`` is cut once the deadline has passed).

    A leg that fails is listed in ``result.degraded`` and not searched again; the
    lexical leg is cut once the deadline has passed and the dense leg answered. A
    :class:`LexicalIndexError` (e.g. the cluster is down) is logged through
    ``degraded_log`` (rate-limited), any other failure with its traceback.

    Returns the dense leg's last answer (rows, best first; the widest when filters
    widened the search); None when the dense leg did not run or failed.

    Raises:
        DeadlineExceeded: no leg answered and the deadline has passed.
        ServiceError: every leg failed.
    """
    snap = result.snapshot
    table = snap.table
    query = result.search_text
    timings = result.timings_ms
    depth = params.leg_depth
    dense_rows: npt.NDArray[np.int64] | None = None  # the dense leg's last answer
    while True:
        result.depth = depth
        dense_full = lexical_full = False
        if use_dense and qvec is not None:
            t = time.perf_counter()
            try:
                dense_hits = snap.vectors.search(
                    qvec,
                    depth,
                    nprobe=params.nprobe,
                    refine_factor=params.refine_factor,
                    exact=params.exact_dense,
                    filters=None if filters.is_empty() else filters,  # if it can, inside
                )
                scores, rows = dense_hits
                partial = getattr(dense_hits, "partial", None)  # "dense: 2 of 3 shards"
                if partial and partial not in result.degraded:
                    result.degraded.append(partial)
                keep = rows[0] >= 0
                dense_rows = rows[0][keep]
                result.dense = list(
                    zip(rows[0][keep].tolist(), scores[0][keep].tolist(), strict=True)
                )
                dense_full = len(result.dense) >= depth
            except Exception:
                log.exception("dense search failed; serving without it")
                result.degraded.append("dense")
                use_dense = False
            timings["dense"] = timings.get("dense", 0.0) + elapsed_ms(t)
        if use_lexical and deadline.expired() and result.dense:
            result.cut.append("lexical")  # answer from the dense leg alone
            use_lexical = False
        if use_lexical:
            t = time.perf_counter()
            lexical_error: LexicalIndexError | None = None
            try:
                hits = snap.lexical.search(
                    query, depth, filters=None if filters.is_empty() else filters
                )
                row_of = table.row_of
                result.lexical = [(row_of[h.id], h.score) for h in hits if h.id in row_of]
                lexical_full = len(hits) >= depth
                partial = getattr(hits, "partial", None)  # e.g. "lexical: 2 of 3 shards"
                if partial and partial not in result.degraded:
                    result.degraded.append(partial)
            except LexicalIndexError as exc:  # e.g. the cluster is down: no traceback
                lexical_error = exc
                result.degraded.append("lexical")
                use_lexical = False
            except Exception:
                log.exception("lexical search failed; serving without it")
                result.degraded.append("lexical")
                use_lexical = False
            timings["lexical"] = timings.get("lexical", 0.0) + elapsed_ms(t)
            if lexical_error is not None:  # logged outside the timed block, rate-limited
                degraded_log.warning(
                    str(lexical_error),
                    "lexical search failed; serving without it: %s",
                    lexical_error,
                )
        if not use_dense and not use_lexical:
            if deadline.expired():
                raise DeadlineExceeded(f"{deadline.reason} passed before any leg answered")
            raise ServiceError(f"every retrieval leg failed ({', '.join(result.degraded)})")

        t = time.perf_counter()
        result.fused, result.fusion = _fuse(result.dense, result.lexical, params)
        timings["fuse"] = timings.get("fuse", 0.0) + elapsed_ms(t)

        t = time.perf_counter()
        result.filtered = _apply_filters(result.fused, table, filters)
        timings["filter"] = timings.get("filter", 0.0) + elapsed_ms(t)

        more_exists = dense_full or lexical_full
        if filters.is_empty() or len(result.filtered) >= need or not more_exists:
            break
        if depth >= params.max_depth:
            break
        if deadline.expired():
            result.cut.append("widen")
            break
        depth = min(depth * 4, params.max_depth)  # widen: filters ate the candidates
    return dense_rows if use_dense else None


def _keep_matches(result: Retrieval, filters: Filters, degraded_log: LogThrottle) -> None:
    """Cut ``result.filtered`` to the query's result set and count it (``total``);
    when the lexical index cannot say, every candidate stays (``degraded``; logged
    through ``degraded_log``)."""
    t = time.perf_counter()
    snap = result.snapshot
    try:
        found = restrict_to_matches(
            result.filtered,
            query=result.search_text,
            table=snap.table,
            lexical=snap.lexical,
            filters=filters,
            dense_threshold=dense_threshold(snap),
        )
    except LexicalIndexError as exc:
        result.degraded.append("match_set")
        degraded_log.warning(str(exc), "result set unknown, all candidates kept: %s", exc)
    else:
        result.filtered, result.total = found.candidates, found.total
    result.timings_ms["match"] = elapsed_ms(t)


def _fuse(
    dense: Sequence[tuple[int, float]],
    lexical: Sequence[tuple[int, float]],
    params: SearchParams,
) -> tuple[list[Candidate], str]:
    """The fused candidates, best first, and the fusion that ranked them in words."""
    method = FusionMethod(params.fusion)
    weight = params.lexical_weight
    fused = fuse(method, dense, lexical, lexical_weight=weight)
    described = describe(method, weight)
    if not (dense and lexical):
        described = ""  # one leg answered: nothing was fused
    candidates: dict[int, Candidate] = {
        row: Candidate(row=row, fused_score=s) for row, s in fused.items()
    }
    for rank, (row, score) in enumerate(dense, start=1):
        candidates[row].dense_rank, candidates[row].dense_score = rank, score
    for rank, (row, score) in enumerate(lexical, start=1):
        candidates[row].lexical_rank, candidates[row].lexical_score = rank, score
    # Ties (same fused score) break by the better leg rank, then row: deterministic.
    ranked = sorted(
        candidates.values(),
        key=lambda c: (
            -c.fused_score,
            min(c.dense_rank or 10**9, c.lexical_rank or 10**9),
            c.row,
        ),
    )
    return ranked, described


def _apply_filters(
    candidates: list[Candidate], table: ProductTable, filters: Filters
) -> list[Candidate]:
    if filters.is_empty() or not candidates:
        return list(candidates)
    rows = np.fromiter((c.row for c in candidates), dtype=np.int64, count=len(candidates))
    keep = table.mask(filters, rows)
    return [c for c, ok in zip(candidates, keep.tolist(), strict=True) if ok]


def elapsed_ms(start: float) -> float:
    """Milliseconds since ``start`` (a :func:`time.perf_counter` reading)."""
    return (time.perf_counter() - start) * 1000.0
