"""A request's deadline: the time budget its stages share, and a way to stop them early.

The service checks the deadline *between* stages (encode, dense, lexical, widening,
rerank): a stage that has started runs to its end, which bounds the overshoot by the
longest stage (the reranker, which is given only the depth that fits, see
:meth:`Deadline.remaining_ms`). A deadline can also be cancelled from another thread,
for example when the client hung up: the next check then stops the work, so an
abandoned request does not keep a worker busy.

    deadline = Deadline.after_ms(300)
    if deadline.expired():   # past its budget, or cancelled
        ...
"""

from __future__ import annotations

import threading
import time

__all__ = ["Deadline"]


class Deadline:
    """An absolute point on the ``time.monotonic()`` clock, plus a cancel flag.

    Thread-safe: ``cancel`` may be called from any thread while a worker checks
    ``expired``. ``budget_ms`` is the budget the deadline was made with (for messages).
    """

    __slots__ = ("_cancelled", "_reason", "budget_ms", "expires_at")

    def __init__(self, expires_at: float, budget_ms: float) -> None:
        self.expires_at = expires_at
        self.budget_ms = budget_ms
        self._cancelled = threading.Event()
        self._reason = ""

    @classmethod
    def after_ms(cls, budget_ms: float, *, start: float | None = None) -> Deadline:
        """A deadline ``budget_ms`` after ``start`` (default: now, monotonic seconds)."""
        begin = time.monotonic() if start is None else start
        return cls(begin + budget_ms / 1000.0, budget_ms)

    @classmethod
    def none(cls) -> Deadline:
        """A deadline that never expires on its own (it can still be cancelled)."""
        return cls(float("inf"), float("inf"))

    def remaining_ms(self) -> float:
        """Milliseconds left (0 when expired or cancelled; ``inf`` for :meth:`none`)."""
        if self._cancelled.is_set():
            return 0.0
        return max(0.0, (self.expires_at - time.monotonic()) * 1000.0)

    def expired(self) -> bool:
        """True once the budget is spent or the deadline was cancelled."""
        return self._cancelled.is_set() or time.monotonic() >= self.expires_at

    def cancel(self, reason: str) -> None:
        """Stop the work at its next check (e.g. ``"client disconnected"``)."""
        self._reason = reason
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def reason(self) -> str:
        """Why the work stopped: the cancel reason, else the budget that ran out."""
        if self._cancelled.is_set():
            return self._reason
        return f"deadline of {self.budget_ms:g} ms"
