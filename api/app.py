"""The HTTP API (FastAPI). Domain errors become HTTP status codes here and only here.

Endpoints: ``GET/POST /v1/search``, ``GET /v1/products/{id}``, ``/healthz``, ``/readyz``,
``/metrics`` (Prometheus) and token-protected ``/v1/admin/*``. A background thread watches
``CURRENT`` (and the serving snapshot's update generation) and swaps in a newly promoted
or updated snapshot without dropping in-flight requests.

:func:`create_app` wires the app together; the rest lives beside what it does and is
mounted here as routers:

- api/admin_routes.py: reload, snapshots, promote, rollback, and incremental updates
  (``POST /v1/admin/products`` with a JSON list of products to upsert, ``ProductIn``;
  ``DELETE /v1/admin/products/{id}``);
- api/merch_routes.py (``/v1/admin/rules``), api/events_routes.py, api/recommend_routes.py,
  api/suggest_routes.py, api/page_routes.py (the search page at ``/``);
- api/service_metrics.py: the Prometheus metrics (``ServiceMetrics``, ``CacheCollector``);
- api/admission.py and api/guard.py: the middleware (admission control, admin token and
  body-size limits).

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
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from shopsearch.api.admin_routes import admin_router
from shopsearch.api.admission import (
    AdmissionController,
    AdmissionGate,
    Overloaded,
    default_inflight,
)
from shopsearch.api.click_through import ClickThrough, ClickThroughCollector
from shopsearch.api.events_routes import events_router
from shopsearch.api.guard import RequestGuard, admin_denial
from shopsearch.api.heap import HeapKeeper
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
from shopsearch.api.service_metrics import CacheCollector, ServiceMetrics
from shopsearch.api.settings import Settings
from shopsearch.api.shoppers import ShopperSignals
from shopsearch.api.suggest_routes import suggest_router
from shopsearch.api.suggestions import Suggestions
from shopsearch.indexer.events.store import EventStore
from shopsearch.indexer.events.types import Event
from shopsearch.indexer.snapshot import SnapshotError
from shopsearch.indexer.updates import UpdateError
from shopsearch.retrieval.deadline import Deadline
from shopsearch.retrieval.filters import InvalidFilterError
from shopsearch.retrieval.lexical_index import LexicalIndexError
from shopsearch.retrieval.recommend.base import HistoryItem
from shopsearch.retrieval.search_params import ModeName

__all__ = ["create_app"]

log = logging.getLogger(__name__)


def _watch_snapshots(
    service: SearchService, metrics: ServiceMetrics, interval: float, stop: threading.Event
) -> None:
    while not stop.wait(interval):
        try:
            if service.reload_if_changed():
                metrics.reloads.labels("ok").inc()
        except Exception:  # keep serving the old snapshot; say why in the log
            log.exception("could not load the newly promoted snapshot; still serving the old one")
            metrics.reloads.labels("error").inc()


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
    metrics = ServiceMetrics()
    state: dict[str, Any] = {"service": service, "events": None, "live_recall": None}
    recommendations = Recommendations(settings, lambda: state["events"])
    # The re-scorer's foryou feature reads the served recommender's for-you ranker.
    shoppers = ShopperSignals(settings, lambda: state["events"], recommendations.bundle)
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
    metrics.registry.register(CacheCollector(lambda: state["service"]))
    metrics.registry.register(LiveRecallCollector(lambda: state["live_recall"]))
    click_through = ClickThrough()
    metrics.registry.register(ClickThroughCollector(lambda: click_through))

    def count_clicks(events: Sequence[Event]) -> None:
        click_through.clicked(e.query_id for e in events if e.kind == "click" and e.query_id)

    def known_product(product_id: str) -> bool:  # not counted before a snapshot is served
        svc: SearchService | None = state["service"]
        return svc is None or not svc.ready or svc.product(product_id) is not None

    def heap_state() -> tuple[object, ...] | None:
        """What the server holds for long, for the heap keeper (api/heap.py)."""
        svc: SearchService | None = state["service"]
        if svc is None or not svc.ready:
            return None
        snap = svc.snapshot
        return (snap.version, snap.generation, suggestions.built_for)

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
        keeper = HeapKeeper(heap_state) if settings.gc_freeze else None
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
        if keeper is not None:
            keeper.close()
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

    # Here, after /metrics: the schema lists the admin paths in this place, as before.
    app.include_router(admin_router(get_service, admin, settings, redact))
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
