"""The HTTP API (FastAPI). Domain errors become HTTP status codes here and only here.

Endpoints: ``GET/POST /v1/search``, ``GET /v1/products/{id}``, ``/healthz``, ``/readyz``,
``/metrics`` (Prometheus) and token-protected ``/v1/admin/*`` (reload, snapshots,
promote, rollback, and incremental updates: ``POST /v1/admin/products`` with a JSON list
of products to upsert, ``DELETE /v1/admin/products/{id}``). A background thread watches
``CURRENT`` (and the serving snapshot's update generation) and swaps in a newly promoted
or updated snapshot without dropping in-flight requests.

``/metrics`` includes search quality: live recall of the vector index on sampled
searches (api/quality_monitor.py), zero-result, rewrite and rerank-outcome counts, and
click-through per snapshot version (api/click_through.py); the Grafana dashboard
api/dashboards/shopsearch-grafana.json charts them.
"""

# No `from __future__ import annotations`: FastAPI must see the real types of the
# endpoint parameters, which refer to dependencies defined inside create_app().

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)

from shopsearch.api.admission import (
    AdmissionController,
    AdmissionGate,
    Overloaded,
    default_inflight,
)
from shopsearch.api.click_through import ClickThrough, ClickThroughCollector
from shopsearch.api.events_routes import events_router
from shopsearch.api.guard import RequestGuard, admin_denial
from shopsearch.api.merch_routes import merch_router
from shopsearch.api.page_routes import page_router
from shopsearch.api.quality_monitor import LiveRecallCollector, LiveRecallMonitor, rerank_outcome
from shopsearch.api.recommend_routes import recommend_router
from shopsearch.api.recommendations import Recommendations
from shopsearch.api.schemas import (
    MAX_DEADLINE_MS,
    MAX_QUERY_CHARS,
    MAX_RESULT_WINDOW,
    MAX_SIZE,
    MIN_DEADLINE_MS,
    NOT_BLANK,
    SearchRequest,
    SearchResponse,
    error_responses,
)
from shopsearch.api.service import SearchService, ServiceError
from shopsearch.api.settings import Settings
from shopsearch.api.shoppers import ShopperSignals
from shopsearch.api.suggest_routes import suggest_router
from shopsearch.api.suggestions import Suggestions
from shopsearch.indexer.events.store import EventStore
from shopsearch.indexer.events.types import Event
from shopsearch.indexer.snapshot import SnapshotError, SnapshotStore
from shopsearch.indexer.updates import UpdateError, UpdateReport
from shopsearch.retrieval.deadline import Deadline
from shopsearch.retrieval.filters import InvalidFilterError
from shopsearch.retrieval.lexical_index import LexicalIndexError
from shopsearch.retrieval.recommend.base import HistoryItem
from shopsearch.retrieval.search_params import ModeName
from shopsearch.retrieval.types import (
    MAX_ATTRIBUTE_KEY_CHARS,
    MAX_ATTRIBUTE_VALUE_CHARS,
    MAX_BRAND_CHARS,
    MAX_CATEGORY_CHARS,
    MAX_DESCRIPTION_CHARS,
    MAX_ID_CHARS,
    MAX_IMAGE_URL_CHARS,
    MAX_TITLE_CHARS,
    Product,
)

__all__ = ["create_app"]

log = logging.getLogger(__name__)

# Latency buckets (seconds) from 0.5 ms to 2.5 s: stages range from microseconds (fuse)
# to hundreds of milliseconds (rerank on CPU).
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


AttributeKey = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ATTRIBUTE_KEY_CHARS)]
AttributeValue = Annotated[str, StringConstraints(max_length=MAX_ATTRIBUTE_VALUE_CHARS)]


