"""Vector indexes over L2-normalised embeddings, scored by inner product (= cosine).

Two implementations of one :class:`VectorIndex` protocol:

* :class:`ExactIndex` — a NumPy brute-force scan; the oracle in tests and the index
  of small catalogs.
* :class:`FaissIndex` — FAISS IVF-PQ (4-bit fast-scan PQ on CPU, 8-bit PQ on GPU)
  followed by a *refine* stage that re-scores the top ``k * refine_factor`` candidates
  with the stored float32 vectors, so PQ's coarse distances do not cost recall. Below
  :data:`IVF_MIN_SIZE` vectors IVF cannot train well and an exact FAISS Flat index is
  used instead. The GPU is used when faiss-gpu is installed and sees one.

Notation: ``vectors`` and ``queries`` are float32 arrays of shape ``(n, d)``; results
are ``(scores, rows)`` of shape ``(nq, k)``, best first, with ``rows == -1`` (score
``-inf``) where fewer than ``k`` results exist. Rows are int64 ids (the product's row
in the snapshot's store).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from shopsearch.retrieval.stored_vectors import (
    ExactIndex,
    FloatArray,
    RowArray,
    StoredRows,
    VectorIndexError,
    check_2d,
    check_new_rows,
    check_search_params,
    exact_scan,
    grow,
    topk,
)
from shopsearch.retrieval.types import Product

if TYPE_CHECKING:
    from shopsearch.retrieval.elasticsearch_index import ElasticsearchConnection
    from shopsearch.retrieval.filters import Filters

__all__ = [
    "IVF_MIN_SIZE",
    "ExactIndex",
    "FaissIndex",
    "FaissParams",
    "FilteringVectorIndex",
    "VectorIndex",
    "VectorIndexError",
    "faiss_gpu_available",
    "load_vector_index",
    "recall_at_k",
]

log = logging.getLogger(__name__)

#: Below this many vectors the index is exact: IVF's k-means would have too few points
#: per list, and an exact scan of 20k x 384 floats takes about 1 ms anyway.
IVF_MIN_SIZE = 20_000


class VectorIndex(Protocol):
    """What the engine needs from a vector index."""

    kind: str

    @property
    def size(self) -> int:
        """Number of vectors stored."""
        ...

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
    ) -> tuple[FloatArray, RowArray]:
        """Top ``k`` rows per query. ``id_filter`` is a boolean mask over rows; only
        rows where it is True may be returned. ``filters`` (the request's) are applied
        inside the search by an index that can (:class:`FilteringVectorIndex`: then up to
        ``k`` rows that pass them come back); the others ignore them and the caller
        filters their answer.

        ``nprobe`` and ``refine_factor`` apply to this call only (None: the index's own,
        see :meth:`set_search_params`); the index is not changed, so concurrent searches
        may ask for different values. ``exact`` scans every stored vector instead (the
        oracle approximate answers are measured against). An index without such a
        parameter (exact, Flat) ignores it.

        Raises :class:`VectorIndexError` for ``nprobe`` or ``refine_factor`` below 1."""
        ...

    def set_search_params(
        self, *, nprobe: int | None = None, refine_factor: int | None = None
    ) -> None:
        """Set the index's own search-time parameters (what :meth:`search` uses when a
        call names none); call before the index is shared (at load), never while it
        serves. An exact index has none and ignores them."""
        ...

    def vectors_of(self, rows: RowArray) -> FloatArray:
        """The stored float32 vectors of ``rows`` (not a quantized copy), shape
        ``(len(rows), d)``; removed rows still have theirs."""
        ...

    def add(self, vectors: FloatArray, rows: RowArray) -> None:
        """Add vectors under new rows (at or past the end; a row is never reused).

        To change a product's vector, remove its row and add the vector under a new row.
        Raises :class:`VectorIndexError` for a row already used."""
        ...

    def remove(self, rows: RowArray) -> None:
        """Remove rows (they are never returned again); unknown rows are ignored."""
        ...

    def save(self, directory: Path) -> None:
        """Write the index into ``directory`` (created if missing)."""
        ...

    def describe(self) -> dict[str, Any]:
        """Parameters for the snapshot manifest."""
        ...


@runtime_checkable
class FilteringVectorIndex(VectorIndex, Protocol):
    """A vector index that applies request ``filters`` inside :meth:`search` (the
    Elasticsearch one): it keeps each row's filter fields, so whoever adds rows or changes
    a product's fields in its row tells it the products."""

    def put_products(self, rows: RowArray, products: Sequence[Product]) -> None:
        """Record ``products`` (one per row) as the filter fields of stored ``rows``."""
        ...


