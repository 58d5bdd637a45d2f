"""Reaching a multi-node Elasticsearch cluster, and saying when it answered only in part.

Two things the Elasticsearch backend needs once a shop runs on more than one node:

* **Failover.** ``SHOPSEARCH_ES_URL`` (or ``--es-url``) may name several nodes, comma
  separated: :func:`split_urls` reads them and :func:`failover_options` gives the client
  the retry settings under which a request to a dead node (refused, or reset mid-way) is
  sent again, at once, to the next live node. A timeout is *not* retried: the query's
  budget is spent, and the service answers from the dense leg instead.
* **Partial coverage.** A search the cluster could run on only some shards (every copy of
  a shard on dead nodes, say) still answers, with ``_shards.successful < _shards.total``.
  :func:`coverage_of` reads that, and :class:`LexicalHits` carries it with the hits, so
  the service lists ``"lexical: 2 of 3 shards"`` in the answer's ``degraded`` instead of
  silently returning less.

Example::

    split_urls("http://a:9200, http://b:9200")   # ['http://a:9200', 'http://b:9200']
    coverage_of({"_shards": {"total": 3, "successful": 2, "failed": 1}}).partial  # True
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from shopsearch.retrieval.lexical_index import LexicalHit, LexicalIndexError

__all__ = ["LexicalHits", "ShardCoverage", "coverage_of", "failover_options", "split_urls"]


def split_urls(url: str | Sequence[str]) -> list[str]:
    """The node URLs in ``url``: one URL, several separated by commas, or a sequence.

    Raises :class:`LexicalIndexError` naming the culprit when one is empty or not an
    ``http(s)://host[:port]`` URL, so a typo fails at start-up, not at the first query.
    """
    parts = url.split(",") if isinstance(url, str) else list(url)
    urls = [u.strip() for u in parts]
    if not urls or any(not u for u in urls):
        raise LexicalIndexError(
            f"Elasticsearch URL list {url!r} has an empty entry; give one URL or several "
            "separated by commas, e.g. http://127.0.0.1:9211,http://127.0.0.1:9212"
        )
    for u in urls:
        try:
            parts_ = urlsplit(u)
            parts_.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as exc:
            raise LexicalIndexError(f"Elasticsearch URL {u!r} is not valid: {exc}") from exc
        if parts_.scheme not in ("http", "https") or not parts_.hostname:
            raise LexicalIndexError(
                f"Elasticsearch URL {u!r} is not an http(s)://host[:port] URL "
                "(several nodes: separate them with commas)"
            )
    if len(set(urls)) != len(urls):
        raise LexicalIndexError(f"Elasticsearch URL list {url!r} names a node twice")
    return urls


def failover_options(urls: Sequence[str]) -> dict[str, Any]:
    """Client keyword arguments under which a dead node costs one quick retry.

    The transport sends a request that could not connect, or whose connection broke, to
    the next node of the pool and keeps the dead one out for a back-off that grows from
    one second; it retries 502/503/504 and 429 answers too (every write this backend
    sends is by id, so a repeated one is harmless). ``max_retries`` lets one request try
    every node once more than the pool has; ``retry_on_timeout`` stays off, because a
    query that timed out has spent its budget (the service answers from the dense leg).
    """
    return {
        "max_retries": max(3, len(urls)),
        "retry_on_timeout": False,
        "retry_on_status": (429, 502, 503, 504),
    }


@dataclass(frozen=True, slots=True)
class ShardCoverage:
    """How many of the shards a search asked answered (``successful`` counts the skipped
    ones, which the cluster knew could not match: they are covered, not missing)."""

    total: int
    successful: int
    failed: int = 0

    @property
    def partial(self) -> bool:
        """True when some shard's documents are missing from the answer."""
        return self.failed > 0 or self.successful < self.total

    def __str__(self) -> str:
        return f"{self.successful} of {self.total} shards"


def coverage_of(response: Mapping[str, Any]) -> ShardCoverage:
    """The ``_shards`` section of a search response (full coverage when it is absent)."""
    shards = response.get("_shards") or {}
    total = int(shards.get("total", 0))
    return ShardCoverage(
        total=total,
        successful=int(shards.get("successful", total)),
        failed=int(shards.get("failed", 0)),
    )


class LexicalHits(list[LexicalHit]):
    """The hits of one search, with the shard coverage they come from.

    A plain list to every caller of ``LexicalIndex.search``; ``partial`` is what the
    service adds to an answer's ``degraded`` (``None`` when every shard answered).
    """

    __slots__ = ("coverage",)

    def __init__(self, hits: Iterable[LexicalHit], coverage: ShardCoverage | None = None) -> None:
        super().__init__(hits)
        self.coverage = coverage

    @property
    def partial(self) -> str | None:
        """``"lexical: <n> of <m> shards"`` while coverage is partial, else ``None``."""
        if self.coverage is None or not self.coverage.partial:
            return None
        return f"lexical: {self.coverage}"
