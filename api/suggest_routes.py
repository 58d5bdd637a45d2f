"""``GET /v1/suggest``: suggestions as you type, from the catalog and past searches.

``q`` (1 to :data:`MAX_SUGGEST_CHARS` characters, not blank) is the text in the search
box so far; a trailing space means its last word is finished. ``size`` (1 to
:data:`MAX_SUGGEST_SIZE`, default 8) suggestions come back, best first, each with its
``kind`` (``query``: searched often by others; ``brand``; ``category``; ``phrase``:
words of product titles) and ``products``, a lower bound of the products it matches.
Every suggestion, searched, finds at least one product (:mod:`retrieval.suggest`). An
empty list when nothing matches; 503 before a snapshot is served.

The ``X-Suggest-Index`` header says which catalog index answered: ``ready`` (the
serving snapshot's), ``stale`` (an older generation of it, for the second or so after
an update) or ``building`` (none yet: an empty list). Latency is exported as
``shopsearch_suggest_latency_seconds{index=...}``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response
from fastapi.exceptions import RequestValidationError
from prometheus_client import CollectorRegistry, Histogram
from pydantic import BaseModel, Field

from shopsearch.api.schemas import NOT_BLANK, error_responses
from shopsearch.api.service import SearchService
from shopsearch.api.suggestions import Suggestions
from shopsearch.retrieval.suggest import tokens

__all__ = ["MAX_SUGGEST_CHARS", "MAX_SUGGEST_SIZE", "SuggestResponse", "suggest_router"]

MAX_SUGGEST_CHARS = 100
MAX_SUGGEST_SIZE = 20
DEFAULT_SUGGEST_SIZE = 8
# 0.1 ms to 50 ms: a lookup is well under a millisecond; anything near 50 ms is a fault.
_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05)


class SuggestionOut(BaseModel):
    text: str = Field(description="What to search.")
    kind: Literal["query", "phrase", "brand", "category"]
    products: int = Field(ge=1, description="Products it matches, at least.")


class SuggestResponse(BaseModel):
    q: str = Field(description="The input as matched: lower case, its words single-spaced.")
    suggestions: list[SuggestionOut]
    index_version: str
    timings_ms: dict[str, float]


def suggest_router(
    get_service: Callable[[], SearchService],
    suggestions: Suggestions,
    registry: CollectorRegistry | None = None,
) -> APIRouter:
    """The suggest endpoint; its lifespan starts and stops ``suggestions``' worker."""

    @asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        suggestions.start()  # runs after the app's own start-up: the snapshot is loaded
        try:
            yield
        finally:
            suggestions.close()

    router = APIRouter(tags=["suggestions"], lifespan=lifespan)
    latency = Histogram(
        "shopsearch_suggest_latency_seconds",
        "Time to answer GET /v1/suggest, by the catalog index that answered.",
        ["index"],
        buckets=_BUCKETS,
        registry=registry,
    )

    @router.get(
        "/v1/suggest",
        response_model=SuggestResponse,
        responses=error_responses(503),
    )
    def suggest(
        response: Response,
        q: Annotated[
            str,
            Query(
                description="The search box's text so far (a trailing space ends a word).",
                min_length=1,
                max_length=MAX_SUGGEST_CHARS,
                json_schema_extra={"pattern": NOT_BLANK},
            ),
        ],
        size: Annotated[
            int, Query(ge=1, le=MAX_SUGGEST_SIZE, description="Suggestions at most.")
        ] = DEFAULT_SUGGEST_SIZE,
    ) -> SuggestResponse:
        """Suggestions for a prefix: past queries and catalog phrases, best first."""
        started = time.perf_counter()
        if not q.strip():
            raise RequestValidationError(
                [
                    {
                        "loc": ("query", "q"),
                        "msg": "must not be blank (whitespace only); send what was typed",
                        "type": "value_error",
                    }
                ]
            )
        snap = get_service().snapshot  # 503 (ServiceError) before a snapshot is served
        answer = suggestions.suggest(snap, q, size)
        words = " ".join(tokens(q))
        elapsed = time.perf_counter() - started
        latency.labels(answer.index).observe(elapsed)
        response.headers["X-Suggest-Index"] = answer.index
        return SuggestResponse(
            q=words + " " if words and q[-1:].isspace() else words,
            suggestions=[
                SuggestionOut(text=s.text, kind=s.kind, products=s.products)  # type: ignore[arg-type]
                for s in answer.suggestions
            ],
            index_version=snap.version,
            timings_ms={"total": round(elapsed * 1000, 3)},
        )

    return router
