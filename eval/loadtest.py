"""HTTP load generator for ``GET /v1/search?q=...&size=10`` (or any GET paths) on a local server.

Each concurrency level runs ``concurrency`` clients as coroutines on one event loop,
each with its own kept-alive HTTP/1.1 connection (h11 over asyncio streams: a small
fraction of a millisecond of CPU a request, where a threaded httpx client spent
milliseconds that the server on the same cores then lacked), until ``max_requests``
requests were sent or ``max_seconds`` passed, whichever comes first. Queries (or the
given paths) are sent in order, cycling. A 503 is a *refusal* by admission control (counted apart, with its
own latency: refusals must be fast); by default the refused client then waits the
``Retry-After`` the server sent, as a well-behaved front-end does (``honour_retry_after``
off: it asks again at once). Any other status >= 400, a transport error or a timeout
counts as an error; latency percentiles are over the accepted requests and QPS is
accepted requests per second of wall time. While a level runs, a prober in its own
process (:mod:`eval.probe`) asks ``/healthz`` and one search in turn every 200 ms: its
latencies are what a fresh client sees (health checks must not wait behind searches,
refusals must be quick), free of this process's own scheduling; ``probe=False`` leaves
it out where its requests would only add noise (one client timing single requests).

Only loopback targets are accepted (127.0.0.0/8, ``localhost``, ``::1``): the tool must
never load a machine it does not own.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

import h11
import numpy as np

__all__ = [
    "DEFAULT_CONCURRENCY",
    "LatencySummary",
    "LevelResult",
    "LoadTestError",
    "check_loopback",
    "free_port",
    "run_load_test",
    "search_targets",
    "summarize_latencies",
]

logger = logging.getLogger(__name__)

DEFAULT_CONCURRENCY: tuple[int, ...] = (1, 4, 16)
SEARCH_PATH = "/v1/search"
_REFUSED = "HTTP 503"


class LoadTestError(Exception):
    """The target is not allowed or the load test arguments are invalid."""


@dataclass(frozen=True)
class LatencySummary:
    """Percentiles (ms, linear interpolation) of latency samples; ``None`` without samples."""

    n: int
    mean_ms: float | None
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None


@dataclass(frozen=True)
class LevelResult:
    """One concurrency level: counts, wall time, QPS and latency of accepted requests,
    latency of refusals (503) and of ``/healthz`` during the level."""

    concurrency: int
    n_requests: int
    n_errors: int
    duration_s: float
    qps: float
    latency: LatencySummary
    n_rejected: int = 0
    #: Refusals as the load's own workers measured them (includes their GIL waits).
    rejected_latency: LatencySummary = LatencySummary(0, None, None, None, None)
    #: ``/healthz`` and refused searches as the separate prober measured them.
    health_latency: LatencySummary = LatencySummary(0, None, None, None, None)
    probe_refused_latency: LatencySummary = LatencySummary(0, None, None, None, None)


def summarize_latencies(samples_ms: Sequence[float]) -> LatencySummary:
    """Mean and p50/p95/p99 of ``samples_ms`` (also usable for in-process stage timings)."""
    if not samples_ms:
        return LatencySummary(0, None, None, None, None)
    values = np.asarray(samples_ms, dtype=np.float64)
    p50, p95, p99 = (float(v) for v in np.percentile(values, [50, 95, 99]))
    return LatencySummary(len(values), float(values.mean()), p50, p95, p99)


def check_loopback(base_url: str) -> None:
    """Accept only ``http(s)://`` URLs whose host is loopback (no DNS lookup is made).

    Raises:
        LoadTestError: another scheme, or a host other than 127.0.0.0/8, ``localhost``, ``::1``.
    """
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https"):
        raise LoadTestError(
            f"{base_url!r}: scheme must be http or https, e.g. http://127.0.0.1:8000"
        )
    host = (parts.hostname or "").rstrip(".").lower()
    allowed = host == "localhost"
    if not allowed:
        try:
            allowed = ipaddress.ip_address(host).is_loopback
        except ValueError:
            allowed = False
    if not allowed:
        raise LoadTestError(
            f"refusing to load {host or base_url!r}: the load test targets loopback only "
            "(127.0.0.0/8, localhost, ::1); start the server locally, e.g. http://127.0.0.1:8000"
        )


class _Level:
    """Shared state of the workers of one level (one event loop: no lock needed)."""

    def __init__(self, max_requests: int, deadline: float) -> None:
        self.next_index = 0
        self.max_requests = max_requests
        self.deadline = deadline
        self.latencies_ms: list[float] = []
        self.rejected_ms: list[float] = []
        self.errors = 0
        self.error_examples: list[str] = []

    def claim(self) -> int | None:
        if self.next_index >= self.max_requests or time.perf_counter() >= self.deadline:
            return None
        self.next_index += 1
        return self.next_index - 1

    def record(self, latency_ms: float, error: str | None) -> None:
        if error is None:
            self.latencies_ms.append(latency_ms)
        elif error == _REFUSED:
            self.rejected_ms.append(latency_ms)
        else:
            self.errors += 1
            if len(self.error_examples) < 3:
                self.error_examples.append(error)


class _Dropped(Exception):
    """The server closed or reset the connection before a whole answer came back."""


class _Connection:
    """One kept-alive HTTP/1.1 connection: h11's protocol state machine over asyncio
    streams. Why not httpx: a threaded httpx client spends milliseconds of CPU per
    request, and on a small machine the client's CPU is taken from the server it
    measures; this costs a fraction of that."""

    def __init__(self, host: str, port: int, tls: bool) -> None:
        self.host, self.port, self.tls = host, port, tls
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.http = h11.Connection(h11.CLIENT)

    async def get(self, target: str) -> tuple[int, int | None]:
        """Send ``GET target`` and read the whole answer: its status and its
        ``Retry-After`` seconds (``None`` when absent or not a number).

        Raises:
            _Dropped: the connection was closed or reset before the answer ended.
            OSError: the server cannot be reached.
        """
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(
                self.host, self.port, ssl=self.tls or None
            )
            self.http = h11.Connection(h11.CLIENT)
        assert self.reader is not None
        request = h11.Request(
            method="GET", target=target, headers=[("Host", f"{self.host}:{self.port}")]
        )
        try:
            self.writer.write(self.http.send(request) + (self.http.send(h11.EndOfMessage()) or b""))
            await self.writer.drain()
            status, retry_after = 0, None
            while True:
                event = self.http.next_event()
                if event is h11.NEED_DATA:
                    self.http.receive_data(await self.reader.read(65536))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                    retry_after = _retry_after(event.headers)
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    raise _Dropped("server closed the connection before answering")
        except (ConnectionError, h11.RemoteProtocolError) as exc:
            self.close()
            raise _Dropped(f"{type(exc).__name__}: {exc}") from exc
        if self.http.our_state is h11.MUST_CLOSE or self.http.their_state is h11.MUST_CLOSE:
            self.close()  # Connection: close from the server: the next request reconnects
        else:
            self.http.start_next_cycle()
        return status, retry_after

    def close(self) -> None:
        """Drop the connection (closing is how a client hangs up on a pending answer)."""
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def _retry_after(headers: Sequence[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name.lower() == b"retry-after":
            return int(value) if value.strip().isdigit() else None
    return None


def search_targets(queries: Sequence[str], size: int = 10) -> list[str]:
    """The ``/v1/search`` request target (path and query string) of each query."""
    return [f"{SEARCH_PATH}?{urlencode({'q': query, 'size': size})}" for query in queries]


async def _one_request(
    connection: _Connection, target: str, timeout_s: float
) -> tuple[str | None, int | None]:
    """Send one GET of ``target``; ``(None, _)`` on success, else a short error description, and
    the ``Retry-After`` seconds of a refusal.

    A kept-alive connection that the server closed as this request went out (a reset or
    a closed stream before any answer) is retried once on a fresh connection, as
    browsers and urllib3 retry an idempotent GET; a second failure is an error. A
    request past ``timeout_s`` hangs up (closes its connection) and is an error."""
    for attempt in (1, 2):
        try:
            status, retry_after = await asyncio.wait_for(connection.get(target), timeout_s)
            break
        except _Dropped as error:
            if attempt == 2:
                return f"ReadError: {error}", None
        except TimeoutError:
            connection.close()
            return f"ReadTimeout: no answer within {timeout_s} s", None
        except OSError as error:
            connection.close()
            return f"ConnectError: {error}", None
    if status == 503:
        return _REFUSED, retry_after
    if status >= 400:
        return f"HTTP {status}", None
    return None, None


def _start_prober(base_url: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        # Every 200 ms, not faster: the prober's searches are served too, and at 20 a
        # second they took a quarter of a two-core machine from the load it watches.
        [sys.executable, "-m", "shopsearch.eval.probe", base_url, "--interval-s", "0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def _stop_prober(prober: subprocess.Popen[str]) -> tuple[list[float], list[float]]:
    """Stop the prober; its ``/healthz`` latencies and those of its refused searches."""
    prober.terminate()
    out, _ = prober.communicate(timeout=30)
    health: list[float] = []
    refused: list[float] = []
    for line in out.splitlines():
        parts = line.split()
        if parts[:1] == ["healthz"]:
            health.append(float(parts[1]))
        elif parts[:2] == ["search", "503"]:
            refused.append(float(parts[2]))
    return health, refused


@dataclass(frozen=True)
class _Target:
    host: str
    port: int
    tls: bool


def _target(base_url: str) -> _Target:
    parts = urlsplit(base_url)
    tls = parts.scheme == "https"
    return _Target(parts.hostname or "127.0.0.1", parts.port or (443 if tls else 80), tls)


async def _worker(
    target: _Target,
    level: _Level,
    targets: Sequence[str],
    timeout_s: float,
    honour_retry_after: bool,
) -> None:
    connection = _Connection(target.host, target.port, target.tls)
    try:
        while (index := level.claim()) is not None:
            start = time.perf_counter()
            error, retry_after = await _one_request(
                connection, targets[index % len(targets)], timeout_s
            )
            level.record((time.perf_counter() - start) * 1000.0, error)
            if honour_retry_after and retry_after:
                # A polite client waits as told (never past the level's end).
                pause = min(float(retry_after), level.deadline - time.perf_counter())
                if pause > 0:
                    await asyncio.sleep(pause)
    finally:
        connection.close()


async def _run_workers(
    target: _Target,
    level: _Level,
    targets: Sequence[str],
    concurrency: int,
    timeout_s: float,
    honour_retry_after: bool,
) -> None:
    await asyncio.gather(
        *(
            _worker(target, level, targets, timeout_s, honour_retry_after)
            for _ in range(concurrency)
        )
    )


def _run_level(
    base_url: str,
    targets: Sequence[str],
    concurrency: int,
    max_requests: int,
    max_seconds: float,
    timeout_s: float,
    honour_retry_after: bool,
    probe: bool,
) -> LevelResult:
    prober = _start_prober(base_url) if probe else None
    start = time.perf_counter()
    level = _Level(max_requests, start + max_seconds)
    asyncio.run(
        _run_workers(
            _target(base_url),
            level,
            targets,
            concurrency,
            timeout_s,
            honour_retry_after,
        )
    )
    duration = time.perf_counter() - start
    health_ms, probe_refused_ms = _stop_prober(prober) if prober is not None else ([], [])
    if level.errors:
        logger.warning(
            "concurrency %d: %d errors, e.g. %s", concurrency, level.errors, level.error_examples
        )
    ok = len(level.latencies_ms)
    rejected = len(level.rejected_ms)
    return LevelResult(
        concurrency=concurrency,
        n_requests=ok + rejected + level.errors,
        n_errors=level.errors,
        duration_s=duration,
        qps=ok / duration if duration > 0 else 0.0,
        latency=summarize_latencies(level.latencies_ms),
        n_rejected=rejected,
        rejected_latency=summarize_latencies(level.rejected_ms),
        health_latency=summarize_latencies(health_ms),
        probe_refused_latency=summarize_latencies(probe_refused_ms),
    )


def run_load_test(
    base_url: str,
    queries: Sequence[str],
    *,
    concurrency_levels: Sequence[int] = DEFAULT_CONCURRENCY,
    max_requests: int = 2000,
    max_seconds: float = 30.0,
    size: int = 10,
    warmup_requests: int = 10,
    timeout_s: float = 10.0,
    honour_retry_after: bool = True,
    paths: Sequence[str] | None = None,
    probe: bool = True,
) -> list[LevelResult]:
    """Load ``base_url`` (e.g. ``http://127.0.0.1:8000``) at each concurrency level.

    The requests are searches for ``queries`` (``size`` hits each), or, when ``paths`` is
    given, GETs of those request targets (path and query string, e.g.
    ``/v1/recommend/for-you?user=u1``; ``queries`` and ``size`` are then unused). A
    status below 400 is a success, 503 a refusal, any other an error. ``probe`` runs the
    prober beside each level (see the module doc).

    Before the first level, ``warmup_requests`` requests are sent one at a time and not
    counted. Each level stops after ``max_requests`` requests or ``max_seconds`` (a
    request in flight at the deadline still completes, within ``timeout_s``). With
    ``honour_retry_after`` a refused client waits the ``Retry-After`` the server sent
    before its next request, as a well-behaved shop front-end does; without it, it asks
    again at once (a retry storm: the refusals then take CPU from the admitted searches).

    Must not be called from a running event loop (it runs its own).

    Raises:
        LoadTestError: the host is not loopback, ``queries`` (or ``paths``) is empty or a
            path does not start with ``/``, or a bound or level is not positive.
    """
    check_loopback(base_url)
    if paths is None:
        if not queries:
            raise LoadTestError("queries is empty; give at least one query to send")
        targets = search_targets(queries, size)
    else:
        if not paths or any(not p.startswith("/") for p in paths):
            raise LoadTestError(
                "paths must be a non-empty list of request targets starting with '/', "
                f"e.g. /v1/recommend/for-you?user=u1; got {list(paths)[:3]}"
            )
        targets = list(paths)
    if not concurrency_levels or min(concurrency_levels) < 1:
        raise LoadTestError(f"concurrency levels must be >= 1, got {list(concurrency_levels)}")
    if max_requests < 1 or max_seconds <= 0 or timeout_s <= 0 or size < 1:
        raise LoadTestError(
            f"max_requests ({max_requests}), max_seconds ({max_seconds}), timeout_s "
            f"({timeout_s}) and size ({size}) must be positive"
        )
    if warmup_requests > 0:
        warmup = _Level(warmup_requests, time.perf_counter() + 60.0 + timeout_s * warmup_requests)
        asyncio.run(_run_workers(_target(base_url), warmup, targets, 1, timeout_s, False))
    results: list[LevelResult] = []
    for concurrency in concurrency_levels:
        result = _run_level(
            base_url,
            targets,
            concurrency,
            max_requests,
            max_seconds,
            timeout_s,
            honour_retry_after,
            probe,
        )
        logger.info(
            "concurrency %d: %d requests in %.1f s, %.1f QPS, p50 %s ms, %d refused, %d errors",
            concurrency,
            result.n_requests,
            result.duration_s,
            result.qps,
            result.latency.p50_ms,
            result.n_rejected,
            result.n_errors,
        )
        results.append(result)
    return results


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the OS picks it; another process may
    still take it before the caller binds)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
