"""Rate-limited logging: at most one record per key per interval, with a count of the rest.

A failure that repeats on every request (a search backend down) would otherwise log one
line per request: thousands a minute, each paying the log handler's cost on the request
path. :class:`LogThrottle` logs the first occurrence of each key, then at most one per
``interval_s``, saying how many it suppressed since the last one it logged. Suppressed
records are only counted (metrics count every occurrence; the log tells that it happens).

Thread-safe; the clock is injectable for tests.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["LogThrottle"]


class LogThrottle:
    """Log through ``logger`` at most once per ``interval_s`` seconds per key.

    ``interval_s=0`` logs every call. At most ``max_keys`` keys are remembered (the
    least recently logged is forgotten first), so keys made from messages cannot grow
    memory without bound.
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float = 10.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 256,
    ) -> None:
        if interval_s < 0:
            raise ValueError(f"interval_s={interval_s} must be >= 0 seconds")
        if max_keys < 1:
            raise ValueError(f"max_keys={max_keys} must be >= 1")
        self.logger = logger
        self.interval_s = float(interval_s)
        self._clock = clock
        self._max_keys = max_keys
        self._lock = threading.Lock()
        # key -> (when it was last logged, occurrences suppressed since)
        self._seen: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def log(self, level: int, key: str, msg: str, *args: object) -> bool:
        """Log ``msg % args`` at ``level`` unless ``key`` was logged less than
        ``interval_s`` ago; returns whether it was logged. A logged record that follows
        suppressed ones ends with ``(N more like this in the last S s)``."""
        with self._lock:
            now = self._clock()
            last = self._seen.get(key)
            if last is not None and now - last[0] < self.interval_s:
                self._seen[key] = (last[0], last[1] + 1)
                return False
            suppressed, since = (last[1], now - last[0]) if last is not None else (0, 0.0)
            self._seen[key] = (now, 0)
            self._seen.move_to_end(key)
            while len(self._seen) > self._max_keys:
                self._seen.popitem(last=False)
        # The logging call runs outside the lock: handlers can be slow.
        if suppressed:
            msg = f"{msg} (%d more like this in the last %.0f s)"
            args = (*args, suppressed, since)
        self.logger.log(level, msg, *args)
        return True

    def warning(self, key: str, msg: str, *args: object) -> bool:
        """:meth:`log` at ``WARNING``."""
        return self.log(logging.WARNING, key, msg, *args)
