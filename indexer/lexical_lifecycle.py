"""The lexical (BM25) leg of a snapshot through its life: build, open, switch, drop.

A snapshot's lexical index lives either inside the snapshot directory (tantivy,
``lexical/``) or on an Elasticsearch cluster (the index ``<prefix>-<version>``, version
lower-cased, and the alias ``<prefix>``). :class:`LexicalLifecycle` is what
:mod:`indexer.snapshot` needs from either, so the build and the snapshot store never ask
which one a snapshot has: :func:`lexical_lifecycle` picks the implementation, from build
options or (through :func:`lifecycle_of`) from a manifest, in this one place.

The store calls a lifecycle in this order::

    build    check_build()  -- nothing locked or written yet
             prepare_build(kept)  -- holding the build lock
             build(work, version, products, progress) -> LexicalBuild (for the manifest)
             discard(version)  -- only when the build fails or is not promoted
    serve    open(path, manifest, lexical_file)
    switch   check_switch(version, action); undo = switch(...); write CURRENT; undo() if that fails
    prune    drop(version, manifest)  -- after the snapshot directory became a tombstone
    orphans  names(manifest) of every kept snapshot, given to prepare_build as ``kept``

**Tantivy** (:class:`TantivyLifecycle`): the index is a directory of the snapshot, so
``CURRENT`` is the only switch and removing the directory the only drop; every other
step does nothing.

**Elasticsearch** (:class:`ElasticsearchLifecycle`, the cluster administration): a build
first deletes orphans (every ``<prefix>-<timestamp>-*`` index that no kept snapshot names
and no alias points at, left by killed builds or by prunes that could not reach the
cluster: use one prefix per index directory), then writes the new index; a failed build
drops it (or leaves it to the next build's sweep when the cluster cannot). A switch moves
the alias in one ``_aliases`` request (remove + add: external readers of the alias never
see a missing or half-built index) *before* ``CURRENT`` is written, and its undo moves it
back if ``CURRENT`` cannot be written. Dropping a pruned snapshot deletes its index (never
one an alias points at: :meth:`~retrieval.elasticsearch_index.ElasticsearchIndex.drop_index`
refuses), and only logs when the cluster cannot. Opening makes no request, so a snapshot
loads (and serves degraded answers) while the cluster is down. The serving path searches
the snapshot's own index by name, never the alias (see :mod:`indexer.snapshot`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from shopsearch.indexer.errors import SnapshotError
from shopsearch.indexer.es_alias_lifecycle import (
    AliasedIndexLifecycle,
    SwitchAction,
    Undo,
    nothing_to_undo,
)
from shopsearch.indexer.generations import BASE_FILES
from shopsearch.indexer.progress import ProgressFactory
from shopsearch.retrieval.elasticsearch_index import ElasticsearchConnection
from shopsearch.retrieval.lexical_index import LexicalIndex, TantivyIndex
from shopsearch.retrieval.types import Product

__all__ = [
    "DEFAULT_ES_PREFIX",
    "LEXICAL_BACKENDS",
    "ElasticsearchLifecycle",
    "LexicalBuild",
    "LexicalLifecycle",
    "SwitchAction",
    "TantivyLifecycle",
    "Undo",
    "es_index_name",
    "lexical_lifecycle",
    "lifecycle_of",
]

log = logging.getLogger(__name__)

#: Elasticsearch index names are ``<prefix>-<version>`` and the alias is ``<prefix>``.
DEFAULT_ES_PREFIX = "shopsearch"


def es_index_name(prefix: str, version: str) -> str:
    """The Elasticsearch index of snapshot ``version``: ``<prefix>-<version lower-cased>``."""
    return f"{prefix}-{version.lower()}"


@dataclass(frozen=True, slots=True)
class LexicalBuild:
    """A built lexical leg: ``meta`` is the manifest's ``lexical_index`` section, ``file``
    the snapshot-relative directory of the index (``files.lexical``; None when the index
    lives outside the snapshot)."""

    meta: dict[str, Any]
    file: str | None


class LexicalLifecycle(Protocol):
    """The lifecycle of a snapshot's lexical leg, as :mod:`indexer.snapshot` drives it.

    Configuration errors (no cluster connection where one is needed, an unknown backend)
    raise :class:`SnapshotError`; cluster failures during a build raise
    :class:`~retrieval.lexical_index.LexicalIndexError`. Nothing here touches ``CURRENT``,
    ``HISTORY`` or the snapshot directories: the store does, and calls these around it.
    """

    backend: str

    def check_build(self) -> None:
        """Raise :class:`SnapshotError` when a build cannot start (before it locks or
        writes anything)."""
        ...

    def prepare_build(self, kept: Callable[[], set[str]]) -> list[str]:
        """Remove what earlier builds left outside the snapshots (called holding the build
        lock); ``kept()`` gives the :meth:`names` of every kept snapshot, which stay.
        Returns what was removed."""
        ...

    def build(
        self, work: Path, version: str, products: Sequence[Product], progress: ProgressFactory
    ) -> LexicalBuild:
        """Index ``products`` for the new snapshot ``version`` being written in ``work``."""
        ...

    def discard(self, version: str) -> None:
        """Remove the leg of a build of ``version`` that failed or was not promoted, as far
        as the cluster allows (never raises: the build's own error is the one to report)."""
        ...

    def open(
        self, path: Path, manifest: Mapping[str, Any], lexical_file: str | None
    ) -> LexicalIndex:
        """The index of the snapshot in ``path`` for serving; makes no network request."""
        ...

    def check_switch(self, version: str, action: SwitchAction) -> None:
        """Raise :class:`SnapshotError` when serving cannot switch to ``version`` for want
        of configuration (not damage: a rollback stops rather than passes it over)."""
        ...

    def switch(
        self, version: str, manifest: Mapping[str, Any], action: SwitchAction, current: str | None
    ) -> Undo:
        """Make ``version`` the served leg for external readers, before ``CURRENT`` (which
        still names ``current``) is switched; returns the undo for when it cannot be.
        Raises :class:`SnapshotError` having changed nothing."""
        ...

    def drop(self, version: str, manifest: Mapping[str, Any]) -> None:
        """Delete the leg of pruned snapshot ``version`` outside its directory; logs and
        leaves it when it cannot (the next build's :meth:`prepare_build` removes it)."""
        ...

    def names(self, manifest: Mapping[str, Any]) -> set[str]:
        """What the snapshot's leg owns outside its directory (kept by
        :meth:`prepare_build`)."""
        ...


class TantivyLifecycle:
    """The embedded leg: a directory of the snapshot. ``CURRENT`` is its switch and the
    snapshot directory's removal its drop, so every step but build and open does nothing."""

    backend = "tantivy"

    def check_build(self) -> None:
        pass

    def prepare_build(self, kept: Callable[[], set[str]]) -> list[str]:
        return []  # a killed build's directory is removed by SnapshotStore.clean_partial

    def build(
        self, work: Path, version: str, products: Sequence[Product], progress: ProgressFactory
    ) -> LexicalBuild:
        name = str(BASE_FILES["lexical"])
        embedded = TantivyIndex(work / name)
        with progress("building lexical index", len(products)) as advance:
            embedded.build(products, progress=advance)
        return LexicalBuild(meta=embedded.describe(), file=name)

    def discard(self, version: str) -> None:
        pass  # inside the snapshot directory, which the build removes

    def open(
        self, path: Path, manifest: Mapping[str, Any], lexical_file: str | None
    ) -> LexicalIndex:
        return TantivyIndex.load(path / str(lexical_file))

    def check_switch(self, version: str, action: SwitchAction) -> None:
        pass

    def switch(
        self, version: str, manifest: Mapping[str, Any], action: SwitchAction, current: str | None
    ) -> Undo:
        return nothing_to_undo  # any Elasticsearch alias stays where it is

    def drop(self, version: str, manifest: Mapping[str, Any]) -> None:
        pass

    def names(self, manifest: Mapping[str, Any]) -> set[str]:
        return set()


class ElasticsearchLifecycle(AliasedIndexLifecycle):
    """The cluster administration of snapshots' Elasticsearch lexical legs: versioned
    indices ``<prefix>-<version>``, the alias ``<prefix>``, their promotion, pruning and
    orphan sweep (:class:`~indexer.es_alias_lifecycle.AliasedIndexLifecycle`), over the
    calls of :class:`~retrieval.elasticsearch_index.ElasticsearchIndex`. ``prefix`` names
    the indices a build writes and sweeps."""

    leg = "lexical"
    manifest_key = "lexical_index"

    def __init__(self, es: ElasticsearchConnection | None, prefix: str = DEFAULT_ES_PREFIX) -> None:
        super().__init__(es, prefix, alias=prefix)

    def index_name(self, version: str) -> str:
        return es_index_name(self.prefix, version)

    def build(
        self, work: Path, version: str, products: Sequence[Product], progress: ProgressFactory
    ) -> LexicalBuild:
        es = self._cluster(version, "building")
        remote = es.index(self.prefix).create_versioned_index(self.prefix, version.lower())
        with progress(f"indexing into {remote.index}", len(products)) as advance:
            remote.build(products, progress=advance)
        return LexicalBuild(
            meta={**remote.describe(), "alias": self.prefix, "cluster": es.where}, file=None
        )

    def open(
        self, path: Path, manifest: Mapping[str, Any], lexical_file: str | None
    ) -> LexicalIndex:
        index = self._target(manifest)[1]
        if self.es is None:
            cluster = manifest["lexical_index"].get("cluster", "its cluster")
            raise SnapshotError(
                f"{path}: snapshot {manifest['version']} keeps its lexical leg in Elasticsearch "
                f"index {index!r} (built on {cluster}); give the connection with --es-url "
                "(or SHOPSEARCH_ES_URL, and credentials if the cluster needs them)"
            )
        return self.es.index(index, analyzer=manifest["lexical_index"].get("analyzer"))


#: The lifecycle of each lexical backend, made from the cluster connection and prefix.
_LIFECYCLES: dict[str, Callable[[ElasticsearchConnection | None, str], LexicalLifecycle]] = {
    TantivyLifecycle.backend: lambda es, prefix: TantivyLifecycle(),
    ElasticsearchLifecycle.backend: ElasticsearchLifecycle,
}
#: Lexical backends a snapshot can be built with.
LEXICAL_BACKENDS: tuple[str, ...] = tuple(_LIFECYCLES)


def lexical_lifecycle(
    backend: str,
    *,
    es: ElasticsearchConnection | None = None,
    es_prefix: str = DEFAULT_ES_PREFIX,
    field: str = "lexical backend",
) -> LexicalLifecycle:
    """The lifecycle of ``backend`` (one of :data:`LEXICAL_BACKENDS`), the one place that
    maps a backend name to its implementation. ``es`` and ``es_prefix`` are used by the
    Elasticsearch one. An unknown name raises :class:`SnapshotError` naming ``field`` (the
    setting or manifest field it came from) and the valid values.

    >>> lexical_lifecycle("tantivy").backend
    'tantivy'
    """
    make = _LIFECYCLES.get(backend)
    if make is None:
        raise SnapshotError(f"{field} {backend!r} is not one of {', '.join(LEXICAL_BACKENDS)}")
    return make(es, es_prefix)


def lifecycle_of(
    manifest: Mapping[str, Any], es: ElasticsearchConnection | None
) -> LexicalLifecycle:
    """The lifecycle of the snapshot whose manifest is ``manifest`` (its
    ``lexical_index.backend``; ``"tantivy"`` when absent, as in the first manifests)."""
    meta = manifest.get("lexical_index", {})
    return lexical_lifecycle(
        str(meta.get("backend", TantivyLifecycle.backend)),
        es=es,
        es_prefix=str(meta.get("alias", DEFAULT_ES_PREFIX)),
        field=f"snapshot {manifest.get('version', '?')}: manifest field lexical_index.backend",
    )
