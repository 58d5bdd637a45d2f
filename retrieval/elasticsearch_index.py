"""The Elasticsearch backend of :class:`~retrieval.lexical_index.LexicalIndex`.

Same fields, boosts and filter semantics as :class:`~retrieval.lexical_index.TantivyIndex`,
so the two rank comparably and the same contract tests run on both:

* ``title``, ``brand``, ``category`` and ``description`` (cut to ``DESCRIPTION_CHARS``) are
  text fields holding the terms of the embedded index's own analyzer (``en_stem``, run
  by the engine on documents and queries alike: :func:`~retrieval.es_mappings.engine_terms`),
  so both legs search the same terms on any cluster; ``english`` or ``standard`` (the
  cluster's analyzers) on request. The choice is stored in the index's mapping ``_meta``
  and reported by :meth:`ElasticsearchIndex.describe`.
* Filters run inside the engine on keyword copies that are case-folded in Python, exactly
  as the reference check :func:`~retrieval.lexical_index.filters_hold` folds them:
  ``brand_kw``, ``category_kw`` (every path prefix) and ``attr_kw`` (``key=value``).
* A query is one ``multi_match`` of type ``most_fields`` over the boosted text fields: its
  score is the sum of the per-field BM25 scores, as tantivy's query parser sums them.

Snapshots use one index per version (``<prefix>-<version>``) and an alias that
:meth:`ElasticsearchIndex.promote` moves in a single ``_aliases`` request, so readers
searching through the alias never see a missing or half-built index.

The class is composed of :class:`~retrieval.es_handle.EsHandle` (client, options and
request plumbing), :class:`~retrieval.es_lexical_search.EsLexicalSearch` (search, match
sets, facets) and :class:`~retrieval.es_aliases.EsAliasAdmin` (versioned indices and
aliases); the mapping and documents are :mod:`retrieval.es_mappings`, the bulk writes
:mod:`retrieval.es_bulk`. Building, writing and the analyzer of an index are here.

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
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from shopsearch.retrieval.circuit_breaker import CircuitBreaker
from shopsearch.retrieval.es_aliases import EsAliasAdmin
from shopsearch.retrieval.es_bulk import rejected_error, stream_bulk
from shopsearch.retrieval.es_handle import (
    ActiveShards,
    RefreshPolicy,
    check_index_name,
    error_reason,
)
from shopsearch.retrieval.es_lexical_search import EsLexicalSearch
from shopsearch.retrieval.es_mappings import lexical_document, lexical_mapping
from shopsearch.retrieval.lexical_index import LexicalIndexError, ProgressCallback
from shopsearch.retrieval.types import Product

__all__ = ["ElasticsearchConnection", "ElasticsearchIndex"]

log = logging.getLogger(__name__)


class ElasticsearchIndex(EsLexicalSearch, EsAliasAdmin):
    """BM25 over an Elasticsearch index (or an alias), behind the ``LexicalIndex`` protocol.

    Give either ``client`` (an ``elasticsearch.Elasticsearch``, not closed by this object)
    or ``url`` (one node, or several comma-separated: a request to a dead node is retried
    on the next, see :func:`~retrieval.es_connection.failover_options`) with optional
    ``api_key``, ``basic_auth`` and ``ca_certs`` (a client is made and closed by
    :meth:`close`). Credentials are never logged nor put in errors.

    ``timeout`` (seconds) bounds every query and count: an unreachable, failing or slower
    cluster raises :class:`LexicalIndexError`, so the service can answer from the dense
    leg. Builds and admin calls use ``admin_timeout``. ``refresh`` is the refresh policy of
    :meth:`upsert` and :meth:`delete`. ``analyzer`` (of indices this handle creates) is
    ``"auto"`` or ``"en_stem"`` (the embedded index's analysis, run by the engine),
    ``"english"`` (needs the cluster's analysis-common module) or ``"standard"``.
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

    def __repr__(self) -> str:
        return f"ElasticsearchIndex(index={self.index!r}, at={self._where!r})"

    def __enter__(self) -> ElasticsearchIndex:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _handle(self, index: str) -> ElasticsearchIndex:
        """Another handle on ``index`` sharing this one's client and options."""
        other = ElasticsearchIndex(index, client=self._client, **self._options)
        other._where = self._where
        return other

    # -- analysis and mapping ---------------------------------------------------------------

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
            mappings=lexical_mapping(analyzer, self.field_boosts, self.MULTI_MATCH_TYPE),
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
        analyzer = self.analyzer  # the documents are made for the index's own mapping
        try:
            rejected = self._bulk(
                (
                    {"_op_type": "index", "_id": p.id, "_source": lexical_document(p, analyzer)}
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
            raise rejected_error(f"build of {self.index!r}", rejected)

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
        from elasticsearch import ApiError, TransportError

        self._fresh = False

        try:
            refused = stream_bulk(
                self._admin(),
                actions,
                index=self.index,
                chunk_size=self.chunk_size,
                refresh=refresh,
                missing_ok=missing_ok,
                wait_for_active_shards=self.wait_for_active_shards,
                progress=progress,
            )
        except (ApiError, TransportError) as exc:
            raise self._error(doing, exc) from exc
        return [(pid, error_reason(error)) for pid, error in refused]

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
        analyzer = self.analyzer  # of the existing index: its documents must match it
        rejected = self._bulk(
            (
                {"_op_type": "index", "_id": p.id, "_source": lexical_document(p, analyzer)}
                for p in products
            ),
            doing=f"upserting into {self.index!r}",
            progress=None,
            refresh=self.refresh,
        )
        if rejected:
            raise rejected_error(f"upsert into {self.index!r}", rejected)

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
            raise rejected_error(f"delete from {self.index!r}", rejected)

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

    # -- versioned indices (the alias is moved by EsAliasAdmin) -----------------------------

    def create_versioned_index(self, prefix: str, version: str) -> ElasticsearchIndex:
        """Create the empty index ``<prefix>-<version>`` and return a handle on it (same
        client and options). A version is written once: an existing one is refused."""
        name = f"{prefix}-{version}"
        check_index_name(prefix, "prefix")
        check_index_name(name, "index")
        handle = self._handle(name)
        if self._call("checking indices", self._admin().indices.exists, index=name):
            raise LexicalIndexError(
                f"index {name!r} already exists; a snapshot version is written once: "
                "pick a new version (or delete the old index first)"
            )
        handle._create(name)
        handle._fresh = True
        return handle


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

    def index(self, name: str, *, analyzer: str | None = None) -> ElasticsearchIndex:
        """A handle on index (or alias) ``name`` over this connection's client.
        ``analyzer``: the index's analyzer when known (a snapshot's manifest records it),
        so its searches need no request to learn it."""
        handle = self._root._handle(name)
        if analyzer is not None:
            handle._analyzer = analyzer
        return handle

    def close(self) -> None:
        """Close the client (handles made by :meth:`index` stop working)."""
        self._root.close()

    def __enter__(self) -> ElasticsearchConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
