"""The client, options and request plumbing of an Elasticsearch index handle.

:class:`EsHandle` is the base of :class:`~retrieval.elasticsearch_index.ElasticsearchIndex`
(whose docstring documents the constructor's arguments): it checks the options, makes
(or adopts) the client, and turns every client or transport failure into a
:class:`~retrieval.lexical_index.LexicalIndexError` that says what to check, without
credentials. Query-time searches go through :meth:`EsHandle._guarded_search`, the one
place the circuit breaker sees them. The read path (:mod:`retrieval.es_lexical_search`)
and the alias administration (:mod:`retrieval.es_aliases`) build on it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from shopsearch.retrieval.circuit_breaker import CircuitBreaker
from shopsearch.retrieval.es_connection import failover_options, split_urls
from shopsearch.retrieval.es_mappings import ANALYZER_CHOICES, ENGINE_ANALYZER
from shopsearch.retrieval.lexical_index import DEFAULT_FIELD_BOOSTS, LexicalIndexError

if TYPE_CHECKING:
    from elasticsearch import Elasticsearch

__all__ = ["ActiveShards", "EsHandle", "RefreshPolicy", "check_index_name", "error_reason"]

#: ``refresh`` of single-document writes: ``"wait_for"`` returns once the change is
#: searchable, ``True`` forces a refresh (costly), ``False`` returns at once.
RefreshPolicy = Literal["wait_for"] | bool

#: ``wait_for_active_shards`` of writes: how many copies of a shard must be active before
#: a write starts (``"all"``: every configured copy).
ActiveShards = int | Literal["all"]

# Elasticsearch index names: lower case, none of these characters, not starting with -_+.
_BAD_NAME_CHARS = re.compile(r'[\\/*?"<>| ,#:A-Z]')


def check_index_name(name: str, what: str) -> None:
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


class EsHandle:
    """A client on a cluster and the name of one index (or alias) on it, with the options
    and request plumbing every :class:`~retrieval.elasticsearch_index.ElasticsearchIndex`
    has; see that class for the constructor's arguments. Connecting is lazy: the
    constructor makes no request.
    """

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

        check_index_name(index, "index")
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

    def close(self) -> None:
        """Close the client if this object made it (from ``url=``)."""
        if self._owns_client:
            self._client.close()

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

    # -- the analyzer of the index --------------------------------------------------------

    def _build_analyzer(self) -> str:
        """The analyzer a new index gets: the configured one (``"auto"``: the engine's)."""
        if self._analyzer_choice == "auto":
            return ENGINE_ANALYZER
        return self._analyzer_choice

    @property
    def analyzer(self) -> str:
        """The analyzer of the text fields: the index's own (from its mapping) when it
        exists, else the one a build would choose now."""
        return self._read_analyzer(lambda doing, send: self._call(doing, send, self._admin()))

    def _query_analyzer(self) -> str:
        """:attr:`analyzer` for a query: known without a request on a snapshot's handle
        (its manifest records it), else read once like a query, through the circuit
        breaker and under the query ``timeout`` (a search must not wait ``admin_timeout``
        on a hung cluster, nor send anything while the breaker is open)."""
        return self._read_analyzer(self._guarded)

    def _read_analyzer(self, request: Callable[[str, Callable[[Elasticsearch], Any]], Any]) -> str:
        """The known analyzer, else the one the mapping records, read with ``request``
        (:meth:`_call` on the admin client, or :meth:`_guarded`); a missing index: a
        build's choice."""
        if self._analyzer is not None:
            return self._analyzer
        from elasticsearch import NotFoundError

        try:
            resp = request(
                f"reading the mapping of {self.index!r}",
                lambda client: client.indices.get_mapping(index=self.index),
            )
        except LexicalIndexError as exc:
            if isinstance(exc.__cause__, NotFoundError):
                return self._build_analyzer()
            raise
        return self._analyzer_of(resp)

    def _analyzer_of(self, mapping: Any) -> str:
        """The analyzer a ``get_mapping`` answer records (kept), or a build's choice."""
        for body in mapping.body.values():
            meta = body.get("mappings", {}).get("_meta", {}).get("shopsearch")
            if isinstance(meta, dict) and isinstance(meta.get("analyzer"), str):
                self._analyzer = str(meta["analyzer"])
                return self._analyzer
        return self._build_analyzer()

    @property
    def breaker(self) -> CircuitBreaker | None:
        """The circuit breaker of the query path (``None``: none)."""
        return self._breaker

    def _guarded_search(self, doing: str, **kwargs: Any) -> Any:
        """One query-time ``search`` request through the circuit breaker (:meth:`_guarded`)."""
        return self._guarded(doing, lambda client: client.search(**kwargs))

    def _guarded(self, doing: str, send: Callable[[Elasticsearch], Any]) -> Any:
        """One query-time request, ``send(client)`` on the query client, through the
        circuit breaker: refused at once while it is open; a refused connection, a
        timeout (client or server side), a 429 or a 5xx counts as a failure, any answer
        of the cluster as a success. Errors are :class:`LexicalIndexError` whose cause is
        the client's exception."""
        from elasticsearch import ApiError, TransportError

        breaker = self._breaker
        if breaker is None:
            return self._call(doing, send, self._query_client())
        if not breaker.allow():
            last = breaker.status().last_failure
            raise LexicalIndexError(
                f"Elasticsearch at {self._where}, {doing}: not sent, the circuit breaker is "
                f"open after {breaker.failures} consecutive failures (the last: {last}); one "
                f"query probes the cluster every {breaker.reset_s:g} s"
            )
        failure: str | None = None
        try:
            resp = send(self._query_client())
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
        return f"HTTP {exc.status_code}: {error_reason(exc.body) or exc.message}"
    return str(exc)


def error_reason(error: Any) -> str:
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
