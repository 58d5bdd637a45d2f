"""The float32 vectors every vector index keeps, and the exact search over them.

:class:`StoredRows` is the ``(n, d)`` matrix (row ``i`` is id ``i``) with its ``alive``
mask that both indexes of :mod:`retrieval.vector_index` keep; :func:`exact_scan` is the
one exact top-k over it, used by :class:`ExactIndex`, by ``FaissIndex.search(exact=True)``
and so by every oracle approximate answers are measured against. Notation as in
:mod:`retrieval.vector_index`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from shopsearch.retrieval.types import ShopsearchError

if TYPE_CHECKING:
    from shopsearch.retrieval.filters import Filters

__all__ = [
    "ExactIndex",
    "FloatArray",
    "RowArray",
    "StoredRows",
    "VectorIndexError",
    "check_2d",
    "check_new_rows",
    "check_search_params",
    "exact_scan",
    "grow",
    "topk",
]

FloatArray = npt.NDArray[np.float32]
RowArray = npt.NDArray[np.int64]


class VectorIndexError(ShopsearchError):
    """Wrong shapes, unknown rows, or an index file that does not match its metadata."""


def check_2d(name: str, array: npt.NDArray[Any], dim: int | None = None) -> FloatArray:
    """``array`` as C-contiguous float32 (no copy when it already is); raises
    :class:`VectorIndexError` unless it is 2-D with ``dim`` columns (when given)."""
    if array.ndim != 2:
        raise VectorIndexError(f"{name} must be 2-D (n, d), got shape {array.shape}")
    if dim is not None and array.shape[1] != dim:
        raise VectorIndexError(f"{name} has dimension {array.shape[1]}, the index has {dim}")
    return np.ascontiguousarray(array, dtype=np.float32)


def check_search_params(nprobe: int | None, refine_factor: int | None) -> None:
    """Raise :class:`VectorIndexError` for a search parameter given below 1."""
    for name, value in (("nprobe", nprobe), ("refine_factor", refine_factor)):
        if value is not None and value < 1:
            raise VectorIndexError(f"{name} must be >= 1, got {value}")


def exact_scan(
    vectors: FloatArray, allowed: npt.NDArray[np.bool_], queries: FloatArray, k: int
) -> tuple[FloatArray, RowArray]:
    """Top ``k`` of ``queries @ vectors.T`` over the ``allowed`` rows: the exact answer
    (one implementation, so the oracle of every index ranks alike)."""
    scores = queries @ vectors.T
    if not allowed.all():  # masking costs a full pass; skip it when nothing is excluded
        scores[:, ~allowed] = -np.inf
    return topk(scores, k)


def topk(scores: FloatArray, k: int) -> tuple[FloatArray, RowArray]:
    """Best ``k`` columns of each row of ``scores`` (nq, n), padded with -inf / -1."""
    nq, n = scores.shape
    out_s = np.full((nq, k), -np.inf, dtype=np.float32)
    out_r = np.full((nq, k), -1, dtype=np.int64)
    if n == 0 or k == 0:
        return out_s, out_r
    kk = min(k, n)
    part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    out_r[:, :kk] = np.take_along_axis(part, order, axis=1)
    out_s[:, :kk] = np.take_along_axis(part_scores, order, axis=1)
    invalid = ~np.isfinite(out_s)
    out_r[invalid] = -1
    return out_s, out_r


def check_new_rows(
    vectors: FloatArray, rows: RowArray, shape: tuple[int, ...]
) -> tuple[FloatArray, RowArray]:
    """``vectors`` and ``rows`` checked for adding to a ``shape`` matrix: one new,
    distinct row (at or past its end) per vector, of its dimension."""
    vectors = check_2d("vectors", vectors, shape[1])
    rows = np.asarray(rows, dtype=np.int64)
    if rows.shape != (len(vectors),):
        raise VectorIndexError(f"{len(vectors)} vectors but rows of shape {rows.shape}")
    if len(rows) and (rows.min() < shape[0] or len(np.unique(rows)) != len(rows)):
        raise VectorIndexError(
            f"rows must be new and distinct (>= {shape[0]}); to update a vector, remove its "
            "row and add it under a new one"
        )
    return vectors, rows


def grow(
    matrix: FloatArray, alive: npt.NDArray[np.bool_], rows: RowArray, vectors: FloatArray
) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    """``matrix``/``alive`` extended to hold ``rows``; gaps are zero vectors, not alive."""
    top = int(rows.max(initial=-1)) + 1
    if top > len(matrix):
        grow = top - len(matrix)
        matrix = np.vstack([matrix, np.zeros((grow, matrix.shape[1]), np.float32)])
        alive = np.concatenate([alive, np.zeros(grow, dtype=bool)])
    matrix[rows] = vectors
    alive[rows] = True
    return matrix, alive


class StoredRows:
    """The float32 ``(n, d)`` matrix both indexes keep (row ``i`` is id ``i``) and its
    ``alive`` mask: ``size``/``dim`` and removal by tombstone are the same for both."""

    vectors: FloatArray
    alive: npt.NDArray[np.bool_]

    @property
    def size(self) -> int:
        return int(self.alive.sum())

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def vectors_of(self, rows: RowArray) -> FloatArray:
        """The stored vectors of ``rows`` (a copy), shape ``(len(rows), d)``."""
        return self.vectors[np.asarray(rows, dtype=np.int64)]

    def _allowed(self, id_filter: npt.NDArray[np.bool_] | None) -> npt.NDArray[np.bool_]:
        return self.alive if id_filter is None else self.alive & id_filter[: len(self.alive)]

    def remove(self, rows: RowArray) -> None:
        # A tombstone: the row stays stored (and, in FAISS, in the coarse index) and is
        # dropped at search time. FAISS's fast-scan lists re-pack codes on remove_ids, and
        # a later re-add of an id was measured to rank far worse than the original; the
        # nightly rebuild compacts.
        rows = np.asarray(rows, dtype=np.int64)
        rows = rows[(rows >= 0) & (rows < len(self.alive))]
        self.alive[rows] = False


class ExactIndex(StoredRows):
    """Brute-force inner-product search over a dense ``(n, d)`` matrix; row ``i`` is id ``i``.

    Removed rows stay in the matrix but are masked out.
    """

    kind = "exact"

    def __init__(self, vectors: FloatArray) -> None:
        self.vectors = check_2d("vectors", vectors)
        self.alive = np.ones(len(self.vectors), dtype=bool)

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
        """The exact top ``k`` (see ``VectorIndex.search``): ``nprobe``,
        ``refine_factor`` and ``exact`` have nothing to change here, and ``filters`` are
        left to the caller."""
        check_search_params(nprobe, refine_factor)
        queries = check_2d("queries", queries, self.dim)
        return exact_scan(self.vectors, self._allowed(id_filter), queries, k)

    def set_search_params(
        self, *, nprobe: int | None = None, refine_factor: int | None = None
    ) -> None:
        """Nothing to set: an exact scan has no search-time parameters."""
        check_search_params(nprobe, refine_factor)

    def add(self, vectors: FloatArray, rows: RowArray) -> None:
        vectors, rows = check_new_rows(vectors, rows, self.vectors.shape)
        self.vectors, self.alive = grow(self.vectors, self.alive, rows, vectors)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        np.save(directory / "vectors.npy", self.vectors)
        np.save(directory / "alive.npy", self.alive)
        (directory / "vector_index.json").write_text(json.dumps(self.describe(), indent=2))

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "size": self.size, "dim": self.dim}

    @classmethod
    def load(cls, directory: Path) -> ExactIndex:
        index = cls(np.load(directory / "vectors.npy", mmap_mode="r"))
        index.vectors = np.array(index.vectors)  # writable copy, so add() works
        index.alive = np.load(directory / "alive.npy")
        return index
