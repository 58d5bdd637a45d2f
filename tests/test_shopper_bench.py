"""The shopper latency bench against a real `shopsearch demo` server over loopback: every
endpoint is timed without errors, the items it times exist, the shopper's search really
is personalised, and bad targets get clear errors. (The figures themselves are the
README's, from a quiet machine; nothing here bounds a latency.)"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest
from conftest import wait_for_server

from shopsearch.eval.loadtest import LoadTestError, free_port
from shopsearch.eval.shopper_bench import (
    DEMO_USERS,
    ENDPOINTS,
    ShopperBenchError,
    run_shopper_bench,
    shopper_paths,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("shopper-bench")
    port = free_port()
    log = (root / "demo.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shopsearch.api.cli",
            "demo",
            "--index-dir",
            str(root / "index"),
            "--port",
            str(port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={
            **os.environ,
            "SHOPSEARCH_EVENTS_DB": str(root / "events.db"),
            "SHOPSEARCH_MODELS_DIR": str(root / "models"),
            "SHOPSEARCH_RESULT_CACHE_SIZE": "0",
            "SHOPSEARCH_QUERY_CACHE_SIZE": "0",
        },
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_server(f"{url}/readyz", proc, log.name, timeout_s=300)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_every_shopper_endpoint_is_timed_on_the_demo(demo_url: str) -> None:
    result = run_shopper_bench(demo_url, requests=15, rounds=2)
    assert [e.endpoint for e in result.endpoints] == list(ENDPOINTS)
    for e in result.endpoints:
        assert e.errors == 0, e
        assert len(e.p50_ms) == 2 and all(
            0 < v <= p99 for v, p99 in zip(e.p50_ms, e.p99_ms, strict=True)
        )
    assert result.users == list(DEMO_USERS)
    # The similar rows time products of this catalog, found in the for-you answers.
    first = httpx.get(f"{demo_url}/v1/recommend/similar/{result.items[0]}", timeout=10)
    assert first.status_code == 200 and first.json()["hits"]
    assert result.queries and all(1 <= len(q.split()) <= 2 for q in result.queries)
    by_name = {e.endpoint: e for e in result.endpoints}
    # The overhead pairs each round's two search rows, measured back to back.
    diffs = [
        a - b
        for a, b in zip(by_name["search_shopper"].p50_ms, by_name["search"].p50_ms, strict=True)
    ]
    assert result.shopper_overhead_p50_ms == pytest.approx(statistics.median(diffs))


def test_a_shopper_without_events_is_refused_with_the_fix(demo_url: str) -> None:
    with pytest.raises(ShopperBenchError, match=r"personalized='no history'.*--users"):
        run_shopper_bench(demo_url, ["nobody-with-events"], requests=5, rounds=1)
    with pytest.raises(ShopperBenchError, match="users is empty"):
        run_shopper_bench(demo_url, [], requests=5, rounds=1)
    with pytest.raises(ShopperBenchError, match="must be >= 1"):
        run_shopper_bench(demo_url, requests=0)
    with pytest.raises(LoadTestError):
        run_shopper_bench("http://example.com:8000")


def test_paths_pair_each_query_with_a_shopper_and_quote_ids() -> None:
    paths = shopper_paths(["u1", "u2"], ["A/1"], ["red drill", "gloves", "saw"], size=5)
    assert paths["similar"] == ["/v1/recommend/similar/A%2F1?size=5"]
    assert paths["search"][0] == "/v1/search?q=red+drill&size=5"
    assert [p.rsplit("user=", 1)[1] for p in paths["search_shopper"]] == ["u1", "u2", "u1"]
    assert paths["for_you"] == [
        "/v1/recommend/for-you?user=u1&size=5",
        "/v1/recommend/for-you?user=u2&size=5",
    ]
