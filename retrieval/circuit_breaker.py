"""A circuit breaker: stop calling a service that keeps failing, probe it, resume on health.

Used by the query path of the Elasticsearch lexical leg
(:class:`~retrieval.elasticsearch_index.ElasticsearchConnection`): during an outage every
query would otherwise pay the connect or read timeout (0.5 s on a frozen node) before the
service serves it from the dense leg. The states:

* ``closed``: calls go through. ``failures`` consecutive failures open the breaker.
* ``open``: :meth:`CircuitBreaker.allow` says no at once (the caller fails fast, with
  no network call), until ``reset_s`` seconds have passed since it opened.
* ``half_open``: the first call after that is let through as the one probe; the others
  still fail fast. A success closes the breaker; a failure opens it for another
  ``reset_s``. A probe whose outcome is never recorded is given up after ``reset_s``
  (then the next call probes), so a lost probe cannot keep the breaker shut.

Pure logic: no threads, no I/O. Thread-safe (one lock); the clock is injectable, so the
state machine is tested without sleeping::

    >>> now = [0.0]
    >>> breaker = CircuitBreaker(failures=2, reset_s=5.0, clock=lambda: now[0])
    >>> breaker.record_failure("refused"); breaker.record_failure("refused")
    >>> breaker.state, breaker.allow()
    ('open', False)
    >>> now[0] = 5.0
    >>> breaker.allow(), breaker.state, breaker.allow()
    (True, 'half_open', False)
    >>> breaker.record_success(); breaker.state
    'closed'
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

__all__ = ["BreakerState", "BreakerStatus", "CircuitBreaker"]

BreakerState = Literal["closed", "open", "half_open"]


@dataclass(frozen=True, slots=True)
class BreakerStatus:
    """What a breaker is doing, for health checks and metrics.

    ``consecutive_failures`` counts since the last success; ``opened`` and ``rejected``
    count since the breaker was made (times it opened, calls it failed fast);
    ``retry_in_s`` is the time until the next probe may go (0 when one may go now;
    ``None`` unless open); ``last_failure`` is the reason of the latest failure.
    """

    state: BreakerState
    consecutive_failures: int
    opened: int
    rejected: int
    retry_in_s: float | None
    last_failure: str | None


class CircuitBreaker:
    """Open after ``failures`` consecutive failures; probe once every ``reset_s`` seconds
    while open; close on the first success.

    The caller asks :meth:`allow` before each call, and reports its outcome with
    :meth:`record_success` or :meth:`record_failure` (only failures that say the service
    is unhealthy: a refused connection, a timeout, a 5xx; a request the service answered
    with a client error is a success here). ``clock`` returns seconds (monotonic).
    """

    def __init__(
        self,
        failures: int = 5,
        reset_s: float = 5.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failures < 1:
            raise ValueError(f"failures={failures} must be >= 1 (use no breaker to disable it)")
        if not reset_s > 0:
            raise ValueError(f"reset_s={reset_s} must be a positive number of seconds")
        self.failures = failures
        self.reset_s = float(reset_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._state: BreakerState = "closed"
        self._consecutive = 0
        self._opened_at = 0.0  # when it last opened (open) or the probe left (half_open)
        self._opened = 0
        self._rejected = 0
        self._last_failure: str | None = None

    def __repr__(self) -> str:
        return f"CircuitBreaker(failures={self.failures}, reset_s={self.reset_s}, state={self.state!r})"

    @property
    def state(self) -> BreakerState:
        """``"closed"``, ``"open"`` or ``"half_open"`` (a probe is out)."""
        with self._lock:
            return self._state

    def status(self) -> BreakerStatus:
        """The state and counters, read together."""
        with self._lock:
            retry_in = None
            if self._state == "open":
                retry_in = max(0.0, self._opened_at + self.reset_s - self._clock())
            return BreakerStatus(
                state=self._state,
                consecutive_failures=self._consecutive,
                opened=self._opened,
                rejected=self._rejected,
                retry_in_s=retry_in,
                last_failure=self._last_failure,
            )

    def allow(self) -> bool:
        """Whether a call may go now. ``False`` means fail fast without calling; ``True``
        obliges the caller to record the outcome (it may be the one probe)."""
        with self._lock:
            if self._state == "closed":
                return True
            now = self._clock()
            if now - self._opened_at >= self.reset_s:  # open long enough, or a lost probe
                self._state = "half_open"
                self._opened_at = now
                return True
            self._rejected += 1
            return False

    def record_success(self) -> None:
        """The call worked (the service answered): close the breaker."""
        with self._lock:
            self._state = "closed"
            self._consecutive = 0

    def record_failure(self, reason: str = "") -> None:
        """The call failed for a reason that says the service is unhealthy."""
        with self._lock:
            self._consecutive += 1
            self._last_failure = reason or None
            if self._state == "half_open" or (
                self._state == "closed" and self._consecutive >= self.failures
            ):
                self._state = "open"
                self._opened_at = self._clock()
                self._opened += 1
