"""HTTP load generator against a tiny local server; loopback-only guard."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar
from urllib.parse import parse_qs, urlsplit

import pytest

from shopsearch.eval.loadtest import (
    LoadTestError,
    check_loopback,
    free_port,
    run_load_test,
    summarize_latencies,
)


class SearchHandler(BaseHTTPRequestHandler):
    """``/v1/search``: 200 with JSON; 500 for q=boom; 503 with ``Retry-After: 1`` for
    q=busy; q=slow sleeps 50 ms; 404 elsewhere."""

    seen: ClassVar[list[tuple[str, str]]] = []

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        params = parse_qs(url.query)
        query, size = params.get("q", [""])[0], params.get("size", [""])[0]
        SearchHandler.seen.append((query, size))
        if url.path != "/v1/search":
            status, body = 404, b"{}"
        elif query == "boom":
            status, body = 500, b'{"error": "boom"}'
        elif query == "busy":
            status, body = 503, b'{"detail": "busy"}'
        else:
            if query == "slow":
                time.sleep(0.05)
            status, body = 200, json.dumps({"hits": [], "q": query}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        if status == 503:
            self.send_header("Retry-After", "1")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass


@pytest.fixture()
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), SearchHandler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    SearchHandler.seen = []
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_levels_counts_and_errors(server: str) -> None:
    results = run_load_test(
        server,
        ["drill", "boom", "toliet seat"],
        concurrency_levels=(1, 4),
        max_requests=30,
        max_seconds=10.0,
        warmup_requests=2,
    )
    assert [r.concurrency for r in results] == [1, 4]
    for result in results:
        assert result.n_requests == 30
        assert result.n_errors == 10  # every third query is "boom"
        assert result.latency.n == 20 and result.qps > 0
        p50, p95, p99 = result.latency.p50_ms, result.latency.p95_ms, result.latency.p99_ms
        assert p50 is not None and p95 is not None and p99 is not None
        assert p50 <= p95 <= p99
    # The prober's own requests reach the same server: its "/healthz" (no query) and its
    # searches ("probe N"). Only the load's are counted here.
    sent = [seen for seen in SearchHandler.seen if seen[0] and not seen[0].startswith("probe ")]
    assert len(sent) == 2 + 30 + 30
    assert ("toliet seat", "10") in sent


def test_time_bound_stops_a_level(server: str) -> None:
    start = time.perf_counter()
    (result,) = run_load_test(
        server,
        ["slow"],
        concurrency_levels=(2,),
        max_requests=10_000,
        max_seconds=0.3,
        warmup_requests=0,
    )
    assert time.perf_counter() - start < 2.0
    assert 2 <= result.n_requests < 40 and result.n_errors == 0
    assert result.latency.p50_ms is not None and result.latency.p50_ms >= 50


@pytest.mark.parametrize("honour", [True, False])
def test_refused_clients_wait_as_told_unless_told_not_to(server: str, honour: bool) -> None:
    (result,) = run_load_test(
        server,
        ["busy"],
        concurrency_levels=(2,),
        max_requests=10_000,
        max_seconds=0.5,
        warmup_requests=0,
        honour_retry_after=honour,
    )
    assert result.n_errors == 0 and result.latency.n == 0
    if honour:  # one refusal each, then a 1 s wait that outlasts the level
        assert result.n_rejected == 2
    else:  # asking again at once
        assert result.n_rejected > 10
    assert result.rejected_latency.p50_ms is not None


def test_connection_errors_are_counted() -> None:
    (result,) = run_load_test(
        f"http://127.0.0.1:{free_port()}",
        ["x"],
        concurrency_levels=(1,),
        max_requests=3,
        warmup_requests=0,
        timeout_s=1.0,
    )
    assert (result.n_requests, result.n_errors, result.latency.n) == (3, 3, 0)
    assert result.latency.p50_ms is None and result.qps == 0.0


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:8000",
        "http://127.0.0.1:8000",
        "http://127.1.2.3",
        "http://[::1]:8000/",
        "https://LOCALHOST",
    ],
)
def test_loopback_accepted(url: str) -> None:
    check_loopback(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com",
        "http://10.0.0.1:8000",
        "http://192.168.1.5",
        "http://0.0.0.0:8000",
        "http://[2001:db8::1]",
        "http://localhost.example.com",
        "ftp://127.0.0.1",
        "127.0.0.1:8000",
    ],
)
def test_non_loopback_refused(url: str) -> None:
    with pytest.raises(LoadTestError, match=r"loopback only|scheme must be"):
        run_load_test(url, ["q"], max_requests=1)


def test_invalid_arguments(server: str) -> None:
    with pytest.raises(LoadTestError, match="queries is empty"):
        run_load_test(server, [])
    with pytest.raises(LoadTestError, match=">= 1"):
        run_load_test(server, ["q"], concurrency_levels=(0,))
    with pytest.raises(LoadTestError, match="must be positive"):
        run_load_test(server, ["q"], max_seconds=0)
    with pytest.raises(LoadTestError, match="starting with '/'"):
        run_load_test(server, [], paths=["v1/search?q=a"])
    with pytest.raises(LoadTestError, match="starting with '/'"):
        run_load_test(server, ["q"], paths=[])


def test_paths_are_sent_in_turn_instead_of_searches(server: str) -> None:
    """Given ``paths``, those targets are requested as they are (queries unused); a path
    the server does not know is an error, as any status >= 400 but 503 is."""
    (result,) = run_load_test(
        server,
        ["unused"],
        paths=["/v1/search?q=one&size=3", "/v1/search?q=two&size=4", "/elsewhere"],
        concurrency_levels=(1,),
        max_requests=6,
        warmup_requests=0,
        probe=False,
    )
    assert (result.n_requests, result.n_errors, result.latency.n) == (6, 2, 4)
    assert SearchHandler.seen == [("one", "3"), ("two", "4"), ("", "")] * 2
    assert result.health_latency.n == 0  # no prober ran


def test_summarize_latencies() -> None:
    summary = summarize_latencies([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (summary.n, summary.mean_ms, summary.p50_ms) == (5, 3.0, 3.0)
    assert summary.p95_ms == pytest.approx(4.8) and summary.p99_ms == pytest.approx(4.96)
    assert summarize_latencies([]).p95_ms is None