class ProductIn(BaseModel):
    """A product to upsert through ``POST /v1/admin/products``. Field lengths are capped
    by the same limits as catalog rows (``retrieval.types.MAX_*_CHARS``): longer is a 422."""

    # strict: a JSON false is not a price of 0, nor 1 an in-stock flag.
    model_config = ConfigDict(extra="forbid", strict=True)

    # The pattern documents what _not_blank checks (with a better message than a pattern's).
    id: str = Field(min_length=1, max_length=MAX_ID_CHARS, json_schema_extra={"pattern": NOT_BLANK})
    title: str = Field(
        min_length=1, max_length=MAX_TITLE_CHARS, json_schema_extra={"pattern": NOT_BLANK}
    )
    description: str = Field("", max_length=MAX_DESCRIPTION_CHARS)
    brand: str = Field("", max_length=MAX_BRAND_CHARS)
    category: str = Field(
        "", max_length=MAX_CATEGORY_CHARS, description="Category path, e.g. 'Tools > Power Tools'."
    )
    price: float | None = Field(None, ge=0, allow_inf_nan=False)
    in_stock: bool | None = None
    image_url: str = Field("", max_length=MAX_IMAGE_URL_CHARS)
    attributes: dict[AttributeKey, AttributeValue] = Field(default_factory=dict)

    @field_validator("id", "title")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank (whitespace only); send the product's text")
        return value

    def to_product(self) -> Product:
        return Product(**self.model_dump())


#: Products one ``POST /v1/admin/products`` may carry (bigger batches: `shopsearch update`).
MAX_UPSERTS = 10_000


