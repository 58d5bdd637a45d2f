"""The read path of the Elasticsearch lexical index: BM25 search, match sets, facets.

:class:`EsLexicalSearch` is the query half of
:class:`~retrieval.elasticsearch_index.ElasticsearchIndex`. A query is one
``multi_match`` of type :attr:`~EsLexicalSearch.MULTI_MATCH_TYPE` (``most_fields``) over
the boosted text fields, its filters inside the engine as
:func:`~retrieval.es_vector_fields.filter_clauses`; every request goes through the
handle's circuit breaker (:meth:`~retrieval.es_handle.EsHandle._guarded_search`) and is
bounded by its query ``timeout``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from shopsearch.retrieval.es_connection import LexicalHits, coverage_of
from shopsearch.retrieval.es_handle import EsHandle
from shopsearch.retrieval.es_mappings import (
    ENGINE_ANALYZER,
    category_facet_field,
    engine_query_terms,
)
from shopsearch.retrieval.es_vector_fields import filter_clauses
from shopsearch.retrieval.filters import Filters
from shopsearch.retrieval.lexical_index import LexicalHit, LexicalIndexError
from shopsearch.retrieval.match_set import MatchSet, analyze

__all__ = ["EsLexicalSearch", "FacetCounts"]


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


class EsLexicalSearch(EsHandle):
    """:meth:`search`, :meth:`match_set` and :meth:`facets` of an index handle (see
    :class:`~retrieval.elasticsearch_index.ElasticsearchIndex`)."""

    MULTI_MATCH_TYPE = "most_fields"

    def _text_query(self, query: str) -> dict[str, Any] | None:
        """The scoring part of ``query`` (``None`` when it has no term: nothing matches).

        On a cluster analyzer, one ``multi_match`` of :attr:`MULTI_MATCH_TYPE`. On the
        engine's terms, what tantivy's query parser makes of the same text
        (:func:`~retrieval.es_mappings.engine_query_terms`): the single terms in one
        ``multi_match``, and each several-term word ("3/4-in.") a phrase in every field,
        all summed, with the same boosts."""
        fields = [f"{name}^{boost:g}" for name, boost in self.field_boosts.items()]
        if self._query_analyzer() != ENGINE_ANALYZER:
            if not query.strip():
                return None
            return {
                "multi_match": {"query": query, "type": self.MULTI_MATCH_TYPE, "fields": fields}
            }
        terms, phrases = engine_query_terms(query)
        clauses: list[dict[str, Any]] = []
        if terms:
            clauses.append(
                {
                    "multi_match": {
                        "query": " ".join(terms),
                        "type": self.MULTI_MATCH_TYPE,
                        "fields": fields,
                    }
                }
            )
        for phrase in phrases:
            clauses.extend(
                {"match_phrase": {name: {"query": " ".join(phrase), "boost": boost}}}
                for name, boost in self.field_boosts.items()
            )
        if len(clauses) <= 1:
            return clauses[0] if clauses else None
        return {"bool": {"should": clauses}}

    def _query(self, text_query: dict[str, Any], filters: Filters | None) -> dict[str, Any]:
        """``text_query`` (from :meth:`_text_query`) restricted to ``filters``."""
        return {
            "bool": {
                "must": [text_query],
                "filter": filter_clauses(filters) if filters is not None else [],
            }
        }

    #: :func:`retrieval.match_set.min_should_match` in Elasticsearch's syntax: every term
    #: up to two, then all but half of them rounded down (= half rounded up). The terms
    #: are the index analyzer's: the embedded index's own with ``en_stem`` (the default),
    #: while ``english`` drops stop words the embedded index keeps.
    MATCH_MINIMUM = "2<-50%"

    def match_set(
        self, query: str, ids: Sequence[str], *, filters: Filters | None = None
    ) -> MatchSet:
        """See :meth:`LexicalIndex.match_set`: a ``combined_fields`` query over the text
        fields with :data:`MATCH_MINIMUM`; two requests (the total, exactly counted, and
        which of ``ids`` match), each through the circuit breaker.

        A partial answer is asked for once more, as :meth:`search` does; while some shard
        has no live copy the count covers the live shards only, which the same query's
        lexical hits report as their coverage (the answer's ``degraded`` line
        ``"lexical: 2 of 3 shards"``). A request that timed out on the server raises
        :class:`LexicalIndexError` (the service then keeps every candidate, degraded
        ``"match_set"``) rather than under-count silently.
        """
        if self._query_analyzer() == ENGINE_ANALYZER:
            # The embedded index's terms of the rule (distinct, the first MAX_MATCH_TERMS).
            query = " ".join(analyze(query))
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
        total_resp = self._search_whole(
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
            resp = self._search_whole(
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

    def _search_whole(self, doing: str, **request: Any) -> dict[str, Any]:
        """One search through the circuit breaker, asked once more when its answer is
        partial (some shard failed) without having timed out; raises
        :class:`LexicalIndexError` when it timed out on the server (its answer is partial
        and would silently drop hits or under-count).

        A shard fails for one request when the node holding the copy that ran its query
        phase dies before the fetch phase (which is not moved to another copy); asked
        again, the cluster routes to a live copy. Still partial: no copy of that shard is
        live, and the answer's ``_shards`` says so.
        """
        resp = self._guarded_search(doing, **request)
        if coverage_of(resp).partial and not resp.get("timed_out"):
            resp = self._guarded_search(doing, **request)
        if resp.get("timed_out"):
            raise LexicalIndexError(
                f"Elasticsearch at {self._where}, {doing}: the query timed out after "
                f"{self.timeout} s on the server (partial results dropped); raise "
                "timeout= or check the cluster's load"
            )
        return resp

    def search(self, query: str, k: int, *, filters: Filters | None = None) -> LexicalHits:
        """The best ``k`` products for ``query`` that pass ``filters``, best first.

        Raises :class:`LexicalIndexError` when the cluster is unreachable, answers an error,
        takes longer than ``timeout`` or reports a timed-out (partial) result. A partial
        answer is asked for once more (one request more); when some shards still have no
        live copy the cluster answers from the others: the hits then carry their coverage
        (``hits.partial`` is e.g. ``"lexical: 2 of 3 shards"``), which the service reports
        as degraded.
        """
        text_query = self._text_query(query) if k > 0 else None
        if text_query is None:
            return LexicalHits([])
        if k > 10_000:
            raise LexicalIndexError(
                f"k={k} is above Elasticsearch's index.max_result_window (10000); ask for fewer"
            )
        request: dict[str, Any] = {
            "index": self.index,
            "query": self._query(text_query, filters),
            "size": k,
            "source": False,
            "track_total_hits": False,
            "timeout": f"{max(1, int(self.timeout * 1000))}ms",
            # Stated, not left to the cluster's default: an answer from the live shards,
            # reported as partial, is better than no lexical leg at all.
            "allow_partial_search_results": True,
            # BM25 over the whole index's term statistics, not each shard's own, so an
            # index of several shards ranks as one shard (and as tantivy) does; the
            # cluster skips the extra round for an index of one shard.
            "search_type": "dfs_query_then_fetch",
        }
        doing = f"searching {self.index!r}"
        resp = self._search_whole(doing, **request)
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
                aggs[name] = {
                    "terms": {"field": category_facet_field(self._query_analyzer()), "size": size}
                }
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
        if query is None or not query.strip():
            q = {"bool": {"filter": filter_clauses(filters) if filters else []}}
        elif (text_query := self._text_query(query)) is not None:
            q = self._query(text_query, filters)
        else:  # words without a term ("!!"): nothing matches, as in the search itself
            q = {"match_none": {}}
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
