"""The answer to a search request, assembled from what its stages produced: facets over
every candidate served, the requested page of hits (with their explain), the timings,
the models and rules that answered, and what query rewriting changed and why.
"""

from __future__ import annotations

import time
import uuid

from shopsearch.api.facets import DEFAULT_FACETS, DEFAULT_PRICE_RANGES, compute_facets, render_hit
from shopsearch.api.retrieval_stages import Retrieval, elapsed_ms
from shopsearch.api.schemas import RewriteChangeOut, RewriteOut, SearchRequest, SearchResponse
from shopsearch.rerank.merchandising import MerchResult

__all__ = ["build_response"]


def build_response(
    request: SearchRequest,
    result: Retrieval,
    merch: MerchResult,
    *,
    rules_version: int,
    personalized: str,
    models: dict[str, dict[str, str] | None],
    started: float,
) -> SearchResponse:
    """The response to ``request`` from ``result``, whose ``filtered`` candidates are
    the ones to serve, in order (after merchandising: ``merch`` gives each row's notes
    and each rule's outcome for explain). ``rules_version`` and ``models`` answered it,
    ``personalized`` says how it was personalised, and ``started`` (a
    :func:`time.perf_counter` reading) is when the request started, for its total time.
    Adds the ``facets`` and ``total`` timings to ``result.timings_ms``."""
    table = result.snapshot.table
    t = time.perf_counter()
    facets = compute_facets(
        table,
        [c.row for c in result.filtered],
        request.facets if request.facets is not None else DEFAULT_FACETS,
        request.price_ranges or DEFAULT_PRICE_RANGES,
    )
    result.timings_ms["facets"] = elapsed_ms(t)
    start = (request.page - 1) * request.size
    page = result.filtered[start : start + request.size]
    hits = [
        render_hit(table.products[c.row], c, request.explain, merch.notes.get(c.row)) for c in page
    ]
    result.timings_ms["total"] = elapsed_ms(started)
    snap = result.snapshot
    rewrite = result.rewrite
    return SearchResponse(
        query_id=uuid.uuid4().hex,
        q=result.query,
        mode=result.params.mode if result.params is not None else request.mode,
        hits=hits,
        total=result.total if result.total is not None else len(result.filtered),
        page=request.page,
        size=request.size,
        facets=facets,
        timings_ms={k: round(v, 3) for k, v in result.timings_ms.items()},
        index_version=snap.version,
        models=models,
        rerank=result.rerank_status,
        fusion=result.fusion,
        degraded=result.degraded,
        cut=result.cut,
        params=result.params if request.explain else None,
        personalized=personalized,
        rules_version=rules_version,
        merch=merch.outcomes if request.explain else None,
        rewrite=(
            RewriteOut(
                searched_q=rewrite.text,
                changes=[
                    RewriteChangeOut(typed=c.typed, searched=c.searched, reason=c.reason)
                    for c in rewrite.changes
                ],
            )
            if rewrite is not None and rewrite.changed
            else None
        ),
    )
