"""The HTTP API (FastAPI). Domain errors become HTTP status codes here and only here.

Endpoints: ``GET/POST /v1/search``, ``GET /v1/products/{id}``, ``/healthz``, ``/readyz``,
``/metrics`` (Prometheus) and token-protected ``/v1/admin/*`` (reload, snapshots,
promote, rollback, and incremental updates: ``POST /v1/admin/products`` with a JSON list
of products to upsert, ``DELETE /v1/admin/products/{id}``). A background thread watches
``CURRENT`` (and the serving snapshot's update generation) and swaps in a newly promoted
or updated snapshot without dropping in-flight requests.
"""

# No `from __future__ import annotations`: FastAPI must see the real types of the
# endpoint parameters, which refer to dependencies defined inside create_app().

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api.events_routes import events_router
from api.schemas import MAX_QUERY_CHARS, MAX_SIZE, SearchRequest, SearchResponse
from api.service import SearchService, ServiceError
from api.settings import Settings
from indexer.events.store import EventStore
from indexer.snapshot import SnapshotError, SnapshotStore
from indexer.updates import UpdateError, UpdateReport
from retrieval.filters import InvalidFilterError
from retrieval.lexical_index import LexicalIndexError
from retrieval.types import Product

__all__ = ["create_app"]

log = logging.getLogger(__name__)

