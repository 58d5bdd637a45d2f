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
import math
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from shopsearch.api.facets import DEFAULT_FACETS, DEFAULT_PRICE_RANGES, compute_facets, render_hit
from shopsearch.api.request_params import resolve_params
from shopsearch.api.result_cache import ResultCache, result_key
from shopsearch.api.schemas import (
    MAX_RESULT_WINDOW,
    FilterSpec,
    RewriteChangeOut,
    RewriteOut,
    SearchRequest,
    SearchResponse,
)
from shopsearch.api.settings import Settings
from shopsearch.api.shoppers import personalize
from shopsearch.indexer.match_threshold import dense_threshold, ensure_calibrated
from shopsearch.indexer.merch_rules import RulesStore
from shopsearch.indexer.snapshot import LoadedSnapshot, SnapshotError, SnapshotStore, load_snapshot
from shopsearch.indexer.updates import UpdateReport, apply_updates
from shopsearch.rerank.cross_encoder import Reranker
from shopsearch.rerank.merchandising import Rulebook, apply_rules
from shopsearch.rerank.merge import merge_rerank, merge_scores
from shopsearch.rerank.personal import PersonalRescorer
from shopsearch.rerank.score_cache import ScoreCache, model_key
from shopsearch.retrieval.batching import MicroBatcher
from shopsearch.retrieval.deadline import Deadline
from shopsearch.retrieval.encoders import Encoder
from shopsearch.retrieval.filters import Filters, ProductTable
from shopsearch.retrieval.fusion import FusionChoice, FusionMethod, default_fusion, describe, fuse
from shopsearch.retrieval.item_text import item_text
from shopsearch.retrieval.lexical_index import LexicalIndexError
from shopsearch.retrieval.log_throttle import LogThrottle
from shopsearch.retrieval.model_registry import towers_fine_tuned
from shopsearch.retrieval.query_rewrite import QueryRewriter, product_words
from shopsearch.retrieval.recommend.base import HistoryItem
from shopsearch.retrieval.result_set import restrict_to_matches
from shopsearch.retrieval.scoped_cache import CacheStats
from shopsearch.retrieval.search_params import SearchParams
from shopsearch.retrieval.types import Candidate, Product, QueryRewrite, ShopsearchError

__all__ = [
    "DEFAULT_FACETS",
    "DEFAULT_PRICE_RANGES",
    "DeadlineExceeded",
    "DenseObserver",
    "Retrieval",
    "Scorer",
    "SearchService",
    "ServiceError",
    "normalize_query",
    "to_filters",
    "with_snapshot_towers",
]

log = logging.getLogger(__name__)

#: Where a loaded snapshot keeps its query rewriter (built from its products' words).
REWRITER_KEY = "query_rewriter"
#: Fewer candidates than this are not worth a rerank call when the deadline is short.
_MIN_RERANK = 5

#: Told of each computed search whose dense leg answered: (the snapshot searched, the
#: query vector (1, d), the rows the leg returned best first, the k it was asked for).
#: Runs on the request path, so it must return at once (api/quality_monitor.py only
#: queues a sample); the arrays are the request's own and must not be written to.
DenseObserver = Callable[
    [LoadedSnapshot, npt.NDArray[np.float32], npt.NDArray[np.int64], int], object
]


class Scorer(Protocol):
    """What the rerank stage needs of a cross-encoder: one score per ``(query, text)``
    pair, higher is more relevant. :class:`rerank.cross_encoder.Reranker` is one;
    evaluation passes a memo over one (``eval/runner.py``)."""

    def score(self, query: str, texts: Sequence[str]) -> npt.NDArray[np.float32]: ...


class ServiceError(ShopsearchError):
    """The service cannot answer at all (no snapshot, or every retrieval leg failed)."""


class DeadlineExceeded(ServiceError):
    """The request's deadline passed (or it was cancelled) before any leg answered."""


_SPACES = re.compile(r"\s+")


