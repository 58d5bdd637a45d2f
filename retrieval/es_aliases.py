"""Versioned indices and the alias that serves one of them, on an Elasticsearch handle.

Snapshots use one index per version (``<prefix>-<version>``) and an alias that
:meth:`EsAliasAdmin.promote` moves in a single ``_aliases`` request, so readers
searching through the alias never see a missing or half-built index;
:meth:`~EsAliasAdmin.rollback`, :meth:`~EsAliasAdmin.prune` and
:meth:`~EsAliasAdmin.drop_index` never delete an index an alias points at. The index
lifecycles of both legs (:mod:`indexer.es_alias_lifecycle`) drive these through
:class:`~retrieval.elasticsearch_index.ElasticsearchIndex`, which inherits them.
"""

from __future__ import annotations

import logging
from typing import Any

from shopsearch.retrieval.es_handle import EsHandle, check_index_name
from shopsearch.retrieval.lexical_index import LexicalIndexError

__all__ = ["EsAliasAdmin"]

log = logging.getLogger(__name__)


class EsAliasAdmin(EsHandle):
    """Reading, moving and cleaning up aliases and versioned indices (admin timeout)."""

    def current_index(self, alias: str) -> str | None:
        """The index ``alias`` points at, or ``None`` when the alias does not exist."""
        from elasticsearch import NotFoundError

        try:
            resp = self._admin().indices.get_alias(name=alias)
        except NotFoundError:
            return None
        except Exception as exc:
            raise self._error(f"reading alias {alias!r}", exc) from exc
        names = sorted(resp.body)
        if len(names) > 1:
            raise LexicalIndexError(
                f"alias {alias!r} points at several indices {names}; promote() one of them "
                "to make it point at exactly one"
            )
        return names[0] if names else None

    def promote(self, alias: str, index: str) -> None:
        """Point ``alias`` at ``index`` alone, atomically: one ``_aliases`` request removes
        it from every index holding it and adds it to ``index``, so a reader searching
        through the alias sees the old index or the new one, never neither."""
        check_index_name(alias, "alias")
        admin = self._admin()
        if not self._call("checking indices", admin.indices.exists, index=index):
            raise LexicalIndexError(f"cannot promote {index!r} to {alias!r}: no such index")
        if self._call("checking aliases", admin.indices.exists_alias, name=index):
            raise LexicalIndexError(f"cannot promote {index!r}: it is an alias, not an index")
        holders = self._alias_holders(alias)
        if not holders and self._call("checking indices", admin.indices.exists, index=alias):
            raise LexicalIndexError(
                f"cannot use {alias!r} as an alias: an index of that name exists; "
                "delete or rename it first"
            )
        actions: list[dict[str, Any]] = [
            {"remove": {"index": holder, "alias": alias}} for holder in holders if holder != index
        ]
        actions.append({"add": {"index": index, "alias": alias}})
        self._call(
            f"moving alias {alias!r} to {index!r}", admin.indices.update_aliases, actions=actions
        )
        log.info("alias %s now points at %s (was %s)", alias, index, ", ".join(holders) or "none")

    def _alias_holders(self, alias: str) -> list[str]:
        from elasticsearch import NotFoundError

        try:
            resp = self._admin().indices.get_alias(name=alias)
        except NotFoundError:
            return []
        except Exception as exc:
            raise self._error(f"reading alias {alias!r}", exc) from exc
        return sorted(resp.body)

    def versions(self, prefix: str) -> list[str]:
        """The indices ``<prefix>-*``, oldest first (by creation time)."""
        check_index_name(prefix, "prefix")
        resp = self._call(
            f"listing {prefix}-*",
            self._admin().indices.get,
            index=f"{prefix}-*",
            allow_no_indices=True,
            expand_wildcards="open,closed",
            features="settings",
        )
        created = {
            name: int(body["settings"]["index"]["creation_date"])
            for name, body in resp.body.items()
        }
        return sorted(created, key=lambda name: (created[name], name))

    def rollback(self, alias: str, prefix: str, *, to: str | None = None) -> str:
        """Point ``alias`` back at ``to``, or by default at the newest ``<prefix>-*`` index
        created before the one it points at now; returns the index it points at now."""
        current = self.current_index(alias)
        if to is None:
            if current is None:
                raise LexicalIndexError(f"alias {alias!r} does not exist: nothing to roll back")
            older = self.versions(prefix)
            if current not in older:
                raise LexicalIndexError(
                    f"alias {alias!r} points at {current!r}, not a {prefix}-* index; "
                    "give to= explicitly"
                )
            older = older[: older.index(current)]
            if not older:
                raise LexicalIndexError(
                    f"no {prefix}-* index older than {current!r} is left to roll back to"
                )
            to = older[-1]
        self.promote(alias, to)
        return to

    def prune(self, prefix: str, keep: int) -> list[str]:
        """Delete ``<prefix>-*`` indices beyond the newest ``keep``, never one that an alias
        points at; returns the deleted names, oldest first."""
        if keep < 1:
            raise LexicalIndexError(f"keep={keep} must be >= 1 (the serving index is kept anyway)")
        names = self.versions(prefix)
        aliased = self._aliased(f"{prefix}-*")
        doomed = [n for n in names[: max(0, len(names) - keep)] if n not in aliased]
        for name in doomed:
            self._call(f"deleting old index {name!r}", self._admin().indices.delete, index=name)
            log.info("pruned Elasticsearch index %s", name)
        return doomed

    def _aliased(self, pattern: str) -> set[str]:
        resp = self._call(
            f"reading aliases of {pattern}",
            self._admin().indices.get_alias,
            index=pattern,
            allow_no_indices=True,
        )
        return {name for name, body in resp.body.items() if body.get("aliases")}

    def aliased_indices(self, prefix: str) -> set[str]:
        """The ``<prefix>-*`` indices some alias points at (they are never dropped)."""
        check_index_name(prefix, "prefix")
        return self._aliased(f"{prefix}-*")

    def drop_index(self, name: str) -> bool:
        """Delete the concrete index ``name``; returns False when it does not exist.

        Refuses (:class:`LexicalIndexError`) an index that an alias points at, and a name
        that is an alias: move the alias first (:meth:`promote`).
        """
        from elasticsearch import NotFoundError

        check_index_name(name, "index")
        admin = self._admin()
        if self._call("checking aliases", admin.indices.exists_alias, name=name):
            raise LexicalIndexError(f"cannot drop {name!r}: it is an alias, not an index")
        holders = self._call(
            f"reading aliases of {name!r}",
            admin.indices.get_alias,
            index=name,
            ignore_unavailable=True,
            allow_no_indices=True,
        )
        aliases = sorted(a for body in holders.body.values() for a in body.get("aliases", {}))
        if aliases:
            raise LexicalIndexError(
                f"cannot drop {name!r}: alias(es) {aliases} point at it; promote another "
                "index to them first"
            )
        try:
            admin.indices.delete(index=name)
        except NotFoundError:
            return False
        except Exception as exc:
            raise self._error(f"deleting index {name!r}", exc) from exc
        log.info("deleted Elasticsearch index %s", name)
        return True
