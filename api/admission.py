"""Admission control: bounded in-flight searches, a bounded waiting line, fast refusals.

A search costs CPU (the query tower, the reranker); on two cores, letting every
connection compute at once only makes every answer slow (the probe measured p50 515 ms
and p99 1 s at 64 clients, with no refusal). Instead:

- at most ``max_inflight`` searches compute at once, on this controller's own worker
  threads (not the server's shared thread pool, so health checks, metrics and admin
  calls never queue behind searches);
- at most ``max_queue`` more wait for a worker, each no longer than its deadline allows;
- any other search is refused *at once* with :class:`Overloaded` (the API answers 503
  with ``Retry-After``), which is cheap: no body parsing beyond validation, no model call;
- a waiting search whose deadline passes, or whose client hung up (its
  :class:`~retrieval.deadline.Deadline` was cancelled), leaves the line without computing.

Accepted searches therefore see at most ``max_inflight + max_queue`` searches ahead of
them, whatever the offered load: their latency is bounded, and the rest learn quickly
that they should retry.

All bookkeeping happens on the event loop thread (no locks needed); only the work
itself runs on the worker threads.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from starlette.types import ASGIApp, Receive, Scope, Send

from shopsearch.retrieval.deadline import Deadline
from shopsearch.retrieval.types import ShopsearchError

__all__ = [
    "AdmissionController",
    "AdmissionGate",
    "AdmissionStats",
    "Overloaded",
    "default_inflight",
]

T = TypeVar("T")

#: How often a waiting search looks at its deadline (a hung-up client leaves the line
#: within this long).
_POLL_S = 0.05


class Overloaded(ShopsearchError):
    """The search was not admitted: the line is full, or its deadline passed while waiting.

    ``retry_after_s`` is the hint sent in the ``Retry-After`` header.
    """

    def __init__(self, message: str, *, reason: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after_s = retry_after_s


@dataclass(frozen=True, slots=True)
class AdmissionStats:
    running: int
    waiting: int
    max_inflight: int
    max_queue: int


def default_inflight() -> int:
    """Two workers per CPU core. A search is not all computation: it waits for its
    query's turn in the encoder's micro-batch (one onnxruntime thread) and on
    Elasticsearch, and a second worker per core computes meanwhile. Measured on two
    cores over HTTP (README, "Threads and workers on two cores"): 4 workers answered
    109-118 QPS at 16 clients against 89-102 with 2, p99 187-191 ms against 214-235."""
    return 2 * (os.cpu_count() or 1)


class AdmissionController:
    """Runs callables on ``max_inflight`` worker threads with a line of ``max_queue``.

    It binds to the event loop of the first :meth:`run`; use it from that loop only.
    """

    def __init__(self, *, max_inflight: int, max_queue: int) -> None:
        if max_inflight < 1:
            raise ValueError(f"max_inflight must be >= 1, got {max_inflight}")
        if max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {max_queue}")
        self.max_inflight = max_inflight
        self.max_queue = max_queue
        self._executor = ThreadPoolExecutor(max_inflight, thread_name_prefix="search")
        # A slot is either free (counted here) or handed, first come first served, to the
        # oldest waiter's future by _release: no slot can be lost to a timed-out wait.
        self._free = max_inflight
        self._line: deque[asyncio.Future[None]] = deque()
        self._running = 0

    def full(self) -> bool:
        """True when a new search would be refused now (every worker busy, line full)."""
        return self._free == 0 and len(self._line) >= self.max_queue

    def refusal(self) -> Overloaded:
        """The error a search gets when :meth:`full`."""
        return Overloaded(
            f"server busy: {self._running} searches running and {len(self._line)} waiting "
            f"(limits {self.max_inflight} and {self.max_queue}); retry shortly",
            reason="queue_full",
        )

    def stats(self) -> AdmissionStats:
        return AdmissionStats(self._running, len(self._line), self.max_inflight, self.max_queue)

    async def run(self, fn: Callable[[], T], deadline: Deadline) -> T:
        """``fn()`` on a worker thread once one is free; raises :class:`Overloaded` when
        the line is full or ``deadline`` expires (or is cancelled) before a worker is.
        ``fn`` itself is expected to honour ``deadline`` between its stages."""
        if self.full():
            raise self.refusal()
        await self._acquire(deadline)
        self._running += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, fn)
        finally:
            self._running -= 1
            self._release()

    async def _acquire(self, deadline: Deadline) -> None:
        if self._free > 0 and not self._line:
            self._free -= 1
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._line.append(turn)
        try:
            while not turn.done():
                if deadline.expired():
                    raise Overloaded(
                        f"not started: {deadline.reason} passed while waiting for a worker "
                        f"({self._running} searches running); retry shortly",
                        reason="cancelled" if deadline.cancelled else "deadline",
                    )
                # asyncio.wait never cancels `turn`: a slot handed over is never lost.
                await asyncio.wait({turn}, timeout=min(_POLL_S, deadline.remaining_ms() / 1000))
        except BaseException:
            if turn.done():  # a slot was handed to us as we gave up: pass it on
                self._release()
            else:
                self._line.remove(turn)
                turn.cancel()
            raise

    def _release(self) -> None:
        while self._line:
            turn = self._line.popleft()
            if not turn.done():
                turn.set_result(None)  # the slot goes straight to the oldest waiter
                return
        self._free += 1


class AdmissionGate:
    """ASGI middleware: refuses a search at once, before routing and body parsing, while
    ``controller`` is :meth:`~AdmissionController.full`.

    Under a flood, refusals are most of the traffic; answering them here costs a few
    microseconds instead of FastAPI's validation path, so the event loop stays free to
    answer health checks and to hand out the next free worker.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        controller: AdmissionController,
        paths: tuple[str, ...],
        on_refuse: Callable[[Overloaded], None],
    ) -> None:
        self.app = app
        self.controller = controller
        self.paths = paths
        self.on_refuse = on_refuse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in self.paths and self.controller.full():
            refusal = self.controller.refusal()
            self.on_refuse(refusal)
            body = json.dumps({"detail": str(refusal)}).encode()
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(refusal.retry_after_s).encode()),
            ]
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)
