"""``GET /v1/recommend/similar/{product_id}`` and ``GET /v1/recommend/for-you``.

Both take ``size``, ``strategy`` and the search's filters (brand, category, price range,
stock) and answer with the products, the strategy and the sources that filled the list
(``fallbacks``), per-stage ``timings_ms`` and the model versions. The work runs in a
worker thread (a thread pool route), never on the event loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError

from shopsearch.api.recommendations import Recommendation, Recommendations
from shopsearch.api.retrieval_stages import to_filters
from shopsearch.api.schemas import MAX_FILTER_CHARS, FilterSpec, PriceRange, error_responses
from shopsearch.api.service import SearchService
from shopsearch.api.shoppers import ShopperSignals
from shopsearch.indexer.snapshot_load import LoadedSnapshot
from shopsearch.retrieval.filters import Filters

__all__ = ["RecommendResponse", "recommend_router"]

MAX_RECOMMEND_SIZE = 100


# Query parameters both endpoints take (module level: FastAPI resolves them by name).
Size = Annotated[int, Query(ge=1, le=MAX_RECOMMEND_SIZE, description="Products to return.")]
Brand = Annotated[str | None, Query(max_length=MAX_FILTER_CHARS)]
Category = Annotated[str | None, Query(max_length=MAX_FILTER_CHARS, description="Path prefix.")]
PriceQ = Annotated[float | None, Query(ge=0, allow_inf_nan=False)]


class RecommendedItem(BaseModel):
    """One recommended product and why it is there."""

    id: str
    title: str
    brand: str = ""
    category: str = ""
    price: float | None = None
    in_stock: bool | None = None
    image_url: str = ""
    score: float = Field(description="The source's score (comparable within one source).")
    source: str = Field(description="co-purchase | text | blend | repurchase | popular")


class RecommendResponse(BaseModel):
    """Recommendations, best first."""

    strategy: str
    hits: list[RecommendedItem]
    fallbacks: list[str] = Field(
        description="Sources used after the strategy's first one ran short (e.g. 'text' "
        "for a product nobody bought yet, 'popular' for a shopper without history)."
    )
    history_items: int | None = Field(
        None, description="for-you: recent events of the shopper that were used."
    )
    timings_ms: dict[str, float]
    models: dict[str, str | None]
    index_version: str


def filter_params(
    brand: Brand = None,
    category: Category = None,
    min_price: PriceQ = None,
    max_price: PriceQ = None,
    in_stock: bool | None = None,
) -> Filters:
    """The search's filters as query parameters (a dependency of both endpoints)."""
    try:
        price = (
            PriceRange(min=min_price, max=max_price)
            if min_price is not None or max_price is not None
            else None
        )
    except ValidationError as exc:  # min > max: a 422 naming the query parameters
        raise RequestValidationError(
            [
                {"loc": ("query", "min_price"), "msg": str(e["msg"]), "type": "value_error"}
                for e in exc.errors(include_url=False)
            ]
        ) from exc
    return to_filters(FilterSpec(brand=brand, category=category, price=price, in_stock=in_stock))


def _answer(
    snap: LoadedSnapshot,
    rec: Recommendation,
    strategy: str,
    recs: Recommendations,
    started: float,
    history_items: int | None = None,
) -> RecommendResponse:
    products = snap.table.products
    hits = [
        RecommendedItem(
            id=products[r].id,
            title=products[r].title,
            brand=products[r].brand,
            category=products[r].category,
            price=products[r].price,
            in_stock=products[r].in_stock,
            image_url=products[r].image_url,
            score=round(s, 6),
            source=src,
        )
        for r, s, src in zip(rec.rows, rec.scores, rec.sources, strict=True)
    ]
    timings = {**rec.timings_ms, "total": round((time.perf_counter() - started) * 1000, 3)}
    return RecommendResponse(
        strategy=strategy,
        hits=hits,
        fallbacks=rec.fallbacks,
        history_items=history_items,
        timings_ms=timings,
        models=recs.versions(),
        index_version=snap.version,
    )


def recommend_router(
    get_service: Callable[[], SearchService],
    recs: Recommendations,
    shoppers: ShopperSignals,
) -> APIRouter:
    """The recommendation endpoints over the service's snapshot."""
    router = APIRouter(tags=["recommendations"])

    @router.get(
        "/v1/recommend/similar/{product_id}",
        response_model=RecommendResponse,
        response_model_exclude_none=True,
        responses=error_responses(404, 503),
    )
    def similar(
        product_id: Annotated[str, Path(max_length=512)],
        filters: Annotated[Filters, Depends(filter_params)],
        size: Size = 10,
        strategy: Literal["auto", "co-purchase", "text", "popular"] = "auto",
    ) -> RecommendResponse:
        """Bought together with / similar to a product: co-purchase, then text neighbours
        (products nobody bought yet), then popular. ``strategy`` picks one source."""
        started = time.perf_counter()
        snap = get_service().snapshot
        if product_id not in snap.table.row_of:
            raise HTTPException(404, f"no product {product_id!r} in the serving catalog")
        rec = recs.similar(snap, product_id, size, filters, strategy)
        return _answer(snap, rec, strategy, recs, started)

    @router.get(
        "/v1/recommend/for-you",
        response_model=RecommendResponse,
        response_model_exclude_none=True,
        responses=error_responses(503),
    )
    def for_you(
        filters: Annotated[Filters, Depends(filter_params)],
        user: Annotated[str | None, Query(min_length=1, max_length=256)] = None,
        session: Annotated[str | None, Query(min_length=1, max_length=256)] = None,
        size: Size = 10,
        exclude_bought: Annotated[
            bool, Query(description="Leave out what the shopper already bought.")
        ] = False,
        strategy: Literal["auto", "ranker", "blend", "repurchase", "popular"] = "auto",
    ) -> RecommendResponse:
        """For a shopper (``user``, or ``session`` for a guest): the learned ranker (or
        the blend) over their own items, items bought with them and trending items;
        popular without a history."""
        started = time.perf_counter()
        snap = get_service().snapshot
        history = shoppers.history(shoppers.shopper(user, session))
        t = time.perf_counter()
        rec = recs.for_you(
            snap, history, size, filters, exclude_bought=exclude_bought, strategy=strategy
        )
        rec.timings_ms = {"history": round((t - started) * 1000, 3), **rec.timings_ms}
        return _answer(snap, rec, strategy, recs, started, history_items=len(history))

    return router
