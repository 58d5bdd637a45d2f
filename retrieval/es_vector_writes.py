"""The cluster plumbing and the writes of the Elasticsearch vector index.

:class:`EsVectorWrites` is the base of
:class:`~retrieval.es_vector_index.ElasticsearchVectorIndex`: it reaches the cluster
through the index's :class:`~retrieval.elasticsearch_index.ElasticsearchConnection`
(refusing, with what to give, when there is none), words every cluster failure as a
:class:`~retrieval.stored_vectors.VectorIndexError`, and writes documents: one per row
(``_id`` = the row), the vector with the product's filter fields
(:func:`~retrieval.es_vector_fields.filter_fields`), sent by
:func:`~retrieval.es_bulk.stream_bulk`. Rows change locally and in the cluster together:
:meth:`~EsVectorWrites.add`, :meth:`~EsVectorWrites.put_products` and
:meth:`~EsVectorWrites.remove`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from shopsearch.retrieval.es_bulk import stream_bulk
from shopsearch.retrieval.es_vector_fields import filter_fields
from shopsearch.retrieval.stored_vectors import (
    FloatArray,
    RowArray,
    StoredRows,
    VectorIndexError,
    check_new_rows,
    grow,
)
from shopsearch.retrieval.types import Product

if TYPE_CHECKING:
    from elasticsearch import Elasticsearch

    from shopsearch.retrieval.elasticsearch_index import ElasticsearchConnection

__all__ = ["EsVectorWrites"]


def _vector_json(vector: npt.NDArray[np.float32]) -> list[float]:
    # Six decimals (Python prints the shortest repr): a third of float32's 17-digit JSON,
    # below int8 quantisation's error; the refine uses the exact stored vectors.
    return np.round(vector.astype(np.float64), 6).tolist()  # type: ignore[no-any-return]


class EsVectorWrites(StoredRows):
    """Stored rows kept in step with the Elasticsearch index ``index`` over ``es``
    (``None``: no cluster; every call that needs it raises :class:`VectorIndexError`)."""

    index: str
    es: ElasticsearchConnection | None

    # -- plumbing ---------------------------------------------------------------------------

    def _cluster(self, doing: str) -> ElasticsearchConnection:
        if self.es is None:
            raise VectorIndexError(
                f"{doing} the Elasticsearch vector index {self.index!r} needs the cluster: "
                "give --es-url (or SHOPSEARCH_ES_URL)"
            )
        return self.es

    def _client(self, doing: str, *, admin: bool) -> Elasticsearch:
        handle = self._cluster(doing).index(self.index)
        timeout = handle.admin_timeout if admin else handle.timeout
        return handle.client.options(request_timeout=timeout)

    def _error(self, doing: str, exc: Exception) -> VectorIndexError:
        where = self.es.where if self.es is not None else "?"
        return VectorIndexError(f"Elasticsearch at {where}, {doing}: {str(exc)[:300]}")

    # -- writes -----------------------------------------------------------------------------

    def _documents(
        self, rows: RowArray, products: Sequence[Product] | None
    ) -> Iterator[dict[str, Any]]:
        for i, row in enumerate(rows.tolist()):
            doc: dict[str, Any] = {"row": row, "vector": _vector_json(self.vectors[row])}
            if products is not None:
                doc.update(filter_fields(products[i]))
            yield {"_op_type": "index", "_id": str(row), "_source": doc}

    def _bulk(self, actions: Iterable[dict[str, Any]], *, doing: str, refresh: Any) -> None:
        """Send ``actions``; raise naming the rows refused (a 404 of a delete is not)."""
        from elasticsearch import ApiError, TransportError

        client = self._client(doing, admin=True)
        try:
            refused = [
                f"row {row}: {str(error)[:200]}"
                for row, error in stream_bulk(
                    client,
                    actions,
                    index=self.index,
                    chunk_size=500,
                    refresh=refresh,
                    missing_ok=True,
                )
            ]
        except (ApiError, TransportError) as exc:
            raise self._error(doing, exc) from exc
        if refused:
            more = f" and {len(refused) - 10} more" if len(refused) > 10 else ""
            raise VectorIndexError(
                f"{doing}: Elasticsearch refused {len(refused)} documents: "
                f"{'; '.join(refused[:10])}{more}"
            )

    def _refresh_policy(self) -> Any:
        return self.es.refresh if self.es is not None else "wait_for"

    def add(self, vectors: FloatArray, rows: RowArray) -> None:
        """Add vectors under new rows, locally and in the cluster (without filter fields
        until :meth:`put_products` gives them: a filtered search cannot return them before)."""
        vectors, rows = check_new_rows(vectors, rows, self.vectors.shape)
        self.vectors, self.alive = grow(self.vectors, self.alive, rows, vectors)
        self._bulk(
            self._documents(rows, None),
            doing=f"adding {len(rows)} vectors to {self.index!r}",
            refresh=self._refresh_policy(),
        )

    def put_products(self, rows: RowArray, products: Sequence[Product]) -> None:
        """(Re)write the documents of stored ``rows`` whole, with the filter fields of
        ``products`` (one per row): after :meth:`add`, and when a product's fields change
        in its row. Raises :class:`VectorIndexError` for a row not stored."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) != len(products):
            raise VectorIndexError(f"{len(rows)} rows but {len(products)} products")
        if len(rows) == 0:
            return
        if rows.min() < 0 or rows.max() >= len(self.vectors):
            raise VectorIndexError(f"rows must be stored rows (0..{len(self.vectors) - 1})")
        self._bulk(
            self._documents(rows, products),
            doing=f"writing {len(rows)} documents of {self.index!r}",
            refresh=self._refresh_policy(),
        )

    def remove(self, rows: RowArray) -> None:
        """Remove rows (never returned again); unknown rows are ignored."""
        rows = np.asarray(rows, dtype=np.int64)
        rows = rows[(rows >= 0) & (rows < len(self.alive))]
        # Locally first: a row removed here is never returned, even before the delete is
        # visible in the cluster (or when it fails: running the update again converges).
        self.alive[rows] = False
        actions = ({"_op_type": "delete", "_id": str(r)} for r in rows.tolist())
        self._bulk(
            actions,
            doing=f"removing {len(rows)} rows of {self.index!r}",
            refresh=self._refresh_policy(),
        )