# Latency buckets (seconds) from 0.5 ms to 2.5 s: stages range from microseconds (fuse)
# to hundreds of milliseconds (rerank on CPU).
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ProductIn(BaseModel):
    """A product to upsert through ``POST /v1/admin/products``."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=512)
    title: str = Field(min_length=1)
    description: str = ""
    brand: str = ""
    category: str = Field("", description="Category path, e.g. 'Tools > Power Tools'.")
    price: float | None = Field(None, ge=0, allow_inf_nan=False)
    in_stock: bool | None = None
    image_url: str = ""
    attributes: dict[str, str] = Field(default_factory=dict)

    def to_product(self) -> Product:
        return Product(**self.model_dump())


#: Products one ``POST /v1/admin/products`` may carry (bigger batches: `shopsearch update`).
MAX_UPSERTS = 10_000


def _update_response(report: UpdateReport, index_version: str) -> JSONResponse:
    """200 with the report, or 422 naming every rejected product (the rest was applied)."""
    body: dict[str, Any] = {"index_version": index_version, **report.to_dict()}
    if report.rejected:
        body["detail"] = (
            f"{len(report.rejected)} product(s) rejected and not applied; the others were: "
            + ", ".join(f"{pid} ({reason})" for pid, reason in report.rejected[:20])
        )
        return JSONResponse(status_code=422, content=body)
    return JSONResponse(content=body)


class _Metrics:
    """Prometheus metrics of one app (own registry: several apps can live in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "shopsearch_requests_total",
            "Search API requests.",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.stage = Histogram(
            "shopsearch_stage_latency_seconds",
            "Latency of each query-path stage.",
            ["stage"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.degraded = Counter(
            "shopsearch_degraded_total",
            "Answers served without a failed stage.",
            ["stage"],
            registry=self.registry,
        )
        self.reloads = Counter(
            "shopsearch_snapshot_reloads_total",
            "Snapshot swaps.",
            ["result"],
            registry=self.registry,
        )


def _watch_snapshots(
    service: SearchService, metrics: _Metrics, interval: float, stop: threading.Event
) -> None:
    while not stop.wait(interval):
        try:
            if service.reload_if_changed():
                metrics.reloads.labels("ok").inc()
        except Exception:  # keep serving the old snapshot; say why in the log
            log.exception("could not load the newly promoted snapshot; still serving the old one")
            metrics.reloads.labels("error").inc()


def create_app(
    settings: Settings | None = None, *, service: SearchService | None = None
) -> FastAPI:
    """Build the app. The service (models + snapshot) is opened at start-up unless given."""
    settings = settings or Settings()
    metrics = _Metrics()
    state: dict[str, Any] = {"service": service, "events": None}

    def known_product(product_id: str) -> bool:  # not counted before a snapshot is served
        svc: SearchService | None = state["service"]
        return svc is None or not svc.ready or svc.product(product_id) is not None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.user_key is not None:
            state["events"] = EventStore(settings.events_db, known_products=known_product)
        else:
            log.warning("SHOPSEARCH_USER_KEY is not set; /v1/events answers 503")
        if state["service"] is None:
            svc = SearchService(settings)
            if svc.store.current() is not None:
                svc.load()
            else:
                log.warning(
                    "no snapshot in %s yet; /readyz stays 503 until one is promoted",
                    settings.index_dir,
                )
            state["service"] = svc
        stop = threading.Event()
        watcher = None
        if settings.reload_interval_s > 0:
            watcher = threading.Thread(
                target=_watch_snapshots,
                args=(state["service"], metrics, settings.reload_interval_s, stop),
                name="snapshot-watcher",
                daemon=True,
            )
            watcher.start()
        yield
        stop.set()
        if watcher is not None:
            watcher.join(timeout=5)
        if service is None:  # the app opened it, so the app closes it
            state["service"].close()
        if state["events"] is not None:
            state["events"].close()

    app = FastAPI(
        title="shopsearch",
        version="0.1.0",
        description="Hybrid product search: two-tower dense + BM25, fused, filtered and reranked.",
        lifespan=lifespan,
    )

    def get_service() -> SearchService:
        svc: SearchService | None = state["service"]
        if svc is None:
            raise HTTPException(status_code=503, detail="service is starting")
        return svc

    def admin(authorization: Annotated[str | None, Header()] = None) -> None:
        if not settings.admin_token:
            raise HTTPException(
                status_code=404, detail="admin endpoints are off; set SHOPSEARCH_ADMIN_TOKEN"
            )
        if authorization != f"Bearer {settings.admin_token}":
            raise HTTPException(status_code=401, detail="missing or wrong bearer token")

    @app.exception_handler(InvalidFilterError)
    async def _invalid_filter(request: Request, exc: InvalidFilterError) -> JSONResponse:
        metrics.requests.labels(request.url.path, "422").inc()
        loc = ["body", *exc.field.split(".")]
        return JSONResponse(
            status_code=422,
            content={"detail": [{"loc": loc, "msg": exc.message, "type": "value_error"}]},
        )

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        metrics.requests.labels(request.url.path, "503").inc()
        return JSONResponse(status_code=503, content={"detail": str(exc)})

    @app.exception_handler(SnapshotError)
    async def _snapshot_error(request: Request, exc: SnapshotError) -> JSONResponse:
        return JSONResponse(status_code=409, content={"detail": str(exc)})

    @app.exception_handler(UpdateError)
    async def _update_error(request: Request, exc: UpdateError) -> JSONResponse:
        return JSONResponse(status_code=400, content={"detail": str(exc)})

    @app.exception_handler(LexicalIndexError)
    async def _lexical_error(request: Request, exc: LexicalIndexError) -> JSONResponse:
        # Only admin calls get here (searches degrade instead): the cluster is unavailable.
        return JSONResponse(status_code=503, content={"detail": str(exc)})

    def run_search(svc: SearchService, req: SearchRequest, endpoint: str) -> SearchResponse:
        response = svc.search(req)
        for stage, ms in response.timings_ms.items():
            metrics.stage.labels(stage).observe(ms / 1000.0)
        for stage in response.degraded:
            metrics.degraded.labels(stage).inc()
        metrics.requests.labels(endpoint, "200").inc()
        return response

    @app.get("/v1/search", response_model=SearchResponse, response_model_exclude_none=True)
    def search_get(
        svc: Annotated[SearchService, Depends(get_service)],
        q: Annotated[str, Query(description="The shopper's query.", max_length=MAX_QUERY_CHARS)],
        size: Annotated[int, Query(ge=1, le=MAX_SIZE)] = 10,
        page: Annotated[int, Query(ge=1)] = 1,
        mode: Annotated[str, Query(pattern="^(hybrid|dense|lexical)$")] = "hybrid",
    ) -> SearchResponse:
        """Search-box query: hybrid by default, default facets, no explain."""
        try:
            req = SearchRequest(q=q, size=size, page=page, mode=mode)  # type: ignore[arg-type]
        except ValidationError as exc:
            errors = [{**e, "loc": ("query", *e["loc"])} for e in exc.errors(include_url=False)]
            raise RequestValidationError(errors) from exc
        return run_search(svc, req, "/v1/search")

    @app.post("/v1/search", response_model=SearchResponse, response_model_exclude_none=True)
    def search_post(
        req: SearchRequest, svc: Annotated[SearchService, Depends(get_service)]
    ) -> SearchResponse:
        """Full search: filters, facets, paging, mode, fusion, rerank, explain."""
        return run_search(svc, req, "/v1/search")

    @app.get("/v1/products/{product_id}")
    def product(
        product_id: str, svc: Annotated[SearchService, Depends(get_service)]
    ) -> dict[str, Any]:
        found = svc.product(product_id)
        if found is None:
            raise HTTPException(status_code=404, detail=f"no product with id {product_id!r}")
        return found.to_dict()

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        """The process is up (it may still be loading)."""
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        """Ready when a snapshot is loaded and the models match it."""
        svc: SearchService | None = state["service"]
        if svc is None or not svc.ready:
            return JSONResponse(
                status_code=503, content={"status": "not ready", "reason": "no snapshot loaded"}
            )
        snap = svc.snapshot
        return JSONResponse(
            content={
                "status": "ready",
                "index_version": snap.version,
                "generation": snap.generation,
                "products": snap.live_count,
            }
        )

    @app.get("/metrics")
    def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/admin/reload", dependencies=[Depends(admin)])
    def admin_reload(svc: Annotated[SearchService, Depends(get_service)]) -> dict[str, Any]:
        """Load the snapshot CURRENT names now (instead of waiting for the watcher)."""
        changed = svc.reload_if_changed()
        return {"reloaded": changed, "index_version": svc.snapshot.version}

    @app.get("/v1/admin/snapshots", dependencies=[Depends(admin)])
    def admin_snapshots() -> list[dict[str, Any]]:
        return [
            {
                "version": s.version,
                "created_at": s.created_at,
                "products": s.products,
                "current": s.current,
            }
            for s in SnapshotStore(settings.index_dir).list_snapshots()
        ]

    @app.post("/v1/admin/products", dependencies=[Depends(admin)])
    def admin_upsert_products(
        products: list[ProductIn],
        svc: Annotated[SearchService, Depends(get_service)],
    ) -> JSONResponse:
        """Upsert products into the serving snapshot (both legs), persisted and served at
        once. A price or stock change is applied without re-encoding. 422 lists the
        products that were rejected (and not applied); the rest was."""
        if len(products) > MAX_UPSERTS:
            raise HTTPException(
                status_code=413,
                detail=f"{len(products)} products in one request; send at most {MAX_UPSERTS} "
                "(or use `shopsearch update` for bulk changes)",
            )
        report = svc.apply_updates([p.to_product() for p in products], [])
        return _update_response(report, svc.snapshot.version)

    @app.delete("/v1/admin/products/{product_id}", dependencies=[Depends(admin)])
    def admin_delete_product(
        product_id: str, svc: Annotated[SearchService, Depends(get_service)]
    ) -> JSONResponse:
        """Delete a product from the serving snapshot (both legs); 404 when it has none."""
        report = svc.apply_updates([], [product_id])
        if report.not_found:
            raise HTTPException(status_code=404, detail=f"no product with id {product_id!r}")
        return _update_response(report, svc.snapshot.version)

    @app.post("/v1/admin/promote/{version}", dependencies=[Depends(admin)])
    def admin_promote(
        version: str, svc: Annotated[SearchService, Depends(get_service)]
    ) -> dict[str, Any]:
        svc.load(version)  # load first: a snapshot that does not load is never promoted
        svc.store.promote(version)  # CURRENT, and the alias of an Elasticsearch snapshot
        return {"index_version": version}

    @app.post("/v1/admin/rollback", dependencies=[Depends(admin)])
    def admin_rollback(svc: Annotated[SearchService, Depends(get_service)]) -> dict[str, Any]:
        version = svc.store.rollback()
        svc.load(version)
        return {"index_version": version}

    app.include_router(events_router(lambda: state["events"], settings, admin))
    return app
