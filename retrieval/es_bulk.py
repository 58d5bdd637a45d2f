"""Bulk writes to Elasticsearch, shared by the lexical and the vector leg.

:func:`stream_bulk` sends index and delete actions in chunks and returns every item
the cluster refused with its error, leaving each leg to word the failure its own way
(:class:`RejectedDocumentsError` names the lexical leg's products; the vector leg names
rows). A client or transport failure (the cluster unreachable, a whole request refused)
is raised as the client raised it, for the caller to wrap.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from shopsearch.retrieval.lexical_index import LexicalIndexError, ProgressCallback

if TYPE_CHECKING:
    from elasticsearch import Elasticsearch

    from shopsearch.retrieval.es_handle import ActiveShards

__all__ = ["RejectedDocumentsError", "rejected_error", "stream_bulk"]

#: How many rejected documents an error message lists before "... and N more".
_ERRORS_SHOWN = 20


class RejectedDocumentsError(LexicalIndexError):
    """Elasticsearch refused some documents; ``rejected`` holds ``(product id, reason)``."""

    def __init__(self, message: str, rejected: Sequence[tuple[str, str]]) -> None:
        super().__init__(message)
        self.rejected: list[tuple[str, str]] = list(rejected)


def stream_bulk(
    client: Elasticsearch,
    actions: Iterable[dict[str, Any]],
    *,
    index: str,
    chunk_size: int,
    refresh: Any,
    missing_ok: bool,
    wait_for_active_shards: ActiveShards | None = None,
    progress: ProgressCallback | None = None,
) -> list[tuple[str, Any]]:
    """Send ``actions`` to ``index`` in chunks of ``chunk_size``; return ``(_id, error)``
    of every action the cluster refused (a 404 is not refused when ``missing_ok``: a
    delete of what is already gone). ``progress(n)`` is called with the number of
    actions answered since the last call, every ``chunk_size`` and at the end.
    ``wait_for_active_shards=None`` leaves the cluster's default (one copy)."""
    from elasticsearch import helpers

    options: dict[str, Any] = {}
    if wait_for_active_shards is not None:
        options["wait_for_active_shards"] = wait_for_active_shards
    refused: list[tuple[str, Any]] = []
    pending = 0
    for ok, item in helpers.streaming_bulk(
        client,
        actions,
        index=index,
        chunk_size=chunk_size,
        raise_on_error=False,
        max_retries=3,  # only 429 "too many requests" is retried
        refresh=refresh,
        **options,
    ):
        (info,) = item.values()
        if not ok and not (missing_ok and info.get("status") == 404):
            refused.append((str(info.get("_id")), info.get("error")))
        pending += 1
        if progress is not None and pending == chunk_size:
            progress(pending)
            pending = 0
    if progress is not None and pending:
        progress(pending)
    return refused


def rejected_error(what: str, rejected: list[tuple[str, str]]) -> LexicalIndexError:
    """A :class:`RejectedDocumentsError` for ``what`` listing the first rejected
    ``(product id, reason)`` pairs (and how many more)."""
    lines = [f"  {pid}: {reason}" for pid, reason in rejected[:_ERRORS_SHOWN]]
    if len(rejected) > _ERRORS_SHOWN:
        lines.append(f"  ... and {len(rejected) - _ERRORS_SHOWN} more")
    return RejectedDocumentsError(
        f"{what}: Elasticsearch rejected {len(rejected)} document(s); fix these products "
        "in the catalog (or its reader) and run again:\n" + "\n".join(lines),
        rejected,
    )
