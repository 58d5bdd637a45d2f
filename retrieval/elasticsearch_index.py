"""The Elasticsearch backend of :class:`~retrieval.lexical_index.LexicalIndex`.

Same fields, boosts and filter semantics as :class:`~retrieval.lexical_index.TantivyIndex`,
so the two rank comparably and the same contract tests run on both:

* ``title``, ``brand``, ``category`` and ``description`` (cut to ``DESCRIPTION_CHARS``) are
  text fields analysed with the analyzer the cluster offers: ``english`` when the cluster
  has the ``analysis-common`` module (any full distribution), ``standard`` otherwise (the
  test distribution). The choice is stored in the index's mapping ``_meta`` and reported
  by :meth:`ElasticsearchIndex.describe`.
* Filters run inside the engine on keyword copies that are case-folded in Python, exactly
  as the reference check :func:`~retrieval.lexical_index.filters_hold` folds them:
  ``brand_kw``, ``category_kw`` (every path prefix) and ``attr_kw`` (``key=value``).
* A query is one ``multi_match`` of type ``most_fields`` over the boosted text fields: its
  score is the sum of the per-field BM25 scores, as tantivy's query parser sums them.

Snapshots use one index per version (``<prefix>-<version>``) and an alias that
:meth:`ElasticsearchIndex.promote` moves in a single ``_aliases`` request, so readers
searching through the alias never see a missing or half-built index.

Example (needs a running node)::

    index = ElasticsearchIndex("products", url="http://127.0.0.1:9201")
    new = index.create_versioned_index("products", "20240101")
    new.build(products)
    index.promote("products", new.index)
    index.search("cordless drill", 10)
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from shopsearch.retrieval.circuit_breaker import CircuitBreaker
from shopsearch.retrieval.es_connection import (
    LexicalHits,
    coverage_of,
    failover_options,
    split_urls,
)
from shopsearch.retrieval.es_vector_fields import filter_clauses
from shopsearch.retrieval.filters import Filters
from shopsearch.retrieval.item_text import DESCRIPTION_CHARS
from shopsearch.retrieval.lexical_index import (
    DEFAULT_FIELD_BOOSTS,
    LexicalHit,
    LexicalIndexError,
    ProgressCallback,
    _category_levels,
)
from shopsearch.retrieval.match_set import MatchSet
from shopsearch.retrieval.types import Product

if TYPE_CHECKING:
    from elasticsearch import Elasticsearch

__all__ = [
    "ANALYZER_CHOICES",
    "ElasticsearchConnection",
    "ElasticsearchIndex",
    "FacetCounts",
    "RefreshPolicy",
    "RejectedDocumentsError",
]

log = logging.getLogger(__name__)

#: Analyzers the text fields can use; ``"auto"`` picks ``english`` when the cluster has it.
ANALYZER_CHOICES = ("auto", "english", "standard")

#: ``refresh`` of single-document writes: ``"wait_for"`` returns once the change is
#: searchable, ``True`` forces a refresh (costly), ``False`` returns at once.
RefreshPolicy = Literal["wait_for"] | bool

#: ``wait_for_active_shards`` of writes: how many copies of a shard must be active before
#: a write starts (``"all"``: every configured copy).
ActiveShards = int | Literal["all"]

#: How many rejected documents an error message lists before "... and N more".
_ERRORS_SHOWN = 20

# Elasticsearch index names: lower case, none of these characters, not starting with -_+.
_BAD_NAME_CHARS = re.compile(r'[\\/*?"<>| ,#:A-Z]')


def _check_index_name(name: str, what: str) -> None:
    if not name or _BAD_NAME_CHARS.search(name) or name[0] in "-_+" or name in {".", ".."}:
        raise LexicalIndexError(
            f"{what} {name!r} is not a valid Elasticsearch index name: use lower-case letters, "
            'digits, "-" and "_" (not first), no spaces or any of \\/*?"<>|,#:'
        )


def _redact(url: str) -> str:
    """``url`` without user name and password (safe for logs and error messages)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


class RejectedDocumentsError(LexicalIndexError):
    """Elasticsearch refused some documents; ``rejected`` holds ``(product id, reason)``."""

    def __init__(self, message: str, rejected: Sequence[tuple[str, str]]) -> None:
        super().__init__(message)
        self.rejected: list[tuple[str, str]] = list(rejected)


@dataclass(frozen=True, slots=True)
class FacetCounts:
    """Aggregation counts over the documents matching a query and filters.

    ``terms`` maps a facet field to ``(value, count)`` pairs, most frequent first (brand
    and attribute values are case-folded, as filters compare them); ``price`` holds
    ``(min, max, count)`` per requested range, ``min`` inclusive and ``max`` exclusive
    (Elasticsearch's range aggregation semantics), ``None`` meaning unbounded.
    """

    total: int
    terms: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    price: list[tuple[float | None, float | None, int]] = field(default_factory=list)