@dataclass(frozen=True, slots=True)
class FaissParams:
    """How a :class:`FaissIndex` is laid out and searched.

    ``nlist == 0`` means an exact Flat index (no IVF, no PQ). ``pq_m`` sub-quantizers of
    4 bits (fast-scan) on CPU. ``nprobe`` lists are visited per query and the best
    ``k * refine_factor`` PQ candidates are re-scored exactly.
    """

    nlist: int
    pq_m: int
    nprobe: int
    refine_factor: int

    @property
    def factory(self) -> str:
        """The FAISS index-factory string of the coarse (approximate) stage."""
        if self.nlist == 0:
            return "Flat"
        return f"IVF{self.nlist},PQ{self.pq_m}x4fs"

    @classmethod
    def for_size(
        cls, n: int, dim: int, *, nprobe: int | None = None, refine_factor: int = 8
    ) -> FaissParams:
        """Parameters derived from the catalog size and the embedding dimension.

        Chosen by measurement on the Home Depot catalog (54,667 MiniLM vectors, 1,248 dev
        queries; recall@100 against exact search; see README "Vector index parameters"):

        * ``nlist`` ~ 2 * sqrt(n), a power of two, with at least 39 training points per
          list (FAISS's own minimum): 512 lists at 55k products, 2048 at 1M. More lists
          made the coarse quantizer, not PQ, the recall bottleneck;
        * ``pq_m`` = d / 4 sub-quantizers of 4 bits (96 for 384-d MiniLM, 48 bytes a
          vector) when it divides d; d / 8 lost 0.04 recall@100 that refine cannot win back;
        * ``nprobe`` = 3/8 of nlist (at least 32, at most 512) by default: at 55k, recall@100
          against exact search is 0.96 on short probe queries and 0.98 on the dev queries,
          at about 0.9 ms a query (nlist/4 gave 0.94 / 0.97).
        """
        if n < IVF_MIN_SIZE:
            return cls(nlist=0, pq_m=0, nprobe=0, refine_factor=1)
        nlist = 2 ** round(math.log2(2 * math.sqrt(n)))
        while nlist > 16 and n < 39 * nlist:
            nlist //= 2
        pq_m = next(m for m in (dim // 4, dim // 8, dim // 2, dim) if m > 0 and dim % m == 0)
        if pq_m % 2:  # fast-scan packs two 4-bit codes per byte
            pq_m = dim
        probe = nprobe if nprobe is not None else min(512, max(32, 3 * nlist // 8))
        return cls(nlist=nlist, pq_m=pq_m, nprobe=min(probe, nlist), refine_factor=refine_factor)


def faiss_gpu_available() -> bool:
    """True when the installed faiss has GPU support and sees at least one GPU."""
    import faiss

    get_num_gpus = getattr(faiss, "get_num_gpus", None)
    return bool(get_num_gpus is not None and get_num_gpus() > 0)


class FaissIndex(StoredRows):
    """FAISS IVF-PQ (or Flat) candidate search plus an exact refine over stored vectors.

    Row ``i`` of ``vectors`` is id ``i``. The coarse stage runs on the GPU when
    ``use_gpu`` resolves to True (``None``: whenever :func:`faiss_gpu_available`).
    """

    kind = "faiss"

    def __init__(
        self,
        vectors: FloatArray,
        params: FaissParams,
        *,
        coarse: Any = None,
        alive: npt.NDArray[np.bool_] | None = None,
        use_gpu: bool | None = None,
        train_size: int = 100_000,
        seed: int = 1234,
    ) -> None:
        import faiss

        self.vectors = check_2d("vectors", vectors)
        self.params = params
        self.alive = np.ones(len(self.vectors), dtype=bool) if alive is None else alive
        self.on_gpu = faiss_gpu_available() if use_gpu is None else use_gpu
        dim = self.vectors.shape[1]
        if coarse is None:
            factory = params.factory
            if self.on_gpu and params.nlist:
                factory = f"IVF{params.nlist},PQ{params.pq_m}"  # GPU IVF-PQ has no fast-scan
            coarse = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
            if params.nlist:
                rng = np.random.default_rng(seed)
                sample = self.vectors
                if len(sample) > train_size:
                    sample = sample[np.sort(rng.choice(len(sample), train_size, replace=False))]
                coarse.cp.seed = seed
                coarse = self._to_device(coarse)
                coarse.train(sample)
            else:
                coarse = self._to_device(coarse)
            if params.nlist:
                live = np.flatnonzero(self.alive).astype(np.int64)
                coarse.add_with_ids(self.vectors[live], live)
            else:
                coarse.add(self.vectors)
        else:
            coarse = self._to_device(coarse)
        self.coarse = coarse
        if params.nlist:
            faiss.extract_index_ivf(coarse).nprobe = params.nprobe

    def _to_device(self, index: Any) -> Any:
        if not self.on_gpu:
            return index
        import faiss

        res = faiss.StandardGpuResources()
        self._gpu_resources = res  # must outlive the GPU index
        options = faiss.GpuClonerOptions()
        # float16 lookup tables: GPU IVF-PQ needs them for 96 sub-quantizers (shared memory
        # limit); the refine stage re-scores in float32, so recall does not depend on them.
        options.useFloat16 = True
        return faiss.index_cpu_to_gpu(res, 0, index, options)

    def set_search_params(
        self, *, nprobe: int | None = None, refine_factor: int | None = None
    ) -> None:
        """Change the index's own search-time parameters (no rebuild needed). Not
        thread-safe: call before the index serves; a single search passes its own to
        :meth:`search` instead."""
        import faiss

        check_search_params(nprobe, refine_factor)
        params = self.params
        if nprobe is not None and params.nlist:
            params = FaissParams(
                params.nlist, params.pq_m, min(nprobe, params.nlist), params.refine_factor
            )
            faiss.extract_index_ivf(self.coarse).nprobe = params.nprobe
        if refine_factor is not None:
            params = FaissParams(params.nlist, params.pq_m, params.nprobe, refine_factor)
        self.params = params

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
    ) -> tuple[FloatArray, RowArray]:
        import faiss

        check_search_params(nprobe, refine_factor)
        queries = check_2d("queries", queries, self.dim)
        if k <= 0:
            return topk(np.zeros((len(queries), 0), np.float32), 0)
        allowed = self._allowed(id_filter)
        if exact:
            return exact_scan(self.vectors, allowed, queries, k)
        if self.params.nlist == 0:
            # Flat: the coarse stage is already exact. Removed/filtered rows are masked by
            # over-fetching and dropping, falling back to a full scan when too few survive.
            fetch = min(len(self.vectors), k if allowed.all() else k * 4)
            scores, rows = self.coarse.search(queries, fetch)
            return self._keep_allowed(queries, scores, rows, allowed, k)
        factor = self.params.refine_factor if refine_factor is None else refine_factor
        fetch = min(len(self.vectors), k * factor)
        if nprobe is None:
            _, cand = self.coarse.search(queries, fetch)
        else:
            # Per call, through FAISS's search parameters: setting the index's nprobe
            # would change it under concurrent searches.
            probe = faiss.SearchParametersIVF()
            probe.nprobe = min(nprobe, self.params.nlist)
            _, cand = self.coarse.search(queries, fetch, params=probe)
        # Refine: exact inner products against the stored vectors of the candidates.
        safe = np.where(cand >= 0, cand, 0)
        rescored = np.einsum("qd,qkd->qk", queries, self.vectors[safe])
        ok = (cand >= 0) & allowed[safe]
        rescored = np.where(ok, rescored, -np.inf).astype(np.float32)
        return self._keep_allowed(queries, rescored, cand, allowed, k)

    def _keep_allowed(
        self,
        queries: FloatArray,
        scores: FloatArray,
        rows: RowArray,
        allowed: npt.NDArray[np.bool_],
        k: int,
    ) -> tuple[FloatArray, RowArray]:
        safe = np.where(rows >= 0, rows, 0)
        scores = np.where((rows >= 0) & allowed[safe], scores, -np.inf).astype(np.float32)
        top_s, pos = topk(scores, k)
        top_r = np.where(pos >= 0, np.take_along_axis(rows, np.where(pos >= 0, pos, 0), 1), -1)
        # A selective filter can leave fewer than k candidates although more allowed rows
        # exist: answer those queries with an exact scan of the allowed rows.
        short = (top_r < 0).any(axis=1) & (allowed.sum() > (top_r >= 0).sum(axis=1))
        if short.any():
            exact_s = queries[short] @ self.vectors.T
            exact_s[:, ~allowed] = -np.inf
            top_s[short], top_r[short] = topk(exact_s, k)
        return top_s, top_r

    def add(self, vectors: FloatArray, rows: RowArray) -> None:
        vectors, rows = check_new_rows(vectors, rows, self.vectors.shape)
        self.vectors, self.alive = grow(self.vectors, self.alive, rows, vectors)
        if self.params.nlist:
            self.coarse.add_with_ids(vectors, rows)
        else:
            # Flat ids are positions: fill any gap with zero vectors (never alive).
            start = int(self.coarse.ntotal)
            self.coarse.add(self.vectors[start:])

    def save(self, directory: Path) -> None:
        import faiss

        directory.mkdir(parents=True, exist_ok=True)
        np.save(directory / "vectors.npy", self.vectors)
        np.save(directory / "alive.npy", self.alive)
        coarse = faiss.index_gpu_to_cpu(self.coarse) if self.on_gpu else self.coarse
        faiss.write_index(coarse, str(directory / "coarse.faiss"))
        (directory / "vector_index.json").write_text(json.dumps(self.describe(), indent=2))

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "size": self.size,
            "dim": self.dim,
            "factory": self.params.factory,
            "params": asdict(self.params),
            "gpu": self.on_gpu,
        }

    @classmethod
    def load(cls, directory: Path, *, use_gpu: bool | None = None) -> FaissIndex:
        import faiss

        meta = json.loads((directory / "vector_index.json").read_text())
        params = FaissParams(**meta["params"])
        vectors = np.load(directory / "vectors.npy")
        coarse = faiss.read_index(str(directory / "coarse.faiss"))
        alive = np.load(directory / "alive.npy")
        # Removed rows are tombstones (still in the coarse index, not alive), so the coarse
        # index holds between the live rows and every row ever added.
        if params.nlist and not int(alive.sum()) <= coarse.ntotal <= len(alive):
            raise VectorIndexError(
                f"{directory}: coarse index holds {coarse.ntotal} vectors, metadata says "
                f"{int(alive.sum())} alive of {len(alive)} rows; the snapshot is damaged, "
                "rebuild it"
            )
        return cls(vectors, params, coarse=coarse, alive=alive, use_gpu=use_gpu)


def load_vector_index(
    directory: Path, *, use_gpu: bool | None = None, es: ElasticsearchConnection | None = None
) -> VectorIndex:
    """Open whichever index ``directory`` holds (see ``vector_index.json``); ``es`` is the
    cluster of an Elasticsearch one (opening makes no request)."""
    meta_path = directory / "vector_index.json"
    if not meta_path.exists():
        raise VectorIndexError(f"{meta_path} is missing: not a vector index directory")
    kind = json.loads(meta_path.read_text())["kind"]
    if kind == ExactIndex.kind:
        return ExactIndex.load(directory)
    if kind == FaissIndex.kind:
        return FaissIndex.load(directory, use_gpu=use_gpu)
    if kind == "elasticsearch":
        from shopsearch.retrieval.es_vector_index import ElasticsearchVectorIndex

        return ElasticsearchVectorIndex.load(directory, es)
    raise VectorIndexError(
        f"{meta_path}: unknown index kind {kind!r}; expected 'exact', 'faiss' or 'elasticsearch'"
    )


def recall_at_k(approx_rows: RowArray, exact_rows: RowArray, k: int) -> float:
    """Mean over queries of |approx top-k ∩ exact top-k| / |exact top-k| (ignoring -1)."""
    if approx_rows.shape[0] != exact_rows.shape[0]:
        raise ValueError("approx and exact results cover different numbers of queries")
    total = 0.0
    for a, e in zip(approx_rows[:, :k], exact_rows[:, :k], strict=True):
        truth = set(e[e >= 0].tolist())
        if truth:
            total += len(truth & set(a[a >= 0].tolist())) / len(truth)
    return total / max(1, len(approx_rows))
