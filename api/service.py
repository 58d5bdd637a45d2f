"""The search service: composes the stages of the query path over one snapshot.

    q -> normalize -> rewrite -> query tower -> vector index ──┐
                          └──────────────────────-> lexical index ──┴-> fuse -> filter -> rerank -> page + facets

Rewriting (``retrieval/query_rewrite.py``) writes units the catalog's way and corrects
unknown words to catalog words; every later stage searches the rewritten text, and the
response says what changed and why.

Every knob of a ranking (mode, fusion and weights, leg depths, nprobe, rerank depth,
weight and merge) travels as one frozen :class:`~retrieval.search_params.SearchParams`,
resolved from the settings and the request by :meth:`SearchService.search_params`;
:meth:`SearchService.retrieve` also takes one given (and a reranker to use instead of
the service's), which is how evaluation runs its configurations without changing the
service.

Used by the HTTP API and, in-process, by evaluation and benchmarks. Every stage is
timed; a stage that fails is listed in ``degraded`` and the answer is served from the
stages that worked (only when both retrieval legs fail is it an error).

The stages live beside this module: the retrieval legs, fusion, filters and result set
in ``api/retrieval_stages.py``, the rerank stage in ``api/rerank_stage.py``, a new
snapshot's checks and warm-up in ``api/snapshot_prep.py`` and the response's assembly in
``api/search_response.py``; the service holds the models, caches and serving snapshot
and runs them in order.

Thread safety: a request pins the snapshot it started with, so a new snapshot can be
swapped in (one attribute assignment) while requests are in flight.

Elasticsearch: a snapshot built with the Elasticsearch lexical leg is searched through
the service's one cluster connection (``Settings.es_*``), on the snapshot's own index.
An unreachable cluster, or one slower than ``es_timeout``, makes the lexical leg fail
fast: the answer comes from the dense leg with ``degraded: ["lexical"]``. After
``es_breaker_failures`` consecutive failures the connection's circuit breaker fails
lexical queries at once, without calling the cluster, until a probe succeeds
(``retrieval/circuit_breaker.py``); the failure is logged at most once per
``degraded_log_interval_s`` per reason. A snapshot also loads while the cluster is
down (its warm-up query is then skipped).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import numpy.typing as npt

from shopsearch.api.request_params import resolve_params
from shopsearch.api.rerank_stage import Scorer, rerank, reranker_key
from shopsearch.api.result_cache import ResultCache, result_key

# ServiceError and DeadlineExceeded: re-exported, the errors SearchService's methods raise
# (their home is the stages that raise them).
from shopsearch.api.retrieval_stages import (
    DeadlineExceeded,
    DenseObserver,
    Retrieval,
    ServiceError,
    elapsed_ms,
    normalize_query,
    retrieve_candidates,
    to_filters,
)
from shopsearch.api.schemas import MAX_RESULT_WINDOW, SearchRequest, SearchResponse
from shopsearch.api.search_response import build_response
from shopsearch.api.serving_models import fusion_default, models_answering, query_tower
from shopsearch.api.settings import Settings
from shopsearch.api.shoppers import personalize
from shopsearch.api.snapshot_prep import (
    REWRITER_KEY,
    carry_rewriter,
    check_models,
    prepare_snapshot,
)
from shopsearch.indexer.merch_rules import RulesStore
from shopsearch.indexer.snapshot import SnapshotError, SnapshotStore
from shopsearch.indexer.snapshot_load import LoadedSnapshot, load_snapshot
from shopsearch.indexer.updates import UpdateReport, apply_updates
from shopsearch.rerank.cross_encoder import Reranker
from shopsearch.rerank.merchandising import Rulebook, apply_rules
from shopsearch.rerank.personal import PersonalRescorer
from shopsearch.rerank.score_cache import ScoreCache
from shopsearch.retrieval.batching import MicroBatcher
from shopsearch.retrieval.deadline import Deadline
from shopsearch.retrieval.encoders import Encoder
from shopsearch.retrieval.log_throttle import LogThrottle
from shopsearch.retrieval.query_rewrite import QueryRewriter
from shopsearch.retrieval.recommend.base import HistoryItem
from shopsearch.retrieval.scoped_cache import CacheStats
from shopsearch.retrieval.search_params import SearchParams
from shopsearch.retrieval.types import Product, QueryRewrite

__all__ = [
    "DeadlineExceeded",
    "SearchService",
    "ServiceError",
    "with_snapshot_towers",
]

log = logging.getLogger(__name__)


def with_snapshot_towers(settings: Settings) -> Settings:
    """``settings`` with ``model_dir`` set to the towers that built the ``CURRENT``
    snapshot of ``settings.index_dir`` when no model was given and that directory still
    exists (a snapshot built with fine-tuned towers is then queried with them, not refused
    for a mismatch with the bundled base model). Otherwise ``settings`` unchanged."""
    if settings.model_dir is not None:
        return settings
    try:
        tower = SnapshotStore(settings.index_dir).current_item_tower()
    except SnapshotError:
        return settings  # load() reports the damaged snapshot
    if tower is None or not Path(tower["path"]).is_dir():
        return settings
    return settings.model_copy(update={"model_dir": Path(tower["path"])})


class SearchService:
    """Search over the snapshot ``CURRENT`` points to, with the configured models."""

    def __init__(
        self,
        settings: Settings,
        *,
        encoder: Encoder | None = None,
        reranker: Reranker | None = None,
    ) -> None:
        if encoder is None:
            settings = with_snapshot_towers(settings)
            encoder = Encoder(
                settings.model_dir, device=settings.device, backend=settings.encoder_backend
            )
        self.settings = settings
        #: The item tower (updates encode new products with it) and, unless
        #: ``query_backend`` names another runtime, the query tower.
        self.encoder = encoder
        #: The query tower: the same weights, possibly on a faster runtime.
        self.query_encoder = query_tower(settings, encoder)
        if reranker is None and settings.reranker_dir is not None:
            reranker = Reranker(
                settings.reranker_dir,
                device=settings.device,
                batch_size=settings.rerank_batch_size,
                backend=settings.reranker_backend,
            )
        self.reranker = reranker
        #: The fusion of a request that names none (``Settings.fusion``; ``auto`` follows
        #: whether the towers were fine-tuned).
        self.default_fusion = fusion_default(settings, encoder)
        log.info(
            "default fusion: %s (%s)", self.default_fusion.describe(), self.default_fusion.reason
        )
        #: The cluster connection for Elasticsearch snapshots (None without ``es_url``).
        self.es = settings.elasticsearch()
        # A leg that fails on every request (its backend is down) logs once in a while,
        # not once per request.
        self._degraded_log = LogThrottle(log, settings.degraded_log_interval_s)
        self.store = SnapshotStore(settings.index_dir, es=self.es)
        #: Merchandising rules, versioned on disk; read (one stat) by every search.
        self.merch = RulesStore(settings.merch_rules_dir, Rulebook.parse)
        self._snapshot: LoadedSnapshot | None = None
        #: Recent reranker cost per candidate (ms, moving average); None until measured.
        self._rerank_ms: float | None = None
        # Re-entrant: an update reloads first when CURRENT moved on.
        self._load_lock = threading.RLock()
        # Concurrent requests share forward passes (retrieval/batching.py); a lone request
        # is encoded at once.
        # Searches in retrieve() now; a query encoded while it is the only one may use
        # every core (Encoder.encode_query's solo hint, retrieval/query_fast_path.py).
        self._searching = 0
        self._searching_lock = threading.Lock()
        self._batcher = (
            MicroBatcher(self._encode_batch, max_batch=settings.query_batch_size)
            if settings.query_batch_size > 1
            else None
        )
        size = settings.query_cache_size
        self._encode_query = (
            lru_cache(maxsize=size)(self._encode_uncached) if size > 0 else self._encode_uncached
        )
        # Reranker scores and whole answers of the serving snapshot; emptied whenever it
        # changes (_reset_caches). None: off.
        self.score_cache = (
            ScoreCache(settings.rerank_cache_size) if settings.rerank_cache_size > 0 else None
        )
        self.result_cache = (
            ResultCache(settings.result_cache_size, settings.result_cache_ttl_s)
            if settings.result_cache_size > 0
            else None
        )

    # -- snapshots -------------------------------------------------------------------

    @property
    def snapshot(self) -> LoadedSnapshot:
        """The serving snapshot (raises :class:`ServiceError` before one is loaded)."""
        snap = self._snapshot
        if snap is None:
            raise ServiceError(
                f"no snapshot is loaded from {self.settings.index_dir}; run `shopsearch build` first"
            )
        return snap

    @property
    def ready(self) -> bool:
        return self._snapshot is not None

    def load(self, version: str | None = None) -> str:
        """Load ``version`` (default: the one ``CURRENT`` names) and start serving it.

        Raises :class:`SnapshotError` when it is missing, damaged, or was built with an
        item tower other than this service's query tower; the serving snapshot stays.
        """
        with self._load_lock:
            version = version or self.store.current()
            if version is None:
                raise SnapshotError(
                    f"{self.store.current_file} does not exist; build a snapshot with `shopsearch build`"
                )
            snap = load_snapshot(self.store.path(version), es=self.es)
            prepare_snapshot(snap, self.settings, self.encoder, self.query_encoder)
            self._snapshot = snap  # the swap: in-flight requests keep their pinned snapshot
            self._reset_caches(snap)
            log.info(
                "serving snapshot %s generation %d (%d products)",
                snap.version,
                snap.generation,
                snap.live_count,
            )
            return snap.version

    def apply_updates(self, upserts: Sequence[Product], deletes: Sequence[str]) -> UpdateReport:
        """Upsert and delete products in the snapshot ``CURRENT`` names, on both legs,
        persist them (see :mod:`indexer.updates`) and serve the result at once.

        Raises :class:`indexer.updates.UpdateError` for an ambiguous request or a failure
        that committed nothing (the serving snapshot stays); rejected products are in the
        report.
        """
        with self._load_lock:
            self.reload_if_changed()
            snap = self.snapshot
            result = apply_updates(snap, upserts, deletes, self.encoder, es=self.es)
            if result.report.generation != snap.generation:
                carry_rewriter(snap, result.snapshot, upserts)
                prepare_snapshot(result.snapshot, self.settings, self.encoder, self.query_encoder)
                self._snapshot = result.snapshot
                self._reset_caches(result.snapshot)  # changed text, price or stock
            return result.report

    def close(self) -> None:
        """Release the cluster connection (the service cannot search Elasticsearch after)."""
        if self.es is not None:
            self.es.close()

    def use_snapshot(self, snap: LoadedSnapshot) -> None:
        """Serve an already-loaded snapshot (e.g. one whose vector index eval swapped for
        the exact oracle). Raises :class:`SnapshotError` on a model mismatch."""
        check_models(snap, self.encoder)
        self._snapshot = snap
        self._reset_caches(snap)

    def _reset_caches(self, snap: LoadedSnapshot) -> None:
        """Empty the caches and keep only what is computed on ``snap`` from now on. Called
        after each swap: a request still on the old snapshot cannot put its answer back
        (see :mod:`retrieval.scoped_cache`)."""
        for cache in (self.score_cache, self.result_cache):
            if cache is not None:
                cache.reset(snap)

    def cache_stats(self) -> dict[str, CacheStats]:
        """Hits, misses and entries of each cache that is on: ``rerank``, ``result``."""
        caches = {"rerank": self.score_cache, "result": self.result_cache}
        return {name: cache.stats() for name, cache in caches.items() if cache is not None}

    def reload_if_changed(self) -> bool:
        """Load the snapshot ``CURRENT`` names if it is not the serving one, or if an
        update committed a newer generation of it (``shopsearch update``)."""
        with self._load_lock:
            current = self.store.current()
            if current is None:
                return False
            snap = self._snapshot
            if snap is not None and snap.version == current:
                try:
                    if self.store.generation(current) <= snap.generation:
                        return False
                except SnapshotError:
                    return False  # being pruned or rewritten; the next check will tell
            self.load(current)
            return True

    def product(self, product_id: str) -> Product | None:
        table = self.snapshot.table
        row = table.row_of.get(product_id)
        return None if row is None else table.products[row]

    # -- the query path --------------------------------------------------------------

    def _encode_batch(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        solo = len(texts) == 1 and self._searching <= 1
        return self.query_encoder.encode_query(texts, solo=solo)

    def _encode_uncached(self, q: str) -> npt.NDArray[np.float32]:
        # A lone search has nothing to batch with: it skips the hand-off to the batcher's
        # thread (and back), a few tenths of a millisecond.
        if self._batcher is not None and self._searching > 1:
            return self._batcher.encode(q)
        vector = self._encode_batch([q])
        vector.setflags(write=False)
        return vector

    def rewrite_query(self, query: str, snap: LoadedSnapshot | None = None) -> QueryRewrite | None:
        """``query`` (already normalized) rewritten as the stages search it on ``snap``
        (default: the serving snapshot); None when the server rewrites nothing."""
        rewriter: QueryRewriter | None = (snap or self.snapshot).extra.get(REWRITER_KEY)
        if rewriter is None:
            return None
        return rewriter.rewrite(query, units=self.settings.units, spelling=self.settings.spelling)

    def search_params(
        self, request: SearchRequest, overrides: Mapping[str, object] | None = None
    ) -> SearchParams:
        """What ``request`` is answered with: this server's defaults, then the request's
        fields that are set, then ``overrides`` (:class:`SearchParams` field names;
        evaluation's configurations); see :func:`api.request_params.resolve_params`.

        Raises:
            ValueError: an unknown name or a value out of range in ``overrides``.
        """
        return resolve_params(
            self.settings,
            self.default_fusion,
            request,
            overrides,
            reranker=self.reranker is not None,
        )

    def retrieve(
        self,
        request: SearchRequest,
        deadline: Deadline | None = None,
        *,
        params: SearchParams | None = None,
        scorer: Scorer | None = None,
        on_dense: DenseObserver | None = None,
    ) -> Retrieval:
        """Run retrieval, fusion, filtering and rerank for ``request`` (no paging).

        ``params`` (default: :meth:`search_params` of ``request``) decides every stage;
        ``request`` gives the query, filters and page. ``scorer`` reranks instead of the
        service's reranker, without the service's score cache (its caller caches, or
        counts every pair); the service itself is not changed, so concurrent calls may
        pass different ones.

        ``deadline`` (default: none) is checked between stages: once it has passed, the
        stages not yet run are cut (``Retrieval.cut``) and the answer comes from what
        ran. A deadline already passed at the start still gets the cheapest leg (lexical
        in hybrid mode; dense is listed in ``cut``); :class:`DeadlineExceeded` when the
        request was cancelled (the client left) or no leg answered in time.

        ``on_dense`` (see :data:`DenseObserver`) is called once, after retrieval, with
        the dense leg's last answer (the widest, when filters widened the search).
        """
        with self._searching_lock:
            self._searching += 1
        try:
            return self._retrieve(request, deadline, params, scorer, on_dense)
        finally:
            with self._searching_lock:
                self._searching -= 1

    def _retrieve(
        self,
        request: SearchRequest,
        deadline: Deadline | None,
        params: SearchParams | None,
        scorer: Scorer | None,
        on_dense: DenseObserver | None,
    ) -> Retrieval:
        deadline = deadline or Deadline.none()
        params = params or self.search_params(request)
        snap = self.snapshot
        table = snap.table
        filters = to_filters(request.filters)
        table.check(filters)  # unknown attribute -> InvalidFilterError before any work
        query = normalize_query(request.q)
        result = Retrieval(snapshot=snap, query=query, params=params)
        if params.rewrite:
            t = time.perf_counter()
            result.rewrite = self.rewrite_query(query, snap)
            if result.rewrite is not None:
                result.timings_ms["rewrite"] = elapsed_ms(t)
        need = min(request.page * request.size, MAX_RESULT_WINDOW)
        retrieve_candidates(
            result,
            params,
            filters,
            deadline,
            need,
            self._encode_query,
            breaker=self.es.breaker if self.es is not None else None,
            degraded_log=self._degraded_log,
            on_dense=on_dense,
        )
        self._rerank(params, result, deadline, scorer)
        return result

    def _rerank(
        self, params: SearchParams, result: Retrieval, deadline: Deadline, scorer: Scorer | None
    ) -> None:
        """The rerank stage (:func:`api.rerank_stage.rerank`) with this service's
        reranker, score cache and the reranker's recent cost, which it keeps up to date."""
        per = rerank(
            params,
            result,
            deadline,
            scorer,
            reranker=self.reranker,
            score_cache=self.score_cache,
            cost_ms=self._rerank_ms,
        )
        if per is not None:
            self._rerank_ms = per if self._rerank_ms is None else 0.8 * self._rerank_ms + 0.2 * per

    def search(
        self,
        request: SearchRequest,
        deadline: Deadline | None = None,
        *,
        history: Sequence[HistoryItem] = (),
        rescorer: Callable[[LoadedSnapshot], PersonalRescorer] | None = None,
        on_dense: DenseObserver | None = None,
    ) -> SearchResponse:
        """Answer one search request within ``deadline`` (see :meth:`retrieve`); raises
        InvalidFilterError, ServiceError (DeadlineExceeded when nothing ran in time).
        ``on_dense`` goes to :meth:`retrieve` (an answer from the result cache calls it not).

        ``history`` (the shopper's newest events, newest first) re-scores the head of the
        ranked list with ``rescorer(snapshot)`` (:mod:`rerank.personal`) when
        ``request.personalize``; it only re-orders what the search found, so filters hold,
        and with an empty history the answer is exactly the unpersonalised one."""
        started = time.perf_counter()
        # A full answer to the same request without a shopper, on this snapshot; a client
        # that already hung up gets DeadlineExceeded from retrieve() as ever.
        rules = self.merch.current()  # one version for the whole request, cache key included
        key = self._result_key(request, rules.version)
        cancelled = deadline is not None and deadline.cancelled
        if key is not None and self.result_cache is not None and not cancelled:
            hit = self.result_cache.get(key, self._snapshot, started=started)
            if hit is not None:
                return hit
        result = self.retrieve(request, deadline, on_dense=on_dense)
        table = result.snapshot.table
        personalized = "off"
        if request.personalize and (request.user or request.session):
            personalized = "no history"
            if history and rescorer is not None:
                t = time.perf_counter()
                count = personalize(
                    result,
                    history,
                    rescorer(result.snapshot),
                    self.settings.personal_depth,
                    lambda: self._encode_query(result.search_text),
                )
                result.timings_ms["personal"] = elapsed_ms(t)
                personalized = f"applied ({count} recent items)"
        filters, queries = to_filters(request.filters), (result.query, result.search_text)
        merch = apply_rules(rules.value, result.filtered, table, filters, queries)
        if result.total is not None:  # counted past the candidates: count hides and inserts
            result.total += len(merch.candidates) - len(result.filtered)
        result.filtered = merch.candidates  # after filters and ranking, before facets
        response = build_response(
            request,
            result,
            merch,
            rules_version=rules.version,
            personalized=personalized,
            models=self.models(),
            started=started,
        )
        if key is not None and self.result_cache is not None:
            self.result_cache.put(
                key, response, result.snapshot
            )  # only if full (result_cache.cacheable)
        return response

    def _result_key(self, request: SearchRequest, rules_version: int | None = None) -> str | None:
        """``request``'s result-cache key (with the rules version: default the serving
        one); None when the cache is off or the answer is ranked for a shopper."""
        if self.result_cache is None:
            return None
        context = reranker_key(self.reranker) if self.reranker is not None else ""
        rules = self.merch.current().version if rules_version is None else rules_version
        return result_key(request, normalize_query(request.q), f"{context}|rules {rules}")

    def models(self) -> dict[str, dict[str, str] | None]:
        """Ids and short checksums of the models answering queries
        (:func:`api.serving_models.models_answering`)."""
        return models_answering(self.query_encoder, self._snapshot, self.reranker)
