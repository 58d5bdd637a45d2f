"""HTTP load generator for ``GET /v1/search?q=...&size=10`` on a local server.

Each concurrency level runs ``concurrency`` worker threads sharing one httpx client
(``trust_env=False``: no proxy, and redirects are not followed) until ``max_requests``
requests were sent or ``max_seconds`` passed, whichever comes first. Queries are sent
in order, cycling. A 503 is a *refusal* by admission control (counted apart, with its
own latency: refusals must be fast); any other status >= 400 or a transport error
counts as an error; latency percentiles are over the accepted requests and QPS is
accepted requests per second of wall time. While a level runs, a prober in its own
process (:mod:`eval.probe`) asks ``/healthz`` and one search in turn every 50 ms: its
latencies are what a fresh client sees (health checks must not wait behind searches,
refusals must be quick), free of this process's own GIL contention. The generator runs in this Python process, so
numbers near its own limit (a few thousand requests/s) measure the client, not the server.

Only loopback targets are accepted (127.0.0.0/8, ``localhost``, ``::1``): the tool must
never load a machine it does not own.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
import numpy as np

__all__ = [
    "DEFAULT_CONCURRENCY",
    "LatencySummary",
    "LevelResult",
    "LoadTestError",
    "check_loopback",
    "free_port",
    "run_load_test",
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
    """Shared state of the worker threads of one level."""

    def __init__(self, max_requests: int, deadline: float) -> None:
        self.lock = threading.Lock()
        self.next_index = 0
        self.max_requests = max_requests
        self.deadline = deadline
        self.latencies_ms: list[float] = []
        self.rejected_ms: list[float] = []
        self.errors = 0
        self.error_examples: list[str] = []

    def claim(self) -> int | None:
        with self.lock:
            if self.next_index >= self.max_requests or time.perf_counter() >= self.deadline:
                return None
            self.next_index += 1
            return self.next_index - 1

    def record(self, latency_ms: float, error: str | None) -> None:
        with self.lock:
            if error is None:
                self.latencies_ms.append(latency_ms)
            elif error == _REFUSED:
                self.rejected_ms.append(latency_ms)
            else:
                self.errors += 1
                if len(self.error_examples) < 3:
                    self.error_examples.append(error)


def _one_request(client: httpx.Client, query: str, size: int) -> str | None:
    """Send one search; return None on success, else a short error description.

    A kept-alive connection that the server closed as this request went out (a reset or
    a closed stream before any answer) is retried once on a fresh connection, as
    browsers and urllib3 retry an idempotent GET; a second failure is an error."""
    for attempt in (1, 2):
        try:
            response = client.get(SEARCH_PATH, params={"q": query, "size": size})
            response.read()
            break
        except (httpx.ReadError, httpx.RemoteProtocolError) as error:
            if attempt == 2:
                return f"{type(error).__name__}: {error}"
        except httpx.HTTPError as error:
            return f"{type(error).__name__}: {error}"
    if response.status_code == 503:
        return _REFUSED
    if response.status_code >= 400:
        return f"HTTP {response.status_code}"
    return None


def _start_prober(base_url: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "shopsearch.eval.probe", base_url],
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


def _worker(client: httpx.Client, level: _Level, queries: Sequence[str], size: int) -> None:
    while (index := level.claim()) is not None:
        start = time.perf_counter()
        error = _one_request(client, queries[index % len(queries)], size)
        level.record((time.perf_counter() - start) * 1000.0, error)


def _run_level(
    client: httpx.Client,
    base_url: str,
    queries: Sequence[str],
    concurrency: int,
    max_requests: int,
    max_seconds: float,
    size: int,
) -> LevelResult:
    start = time.perf_counter()
    level = _Level(max_requests, start + max_seconds)
    threads = [
        threading.Thread(target=_worker, args=(client, level, queries, size), daemon=True)
        for _ in range(concurrency)
    ]
    prober = _start_prober(base_url)
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    duration = time.perf_counter() - start
    health_ms, probe_refused_ms = _stop_prober(prober)
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
) -> list[LevelResult]:
    """Load ``base_url`` (e.g. ``http://127.0.0.1:8000``) at each concurrency level.

    Before the first level, ``warmup_requests`` requests are sent one at a time and not
    counted. Each level stops after ``max_requests`` requests or ``max_seconds`` (a
    request in flight at the deadline still completes, within ``timeout_s``).

    Raises:
        LoadTestError: the host is not loopback, ``queries`` is empty, or a bound or
            level is not positive.
    """
    check_loopback(base_url)
    if not queries:
        raise LoadTestError("queries is empty; give at least one query to send")
    if not concurrency_levels or min(concurrency_levels) < 1:
        raise LoadTestError(f"concurrency levels must be >= 1, got {list(concurrency_levels)}")
    if max_requests < 1 or max_seconds <= 0 or timeout_s <= 0 or size < 1:
        raise LoadTestError(
            f"max_requests ({max_requests}), max_seconds ({max_seconds}), timeout_s "
            f"({timeout_s}) and size ({size}) must be positive"
        )
    limits = httpx.Limits(max_connections=max(concurrency_levels), max_keepalive_connections=None)
    results: list[LevelResult] = []
    with httpx.Client(
        base_url=base_url,
        timeout=timeout_s,
        limits=limits,
        trust_env=False,
        follow_redirects=False,
    ) as client:
        for i in range(warmup_requests):
            _one_request(client, queries[i % len(queries)], size)
        for concurrency in concurrency_levels:
            result = _run_level(
                client, base_url, queries, concurrency, max_requests, max_seconds, size
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
