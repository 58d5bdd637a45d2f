"""Overload over loopback HTTP: a real server on the sample catalog, 16 then 64 clients.

What must hold (the hardening issue): accepted searches keep a bounded p99 when the
offered load quadruples, the rest are refused quickly with 503 + Retry-After, health
checks do not wait behind searches, and a client that hangs up stops its work. The
bounds asserted here are looser than the ones `shopsearch bench --http` reports
(README), because this machine is shared and noisy; the loop is bounded in time.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shopsearch.eval.loadtest import free_port, run_load_test
from tests.test_http_e2e import wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base_url(sample_index: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log_path = tmp_path_factory.mktemp("overload") / "server.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [
                *(
                    sys.executable,
                    "-m",
                    "shopsearch.api.cli",
                    "serve",
                    "--index-dir",
                    str(sample_index),
                ),
                *("--port", str(port), "--reload-interval", "0"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={
                **os.environ,
                "SHOPSEARCH_QUERY_CACHE_SIZE": "0",  # every request really encodes
                "SHOPSEARCH_RESULT_CACHE_SIZE": "0",  # and computes (the load cycles queries)
                "SHOPSEARCH_MAX_INFLIGHT": "2",
                "SHOPSEARCH_MAX_QUEUE": "8",
                "SHOPSEARCH_USER_KEY": "overload-test-key-0123456789",
            },
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until(lambda: httpx.get(f"{url}/readyz").status_code == 200, 180, "readiness")
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def _queries(sample_products) -> list[str]:  # type: ignore[no-untyped-def]
    # Distinct real queries: two words of each title, so no answer is cached anywhere.
    return [" ".join(p.title.split()[:2]) + f" {i}" for i, p in enumerate(sample_products)]


def test_overload_is_refused_fast_and_accepted_latency_stays_bounded(
    base_url: str, sample_products
) -> None:  # type: ignore[no-untyped-def]
    queries = _queries(sample_products)
    # Bounded: a fixed line ahead of every accepted search, whatever the load. The pair
    # of levels runs a second time when the first misses the bound: another tenant of
    # this shared machine can stall one 6-second window (seen once in ~10 CI runs: p99
    # 456 ms against 3 x 133), while an unbounded line misses it every time.
    for attempt in range(1, 3):  # noqa: B007 (reported by the assertion below)
        low, high = run_load_test(
            base_url,
            queries,
            concurrency_levels=(16, 64),
            max_requests=3000,
            max_seconds=8.0,
            warmup_requests=5,
        )
        for level in (low, high):
            assert level.n_errors == 0, level  # only 200s and 503s
            assert level.latency.n > 20, level
        assert high.n_rejected > 0  # 64 clients against 2 workers + 8 places in line
        assert high.latency.p99_ms is not None and low.latency.p99_ms is not None
        if high.latency.p99_ms <= 3 * low.latency.p99_ms:
            break
    assert high.latency.p99_ms is not None and low.latency.p99_ms is not None
    assert high.latency.p99_ms <= 3 * low.latency.p99_ms, (attempt, low.latency, high.latency)
    # As a separate client process sees them (eval/probe.py): quick refusals, quick health.
    refused, health = high.probe_refused_latency, high.health_latency
    # How many of the prober's ~20 searches a level are refused depends on how busy the
    # machine is (5 of them in one CI run); a handful is enough to see they are quick.
    assert refused.n >= 3 and refused.p50_ms is not None and refused.p50_ms < 50, refused
    assert health.n > 10 and health.p50_ms is not None and health.p50_ms < 50, health
    assert health.p99_ms is not None and health.p99_ms < 250, health
    metrics = httpx.get(f"{base_url}/metrics").text
    assert 'shopsearch_rejected_total{reason="queue_full"}' in metrics


def test_a_client_that_hangs_up_stops_its_search(base_url: str, sample_products) -> None:  # type: ignore[no-untyped-def]
    """Clients that give up after 20 ms while the line is full: their searches leave the
    line (counted as abandoned) instead of being computed later for nobody."""
    queries = _queries(sample_products)
    before = _abandoned(base_url)
    run_load_test(
        base_url,
        queries,
        concurrency_levels=(32,),
        max_requests=400,
        max_seconds=5.0,
        warmup_requests=0,
        timeout_s=0.02,
    )
    wait_until(lambda: _abandoned(base_url) > before, 10, "abandoned searches to be counted")


def _abandoned(base_url: str) -> float:
    for line in httpx.get(f"{base_url}/metrics").text.splitlines():
        if line.startswith("shopsearch_abandoned_total "):
            return float(line.split()[1])
    return 0.0