def normalize_query(q: str) -> str:
    """Trim and collapse whitespace; case is left to each leg's analyzer."""
    return _SPACES.sub(" ", q).strip()


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
        self.query_encoder = self._query_encoder(encoder)
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
        self.default_fusion = self._default_fusion()
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
        self._batcher = (
            MicroBatcher(self.query_encoder.encode_query, max_batch=settings.query_batch_size)
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

    def _query_encoder(self, encoder: Encoder) -> Encoder:
        """The query tower: ``encoder`` itself, or the same weights on the runtime
        ``Settings.query_backend`` names (``auto``: fp32 onnxruntime, the same vectors
        in half the time, when ``encoder`` runs torch on a CPU)."""
        backend = self.settings.query_backend
        if backend == "auto":
            on_cpu = not encoder.device.startswith("cuda")
            backend = "onnx" if on_cpu and encoder.backend == "torch" else "same"
        if backend in ("same", encoder.backend):
            return encoder
        query = Encoder(
            encoder.path,
            device=self.settings.device,
            backend=backend,
            onnx_threads=self.settings.onnx_threads,
        )
        log.info("query tower on %s (item tower on %s)", query.backend, encoder.backend)
        return query

    def _default_fusion(self) -> FusionChoice:
        settings = self.settings
        if settings.fusion != "auto":
            return FusionChoice(
                FusionMethod(settings.fusion), settings.lexical_weight, "set by SHOPSEARCH_FUSION"
            )
        return default_fusion(
            fine_tuned=towers_fine_tuned(Path(self.encoder.info.path)),
            base_lexical_weight=settings.base_lexical_weight,
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
            self._prepare(snap)
            self._snapshot = snap  # the swap: in-flight requests keep their pinned snapshot
            self._reset_caches(snap)
            log.info(
                "serving snapshot %s generation %d (%d products)",
                snap.version,
                snap.generation,
                snap.live_count,
            )
            return snap.version

    def _prepare(self, snap: LoadedSnapshot) -> None:
        """Check models, apply search settings and warm up ``snap`` before it serves."""
        self._check_models(snap)
        if (self.settings.spelling or self.settings.units) and REWRITER_KEY not in snap.extra:
            snap.extra[REWRITER_KEY] = self._build_rewriter(snap)
        # Requests pass the server's nprobe and refine factor with every search
        # (SearchParams); set as the index's own too, before it is shared, for the readers
        # that search it without a SearchParams (recommendations' text neighbours).
        snap.vectors.set_search_params(
            nprobe=self.settings.nprobe, refine_factor=self.settings.refine_factor
        )
        # Warm up on the new snapshot before it takes traffic: the first query through
        # torch and FAISS pays one-off allocation costs (~250 ms here).
        snap.vectors.search(self.query_encoder.encode_query(["warm up"]), 10)
        try:
            snap.lexical.search("warm up", 10)
            ensure_calibrated(snap, self.query_encoder.encode_query)  # older snapshots
        except LexicalIndexError as exc:
            # Serve anyway: every answer degrades to the dense leg until the cluster is back.
            log.warning("lexical leg of %s unavailable at load: %s", snap.version, exc)

    def _build_rewriter(self, snap: LoadedSnapshot) -> QueryRewriter:
        """A query rewriter over the live products' titles, brands and categories."""
        t = time.perf_counter()
        products = snap.table.products
        rewriter = QueryRewriter.for_products(
            (products[row] for row in snap.table.row_of.values()),
            known_words=self.encoder.known_words(),
        )
        log.info(
            "query rewriting: %d catalog words from snapshot %s (%.0f ms)",
            rewriter.spelling.vocabulary_size,
            snap.version,
            _ms(t),
        )
        return rewriter

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
                rewriter = snap.extra.get(REWRITER_KEY)
                if rewriter is not None:
                    # New products' words must not be "corrected" away; rebuilding the
                    # rewriter per update would cost about a second per 50k products.
                    rewriter.add_known(product_words(p) for p in upserts)
                    result.snapshot.extra[REWRITER_KEY] = rewriter
                self._prepare(result.snapshot)
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
        self._check_models(snap)
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

    def _check_models(self, snap: LoadedSnapshot) -> None:
        built = snap.item_model
        ours = self.encoder.info
        if built["sha256"] != ours.sha256:
            raise SnapshotError(
                f"snapshot {snap.version} was built with item tower {built['id']} "
                f"(sha256 {built['sha256'][:12]}), but this server's query tower is {ours.id} "
                f"(sha256 {ours.sha256[:12]}); serve with --model {built['path']}"
                f" and SHOPSEARCH_ENCODER_BACKEND={built.get('backend', 'torch')},"
                " or rebuild the snapshot"
            )

    def product(self, product_id: str) -> Product | None:
        table = self.snapshot.table
        row = table.row_of.get(product_id)
        return None if row is None else table.products[row]

    # -- the query path --------------------------------------------------------------

    def _encode_uncached(self, q: str) -> npt.NDArray[np.float32]:
        if self._batcher is not None:
            return self._batcher.encode(q)
        vector = self.query_encoder.encode_query([q])
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
        deadline = deadline or Deadline.none()
        params = params or self.search_params(request)
        snap = self.snapshot
        table = snap.table
        filters = to_filters(request.filters)
        table.check(filters)  # unknown attribute -> InvalidFilterError before any work
        query = normalize_query(request.q)
        result = Retrieval(snapshot=snap, query=query, params=params)
        timings = result.timings_ms
        if params.rewrite:
            t = time.perf_counter()
            result.rewrite = self.rewrite_query(query, snap)
            if result.rewrite is not None:
                timings["rewrite"] = _ms(t)
                query = result.search_text
        need = min(request.page * request.size, MAX_RESULT_WINDOW)
        depth = params.leg_depth
        use_dense = params.mode in ("hybrid", "dense")
        use_lexical = params.mode in ("hybrid", "lexical")

        qvec = None
        dense_rows: npt.NDArray[np.int64] | None = None  # the dense leg's last answer
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
                qvec = self._encode_query(query)
            except Exception:
                log.exception("query encoding failed; serving without the dense leg")
                result.degraded.append("dense")
                use_dense = False
            timings["encode"] = _ms(t)

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
                timings["dense"] = timings.get("dense", 0.0) + _ms(t)
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
                timings["lexical"] = timings.get("lexical", 0.0) + _ms(t)
                if lexical_error is not None:  # logged outside the timed block, rate-limited
                    self._degraded_log.warning(
                        str(lexical_error),
                        "lexical search failed; serving without it: %s",
                        lexical_error,
                    )
            if not use_dense and not use_lexical:
                if deadline.expired():
                    raise DeadlineExceeded(f"{deadline.reason} passed before any leg answered")
                raise ServiceError(f"every retrieval leg failed ({', '.join(result.degraded)})")

            t = time.perf_counter()
            result.fused, result.fusion = self._fuse(result.dense, result.lexical, params)
            timings["fuse"] = timings.get("fuse", 0.0) + _ms(t)

            t = time.perf_counter()
            result.filtered = _apply_filters(result.fused, table, filters)
            timings["filter"] = timings.get("filter", 0.0) + _ms(t)

            more_exists = dense_full or lexical_full
            if filters.is_empty() or len(result.filtered) >= need or not more_exists:
                break
            if depth >= params.max_depth:
                break
            if deadline.expired():
                result.cut.append("widen")
                break
            depth = min(depth * 4, params.max_depth)  # widen: filters ate the candidates

        # Without a whole lexical answer (the cluster failed, was cut or answered from
        # some shards) the result set cannot be known: every candidate stays, and the
        # cluster is not asked again within the same budget.
        lexical_whole = not any(s.startswith("lexical") for s in (*result.degraded, *result.cut))
        breaker = self.es.breaker if self.es is not None else None
        lexical_whole = lexical_whole and (breaker is None or breaker.state == "closed")
        if params.match_only and lexical_whole:
            self._keep_matches(result, filters)
        if on_dense is not None and use_dense and qvec is not None and dense_rows is not None:
            on_dense(snap, qvec, dense_rows, result.depth)
        self._rerank(params, result, deadline, scorer)
        return result

    def _keep_matches(self, result: Retrieval, filters: Filters) -> None:
        """Cut ``result.filtered`` to the query's result set and count it (``total``);
        when the lexical index cannot say, every candidate stays (``degraded``)."""
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
            self._degraded_log.warning(str(exc), "result set unknown, all candidates kept: %s", exc)
        else:
            result.filtered, result.total = found.candidates, found.total
        result.timings_ms["match"] = _ms(t)

    def _fuse(
        self,
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

    def _rerank(
        self, params: SearchParams, result: Retrieval, deadline: Deadline, scorer: Scorer | None
    ) -> None:
        if not params.rerank:
            result.rerank_status = "off"
            return
        if scorer is None and self.reranker is None:
            result.rerank_status = "skipped (no model)"
            return
        depth = min(params.rerank_depth, len(result.filtered))
        fits = self._rerank_fits(depth, deadline)
        if fits < _MIN_RERANK:
            result.cut.append("rerank")
            result.rerank_status = f"skipped ({deadline.reason})"
            return
        if fits < depth:
            result.cut.append(f"rerank depth {depth} -> {fits}")
            depth = fits
        head = result.filtered[:depth]
        t = time.perf_counter()
        try:
            scores, scored = self._score_pairs(scorer, result, head)
        except Exception:
            log.exception("rerank failed; serving the fused order")
            result.degraded.append("rerank")
            result.rerank_status = "skipped (error)"
            return
        finally:
            result.timings_ms["rerank"] = _ms(t)
        # The cost per candidate scored, for deciding what fits the next deadline: of the
        # service's own reranker only (a caller's scorer, e.g. eval's memo, costs its own).
        if scored and scorer is None:
            per = result.timings_ms["rerank"] / scored
            self._rerank_ms = per if self._rerank_ms is None else 0.8 * self._rerank_ms + 0.2 * per
        weight = params.rerank_weight
        if params.rerank_merge == "scores":
            merged = merge_scores(
                scores.tolist(),
                [c.lexical_score for c in head],
                [c.dense_score for c in head],
                weight=weight,
            )
        else:
            # The head arrives in fused order, which the rank merge reads as its evidence.
            merged = merge_rerank(scores.tolist(), weight=weight)
        for cand, score, final in zip(head, scores.tolist(), merged, strict=True):
            cand.rerank_score = score
            cand.final_score = final
        order = sorted(range(len(head)), key=lambda i: -merged[i])  # stable: ties keep fused order
        result.filtered = [head[i] for i in order] + result.filtered[depth:]
        result.rerank_status = f"applied ({len(head)} candidates)"

    def _score_pairs(
        self, scorer: Scorer | None, result: Retrieval, head: Sequence[Candidate]
    ) -> tuple[npt.NDArray[np.float32], int]:
        """The scores of ``head`` for the text searched, by ``scorer`` (uncached) or else
        the service's reranker, and how many pairs were computed: the others came from
        the score cache, with the same scores."""
        products = result.snapshot.table.products
        texts = [item_text(products[c.row]) for c in head]
        if scorer is not None:
            return scorer.score(result.search_text, texts), len(texts)
        reranker = self.reranker
        if reranker is None:  # _rerank checked; kept for the type checker
            raise ServiceError("no reranker is configured")
        if self.score_cache is None:
            return reranker.score(result.search_text, texts), len(texts)
        cached = self.score_cache.score(
            reranker,
            result.search_text,
            [products[c.row].id for c in head],
            texts,
            model=_reranker_key(reranker),
            scope=result.snapshot,
        )
        return cached.scores, cached.scored

    def _rerank_fits(self, depth: int, deadline: Deadline) -> int:
        """How many of ``depth`` candidates the reranker can score before ``deadline``,
        from its recent cost per candidate (all of them until that is known)."""
        if deadline.expired():
            return 0
        remaining = deadline.remaining_ms()
        if self._rerank_ms is None or self._rerank_ms <= 0 or math.isinf(remaining):
            return depth
        # Keep a fifth of what is left for facets, paging and the answer itself.
        return min(depth, int(0.8 * remaining / self._rerank_ms))

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
                result.timings_ms["personal"] = _ms(t)
                personalized = f"applied ({count} recent items)"
        filters, queries = to_filters(request.filters), (result.query, result.search_text)
        merch = apply_rules(rules.value, result.filtered, table, filters, queries)
        if result.total is not None:  # counted past the candidates: count hides and inserts
            result.total += len(merch.candidates) - len(result.filtered)
        result.filtered = merch.candidates  # after filters and ranking, before facets
        t = time.perf_counter()
        facets = compute_facets(
            table,
            [c.row for c in result.filtered],
            request.facets if request.facets is not None else DEFAULT_FACETS,
            request.price_ranges or DEFAULT_PRICE_RANGES,
        )
        result.timings_ms["facets"] = _ms(t)
        start = (request.page - 1) * request.size
        page = result.filtered[start : start + request.size]
        hits = [
            render_hit(table.products[c.row], c, request.explain, merch.notes.get(c.row))
            for c in page
        ]
        result.timings_ms["total"] = _ms(started)
        snap = result.snapshot
        rewrite = result.rewrite
        response = SearchResponse(
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
            models=self.models(),
            rerank=result.rerank_status,
            fusion=result.fusion,
            degraded=result.degraded,
            cut=result.cut,
            params=result.params if request.explain else None,
            personalized=personalized,
            rules_version=rules.version,
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
        if key is not None and self.result_cache is not None:
            self.result_cache.put(key, response, snap)  # only if full (result_cache.cacheable)
        return response

    def _result_key(self, request: SearchRequest, rules_version: int | None = None) -> str | None:
        """``request``'s result-cache key (with the rules version: default the serving
        one); None when the cache is off or the answer is ranked for a shopper."""
        if self.result_cache is None:
            return None
        context = _reranker_key(self.reranker) if self.reranker is not None else ""
        rules = self.merch.current().version if rules_version is None else rules_version
        return result_key(request, normalize_query(request.q), f"{context}|rules {rules}")

    def models(self) -> dict[str, dict[str, str] | None]:
        """Ids and short checksums of the models answering queries."""

        def short(info: dict[str, str]) -> dict[str, str]:
            return {"id": info["id"], "sha256": info["sha256"][:12]}

        snap = self._snapshot
        query = self.query_encoder.info
        return {
            # The runtime's checksum, and that of the weights it runs (the item tower's
            # when the query tower is the same model on a faster runtime).
            "query_tower": {**short(query.to_dict()), "weights_sha256": query.weights_sha256[:12]},
            "item_tower": short(snap.item_model) if snap else None,
            "reranker": short(self.reranker.info.to_dict()) if self.reranker else None,
        }


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


def _reranker_key(reranker: Reranker) -> str:
    # getattr: a test's stand-in for the reranker may have no length bound.
    return model_key(reranker.info, getattr(reranker, "max_length", None))


def _apply_filters(
    candidates: list[Candidate], table: ProductTable, filters: Filters
) -> list[Candidate]:
    if filters.is_empty() or not candidates:
        return list(candidates)
    rows = np.fromiter((c.row for c in candidates), dtype=np.int64, count=len(candidates))
    keep = table.mask(filters, rows)
    return [c for c, ok in zip(candidates, keep.tolist(), strict=True) if ok]
