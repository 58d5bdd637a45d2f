"""Keeping the garbage collector's full passes off the request path.

A served snapshot is millions of long-lived Python objects (the product table, the
suggestion index's phrases, the models' modules). CPython's cyclic collector visits every
one of them at each full (generation 2) pass, which the allocations of ordinary searches
trigger every few seconds under load: measured on the Home Depot snapshot (54,667
products), each pass held the GIL for 80-430 ms, and every search in flight waited,
which made the concurrency-16 p99 600 ms instead of 230 ms.

:class:`HeapKeeper` watches what the server holds for long (the serving snapshot's
version and generation, the suggestion index's) and, each time it changed and has
settled, runs one full collection and then :func:`gc.freeze`: every object alive then
moves to the permanent generation, which later passes skip. Frozen objects are still
freed by reference counting when the next swap drops them; only reference cycles among
them would outlive it, so each freeze starts with :func:`gc.unfreeze` and a full
collection that reclaims the previous snapshot's cycles. One freeze costs one full
pass (a few hundred milliseconds on Home Depot), once per swap instead of every few
seconds.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Hashable

__all__ = ["HeapKeeper", "freeze_long_lived"]

log = logging.getLogger(__name__)


def freeze_long_lived() -> tuple[int, float]:
    """Collect everything (previously frozen objects included), then freeze every object
    still alive. Returns the number of frozen objects and the milliseconds it took."""
    t = time.perf_counter()
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count(), (time.perf_counter() - t) * 1000


class HeapKeeper:
    """A daemon thread that calls :func:`freeze_long_lived` whenever ``state()`` (a
    hashable summary of what the server holds for long, ``None`` while nothing is
    loaded) has changed and stayed the same for one poll.

    ``poll_s`` is the polling interval. :meth:`close` stops the thread. The first freeze
    happens at the first poll that finds a settled, non-``None`` state.
    """

    def __init__(self, state: Callable[[], Hashable | None], *, poll_s: float = 1.0) -> None:
        if poll_s <= 0:
            raise ValueError(f"poll_s must be positive, got {poll_s}")
        self._state = state
        self._poll_s = poll_s
        self._stop = threading.Event()
        self.freezes = 0  # for tests and logs
        self._thread = threading.Thread(target=self._run, name="heap-keeper", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the thread and unfreeze: after the app, the process's collector works
        as it did before (tests and embedding programs run many apps in one process)."""
        self._stop.set()
        self._thread.join(timeout=5)
        if self.freezes:
            gc.unfreeze()

    def _run(self) -> None:
        frozen: Hashable | None = None
        seen: Hashable | None = None
        while not self._stop.wait(self._poll_s):
            try:
                now = self._state()
            except Exception:  # a half-built state: look again at the next poll
                log.debug("heap keeper: state not readable", exc_info=True)
                continue
            # Freeze a state seen twice in a row: a swap followed at once by the
            # suggestion index's build is one freeze, not two.
            if now is not None and now == seen and now != frozen:
                count, ms = freeze_long_lived()
                frozen = now
                self.freezes += 1
                log.info(
                    "heap: %d long-lived objects frozen after a full pass (%.0f ms)", count, ms
                )
            seen = now
