"""What the Elasticsearch legs' lifecycles share: versioned indices behind one alias.

Both the lexical leg (``<prefix>-<version>``, alias ``<prefix>``) and the vector leg
(``<prefix>-vectors-<version>``, alias ``<prefix>-vectors``) keep one index per snapshot
and an alias that names the serving one. :class:`AliasedIndexLifecycle` holds the steps
that are the same for both: refusing to work without a cluster connection, sweeping
orphan indices before a build, deleting a failed build's index, moving the alias on
promotion and rollback (with an undo), deleting a pruned snapshot's index. Each leg
says which manifest entry records its index, how its indices are named, and builds.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from contextlib import suppress
from typing import Any, Literal

from shopsearch.indexer.errors import SnapshotError
from shopsearch.retrieval.elasticsearch_index import ElasticsearchConnection
from shopsearch.retrieval.lexical_index import LexicalIndexError

__all__ = ["DOING", "AliasedIndexLifecycle", "SwitchAction", "Undo", "nothing_to_undo"]

log = logging.getLogger(__name__)

#: What a switch of ``CURRENT`` is doing (also the first word of its crash points).
SwitchAction = Literal["promote", "rollback"]
#: Puts back what a lifecycle's ``switch`` changed; never raises for the cluster.
Undo = Callable[[], None]
#: A switch action as the middle of a sentence ("promoting it needs the cluster").
DOING: dict[str, str] = {"promote": "promoting", "rollback": "rolling back to"}


def nothing_to_undo() -> None:
    """The :data:`Undo` of a switch that changed nothing."""


class AliasedIndexLifecycle:
    """The shared steps of an Elasticsearch leg (see the module docstring).

    ``es`` may be None: every step that needs the cluster then raises
    :class:`SnapshotError` saying how to give it, except :meth:`drop` and
    :meth:`discard`, which log and leave the index to the next build's sweep.
    Subclasses set :attr:`leg` ("lexical", "vector"), :attr:`manifest_key` (the
    manifest entry holding ``alias`` and ``index``) and :meth:`index_name`.
    """

    backend = "elasticsearch"
    leg: str
    manifest_key: str

    def __init__(self, es: ElasticsearchConnection | None, prefix: str, alias: str) -> None:
        self.es = es
        self.prefix = prefix
        self.alias = alias

    def __repr__(self) -> str:
        return f"{type(self).__name__}(alias={self.alias!r}, es={self.es!r})"

    def index_name(self, version: str) -> str:
        """The index a build of ``version`` writes."""
        raise NotImplementedError

    def _cluster(self, version: str, doing: str) -> ElasticsearchConnection:
        if self.es is None:
            raise SnapshotError(
                f"snapshot {version} keeps its {self.leg} leg in Elasticsearch; {doing} it "
                "needs the cluster: give --es-url (or set SHOPSEARCH_ES_URL)"
            )
        return self.es

    def _target(self, manifest: Mapping[str, Any]) -> tuple[str, str]:
        """``(alias, index)`` recorded in the manifest."""
        meta = manifest[self.manifest_key]
        return str(meta["alias"]), str(meta["index"])

    def check_build(self) -> None:
        if self.es is None:
            raise SnapshotError(
                f"--{self.leg} elasticsearch needs the cluster: give --es-url "
                "(or SHOPSEARCH_ES_URL)"
            )

    def prepare_build(self, kept: Callable[[], set[str]]) -> list[str]:
        """Delete ``<alias>-<timestamp>-*`` indices that no kept snapshot names and no
        alias points at; returns the deleted names."""
        admin = self._cluster("(next)", "sweeping orphans of").index(self.alias)
        pattern = re.compile(rf"^{re.escape(self.alias)}-\d{{8}}t\d{{6}}z-")
        named = kept()  # a manifest that cannot be read raises: delete nothing
        aliased = admin.aliased_indices(self.alias)
        doomed = [
            name
            for name in admin.versions(self.alias)
            if pattern.match(name) and name not in named and name not in aliased
        ]
        for name in doomed:
            admin.drop_index(name)
            log.info("deleted orphan Elasticsearch %s index %s (no kept snapshot names it)",
                     self.leg, name)  # fmt: skip
        return doomed

    def discard(self, version: str) -> None:
        if self.es is None:
            return
        index = self.index_name(version)
        try:
            self.es.index(index).drop_index(index)
        except LexicalIndexError as exc:
            log.warning(
                "could not delete the failed build's %s index %s (%s); the next build deletes it",
                self.leg,
                index,
                exc,
            )

    def check_switch(self, version: str, action: SwitchAction) -> None:
        self._cluster(version, DOING[action])

    def switch(
        self, version: str, manifest: Mapping[str, Any], action: SwitchAction, current: str | None
    ) -> Undo:
        """Move the alias to the snapshot's index in one ``_aliases`` request; the undo
        moves it back to the index it pointed at (if any)."""
        alias, index = self._target(manifest)
        admin = self._cluster(version, DOING[action]).index(alias)
        try:
            previous = admin.current_index(alias)
            admin.promote(alias, index)
        except LexicalIndexError as exc:
            raise SnapshotError(
                f"cannot {action} to {version}: moving alias {alias!r} to {index!r} "
                f"failed ({exc}); CURRENT still names {current}"
            ) from exc
        if previous in (None, index):
            return nothing_to_undo

        def undo() -> None:
            with suppress(LexicalIndexError):
                admin.promote(alias, str(previous))

        return undo

    def drop(self, version: str, manifest: Mapping[str, Any]) -> None:
        index = self._target(manifest)[1]
        if self.es is None:
            log.warning(
                "pruned snapshot %s without a cluster connection: its Elasticsearch %s index "
                "%s stays until the next Elasticsearch build deletes orphans",
                version,
                self.leg,
                index,
            )
            return
        try:
            self.es.index(index).drop_index(index)
        except LexicalIndexError as exc:
            log.warning(
                "could not delete Elasticsearch %s index %s of pruned snapshot %s (%s); the "
                "next Elasticsearch build deletes it",
                self.leg,
                index,
                version,
                exc,
            )

    def names(self, manifest: Mapping[str, Any]) -> set[str]:
        return {self._target(manifest)[1]}
