"""A bounded, thread-safe cache whose entries belong to one *scope* (the serving snapshot).

The service's caches (reranker scores, :mod:`rerank.score_cache`; whole answers,
:mod:`api.result_cache`) must never serve a value computed on a snapshot that no longer
serves. Clearing them when the snapshot changes is not enough on its own: a request that
pinned the old snapshot may finish *after* the clear and put its value back. So every
``get`` and ``put`` names the scope its value belongs to, and :meth:`ScopedCache.reset`
clears the cache and names the new scope, all under one lock:

* a ``put`` for any other scope than the current one is dropped (the late request above);
* a ``get`` for any other scope is a miss (a request that pinned the new snapshot before
  the reset, or the old one after it).

The store is ``cachetools.LRUCache`` (least recently used goes first once ``maxsize``
entries are held) or, with ``ttl_s > 0``, ``cachetools.TTLCache`` (an entry also expires
``ttl_s`` seconds after it was put). cachetools is not thread-safe, so one lock guards
every operation; they are dictionary operations, so the lock is held for microseconds.

Hit and miss counts only ever grow (they back Prometheus counters); a reset keeps them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from cachetools import Cache, LRUCache, TTLCache

__all__ = ["CacheStats", "ScopedCache", "ScopedCacheFront"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class CacheStats:
    """A cache's counters at one moment (``hits``/``misses`` never decrease)."""

    hits: int
    misses: int
    entries: int
    maxsize: int


class ScopedCache(Generic[K, V]):
    """At most ``maxsize`` (>= 1) entries of the current scope; ``ttl_s`` > 0 also expires
    each entry that many seconds after it was put (0: entries live until evicted or reset).

    Values must not be None (a ``get`` returns None for a miss). The cache starts with no
    scope: nothing is served or kept until :meth:`reset` names one.
    """

    def __init__(
        self,
        maxsize: int,
        ttl_s: float = 0.0,
        *,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize={maxsize} must be >= 1 (leave the cache out to disable it)")
        if ttl_s < 0:
            raise ValueError(f"ttl_s={ttl_s} must be >= 0 seconds (0: no expiry)")
        self.maxsize = maxsize
        self.ttl_s = float(ttl_s)
        self._store: Cache[K, V] = (
            TTLCache(maxsize, ttl_s, timer=timer) if ttl_s > 0 else LRUCache(maxsize)
        )
        self._lock = threading.Lock()
        self._scope: object | None = None
        self._hits = 0
        self._misses = 0

    def reset(self, scope: object | None) -> None:
        """Drop every entry and serve ``scope`` from now on (None: serve nothing)."""
        with self._lock:
            self._store.clear()
            self._scope = scope

    def clear(self) -> None:
        """Drop every entry; the scope stays."""
        with self._lock:
            self._store.clear()

    def get(self, key: K, scope: object) -> V | None:
        """The value kept for ``key`` in ``scope``, else None (counted as a miss)."""
        return self.get_many((key,), scope)[0]

    def get_many(self, keys: Sequence[K], scope: object) -> list[V | None]:
        """The value kept for each key (None where there is none), under one lock; each
        key counts as one hit or one miss."""
        with self._lock:
            if scope is None or scope is not self._scope:
                found: list[V | None] = [None] * len(keys)
            else:
                found = [self._store.get(key) for key in keys]
            hits = sum(v is not None for v in found)
            self._hits += hits
            self._misses += len(keys) - hits
            return found

    def put(self, key: K, value: V, scope: object) -> bool:
        """Keep ``value`` for ``key`` if ``scope`` is the current one; True if kept."""
        return self.put_many(((key, value),), scope)

    def put_many(self, items: Iterable[tuple[K, V]], scope: object) -> bool:
        """Keep each ``(key, value)`` if ``scope`` is the current one (else none of them:
        they were computed on a snapshot that no longer serves); True if kept."""
        with self._lock:
            if scope is None or scope is not self._scope:
                return False
            for key, value in items:
                if value is None:
                    raise ValueError(f"cannot cache None for {key!r}: None means a miss")
                self._store[key] = value
            return True

    def __len__(self) -> int:
        with self._lock:
            if isinstance(self._store, TTLCache):
                self._store.expire()  # expired entries are not held for the size gauge
            return len(self._store)

    def stats(self) -> CacheStats:
        """Hits, misses (since the cache was made) and entries held now."""
        entries = len(self)
        with self._lock:
            return CacheStats(self._hits, self._misses, entries, self.maxsize)


class ScopedCacheFront(Generic[K, V]):
    """The part every typed cache over a :class:`ScopedCache` shares (the result cache,
    the reranker score cache): reset on a snapshot swap, statistics, size. Subclasses add
    their own typed ``get``/``put`` over ``self._cache``."""

    def __init__(self, cache: ScopedCache[K, V]) -> None:
        self._cache = cache

    def reset(self, scope: object | None) -> None:
        """Forget everything; keep only entries of ``scope`` (the serving snapshot) after."""
        self._cache.reset(scope)

    def stats(self) -> CacheStats:
        return self._cache.stats()

    def __len__(self) -> int:
        return len(self._cache)