def _update_response(
    report: UpdateReport, index_version: str, ids: Sequence[str] = ()
) -> JSONResponse:
    """200 with the report, or 422 naming every rejected product (the rest was applied).

    The 422's ``detail`` has the shape of every other 422 (a list of ``{loc, msg, type}``,
    ``loc`` = ``["body", <index in the request>, "id"]``), so one client-side handler reads
    them all; the report's fields stand beside it."""
    body: dict[str, Any] = {"index_version": index_version, **report.to_dict()}
    if report.rejected:
        position = {pid: i for i, pid in enumerate(ids)}
        body["detail"] = [
            {
                "loc": ["body", position[pid], "id"] if pid in position else ["body"],
                "msg": f"product {pid!r} rejected and not applied ({reason}); the others were",
                "type": "value_error",
            }
            for pid, reason in report.rejected
        ]
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
        self.rejected = Counter(
            "shopsearch_rejected_total",
            "Searches refused by admission control (queue_full, deadline, cancelled).",
            ["reason"],
            registry=self.registry,
        )
        self.cut = Counter(
            "shopsearch_cut_total",
            "Answers that left out work to meet their deadline, by what was cut.",
            ["stage"],
            registry=self.registry,
        )
        self.abandoned = Counter(
            "shopsearch_abandoned_total",
            "Searches whose client hung up before the answer (their work stopped early).",
            registry=self.registry,
        )
        self.breaker_open = Gauge(
            "shopsearch_es_breaker_open",
            "1 while the Elasticsearch circuit breaker fails lexical queries fast.",
            registry=self.registry,
        )
        self.running = Gauge(
            "shopsearch_searches_running", "Searches computing now.", registry=self.registry
        )
        self.waiting = Gauge(
            "shopsearch_searches_waiting",
            "Searches waiting for a worker.",
            registry=self.registry,
        )
        # Search quality (rates in PromQL: each over shopsearch_searches_total).
        self.searches = Counter(
            "shopsearch_searches",
            "Searches answered (status 200), result-cache hits included.",
            registry=self.registry,
        )
        self.zero_results = Counter(
            "shopsearch_zero_result_searches",
            "Searches answered with no hit at all (total 0; a page past the end is not one).",
            registry=self.registry,
        )
        self.rewritten = Counter(
            "shopsearch_rewritten_searches",
            "Searches whose query the rewriter changed (units, spelling) before retrieval.",
            registry=self.registry,
        )
        self.rerank = Counter(
            "shopsearch_rerank",
            "Searches by rerank outcome: applied; skipped (wanted, not run: no model, the "
            "deadline, too few candidates); degraded (the reranker failed); off (not wanted).",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in ("applied", "skipped", "degraded", "off"):
            self.rerank.labels(outcome)  # every outcome exported from the start, at 0


class _CacheCollector(Collector):
    """``shopsearch_cache_{hits,misses}_total`` and ``shopsearch_cache_entries`` by
    ``cache`` (rerank, result), read from the service's caches at each scrape: the caches
    keep the counts (under their own lock), so the request path pays nothing for them."""

    def __init__(self, service: Callable[[], SearchService | None]) -> None:
        self._service = service

    def collect(self) -> Iterator[Metric]:
        hits = CounterMetricFamily(
            "shopsearch_cache_hits",
            "Lookups answered from a cache (rerank: per query-product pair; result: per search).",
            labels=["cache"],
        )
        misses = CounterMetricFamily(
            "shopsearch_cache_misses",
            "Lookups a cache could not answer (rerank: per pair; result: per search without a "
            "shopper).",
            labels=["cache"],
        )
        entries = GaugeMetricFamily(
            "shopsearch_cache_entries", "Entries a cache holds now.", labels=["cache"]
        )
        svc = self._service()
        for name, stats in (svc.cache_stats() if svc is not None else {}).items():
            hits.add_metric([name], stats.hits)
            misses.add_metric([name], stats.misses)
            entries.add_metric([name], stats.entries)
        yield from (hits, misses, entries)


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


_ADMIN_ERRORS = error_responses(400, 401, 404, 409, 413, 503)


def _json_safe(error: dict[str, Any]) -> dict[str, Any]:
    """A validation error without its ``input`` and ``ctx``: they may hold non-finite
    floats (``NaN`` is accepted by the JSON parser) that cannot be written back as JSON,
    or megabytes of the request."""
    return {"loc": list(error["loc"]), "msg": str(error["msg"]), "type": str(error["type"])}


async def _until_disconnected(request: Request) -> None:
    """Returns when the client has gone (the request's body has already been read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def create_app(
    settings: Settings | None = None, *, service: SearchService | None = None
) -> FastAPI:
    """Build the app. The service (models + snapshot) is opened at start-up unless given."""
    settings = settings or Settings()
    metrics = _Metrics()
    state: dict[str, Any] = {"service": service, "events": None, "live_recall": None}
    shoppers = ShopperSignals(settings, lambda: state["events"])
    suggestions = Suggestions(settings, lambda: state["service"])  # GET /v1/suggest
    admin_token = settings.admin_token.get_secret_value() if settings.admin_token else None
    # Made here, not in the lifespan: it binds to no event loop until a search runs.
    admission = AdmissionController(
        max_inflight=settings.max_inflight or default_inflight(), max_queue=settings.max_queue
    )
    metrics.running.set_function(lambda: admission.stats().running)
    metrics.waiting.set_function(lambda: admission.stats().waiting)

    def breaker_open() -> float:
        svc: SearchService | None = state["service"]
        breaker = svc.es.breaker if svc is not None and svc.es is not None else None
        return float(breaker is not None and breaker.state != "closed")

    metrics.breaker_open.set_function(breaker_open)
    metrics.registry.register(_CacheCollector(lambda: state["service"]))
    metrics.registry.register(LiveRecallCollector(lambda: state["live_recall"]))
    click_through = ClickThrough()
    metrics.registry.register(ClickThroughCollector(lambda: click_through))

    def count_clicks(events: Sequence[Event]) -> None:
        click_through.clicked(e.query_id for e in events if e.kind == "click" and e.query_id)

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
            try:  # what a prune killed midway left; never listed, so never served
                svc.store.sweep_tombstones()
            except OSError as exc:  # a read-only index dir: leave it to the next prune
                log.warning("could not remove half-deleted snapshots: %s", exc)
            if svc.store.current() is not None:
                svc.load()
            else:
                log.warning(
                    "no snapshot in %s yet; /readyz stays 503 until one is promoted",
                    settings.index_dir,
                )
            state["service"] = svc
        # Its worker thread lives as long as the app serves (off: no thread).
        live_recall = LiveRecallMonitor(settings.live_recall_sample)
        state["live_recall"] = app.state.live_recall = live_recall
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
        live_recall.close()
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

    def count_refusal(exc: Overloaded) -> None:
        metrics.requests.labels("/v1/search", "503").inc()
        metrics.rejected.labels(exc.reason).inc()

    # Middleware added last runs first. Before FastAPI reads a body: a search refused while
    # every worker and place in line is taken (api/admission.py), then the admin token and
    # the body-size limit (api/guard.py).
    app.add_middleware(
        RequestGuard,
        admin_token=admin_token,
        max_body_bytes=settings.max_body_bytes,
        max_admin_body_bytes=settings.max_admin_body_bytes,
    )
    app.add_middleware(
        AdmissionGate, controller=admission, paths=("/v1/search",), on_refuse=count_refusal
    )

    def get_service() -> SearchService:
        svc: SearchService | None = state["service"]
        if svc is None:
            raise HTTPException(status_code=503, detail="service is starting")
        return svc

    def admin(authorization: Annotated[str | None, Header()] = None) -> None:
        # RequestGuard has already refused a wrong token before the body was read; this
        # dependency documents the header in the OpenAPI schema and guards direct use.
        denial = admin_denial(admin_token, authorization)
        if denial is not None:
            status, detail = denial
            headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
            raise HTTPException(status_code=status, detail=detail, headers=headers)

    def redact(message: str) -> str:
        """Error text without the server's absolute paths (they tell a caller nothing
        useful and too much about the host)."""
        for path in {str(settings.index_dir.resolve()), str(settings.index_dir)}:
            message = message.replace(path, "<index-dir>")
        return message

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        metrics.requests.labels(request.url.path, "422").inc()
        return JSONResponse(
            status_code=422, content={"detail": [_json_safe(e) for e in exc.errors()]}
        )

    @app.exception_handler(InvalidFilterError)
    async def _invalid_filter(request: Request, exc: InvalidFilterError) -> JSONResponse:
        metrics.requests.labels(request.url.path, "422").inc()
        loc = ["body", *exc.field.split(".")]
        return JSONResponse(
            status_code=422,
            content={"detail": [{"loc": loc, "msg": exc.message, "type": "value_error"}]},
        )

    @app.exception_handler(Overloaded)
    async def _overloaded(request: Request, exc: Overloaded) -> JSONResponse:
        count_refusal(exc)
        return JSONResponse(
            status_code=503,
            content={"detail": str(exc)},
            headers={"Retry-After": str(exc.retry_after_s)},
        )

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        metrics.requests.labels(request.url.path, "503").inc()
        return JSONResponse(
            status_code=503, content={"detail": redact(str(exc))}, headers={"Retry-After": "1"}
        )

    @app.exception_handler(SnapshotError)
    async def _snapshot_error(request: Request, exc: SnapshotError) -> JSONResponse:
        return JSONResponse(status_code=409, content={"detail": redact(str(exc))})

    @app.exception_handler(UpdateError)
    async def _update_error(request: Request, exc: UpdateError) -> JSONResponse:
        return JSONResponse(status_code=400, content={"detail": redact(str(exc))})

    @app.exception_handler(LexicalIndexError)
    async def _lexical_error(request: Request, exc: LexicalIndexError) -> JSONResponse:
        # Only admin calls get here (searches degrade instead): the cluster is unavailable.
        return JSONResponse(status_code=503, content={"detail": str(exc)})

    async def run_search(request: Request, req: SearchRequest, endpoint: str) -> Response:
        """``req`` through admission control, within its deadline; the work stops at
        the next stage when the client hangs up."""
        svc = get_service()
        deadline = Deadline.after_ms(req.deadline_ms or settings.deadline_ms)
        watcher = asyncio.ensure_future(_until_disconnected(request))

        def on_gone(task: asyncio.Future[None]) -> None:
            if not task.cancelled() and task.exception() is None:
                deadline.cancel("client disconnected")

        watcher.add_done_callback(on_gone)

        def work() -> tuple[SearchResponse, bytes]:
            # Serialised on the worker too: the event loop only moves bytes. The shopper's
            # history is read here as well (an indexed SQLite range scan, well under 1 ms).
            history: list[HistoryItem] = []
            if req.personalize and (req.user or req.session):
                history = shoppers.history(shoppers.shopper(req.user, req.session))
            monitor: LiveRecallMonitor | None = state["live_recall"]
            answer = svc.search(
                req,
                deadline,
                history=history,
                rescorer=shoppers.rescorer,
                on_dense=monitor.offer if monitor is not None else None,
            )
            return answer, answer.model_dump_json(exclude_none=True).encode()

        try:
            response, body = await admission.run(work, deadline)
        finally:
            watcher.cancel()
            if deadline.cancelled:
                metrics.abandoned.inc()
        for stage, ms in response.timings_ms.items():
            metrics.stage.labels(stage).observe(ms / 1000.0)
        for stage in response.degraded:
            metrics.degraded.labels(stage).inc()
        for stage in response.cut:
            metrics.cut.labels(stage.split(" ")[0]).inc()
        metrics.requests.labels(endpoint, "200").inc()
        count_answer(response)
        suggestions.record(req, response)  # a queue put: counted off the request path
        return Response(content=body, media_type="application/json")

    def count_answer(response: SearchResponse) -> None:
        metrics.searches.inc()
        if response.total == 0:
            metrics.zero_results.inc()
        if response.rewrite is not None:  # set only when the rewriter changed the query
            metrics.rewritten.inc()
        metrics.rerank.labels(rerank_outcome(response.rerank)).inc()
        click_through.searched(response.query_id, response.index_version)

    @app.get(
        "/v1/search",
        response_model=SearchResponse,
        response_model_exclude_none=True,
        responses=error_responses(413, 503),
    )
    async def search_get(
        request: Request,
        q: Annotated[
            str,
            Query(
                description="The shopper's query (not blank).",
                min_length=1,
                max_length=MAX_QUERY_CHARS,
                json_schema_extra={"pattern": NOT_BLANK},
            ),
        ],
        size: Annotated[int, Query(ge=1, le=MAX_SIZE)] = 10,
        page: Annotated[
            int,
            Query(ge=1, le=MAX_RESULT_WINDOW, description="page * size may not pass the window."),
        ] = 1,
        mode: Annotated[ModeName, Query(description="Which legs answer.")] = "hybrid",
        deadline_ms: Annotated[int | None, Query(ge=MIN_DEADLINE_MS, le=MAX_DEADLINE_MS)] = None,
        user: Annotated[
            str | None,
            Query(min_length=1, max_length=256, description="The signed-in shopper."),
        ] = None,
        session: Annotated[
            str | None,
            Query(min_length=1, max_length=256, description="Session of a guest shopper."),
        ] = None,
        personalize: Annotated[bool, Query(description="false: ignore user/session.")] = True,
    ) -> Response:
        """Search-box query: hybrid by default, default facets, no explain; ranked for the
        shopper when ``user`` or ``session`` is given."""
        try:
            req = SearchRequest.model_validate(
                {
                    "q": q,
                    "size": size,
                    "page": page,
                    "mode": mode,
                    "deadline_ms": deadline_ms,
                    "user": user,
                    "session": session,
                    "personalize": personalize,
                }
            )
        except ValidationError as exc:
            errors = [{**e, "loc": ("query", *e["loc"])} for e in exc.errors(include_url=False)]
            raise RequestValidationError(errors) from exc
        return await run_search(request, req, "/v1/search")

    @app.post(
        "/v1/search",
        response_model=SearchResponse,
        response_model_exclude_none=True,
        responses=error_responses(400, 413, 503),
    )
    async def search_post(request: Request, req: SearchRequest) -> Response:
        """Full search: filters, facets, paging, mode, fusion, rerank, explain."""
        return await run_search(request, req, "/v1/search")

    @app.get("/v1/products/{product_id}", responses=error_responses(404, 503))
    def product(
        product_id: str, svc: Annotated[SearchService, Depends(get_service)]
    ) -> dict[str, Any]:
        found = svc.product(product_id)
        if found is None:
            raise HTTPException(status_code=404, detail=f"no product with id {product_id!r}")
        return found.to_dict()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process is up (it may still be loading)."""
        return {"status": "ok"}

    @app.get("/readyz", responses=error_responses(503))
    async def readyz() -> JSONResponse:
        """Ready when a snapshot is loaded and the models match it."""
        svc: SearchService | None = state["service"]
        if svc is None or not svc.ready:
            return JSONResponse(
                status_code=503, content={"status": "not ready", "reason": "no snapshot loaded"}
            )
        snap = svc.snapshot
        body: dict[str, Any] = {
            "status": "ready",
            "index_version": snap.version,
            "generation": snap.generation,
            "products": snap.live_count,
        }
        breaker = svc.es.breaker if svc.es is not None else None
        if breaker is not None:
            # Still ready while it is open: answers come from the dense leg, degraded.
            body["elasticsearch_breaker"] = breaker.state
        return JSONResponse(content=body)

    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text."}},
    )
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/admin/reload", dependencies=[Depends(admin)], responses=_ADMIN_ERRORS)
    def admin_reload(svc: Annotated[SearchService, Depends(get_service)]) -> dict[str, Any]:
        """Load the snapshot CURRENT names now (instead of waiting for the watcher)."""
        changed = svc.reload_if_changed()
        return {"reloaded": changed, "index_version": svc.snapshot.version}

    @app.get("/v1/admin/snapshots", dependencies=[Depends(admin)], responses=_ADMIN_ERRORS)
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

    @app.post("/v1/admin/products", dependencies=[Depends(admin)], responses=_ADMIN_ERRORS)
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
        return _update_response(report, svc.snapshot.version, [p.id for p in products])

    @app.delete(
        "/v1/admin/products/{product_id}", dependencies=[Depends(admin)], responses=_ADMIN_ERRORS
    )
    def admin_delete_product(
        product_id: str, svc: Annotated[SearchService, Depends(get_service)]
    ) -> JSONResponse:
        """Delete a product from the serving snapshot (both legs); 404 when it has none."""
        report = svc.apply_updates([], [product_id])
        if report.not_found:
            raise HTTPException(status_code=404, detail=f"no product with id {product_id!r}")
        return _update_response(report, svc.snapshot.version)

    @app.post("/v1/admin/promote/{version}", dependencies=[Depends(admin)], responses=_ADMIN_ERRORS)
    def admin_promote(
        version: str, svc: Annotated[SearchService, Depends(get_service)]
    ) -> dict[str, Any]:
        svc.load(version)  # load first: a snapshot that does not load is never promoted
        svc.store.promote(version)  # CURRENT, and the alias of an Elasticsearch snapshot
        return {"index_version": version}

    @app.post("/v1/admin/rollback", dependencies=[Depends(admin)], responses=_ADMIN_ERRORS)
    def admin_rollback(svc: Annotated[SearchService, Depends(get_service)]) -> dict[str, Any]:
        """Serve again the snapshot that served before this one (promotion history).

        The target is loaded (and served) before ``CURRENT`` switches to it; one that
        does not load is passed over (listed in ``skipped``); 409 when none loads, with
        ``CURRENT`` and the serving snapshot unchanged."""
        result = svc.store.rollback(load=svc.load)
        return {
            "index_version": result.version,
            "previous": result.previous,
            "skipped": [{"version": v, "reason": redact(why)} for v, why in result.skipped],
        }

    recommendations = Recommendations(settings, lambda: state["events"])
    app.include_router(recommend_router(get_service, recommendations, shoppers))
    app.include_router(suggest_router(get_service, suggestions, metrics.registry))
    app.include_router(page_router())  # GET /: the search page (api/static)
    app.include_router(merch_router(get_service, admin))  # /v1/admin/rules
    app.include_router(
        events_router(
            lambda: state["events"],
            settings,
            admin,
            on_erase=lambda _: shoppers.forget(),
            on_stored=count_clicks,
        )
    )
    return app
