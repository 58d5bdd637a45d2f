"""The dense leg in Elasticsearch: kNN over ``dense_vector`` behind :class:`VectorIndex`.

One Elasticsearch document per row of the snapshot (``_id`` = the row, never reused, as
in FAISS): ``row`` and ``id`` (the product id), ``vector`` (a ``dense_vector`` of the
unit-length item vector, indexed as quantised HNSW: ``int8_hnsw`` by default, or
``hnsw``, ``int4_hnsw``, ``bbq_hnsw``; similarity ``dot_product``, which on unit
vectors is the cosine) and the product's filter fields, folded exactly as the lexical
leg folds them (``brand_kw``, ``category_kw`` with every path prefix, ``attr_kw`` as
``key=value``, ``price``, ``in_stock``), so a request's filters run *inside* the kNN
search and a filtered query still gets ``k`` results.

A search asks the cluster for ``ceil(k * refine_factor)`` neighbours (``num_candidates``
per shard, at least that many) and re-scores them with the stored float32 vectors: the
same *refine* stage :class:`~retrieval.vector_index.FaissIndex` has, so quantisation
costs candidates, never the order, and the scores are exact cosines on the same scale
as FAISS's (fusion and the match-set threshold need not know which index answered).

The float32 matrix and the ``alive`` mask stay in the snapshot directory, as FAISS's do
(:class:`~retrieval.stored_vectors.StoredRows`, memory-mapped at load): they serve
:meth:`vectors_of` (rerank, recommendations, the match-set calibration), the refine, the
``exact`` oracle and ``size`` without a request, so a snapshot loads while the cluster
is down (its dense searches then fail and the service answers from what remains).

Writes (documents, bulk requests, ``add``/``put_products``/``remove``) and the cluster
plumbing are :class:`~retrieval.es_vector_writes.EsVectorWrites`, the base class.

Example (needs a running node)::

    with ElasticsearchConnection("http://127.0.0.1:9201") as es:
        index = ElasticsearchVectorIndex.build(es, "shop-vectors-v1", vectors, products)
        scores, rows = index.search(query_vectors, 10, filters=Filters(brand=("acme",)))
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from shopsearch.retrieval.es_connection import ShardCoverage, coverage_of
from shopsearch.retrieval.es_mappings import filter_field_mappings
from shopsearch.retrieval.es_vector_fields import filter_clauses, filter_fields
from shopsearch.retrieval.es_vector_writes import EsVectorWrites
from shopsearch.retrieval.filters import Filters
from shopsearch.retrieval.stored_vectors import (
    FloatArray,
    RowArray,
    VectorIndexError,
    check_2d,
    check_search_params,
    exact_scan,
    topk,
)
from shopsearch.retrieval.types import Product

if TYPE_CHECKING:
    from shopsearch.retrieval.elasticsearch_index import ElasticsearchConnection

__all__ = [
    "INDEX_OPTIONS",
    "MAX_KNN",
    "DenseHits",
    "ElasticsearchVectorIndex",
    "EsVectorParams",
    "filter_clauses",
    "filter_fields",
]

log = logging.getLogger(__name__)

#: ``index_options.type`` values of ``dense_vector`` this index can be built with
#: (``bbq_hnsw`` needs at least 64 dimensions; all four run on the test distribution).
INDEX_OPTIONS = ("hnsw", "int8_hnsw", "int4_hnsw", "bbq_hnsw")
#: Similarities on unit vectors (equal rankings; ``dot_product`` skips normalising).
SIMILARITIES = ("dot_product", "cosine")
#: Elasticsearch's ceiling on ``k`` and ``num_candidates`` of one kNN search.
MAX_KNN = 10_000
#: Queries sent per ``_msearch`` request.
_MSEARCH_BATCH = 64


@dataclass(frozen=True, slots=True)
class EsVectorParams:
    """How an :class:`ElasticsearchVectorIndex` is laid out and searched.

    ``num_candidates`` nearest neighbours are visited per shard (at least the ``k`` asked
    of the cluster), ``k * refine_factor`` are fetched and re-scored exactly. ``m`` and
    ``ef_construction`` are the HNSW graph's degree and build beam (Elasticsearch's
    defaults). ``force_merge`` merges the built index into one segment (one HNSW graph
    to search instead of one per segment: faster queries, slower build).
    """

    index_options: str = "int8_hnsw"
    similarity: str = "dot_product"
    num_candidates: int = 400
    refine_factor: int = 2
    m: int = 16
    ef_construction: int = 100
    force_merge: bool = True

    def __post_init__(self) -> None:
        if self.index_options not in INDEX_OPTIONS:
            raise VectorIndexError(
                f"index_options {self.index_options!r} is not one of {', '.join(INDEX_OPTIONS)}"
            )
        if self.similarity not in SIMILARITIES:
            raise VectorIndexError(
                f"similarity {self.similarity!r} is not one of {', '.join(SIMILARITIES)}"
            )
        if not 1 <= self.num_candidates <= MAX_KNN:
            raise VectorIndexError(
                f"num_candidates must be in 1..{MAX_KNN}, got {self.num_candidates}"
            )
        check_search_params(None, self.refine_factor)
        if self.m < 2 or self.ef_construction < self.m:
            raise VectorIndexError(
                f"m={self.m} must be >= 2 and ef_construction={self.ef_construction} >= m"
            )


class DenseHits(tuple[FloatArray, RowArray]):
    """``(scores, rows)`` of a kNN search, with the shard coverage they come from.

    A plain pair to every caller of ``VectorIndex.search`` (``scores, rows = ...``);
    ``partial`` is what the service adds to an answer's ``degraded``, as it does for
    the lexical leg's :class:`~retrieval.es_connection.LexicalHits` (``None`` when every
    shard answered every query).
    """

    coverage: ShardCoverage | None

    def __new__(
        cls, scores: FloatArray, rows: RowArray, coverage: ShardCoverage | None = None
    ) -> DenseHits:
        self = super().__new__(cls, (scores, rows))
        self.coverage = coverage
        return self

    @property
    def partial(self) -> str | None:
        """``"dense: <n> of <m> shards"`` while coverage is partial, else ``None``."""
        if self.coverage is None or not self.coverage.partial:
            return None
        return f"dense: {self.coverage}"


def _mapping(params: EsVectorParams, dim: int) -> dict[str, Any]:
    options: dict[str, Any] = {"type": params.index_options}
    options.update(m=params.m, ef_construction=params.ef_construction)
    return {
        "dynamic": "strict",
        # The vectors live in the vector files (and in the snapshot): keeping them in
        # _source too would double the disk for nothing; documents are always written whole.
        "_source": {"excludes": ["vector"]},
        "_meta": {"shopsearch": {"kind": "vectors", "params": asdict(params)}},
        "properties": {
            "row": {"type": "long"},
            "id": {"type": "keyword"},
            "vector": {
                "type": "dense_vector",
                "dims": dim,
                "index": True,
                "similarity": params.similarity,
                "index_options": options,
            },
            **filter_field_mappings(),
        },
    }


class ElasticsearchVectorIndex(EsVectorWrites):
    """kNN in the Elasticsearch index ``index`` plus an exact refine over the stored rows.

    Row ``i`` of ``vectors`` is id ``i``; ``alive`` marks rows not removed. ``es`` is the
    connection (its query ``timeout``, ``admin_timeout``, refresh policy and circuit
    breaker apply); ``None`` makes an index that can be saved, described and searched
    exactly, whose cluster calls raise :class:`VectorIndexError` saying what to give.
    Every cluster failure raises :class:`VectorIndexError` (the service then answers
    without the dense leg, ``degraded: ["dense"]``).
    """

    kind = "elasticsearch"

    def __init__(
        self,
        vectors: FloatArray,
        index: str,
        params: EsVectorParams,
        *,
        es: ElasticsearchConnection | None,
        alive: npt.NDArray[np.bool_] | None = None,
    ) -> None:
        self.vectors = vectors if vectors.ndim == 2 else check_2d("vectors", vectors)
        self.alive = np.ones(len(self.vectors), dtype=bool) if alive is None else alive
        self.index = index
        self.params = params
        self.es = es

    def __repr__(self) -> str:
        where = self.es.where if self.es is not None else "no cluster"
        return f"ElasticsearchVectorIndex(index={self.index!r}, size={self.size}, at={where!r})"

    # -- build ------------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        es: ElasticsearchConnection,
        index: str,
        vectors: FloatArray,
        products: Sequence[Product],
        params: EsVectorParams | None = None,
        *,
        shards: int = 1,
        replicas: int = 0,
    ) -> ElasticsearchVectorIndex:
        """Create ``index`` (refused when it exists) and index ``vectors`` (row ``i`` is
        ``products[i]``); returns once every document is searchable. Raises
        :class:`VectorIndexError` naming rejected rows, or for a cluster failure."""
        from elasticsearch import ApiError, TransportError

        vectors = check_2d("vectors", vectors)
        if len(products) != len(vectors):
            raise VectorIndexError(f"{len(vectors)} vectors but {len(products)} products")
        params = params or EsVectorParams()
        self = cls(vectors, index, params, es=es)
        admin = self._client(f"creating {index!r}", admin=True)
        doing = f"creating vector index {index!r}"
        try:
            if admin.indices.exists(index=index):
                raise VectorIndexError(
                    f"index {index!r} already exists; a snapshot version is written once"
                )
            admin.indices.create(
                index=index,
                settings={
                    "number_of_shards": shards,
                    "number_of_replicas": replicas,
                    "refresh_interval": "-1",  # one refresh at the end of the build
                },
                mappings=_mapping(params, vectors.shape[1]),
            )
            rows = np.arange(len(vectors), dtype=np.int64)
            self._bulk(self._documents(rows, products), doing=f"indexing {index!r}", refresh=False)
            doing = f"refreshing {index!r}"
            admin.indices.put_settings(index=index, settings={"refresh_interval": None})
            admin.indices.refresh(index=index)
            if params.force_merge:
                doing = f"merging {index!r} into one segment"
                admin.indices.forcemerge(index=index, max_num_segments=1, wait_for_completion=True)
                admin.indices.refresh(index=index)
            count = int(admin.count(index=index)["count"])
        except (ApiError, TransportError) as exc:
            raise self._error(doing, exc) from exc
        if count != len(vectors):
            raise VectorIndexError(
                f"{index!r} holds {count} documents after the build, not {len(vectors)}"
            )
        return self

    # -- search -----------------------------------------------------------------------------

    def set_search_params(
        self, *, nprobe: int | None = None, refine_factor: int | None = None
    ) -> None:
        """``refine_factor`` sets how many neighbours per result are re-scored; HNSW has
        no ``nprobe`` (its search breadth is ``num_candidates``, fixed at build)."""
        check_search_params(nprobe, refine_factor)
        if refine_factor is not None:
            p = self.params
            self.params = EsVectorParams(
                p.index_options, p.similarity, p.num_candidates, refine_factor, p.m,
                p.ef_construction, p.force_merge,
            )  # fmt: skip

    def knn_body(self, query: FloatArray, k: int, filters: Filters | None) -> dict[str, Any]:
        """The search body of one query's kNN (``k`` neighbours, ``filters`` inside)."""
        knn: dict[str, Any] = {
            "field": "vector",
            "query_vector": query.astype(np.float64).tolist(),
            "k": k,
            "num_candidates": min(MAX_KNN, max(k, self.params.num_candidates)),
        }
        clauses = filter_clauses(filters) if filters is not None else []
        if clauses:
            knn["filter"] = clauses
        return {"knn": knn, "size": k, "_source": False, "docvalue_fields": ["row"]}

    def search(
        self,
        queries: FloatArray,
        k: int,
        *,
        id_filter: npt.NDArray[np.bool_] | None = None,
        nprobe: int | None = None,
        refine_factor: int | None = None,
        exact: bool = False,
        filters: Filters | None = None,
    ) -> DenseHits:
        """Top ``k`` rows per query (see ``VectorIndex.search``). ``filters`` run inside
        the kNN search, so up to ``k`` rows that pass them come back; ``exact`` scans the
        stored vectors and, as FAISS does, leaves ``filters`` to the caller. ``nprobe``
        has no meaning for HNSW and is ignored. When some shard had no live copy the
        cluster answers from the others, and the result's ``partial`` says so (e.g.
        ``"dense: 2 of 3 shards"``)."""
        check_search_params(nprobe, refine_factor)
        queries = check_2d("queries", queries, self.dim)
        if k <= 0:
            return DenseHits(*topk(np.zeros((len(queries), 0), np.float32), 0))
        allowed = self._allowed(id_filter)
        if exact or len(allowed) == 0:
            return DenseHits(*exact_scan(self.vectors, allowed, queries, k))
        factor = self.params.refine_factor if refine_factor is None else refine_factor
        fetch = min(MAX_KNN, k * factor)
        cand, coverage = self._knn_rows(
            queries, fetch, None if filters is None or filters.is_empty() else filters
        )
        # A row the snapshot does not hold (an update applied to the cluster but never
        # committed) or does not allow (removed, id-filtered) is dropped.
        known = (cand >= 0) & (cand < len(allowed))
        safe = np.where(known, cand, 0)
        ok = known & allowed[safe]
        rows = np.where(ok, cand, -1)
        # The refine: exact inner products with the stored vectors (the rows come back
        # in the cluster's quantised order; this is the order FAISS would give).
        vecs = self.vectors[np.where(ok, cand, 0)]
        scores = np.einsum("qd,qkd->qk", queries, vecs)
        scores = np.where(ok, scores, -np.inf).astype(np.float32)
        top_s, pos = topk(scores, k)
        top_r = np.where(pos >= 0, np.take_along_axis(rows, np.where(pos >= 0, pos, 0), 1), -1)
        if id_filter is not None:
            # An id filter the cluster does not know can leave fewer than k although more
            # allowed rows exist: answer those queries exactly, as FaissIndex does.
            short = (top_r < 0).any(axis=1) & (allowed.sum() > (top_r >= 0).sum(axis=1))
            if short.any():
                top_s[short], top_r[short] = exact_scan(self.vectors, allowed, queries[short], k)
        return DenseHits(top_s, top_r, coverage)

    def _knn_rows(
        self, queries: FloatArray, k: int, filters: Filters | None
    ) -> tuple[RowArray, ShardCoverage | None]:
        """The rows the cluster answers for each query, ``-1``-padded to ``k`` columns,
        and the coverage of the least covered answer (``None``: every shard answered)."""
        from elasticsearch import ApiError, TransportError

        out = np.full((len(queries), k), -1, dtype=np.int64)
        worst: ShardCoverage | None = None
        es = self._cluster("searching")
        breaker = es.breaker
        if breaker is not None and not breaker.allow():
            raise VectorIndexError(
                f"Elasticsearch at {es.where}, kNN search of {self.index!r}: not sent, the "
                "circuit breaker is open"
            )
        # One query is a request being served: the query timeout bounds it. Several are a
        # batch (build probes, evaluations): the admin timeout does.
        client = self._client("searching", admin=len(queries) > 1)
        failure: str | None = None
        try:
            for start in range(0, len(queries), _MSEARCH_BATCH):
                batch = queries[start : start + _MSEARCH_BATCH]
                if len(batch) == 1:
                    body = self.knn_body(batch[0], k, filters)
                    responses: list[dict[str, Any]] = [client.search(index=self.index, **body).body]
                else:
                    searches: list[dict[str, Any]] = []
                    for q in batch:
                        searches += [{"index": self.index}, self.knn_body(q, k, filters)]
                    responses = client.msearch(searches=searches)["responses"]
                for i, resp in enumerate(responses):
                    if "error" in resp:
                        raise VectorIndexError(f"kNN search of {self.index!r}: {resp['error']}")
                    if coverage_of(resp).partial:
                        # Asked once more, as the lexical leg does: a shard fails for one
                        # request when the node holding the copy that ran its query phase
                        # dies before the fetch phase; asked again, a live copy answers.
                        q = batch[i]
                        body = self.knn_body(q, k, filters)
                        resp = client.search(index=self.index, **body).body
                    coverage = coverage_of(resp)
                    if coverage.partial:
                        # Still partial: some shard has no live copy (a replica would
                        # answer for a dead node's shards); the answer says so.
                        log.warning("partial kNN answer from %s: %s", self.index, resp["_shards"])
                        if worst is None or coverage.successful < worst.successful:
                            worst = coverage
                    hits = [int(h["fields"]["row"][0]) for h in resp["hits"]["hits"]]
                    out[start + i, : len(hits)] = hits
        except ApiError as exc:
            if exc.status_code == 429 or exc.status_code >= 500:
                failure = str(exc)[:200]
            raise self._error(f"kNN search of {self.index!r}", exc) from exc
        except TransportError as exc:
            failure = str(exc)[:200]
            raise self._error(f"kNN search of {self.index!r}", exc) from exc
        finally:
            if breaker is not None:
                if failure is None:
                    breaker.record_success()
                else:
                    breaker.record_failure(failure)
        return out, worst

    # -- persistence ------------------------------------------------------------------------

    def count(self) -> int:
        """Documents in the cluster's index (a request; refresh lag applies)."""
        from elasticsearch import ApiError, TransportError

        try:
            return int(self._client("counting", admin=True).count(index=self.index)["count"])
        except (ApiError, TransportError) as exc:
            raise self._error(f"counting {self.index!r}", exc) from exc

    def save(self, directory: Path) -> None:
        """Write the stored vectors, the alive mask and the metadata (no request)."""
        directory.mkdir(parents=True, exist_ok=True)
        np.save(directory / "vectors.npy", np.asarray(self.vectors))
        np.save(directory / "alive.npy", self.alive)
        (directory / "vector_index.json").write_text(json.dumps(self.describe(), indent=2))

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "size": self.size,
            "dim": self.dim,
            "index": self.index,
            "params": asdict(self.params),
            "cluster": self.es.where if self.es is not None else None,
        }

    @classmethod
    def load(cls, directory: Path, es: ElasticsearchConnection | None) -> ElasticsearchVectorIndex:
        """Open a saved index without a request. The vectors are memory-mapped (pages
        load as rows are refined or read); :meth:`add` copies them into memory."""
        meta = json.loads((directory / "vector_index.json").read_text())
        vectors = np.load(directory / "vectors.npy", mmap_mode="r")
        alive = np.load(directory / "alive.npy")
        if len(alive) != len(vectors):
            raise VectorIndexError(
                f"{directory}: {len(vectors)} vectors but an alive mask of {len(alive)}; rebuild it"
            )
        return cls(
            vectors, str(meta["index"]), EsVectorParams(**meta["params"]), es=es, alive=alive
        )
