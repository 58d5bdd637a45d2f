"""The lifecycle of a snapshot's vector leg: FAISS in the snapshot, or Elasticsearch kNN.

**FAISS** (the default) lives in the snapshot's ``vectors/`` directory: ``CURRENT`` is
its switch and the directory's removal its drop.

**Elasticsearch** (``BuildOptions(vector="elasticsearch")``) is a *sibling* index per
snapshot, ``<prefix>-vectors-<version>``, beside the lexical leg's ``<prefix>-<version>``,
with its own alias ``<prefix>-vectors``. A sibling rather than the lexical index itself,
because the two legs are independent choices (FAISS with Elasticsearch BM25, or kNN with
tantivy) and because a lexical upsert replaces whole documents (it would drop the vector
of a product whose price changed); a sibling is written only by the vector index. The
snapshot's ``vectors/`` directory still holds the float32 rows (refine, ``vectors_of``,
exact oracle), so a snapshot loads with no request, as the lexical leg does.

Promotion and rollback move the alias in one ``_aliases`` request before ``CURRENT`` is
written (and back if it cannot be), exactly as
:class:`~indexer.lexical_lifecycle.ElasticsearchLifecycle` moves the lexical alias; the
two aliases are two requests (each atomic; ``CURRENT`` stays the truth in between, and
the serving path searches each snapshot's own indices by name, never an alias). Pruning
deletes the snapshot's vector index; a build deletes orphans ``<prefix>-vectors-<ts>-*``
that no kept snapshot names and no alias points at.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from shopsearch.indexer.errors import SnapshotError
from shopsearch.indexer.es_alias_lifecycle import (
    AliasedIndexLifecycle,
    SwitchAction,
    Undo,
    nothing_to_undo,
)
from shopsearch.indexer.lexical_lifecycle import DEFAULT_ES_PREFIX
from shopsearch.retrieval.elasticsearch_index import ElasticsearchConnection
from shopsearch.retrieval.es_vector_index import ElasticsearchVectorIndex, EsVectorParams
from shopsearch.retrieval.stored_vectors import VectorIndexError
from shopsearch.retrieval.types import Product
from shopsearch.retrieval.vector_index import FaissIndex, FaissParams, VectorIndex

__all__ = [
    "VECTOR_BACKENDS",
    "ElasticsearchVectorLifecycle",
    "FaissLifecycle",
    "VectorLifecycle",
    "es_vector_index_name",
    "vector_lifecycle",
    "vector_lifecycle_of",
]

log = logging.getLogger(__name__)


def es_vector_index_name(prefix: str, version: str) -> str:
    """The vector index of snapshot ``version``: ``<prefix>-vectors-<version lower-cased>``."""
    return f"{prefix}-vectors-{version.lower()}"


class VectorLifecycle(Protocol):
    """The lifecycle of a snapshot's vector leg, as :mod:`indexer.snapshot` drives it
    (the same steps as :class:`~indexer.lexical_lifecycle.LexicalLifecycle`; opening goes
    through :func:`~retrieval.vector_index.load_vector_index`)."""

    backend: str

    def check_build(self) -> None:
        """Raise :class:`SnapshotError` when a build cannot start."""
        ...

    def prepare_build(self, kept: Callable[[], set[str]]) -> list[str]:
        """Remove what earlier builds left outside the snapshots; returns what it removed."""
        ...

    def build(
        self,
        version: str,
        vectors: np.ndarray,
        products: Sequence[Product],
        *,
        nprobe: int | None,
        refine_factor: int,
        use_gpu: bool | None,
        seed: int,
    ) -> tuple[VectorIndex, dict[str, Any]]:
        """The index of ``vectors`` (row ``i`` is ``products[i]``) and what the manifest's
        ``vector_index`` records beyond its ``describe()`` (``exact_below``, an alias)."""
        ...

    def discard(self, version: str) -> None:
        """Remove the leg of a build that failed (never raises)."""
        ...

    def check_switch(self, version: str, action: SwitchAction) -> None:
        """Raise :class:`SnapshotError` when switching needs configuration not given."""
        ...

    def switch(
        self, version: str, manifest: Mapping[str, Any], action: SwitchAction, current: str | None
    ) -> Undo:
        """Make ``version`` the leg external readers see; returns the undo."""
        ...

    def drop(self, version: str, manifest: Mapping[str, Any]) -> None:
        """Delete the leg of pruned ``version`` outside its directory (logs on failure)."""
        ...

    def names(self, manifest: Mapping[str, Any]) -> set[str]:
        """What the leg owns outside the snapshot directory."""
        ...


class FaissLifecycle:
    """FAISS in the snapshot directory: only :meth:`build` does anything."""

    backend = "faiss"

    def check_build(self) -> None:
        pass

    def prepare_build(self, kept: Callable[[], set[str]]) -> list[str]:
        return []

    def build(
        self,
        version: str,
        vectors: np.ndarray,
        products: Sequence[Product],
        *,
        nprobe: int | None,
        refine_factor: int,
        use_gpu: bool | None,
        seed: int,
    ) -> tuple[VectorIndex, dict[str, Any]]:
        params = FaissParams.for_size(
            len(vectors), vectors.shape[1], nprobe=nprobe, refine_factor=refine_factor
        )
        index = FaissIndex(vectors, params, use_gpu=use_gpu, seed=seed)
        return index, {"exact_below": params.nlist == 0}

    def discard(self, version: str) -> None:
        pass

    def check_switch(self, version: str, action: SwitchAction) -> None:
        pass

    def switch(
        self, version: str, manifest: Mapping[str, Any], action: SwitchAction, current: str | None
    ) -> Undo:
        return nothing_to_undo

    def drop(self, version: str, manifest: Mapping[str, Any]) -> None:
        pass

    def names(self, manifest: Mapping[str, Any]) -> set[str]:
        return set()


class ElasticsearchVectorLifecycle(AliasedIndexLifecycle):
    """Vector indices ``<prefix>-vectors-<version>`` and their alias ``<prefix>-vectors``
    (see the module docstring; the shared steps are
    :class:`~indexer.es_alias_lifecycle.AliasedIndexLifecycle`'s). ``params`` lay out and
    search new builds."""

    leg = "vector"
    manifest_key = "vector_index"

    def __init__(
        self,
        es: ElasticsearchConnection | None,
        prefix: str = DEFAULT_ES_PREFIX,
        params: EsVectorParams | None = None,
    ) -> None:
        super().__init__(es, prefix, alias=f"{prefix}-vectors")
        self.params = params or EsVectorParams()

    def index_name(self, version: str) -> str:
        return es_vector_index_name(self.prefix, version)

    def build(
        self,
        version: str,
        vectors: np.ndarray,
        products: Sequence[Product],
        *,
        nprobe: int | None,
        refine_factor: int,
        use_gpu: bool | None,
        seed: int,
    ) -> tuple[VectorIndex, dict[str, Any]]:
        es = self._cluster(version, "building")
        name = es_vector_index_name(self.prefix, version)
        try:
            handle = es.index(name)
            index = ElasticsearchVectorIndex.build(
                es, name, vectors, products, self.params,
                shards=handle.shards, replicas=handle.replicas,
            )  # fmt: skip
        except VectorIndexError as exc:
            raise SnapshotError(f"building the Elasticsearch vector index {name}: {exc}") from exc
        return index, {"exact_below": False, "alias": self.alias}


#: Vector backends a snapshot can be built with.
VECTOR_BACKENDS: tuple[str, ...] = (FaissLifecycle.backend, ElasticsearchVectorLifecycle.backend)


def vector_lifecycle(
    backend: str,
    *,
    es: ElasticsearchConnection | None = None,
    es_prefix: str = DEFAULT_ES_PREFIX,
    params: EsVectorParams | None = None,
    field: str = "vector backend",
) -> VectorLifecycle:
    """The lifecycle of ``backend`` (one of :data:`VECTOR_BACKENDS`); an unknown name
    raises :class:`SnapshotError` naming ``field`` and the valid values.

    >>> vector_lifecycle("faiss").backend
    'faiss'
    """
    if backend == FaissLifecycle.backend:
        return FaissLifecycle()
    if backend == ElasticsearchVectorLifecycle.backend:
        return ElasticsearchVectorLifecycle(es, es_prefix, params)
    raise SnapshotError(f"{field} {backend!r} is not one of {', '.join(VECTOR_BACKENDS)}")


def vector_lifecycle_of(
    manifest: Mapping[str, Any], es: ElasticsearchConnection | None
) -> VectorLifecycle:
    """The lifecycle of the snapshot with ``manifest``: ``elasticsearch`` when its
    ``vector_index.kind`` says so, FAISS (in the directory) otherwise."""
    meta = manifest.get("vector_index", {})
    if meta.get("kind") == ElasticsearchVectorLifecycle.backend:
        alias = str(meta.get("alias", f"{DEFAULT_ES_PREFIX}-vectors"))
        return ElasticsearchVectorLifecycle(es, alias.removesuffix("-vectors"))
    return FaissLifecycle()
