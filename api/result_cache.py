"""Whole search answers remembered for head queries asked without a shopper.

A shop's head queries ("drill", "paint") make up much of its traffic and, without a
shopper to rank for, every one of them gets the same answer until the catalog changes.
:class:`ResultCache` keeps those answers, keyed by everything in the request that can
change the answer (:func:`result_key`), scoped to the serving snapshot
(:class:`retrieval.scoped_cache.ScopedCache`: the service resets it whenever the snapshot
changes, an update included).

What is never cached:

* a request ranked for a shopper (``user`` or ``session`` with ``personalize``): its
  answer is that shopper's, and their history moves with every event;
* an answer that is not the full answer: a stage degraded (``degraded``), or work was
  cut to meet the deadline (``cut``); the next request computes it again.

Answers are kept as their JSON text: a third of the memory of the objects, and every hit
parses a fresh :class:`SearchResponse` that its caller may change freely. A hit gets its
own ``query_id``, ``cached: true`` and ``timings_ms`` of ``{"cache", "total"}`` (the
stages' timings belong to the request that computed it).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable

from pydantic import ValidationError

from shopsearch.api.schemas import SearchRequest, SearchResponse
from shopsearch.retrieval.scoped_cache import ScopedCache, ScopedCacheFront

__all__ = ["ResultCache", "cacheable", "result_key"]

#: Request fields that do not change a cached answer: the deadline only decides whether
#: work is cut (cut answers are not cached), and requests with a shopper are not cached,
#: so their ``user``/``session``/``personalize`` are moot for the ones that are.
_NOT_IN_KEY = frozenset({"deadline_ms", "user", "session", "personalize"})


def result_key(request: SearchRequest, query: str, context: str = "") -> str | None:
    """The cache key of ``request`` (``query``: its ``q`` normalized), or None when its
    answer must not be cached (it is ranked for a shopper).

    Every other field is in the key, as canonical JSON, plus ``context`` (what the
    service answers with beyond the snapshot, e.g. the reranker's model key)."""
    if request.personalize and (request.user or request.session):
        return None
    fields = request.model_dump(mode="json", exclude=set(_NOT_IN_KEY))
    fields["q"] = query
    return json.dumps([context, fields], sort_keys=True, separators=(",", ":"))


def cacheable(response: SearchResponse) -> bool:
    """Whether ``response`` is a full, unpersonalised answer (see the module docstring)."""
    return (
        not response.degraded
        and not response.cut
        and response.personalized == "off"
        and not response.cached
    )


class ResultCache(ScopedCacheFront[str, bytes]):
    """At most ``maxsize`` (>= 1) answers of the current snapshot, each for ``ttl_s``
    seconds at most (0: until evicted or reset)."""

    def __init__(
        self, maxsize: int, ttl_s: float = 0.0, *, timer: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__(ScopedCache(maxsize, ttl_s, timer=timer))

    def get(self, key: str, scope: object, *, started: float) -> SearchResponse | None:
        """A fresh copy of the answer kept for ``key`` on ``scope``, with a new
        ``query_id``, ``cached=True`` and timings since ``started`` (a
        ``time.perf_counter()`` reading taken when the request began); None on a miss."""
        t = time.perf_counter()
        stored = self._cache.get(key, scope)
        if stored is None:
            return None
        answer = SearchResponse.model_validate_json(stored)
        answer.query_id = uuid.uuid4().hex
        answer.cached = True
        done = time.perf_counter()
        answer.timings_ms = {
            "cache": round((done - t) * 1000.0, 3),
            "total": round((done - started) * 1000.0, 3),
        }
        return answer

    def put(self, key: str, response: SearchResponse, scope: object) -> bool:
        """Keep ``response`` for ``key`` if it is :func:`cacheable`, reads back equal
        (a non-finite score would not) and ``scope`` still serves; True if kept."""
        if not cacheable(response):
            return False
        stored = response.model_dump_json().encode()
        try:
            if SearchResponse.model_validate_json(stored) != response:
                return False
        except ValidationError:  # e.g. a NaN score, written as null
            return False
        return self._cache.put(key, stored, scope)