class ElasticsearchIndex:
    """BM25 over an Elasticsearch index (or an alias), behind the ``LexicalIndex`` protocol.

    Give either ``client`` (an ``elasticsearch.Elasticsearch``, not closed by this object)
    or ``url`` (one node, or several comma-separated: a request to a dead node is retried
    on the next, see :func:`~retrieval.es_connection.failover_options`) with optional
    ``api_key``, ``basic_auth`` and ``ca_certs`` (a client is made and closed by
    :meth:`close`). Credentials are never logged nor put in errors.

    ``timeout`` (seconds) bounds every query and count: an unreachable, failing or slower
    cluster raises :class:`LexicalIndexError`, so the service can answer from the dense
    leg. Builds and admin calls use ``admin_timeout``. ``refresh`` is the refresh policy of
    :meth:`upsert` and :meth:`delete`. ``analyzer`` is ``"auto"`` (``english`` when the
    cluster offers it, ``standard`` otherwise), ``"english"`` or ``"standard"``.
    ``breaker`` (shared by every handle on the same cluster) guards :meth:`search` and
    :meth:`facets`: while it is open they raise :class:`LexicalIndexError` at once, with
    no request (``None``: every query tries the cluster).

    ``shards`` and ``replicas`` are those of indices this handle creates (a cluster of
    several nodes wants ``replicas >= 1``, so losing a node loses no shard).
    ``wait_for_active_shards`` is how many copies of a shard must be active before a
    write starts: 1 (Elasticsearch's default) keeps writes going while a node is down,
    and is still safe, because a write is acknowledged only once every in-sync copy has
    it; a larger number refuses writes while fewer copies run (after the bulk timeout).

    Connecting is lazy: the constructor makes no request.
    """

    backend = "elasticsearch"
    MULTI_MATCH_TYPE = "most_fields"

    def __init__(
        self,
        index: str,
        *,
        client: Elasticsearch | None = None,
        url: str | Sequence[str] | None = None,
        api_key: str | tuple[str, str] | None = None,
        basic_auth: tuple[str, str] | None = None,
        ca_certs: str | Path | None = None,
        analyzer: str = "auto",
        field_boosts: Mapping[str, float] | None = None,
        timeout: float = 0.5,
        admin_timeout: float = 60.0,
        refresh: RefreshPolicy = "wait_for",
        shards: int = 1,
        replicas: int = 0,
        chunk_size: int = 500,
        breaker: CircuitBreaker | None = None,
        wait_for_active_shards: ActiveShards = 1,
    ) -> None:
        try:
            from elasticsearch import Elasticsearch
        except ImportError as exc:
            raise LexicalIndexError(
                "the Elasticsearch backend needs the official client: "
                "pip install 'elasticsearch>=8.19,<9' (the version pinned in pyproject.toml)"
            ) from exc

        _check_index_name(index, "index")
        if (client is None) == (url is None):
            raise LexicalIndexError(
                "give exactly one of client= (an Elasticsearch client) or url= "
                "(e.g. url='http://127.0.0.1:9201')"
            )
        if analyzer not in ANALYZER_CHOICES:
            raise LexicalIndexError(
                f"analyzer={analyzer!r} is not supported; choose one of {ANALYZER_CHOICES}"
            )
        if not timeout > 0 or not admin_timeout > 0:
            raise LexicalIndexError(
                f"timeout={timeout} and admin_timeout={admin_timeout} must be positive seconds"
            )
        if wait_for_active_shards != "all" and not (
            isinstance(wait_for_active_shards, int) and 1 <= wait_for_active_shards <= replicas + 1
        ):
            raise LexicalIndexError(
                f"wait_for_active_shards={wait_for_active_shards!r} must be 'all' or a number "
                f"of shard copies from 1 to replicas + 1 = {replicas + 1}"
            )
        if shards < 1 or replicas < 0 or chunk_size < 1:
            raise LexicalIndexError(
                f"shards={shards} must be >= 1, replicas={replicas} >= 0, "
                f"chunk_size={chunk_size} >= 1"
            )
        boosts = dict(field_boosts or DEFAULT_FIELD_BOOSTS)
        unknown = set(boosts) - set(DEFAULT_FIELD_BOOSTS)
        if unknown:
            raise LexicalIndexError(
                f"field_boosts has unknown fields {sorted(unknown)}; "
                f"valid fields are {sorted(DEFAULT_FIELD_BOOSTS)}"
            )

        self.index = index
        self.field_boosts = boosts
        self.timeout = float(timeout)
        self.admin_timeout = float(admin_timeout)
        self.refresh: RefreshPolicy = refresh
        self.shards = shards
        self.replicas = replicas
        self.chunk_size = chunk_size
        self.wait_for_active_shards: ActiveShards = wait_for_active_shards
        self._breaker = breaker
        self._analyzer_choice = analyzer
        self._analyzer: str | None = None  # of the existing index, once read
        self._cluster_analyzer: str | None = None  # what "auto" found the cluster offers
        self._fresh = False  # True while self.index is empty as create_versioned_index made it
        self._options: dict[str, Any] = {
            "analyzer": analyzer,
            "field_boosts": boosts,
            "timeout": timeout,
            "admin_timeout": admin_timeout,
            "refresh": refresh,
            "shards": shards,
            "replicas": replicas,
            "chunk_size": chunk_size,
            "breaker": breaker,
            "wait_for_active_shards": wait_for_active_shards,
        }
        if client is not None:
            self._client = client
            self._owns_client = False
            self._where = _client_hosts(client)
        elif url is not None:
            urls = split_urls(url)
            # Several nodes: a request to a dead one is sent again to the next live one.
            kwargs: dict[str, Any] = {"request_timeout": admin_timeout, **failover_options(urls)}
            if api_key is not None:
                kwargs["api_key"] = api_key
            if basic_auth is not None:
                kwargs["basic_auth"] = basic_auth
            if ca_certs is not None:
                kwargs["ca_certs"] = str(ca_certs)
            self._client = Elasticsearch(urls, **kwargs)
            self._owns_client = True
            self._where = ", ".join(_redact(u) for u in urls)

    def __repr__(self) -> str:
        return f"ElasticsearchIndex(index={self.index!r}, at={self._where!r})"

    def close(self) -> None:
        """Close the client if this object made it (from ``url=``)."""
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> ElasticsearchIndex:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def client(self) -> Elasticsearch:
        """The underlying client (shared with handles made by :meth:`create_versioned_index`)."""
        return self._client

    def _admin(self) -> Elasticsearch:
        return self._client.options(request_timeout=self.admin_timeout)

    def _query_client(self) -> Elasticsearch:
        return self._client.options(request_timeout=self.timeout)

    def _error(self, doing: str, exc: Exception) -> LexicalIndexError:
        return LexicalIndexError(f"Elasticsearch at {self._where}, {doing}: {_why(exc)}")

    def _call(self, doing: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run one client call, turning every client/transport failure into our error."""
        from elasticsearch import ApiError, TransportError

        try:
            return fn(*args, **kwargs)
        except (ApiError, TransportError) as exc:
            raise self._error(doing, exc) from exc

    @property
    def breaker(self) -> CircuitBreaker | None:
        """The circuit breaker of the query path (``None``: none)."""
        return self._breaker

    def _guarded_search(self, doing: str, **kwargs: Any) -> Any:
        """One query-time ``search`` request through the circuit breaker: refused at once
        while it is open; a refused connection, a timeout (client or server side), a 429
        or a 5xx counts as a failure, any answer of the cluster as a success."""
        from elasticsearch import ApiError, TransportError

        breaker = self._breaker
        if breaker is None:
            return self._call(doing, self._query_client().search, **kwargs)
        if not breaker.allow():
            last = breaker.status().last_failure
            raise LexicalIndexError(
                f"Elasticsearch at {self._where}, {doing}: not sent, the circuit breaker is "
                f"open after {breaker.failures} consecutive failures (the last: {last}); one "
                f"query probes the cluster every {breaker.reset_s:g} s"
            )
        failure: str | None = None
        try:
            resp = self._query_client().search(**kwargs)
            if resp.get("timed_out"):
                failure = f"timed out after {self.timeout} s on the server"
            return resp
        except ApiError as exc:  # the cluster answered: unhealthy only when overloaded/broken
            if exc.status_code == 429 or exc.status_code >= 500:
                failure = _why(exc)
            raise self._error(doing, exc) from exc
        except TransportError as exc:  # refused, reset, timed out: no answer at all
            failure = _why(exc)
            raise self._error(doing, exc) from exc
        except BaseException as exc:  # not the cluster's doing, but the probe must end
            failure = type(exc).__name__
            raise
        finally:
            if failure is None:
                breaker.record_success()
            else:
                breaker.record_failure(failure)

    def _handle(self, index: str) -> ElasticsearchIndex:
        """Another handle on ``index`` sharing this one's client and options."""
        other = ElasticsearchIndex(index, client=self._client, **self._options)
        other._where = self._where
        other._cluster_analyzer = self._cluster_analyzer  # the cluster's modules are the same
        return other

    # -- analysis and mapping ---------------------------------------------------------------

    def _detect_analyzer(self) -> str:
        """``english`` when the cluster can analyse with it, ``standard`` otherwise."""
        from elasticsearch import BadRequestError

        try:
            self._admin().indices.analyze(analyzer="english", text="running drills")
        except BadRequestError as exc:
            log.info(
                "Elasticsearch at %s has no english analyzer (%s); using standard",
                self._where,
                _error_reason(exc.body),
            )
            return "standard"
        except Exception as exc:
            raise self._error("checking which analyzers the cluster offers", exc) from exc
        return "english"

    def _build_analyzer(self) -> str:
        """The analyzer a new index gets: the configured one, or for ``"auto"`` what the
        cluster offers (asked once)."""
        if self._analyzer_choice != "auto":
            return self._analyzer_choice
        if self._cluster_analyzer is None:
            self._cluster_analyzer = self._detect_analyzer()
        return self._cluster_analyzer

    @property
    def analyzer(self) -> str:
        """The analyzer of the text fields: the index's own (from its mapping) when it
        exists, else the one a build would choose now."""
        if self._analyzer is None:
            stored = self._stored_meta().get("analyzer")
            if not isinstance(stored, str):
                return self._build_analyzer()
            self._analyzer = stored
        return self._analyzer

    def _stored_meta(self) -> dict[str, Any]:
        """The ``_meta.shopsearch`` of the index's mapping ({} when the index is missing)."""
        from elasticsearch import NotFoundError

        try:
            resp = self._admin().indices.get_mapping(index=self.index)
        except NotFoundError:
            return {}
        except Exception as exc:
            raise self._error(f"reading the mapping of {self.index!r}", exc) from exc
        for body in resp.body.values():
            meta = body.get("mappings", {}).get("_meta", {}).get("shopsearch")
            if isinstance(meta, dict):
                return meta
        return {}

    def _mapping(self, analyzer: str) -> dict[str, Any]:
        text = {"type": "text", "analyzer": analyzer}
        return {
            "dynamic": "strict",
            "_meta": {
                "shopsearch": {
                    "analyzer": analyzer,
                    "field_boosts": self.field_boosts,
                    "multi_match_type": self.MULTI_MATCH_TYPE,
                }
            },
            "properties": {
                "id": {"type": "keyword"},
                "title": text,
                "description": text,
                # ``raw`` keeps the catalog's spelling for display (facets of shown values).
                "brand": {**text, "fields": {"raw": {"type": "keyword", "ignore_above": 256}}},
                "category": {
                    **text,
                    "fields": {"raw": {"type": "keyword", "ignore_above": 1024}},
                },
                # Case-folded in Python (str.casefold), as filters_hold compares them.
                "brand_kw": {"type": "keyword"},
                "category_kw": {"type": "keyword"},
                "attr_kw": {"type": "keyword"},
                "price": {"type": "double"},
                "in_stock": {"type": "boolean"},
            },
        }

    def _document(self, product: Product) -> dict[str, Any]:
        doc: dict[str, Any] = {"id": product.id, "title": product.title}
        if product.brand:
            doc["brand"] = product.brand
            doc["brand_kw"] = product.brand.casefold()
        if product.category:
            doc["category"] = product.category
            doc["category_kw"] = _category_levels(product.category)
        if product.description:
            doc["description"] = product.description[:DESCRIPTION_CHARS]
        attrs = [f"{k}={v.casefold()}" for k, v in product.attributes.items() if v]
        if attrs:
            doc["attr_kw"] = attrs
        if product.price is not None:
            # NaN/inf are sent as is: Elasticsearch rejects the document and the build
            # reports it by id, rather than this backend guessing what the catalog meant.
            doc["price"] = float(product.price)
        if product.in_stock is not None:
            doc["in_stock"] = bool(product.in_stock)
        return doc

    def _create(self, index: str) -> None:
        analyzer = self._build_analyzer()
        self._call(
            f"creating index {index!r}",
            self._admin().indices.create,
            index=index,
            settings={
                "number_of_shards": self.shards,
                "number_of_replicas": self.replicas,
            },
            mappings=self._mapping(analyzer),
        )
        self._analyzer = analyzer
        log.info("created Elasticsearch index %s (analyzer %s)", index, analyzer)

    # -- the LexicalIndex protocol ----------------------------------------------------------

    def build(
        self, products: Iterable[Product], *, progress: ProgressCallback | None = None
    ) -> None:
        """Index ``products`` into a fresh ``self.index`` (dropped and re-created if it exists).

        ``progress(n)`` is called with the number of products indexed since the last call.
        Every document the cluster rejects is collected with its id and reason, and the
        build then raises :class:`LexicalIndexError` listing them (the index is left as is
        for inspection; no alias points at it unless it is promoted). ``self.index`` must be
        a concrete index, not an alias: build into :meth:`create_versioned_index` and
        :meth:`promote` it instead.
        """
        from elasticsearch import NotFoundError

        admin = self._admin()
        if self._fresh:
            self._fresh = False  # made empty, with this mapping, by create_versioned_index
        else:
            if self._call("checking aliases", admin.indices.exists_alias, name=self.index):
                raise LexicalIndexError(
                    f"{self.index!r} is an alias; build into a new index "
                    f"(create_versioned_index) and promote it to the alias instead"
                )
            try:
                admin.indices.delete(index=self.index)
                log.info("dropped existing Elasticsearch index %s before the build", self.index)
            except NotFoundError:
                pass
            except Exception as exc:
                raise self._error(f"dropping {self.index!r} before the build", exc) from exc
            self._analyzer = None
            self._create(self.index)
        # No refreshes while bulk loading; the default interval comes back at the end.
        self._call(
            "pausing refreshes for the bulk load",
            admin.indices.put_settings,
            index=self.index,
            settings={"index": {"refresh_interval": "-1"}},
        )
        try:
            rejected = self._bulk(
                (
                    {"_op_type": "index", "_id": p.id, "_source": self._document(p)}
                    for p in products
                ),
                doing=f"bulk indexing into {self.index!r}",
                progress=progress,
                refresh=False,
            )
        except BaseException:
            # An interrupted build leaves a normal (if incomplete) index behind, never one
            # that stopped refreshing; the original error is the one worth raising.
            with contextlib.suppress(LexicalIndexError):
                self._restore_refresh()
            raise
        self._restore_refresh()
        self._call(f"refreshing {self.index!r}", admin.indices.refresh, index=self.index)
        if rejected:
            raise _rejected_error(f"build of {self.index!r}", rejected)

    def _restore_refresh(self) -> None:
        self._call(
            "restoring the refresh interval",
            self._admin().indices.put_settings,
            index=self.index,
            settings={"index": {"refresh_interval": None}},
        )

    def _bulk(
        self,
        actions: Iterable[dict[str, Any]],
        *,
        doing: str,
        progress: ProgressCallback | None,
        refresh: RefreshPolicy,
        missing_ok: bool = False,
    ) -> list[tuple[str, str]]:
        """Send ``actions`` in chunks; return ``(id, reason)`` of every rejected one."""
        from elasticsearch import ApiError, TransportError, helpers

        self._fresh = False

        rejected: list[tuple[str, str]] = []
        pending = 0
        try:
            for ok, item in helpers.streaming_bulk(
                self._admin(),
                actions,
                index=self.index,
                chunk_size=self.chunk_size,
                raise_on_error=False,
                max_retries=3,  # only 429 "too many requests" is retried
                refresh=refresh,
                wait_for_active_shards=self.wait_for_active_shards,
            ):
                (info,) = item.values()
                if not ok and not (missing_ok and info.get("status") == 404):
                    rejected.append((str(info.get("_id")), _error_reason(info.get("error"))))
                pending += 1
                if progress is not None and pending == self.chunk_size:
                    progress(pending)
                    pending = 0
        except (ApiError, TransportError) as exc:
            raise self._error(doing, exc) from exc
        if progress is not None and pending:
            progress(pending)
        return rejected

    def upsert(self, products: Sequence[Product]) -> None:
        """Add products, replacing whole documents with the same id; visible to searches
        when this returns if ``refresh`` is ``"wait_for"`` or ``True``. Raises
        :class:`LexicalIndexError` naming every rejected product.

        Returning is the acknowledgement: every item of every bulk response was checked,
        and Elasticsearch answers an item only once the primary and every in-sync replica
        hold it, so an acknowledged product survives the loss of any one node holding a
        copy. A request cut by a dying node is sent again to another (writes are by id)."""
        if not products:
            return
        rejected = self._bulk(
            ({"_op_type": "index", "_id": p.id, "_source": self._document(p)} for p in products),
            doing=f"upserting into {self.index!r}",
            progress=None,
            refresh=self.refresh,
        )
        if rejected:
            raise _rejected_error(f"upsert into {self.index!r}", rejected)

    def delete(self, ids: Sequence[str]) -> None:
        """Remove products by id (unknown ids are ignored), with the ``refresh`` policy."""
        if not ids:
            return
        rejected = self._bulk(
            ({"_op_type": "delete", "_id": pid} for pid in ids),
            doing=f"deleting from {self.index!r}",
            progress=None,
            refresh=self.refresh,
            missing_ok=True,
        )
        if rejected:
            raise _rejected_error(f"delete from {self.index!r}", rejected)

    def count(self) -> int:
        """Number of searchable products (refreshed documents) of the index or alias."""
        resp = self._call(f"counting {self.index!r}", self._query_client().count, index=self.index)
        return int(resp["count"])

    def describe(self) -> dict[str, Any]:
        """Backend, analyzer, boosts and the concrete index behind the name, for manifests."""
        return {
            "backend": self.backend,
            "analyzer": self.analyzer,
            "field_boosts": dict(self.field_boosts),
            "multi_match_type": self.MULTI_MATCH_TYPE,
            "index": self.index,
            "concrete_index": self._concrete(self.index),
        }

    def _concrete(self, name: str) -> str | None:
        """The one index ``name`` resolves to, or ``None`` when it resolves to none."""
        resp = self._call(
            f"resolving {name!r}",
            self._admin().indices.get,
            index=name,
            ignore_unavailable=True,
            allow_no_indices=True,
            features="settings",
        )
        names = sorted(resp.body)
        return names[0] if len(names) == 1 else None

    def _query(self, query: str, filters: Filters | None) -> dict[str, Any]:
        fields = [f"{name}^{boost:g}" for name, boost in self.field_boosts.items()]
        return {
            "bool": {
                "must": [
                    {
                        "multi_match": {
                            "query": query,
                            "type": self.MULTI_MATCH_TYPE,
                            "fields": fields,
                        }
                    }
                ],
                "filter": filter_clauses(filters) if filters is not None else [],
            }
        }

    #: :func:`retrieval.match_set.min_should_match` in Elasticsearch's syntax: every term
    #: up to two, then all but half of them rounded down (= half rounded up). The terms
    #: are the cluster analyser's (``english`` drops stop words the embedded index keeps).
    MATCH_MINIMUM = "2<-50%"

    def match_set(
        self, query: str, ids: Sequence[str], *, filters: Filters | None = None
    ) -> MatchSet:
        """See :meth:`LexicalIndex.match_set`: a ``combined_fields`` query over the text
        fields with :data:`MATCH_MINIMUM`; two requests (the total, exactly counted, and
        which of ``ids`` match), each through the circuit breaker."""
        if not query.strip():
            return MatchSet(ids=frozenset(), total=0)
        matches = {
            "combined_fields": {
                "query": query,
                "fields": list(self.field_boosts),
                "minimum_should_match": self.MATCH_MINIMUM,
            }
        }
        clauses = filter_clauses(filters) if filters is not None else []
        doing = f"counting matches in {self.index!r}"
        timeout = f"{max(1, int(self.timeout * 1000))}ms"
        total_resp = self._guarded_search(
            doing,
            index=self.index,
            query={"bool": {"must": [matches], "filter": clauses}},
            size=0,
            track_total_hits=True,
            timeout=timeout,
        )
        total = int(total_resp["hits"]["total"]["value"])
        found: frozenset[str] = frozenset()
        if ids and total:
            resp = self._guarded_search(
                doing,
                index=self.index,
                query={
                    "bool": {
                        "must": [matches],
                        "filter": [*clauses, {"ids": {"values": list(ids)}}],
                    }
                },
                size=len(ids),
                source=False,
                track_total_hits=False,
                timeout=timeout,
            )
            found = frozenset(hit["_id"] for hit in resp["hits"]["hits"])
        return MatchSet(ids=found, total=total)

    def search(self, query: str, k: int, *, filters: Filters | None = None) -> LexicalHits:
        """The best ``k`` products for ``query`` that pass ``filters``, best first.

        Raises :class:`LexicalIndexError` when the cluster is unreachable, answers an error,
        takes longer than ``timeout`` or reports a timed-out (partial) result. A partial
        answer is asked for once more (one request more); when some shards still have no
        live copy the cluster answers from the others: the hits then carry their coverage
        (``hits.partial`` is e.g. ``"lexical: 2 of 3 shards"``), which the service reports
        as degraded.
        """
        if k <= 0 or not query.strip():
            return LexicalHits([])
        if k > 10_000:
            raise LexicalIndexError(
                f"k={k} is above Elasticsearch's index.max_result_window (10000); ask for fewer"
            )
        request: dict[str, Any] = {
            "index": self.index,
            "query": self._query(query, filters),
            "size": k,
            "source": False,
            "track_total_hits": False,
            "timeout": f"{max(1, int(self.timeout * 1000))}ms",
            # Stated, not left to the cluster's default: an answer from the live shards,
            # reported as partial, is better than no lexical leg at all.
            "allow_partial_search_results": True,
        }
        doing = f"searching {self.index!r}"
        resp = self._guarded_search(doing, **request)
        if coverage_of(resp).partial and not resp.get("timed_out"):
            # Asked once more: a shard fails for one request when the node holding the copy
            # that ran its query phase dies before the fetch phase (which is not moved to
            # another copy); asked again, the cluster routes to a live copy. Still partial:
            # no copy of that shard is live, and the hits say so.
            resp = self._guarded_search(doing, **request)
        if resp.get("timed_out"):
            raise LexicalIndexError(
                f"Elasticsearch at {self._where}, searching {self.index!r}: the query timed "
                f"out after {self.timeout} s on the server (partial results dropped); raise "
                "timeout= or check the cluster's load"
            )
        return LexicalHits(
            (LexicalHit(id=hit["_id"], score=float(hit["_score"])) for hit in resp["hits"]["hits"]),
            coverage_of(resp),
        )

    def facets(
        self,
        query: str | None = None,
        *,
        filters: Filters | None = None,
        fields: Sequence[str] = ("brand", "category"),
        price_ranges: Sequence[tuple[float | None, float | None]] = (),
        size: int = 10,
    ) -> FacetCounts:
        """Terms and price-range counts over the products matching ``query`` (all when
        ``None`` or blank) and ``filters``.

        ``fields`` are ``brand`` (case-folded values), ``category`` (full paths as
        written), ``category_level`` (every path prefix, case-folded) or an attribute key
        (its case-folded values); ``size`` is the number of values per field.
        """
        aggs: dict[str, Any] = {}
        for name in fields:
            if name == "brand":
                aggs[name] = {"terms": {"field": "brand_kw", "size": size}}
            elif name == "category":
                aggs[name] = {"terms": {"field": "category.raw", "size": size}}
            elif name == "category_level":
                aggs[name] = {"terms": {"field": "category_kw", "size": size}}
            else:
                if not name or "=" in name:
                    raise LexicalIndexError(f"facet field {name!r} is not a valid attribute key")
                aggs[name] = {
                    "terms": {"field": "attr_kw", "include": f"{re.escape(name)}=.*", "size": size}
                }
        if price_ranges:
            ranges = []
            for lo, hi in price_ranges:
                spec: dict[str, float] = {}
                if lo is not None:
                    spec["from"] = float(lo)
                if hi is not None:
                    spec["to"] = float(hi)
                ranges.append(spec)
            aggs["__price"] = {"range": {"field": "price", "ranges": ranges}}
        if query is not None and query.strip():
            q = self._query(query, filters)
        else:
            q = {"bool": {"filter": filter_clauses(filters) if filters else []}}
        resp = self._guarded_search(
            f"aggregating facets of {self.index!r}",
            index=self.index,
            query=q,
            size=0,
            aggs=aggs,
            track_total_hits=True,
            timeout=f"{max(1, int(self.timeout * 1000))}ms",
        )
        out_aggs = resp.get("aggregations", {})
        terms: dict[str, list[tuple[str, int]]] = {}
        for name in fields:
            buckets = out_aggs.get(name, {}).get("buckets", [])
            prefix = f"{name}=" if name not in ("brand", "category", "category_level") else ""
            terms[name] = [(str(b["key"])[len(prefix) :], int(b["doc_count"])) for b in buckets]
        price = [
            (b.get("from"), b.get("to"), int(b["doc_count"]))
            for b in out_aggs.get("__price", {}).get("buckets", [])
        ]
        return FacetCounts(total=int(resp["hits"]["total"]["value"]), terms=terms, price=price)

    # -- versioned indices and the serving alias --------------------------------------------

    def create_versioned_index(self, prefix: str, version: str) -> ElasticsearchIndex:
        """Create the empty index ``<prefix>-<version>`` and return a handle on it (same
        client and options). A version is written once: an existing one is refused."""
        name = f"{prefix}-{version}"
        _check_index_name(prefix, "prefix")
        _check_index_name(name, "index")
        handle = self._handle(name)
        if self._call("checking indices", self._admin().indices.exists, index=name):
            raise LexicalIndexError(
                f"index {name!r} already exists; a snapshot version is written once: "
                "pick a new version (or delete the old index first)"
            )
        handle._create(name)
        handle._fresh = True
        self._cluster_analyzer = handle._cluster_analyzer
        return handle

    def current_index(self, alias: str) -> str | None:
        """The index ``alias`` points at, or ``None`` when the alias does not exist."""
        from elasticsearch import NotFoundError

        try:
            resp = self._admin().indices.get_alias(name=alias)
        except NotFoundError:
            return None
        except Exception as exc:
            raise self._error(f"reading alias {alias!r}", exc) from exc
        names = sorted(resp.body)
        if len(names) > 1:
            raise LexicalIndexError(
                f"alias {alias!r} points at several indices {names}; promote() one of them "
                "to make it point at exactly one"
            )
        return names[0] if names else None

    def promote(self, alias: str, index: str) -> None:
        """Point ``alias`` at ``index`` alone, atomically: one ``_aliases`` request removes
        it from every index holding it and adds it to ``index``, so a reader searching
        through the alias sees the old index or the new one, never neither."""
        _check_index_name(alias, "alias")
        admin = self._admin()
        if not self._call("checking indices", admin.indices.exists, index=index):
            raise LexicalIndexError(f"cannot promote {index!r} to {alias!r}: no such index")
        if self._call("checking aliases", admin.indices.exists_alias, name=index):
            raise LexicalIndexError(f"cannot promote {index!r}: it is an alias, not an index")
        holders = self._alias_holders(alias)
        if not holders and self._call("checking indices", admin.indices.exists, index=alias):
            raise LexicalIndexError(
                f"cannot use {alias!r} as an alias: an index of that name exists; "
                "delete or rename it first"
            )
        actions: list[dict[str, Any]] = [
            {"remove": {"index": holder, "alias": alias}} for holder in holders if holder != index
        ]
        actions.append({"add": {"index": index, "alias": alias}})
        self._call(
            f"moving alias {alias!r} to {index!r}", admin.indices.update_aliases, actions=actions
        )
        log.info("alias %s now points at %s (was %s)", alias, index, ", ".join(holders) or "none")

    def _alias_holders(self, alias: str) -> list[str]:
        from elasticsearch import NotFoundError

        try:
            resp = self._admin().indices.get_alias(name=alias)
        except NotFoundError:
            return []
        except Exception as exc:
            raise self._error(f"reading alias {alias!r}", exc) from exc
        return sorted(resp.body)

    def versions(self, prefix: str) -> list[str]:
        """The indices ``<prefix>-*``, oldest first (by creation time)."""
        _check_index_name(prefix, "prefix")
        resp = self._call(
            f"listing {prefix}-*",
            self._admin().indices.get,
            index=f"{prefix}-*",
            allow_no_indices=True,
            expand_wildcards="open,closed",
            features="settings",
        )
        created = {
            name: int(body["settings"]["index"]["creation_date"])
            for name, body in resp.body.items()
        }
        return sorted(created, key=lambda name: (created[name], name))

    def rollback(self, alias: str, prefix: str, *, to: str | None = None) -> str:
        """Point ``alias`` back at ``to``, or by default at the newest ``<prefix>-*`` index
        created before the one it points at now; returns the index it points at now."""
        current = self.current_index(alias)
        if to is None:
            if current is None:
                raise LexicalIndexError(f"alias {alias!r} does not exist: nothing to roll back")
            older = self.versions(prefix)
            if current not in older:
                raise LexicalIndexError(
                    f"alias {alias!r} points at {current!r}, not a {prefix}-* index; "
                    "give to= explicitly"
                )
            older = older[: older.index(current)]
            if not older:
                raise LexicalIndexError(
                    f"no {prefix}-* index older than {current!r} is left to roll back to"
                )
            to = older[-1]
        self.promote(alias, to)
        return to

    def prune(self, prefix: str, keep: int) -> list[str]:
        """Delete ``<prefix>-*`` indices beyond the newest ``keep``, never one that an alias
        points at; returns the deleted names, oldest first."""
        if keep < 1:
            raise LexicalIndexError(f"keep={keep} must be >= 1 (the serving index is kept anyway)")
        names = self.versions(prefix)
        aliased = self._aliased(f"{prefix}-*")
        doomed = [n for n in names[: max(0, len(names) - keep)] if n not in aliased]
        for name in doomed:
            self._call(f"deleting old index {name!r}", self._admin().indices.delete, index=name)
            log.info("pruned Elasticsearch index %s", name)
        return doomed

    def _aliased(self, pattern: str) -> set[str]:
        resp = self._call(
            f"reading aliases of {pattern}",
            self._admin().indices.get_alias,
            index=pattern,
            allow_no_indices=True,
        )
        return {name for name, body in resp.body.items() if body.get("aliases")}

    def aliased_indices(self, prefix: str) -> set[str]:
        """The ``<prefix>-*`` indices some alias points at (they are never dropped)."""
        _check_index_name(prefix, "prefix")
        return self._aliased(f"{prefix}-*")

    def drop_index(self, name: str) -> bool:
        """Delete the concrete index ``name``; returns False when it does not exist.

        Refuses (:class:`LexicalIndexError`) an index that an alias points at, and a name
        that is an alias: move the alias first (:meth:`promote`).
        """
        from elasticsearch import NotFoundError

        _check_index_name(name, "index")
        admin = self._admin()
        if self._call("checking aliases", admin.indices.exists_alias, name=name):
            raise LexicalIndexError(f"cannot drop {name!r}: it is an alias, not an index")
        holders = self._call(
            f"reading aliases of {name!r}",
            admin.indices.get_alias,
            index=name,
            ignore_unavailable=True,
            allow_no_indices=True,
        )
        aliases = sorted(a for body in holders.body.values() for a in body.get("aliases", {}))
        if aliases:
            raise LexicalIndexError(
                f"cannot drop {name!r}: alias(es) {aliases} point at it; promote another "
                "index to them first"
            )
        try:
            admin.indices.delete(index=name)
        except NotFoundError:
            return False
        except Exception as exc:
            raise self._error(f"deleting index {name!r}", exc) from exc
        log.info("deleted Elasticsearch index %s", name)
        return True


class ElasticsearchConnection:
    """One client on a cluster, shared by the index handles of every snapshot.

    The server keeps one connection for its lifetime: each loaded snapshot gets a handle
    (:meth:`index`) on its own index, so swapping snapshots never opens or closes a
    client under in-flight requests. Credentials (``api_key``, ``basic_auth``) go to the
    client only; they are never logged, put in errors, or shown by ``repr``. Connecting
    is lazy: the constructor makes no request.

    ``timeout`` bounds every query (a slower or unreachable cluster raises
    :class:`LexicalIndexError`), ``admin_timeout`` every build and admin call, and
    ``refresh`` is the refresh policy of upserts and deletes. ``breaker``, shared by every
    handle, makes queries fail fast while the cluster keeps failing (see
    :mod:`retrieval.circuit_breaker`; ``None``: no breaker).

    ``url`` names one node or several (comma-separated, or a sequence): the client sends
    a request that a dead node refuses to the next one. ``shards``, ``replicas`` and
    ``wait_for_active_shards`` are those of the indices builds create and of every write
    (see :class:`ElasticsearchIndex`).

    Example (needs a running node)::

        with ElasticsearchConnection("http://127.0.0.1:9201", timeout=1.0) as es:
            es.index("shopsearch").search("cordless drill", 10)
    """

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        api_key: str | None = None,
        basic_auth: tuple[str, str] | None = None,
        ca_certs: str | Path | None = None,
        timeout: float = 0.5,
        admin_timeout: float = 60.0,
        refresh: RefreshPolicy = "wait_for",
        breaker: CircuitBreaker | None = None,
        shards: int = 1,
        replicas: int = 0,
        wait_for_active_shards: ActiveShards = 1,
    ) -> None:
        # A placeholder name: the root handle is only used to derive per-index handles.
        self._root = ElasticsearchIndex(
            "shopsearch",
            url=url,
            api_key=api_key,
            basic_auth=basic_auth,
            ca_certs=ca_certs,
            timeout=timeout,
            admin_timeout=admin_timeout,
            refresh=refresh,
            breaker=breaker,
            shards=shards,
            replicas=replicas,
            wait_for_active_shards=wait_for_active_shards,
        )
        self.timeout = float(timeout)
        self.refresh: RefreshPolicy = refresh

    @property
    def breaker(self) -> CircuitBreaker | None:
        """The circuit breaker of every handle's queries (``None``: none); its ``state``
        and ``status()`` say whether queries are being failed fast."""
        return self._root.breaker

    @property
    def where(self) -> str:
        """The cluster's URL without credentials (safe for logs and manifests)."""
        return self._root._where

    def __repr__(self) -> str:
        return f"ElasticsearchConnection(at={self.where!r})"

    def index(self, name: str) -> ElasticsearchIndex:
        """A handle on index (or alias) ``name`` over this connection's client."""
        return self._root._handle(name)

    def close(self) -> None:
        """Close the client (handles made by :meth:`index` stop working)."""
        self._root.close()

    def __enter__(self) -> ElasticsearchConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _client_hosts(client: Elasticsearch) -> str:
    """The client's node URLs (no credentials: the client keeps those in headers)."""
    try:
        urls = [_redact(str(node.base_url)) for node in client.transport.node_pool.all()]
    except Exception:  # a client of another shape; the name is only for messages
        return "the given Elasticsearch client"
    return ", ".join(urls) or "the given Elasticsearch client"


def _why(exc: Exception) -> str:
    """Why a client call failed, in words that say what to check."""
    from elasticsearch import ApiError, ConnectionError, ConnectionTimeout

    if isinstance(exc, ConnectionTimeout):
        return "timed out; is the cluster overloaded? raise the timeout if it is just slow"
    if isinstance(exc, ConnectionError):
        return (
            "cannot connect to any node; is the cluster running? (tests: "
            "`.ci/elasticsearch.sh start`, or set SHOPSEARCH_ES_URL)"
        )
    if isinstance(exc, ApiError):
        return f"HTTP {exc.status_code}: {_error_reason(exc.body) or exc.message}"
    return str(exc)


def _error_reason(error: Any) -> str:
    """A one-line reason from an Elasticsearch error body (type, reason and cause)."""
    if isinstance(error, Mapping) and "error" in error and isinstance(error["error"], Mapping):
        error = error["error"]
    if not isinstance(error, Mapping):
        return str(error)
    text = f"{error.get('type', 'error')}: {error.get('reason', '')}"
    cause = error.get("caused_by")
    if isinstance(cause, Mapping):
        text += f" (caused by {cause.get('type', '')}: {cause.get('reason', '')})"
    return " ".join(text.split())[:500]


def _rejected_error(what: str, rejected: list[tuple[str, str]]) -> LexicalIndexError:
    lines = [f"  {pid}: {reason}" for pid, reason in rejected[:_ERRORS_SHOWN]]
    if len(rejected) > _ERRORS_SHOWN:
        lines.append(f"  ... and {len(rejected) - _ERRORS_SHOWN} more")
    return RejectedDocumentsError(
        f"{what}: Elasticsearch rejected {len(rejected)} document(s); fix these products "
        "in the catalog (or its reader) and run again:\n" + "\n".join(lines),
        rejected,
    )
