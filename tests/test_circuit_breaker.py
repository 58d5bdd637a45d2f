"""The circuit breaker of the Elasticsearch query path and the rate-limited failure log.

The state machine and the log throttle are pure logic, tested with an injected clock.
Against the network: a closed port and a socket that accepts and never answers (a frozen
node) show that after N failures queries fail fast without a request; the real test node
(``elasticsearch`` mark, ``SHOPSEARCH_ES_URL``) shows that the breaker closes again once
a probe finds the cluster healthy.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import ES_URL

from shopsearch.retrieval.circuit_breaker import CircuitBreaker
from shopsearch.retrieval.elasticsearch_index import ElasticsearchConnection
from shopsearch.retrieval.lexical_index import LexicalIndexError
from shopsearch.retrieval.log_throttle import LogThrottle
from shopsearch.retrieval.types import Product


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# -- the state machine ---------------------------------------------------------------------


def test_opens_after_n_consecutive_failures_only() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failures=3, reset_s=10.0, clock=clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure("refused")
    breaker.record_success()  # a success in between: the count starts again
    for _ in range(2):
        breaker.record_failure("refused")
    assert breaker.state == "closed" and breaker.allow()
    breaker.record_failure("timed out")
    status = breaker.status()
    assert (status.state, status.consecutive_failures, status.opened) == ("open", 3, 1)
    assert status.last_failure == "timed out" and status.retry_in_s == 10.0


def test_open_fails_fast_then_lets_one_probe_through_per_interval() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failures=1, reset_s=5.0, clock=clock)
    breaker.record_failure("refused")
    clock.advance(4.9)
    assert [breaker.allow() for _ in range(3)] == [False, False, False]
    assert breaker.status().rejected == 3
    assert breaker.status().retry_in_s == pytest.approx(0.1)
    clock.advance(0.1)
    assert breaker.allow()  # the probe
    assert breaker.state == "half_open"
    assert not breaker.allow()  # the others still fail fast while it is out
    breaker.record_failure("refused")  # the probe failed: another full interval
    assert breaker.state == "open" and breaker.status().opened == 2
    clock.advance(4.0)
    assert not breaker.allow()
    clock.advance(1.0)
    assert breaker.allow()
    breaker.record_success()  # the probe found it healthy
    status = breaker.status()
    assert (status.state, status.consecutive_failures, status.retry_in_s) == ("closed", 0, None)
    assert all(breaker.allow() for _ in range(10))


def test_a_probe_whose_outcome_is_lost_is_given_up_after_the_interval() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failures=1, reset_s=5.0, clock=clock)
    breaker.record_failure()
    clock.advance(5.0)
    assert breaker.allow()  # the probe never reports back
    clock.advance(4.0)
    assert not breaker.allow()
    clock.advance(1.0)
    assert breaker.allow()  # a new probe


def test_late_answers_of_calls_made_before_it_opened() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failures=2, reset_s=5.0, clock=clock)
    breaker.record_failure()
    breaker.record_failure()
    clock.advance(3.0)
    breaker.record_failure()  # a slow call that started before: does not extend the wait
    clock.advance(2.0)
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == "closed"


def test_one_probe_among_many_threads() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failures=1, reset_s=1.0, clock=clock)
    breaker.record_failure()
    clock.advance(1.0)
    start = threading.Barrier(16)
    allowed: list[bool] = []

    def ask() -> None:
        start.wait()
        allowed.append(breaker.allow())

    threads = [threading.Thread(target=ask) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(allowed) == [False] * 15 + [True]


@pytest.mark.parametrize(("failures", "reset_s"), [(0, 5.0), (3, 0.0), (3, -1.0)])
def test_bad_settings_are_refused(failures: int, reset_s: float) -> None:
    with pytest.raises(ValueError, match=r"failures=|reset_s="):
        CircuitBreaker(failures=failures, reset_s=reset_s)


# -- rate-limited logging ------------------------------------------------------------------


def test_log_throttle_logs_once_per_interval_per_key_with_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    logger = logging.getLogger("shopsearch.test.throttle")
    throttle = LogThrottle(logger, interval_s=10.0, clock=clock)
    caplog.set_level(logging.WARNING, logger=logger.name)
    logged = []
    for _ in range(100):  # 100 failures in 5 s: one line
        logged.append(throttle.warning("es down", "lexical search failed: %s", "refused"))
        clock.advance(0.05)
    assert logged == [True] + [False] * 99
    assert throttle.warning("other", "another reason")  # keys are independent
    clock.advance(5.4)  # 10.4 s after the first
    assert throttle.warning("es down", "lexical search failed: %s", "refused")
    assert [r.getMessage() for r in caplog.records] == [
        "lexical search failed: refused",
        "another reason",
        "lexical search failed: refused (99 more like this in the last 10 s)",
    ]
    assert all(r.levelno == logging.WARNING for r in caplog.records)


def test_log_throttle_zero_interval_logs_everything_and_keys_are_bounded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    logger = logging.getLogger("shopsearch.test.throttle0")
    caplog.set_level(logging.INFO, logger=logger.name)
    every = LogThrottle(logger, interval_s=0.0, clock=clock)
    assert all(every.log(logging.INFO, "k", "again") for _ in range(5))
    assert len(caplog.records) == 5
    few = LogThrottle(logger, interval_s=60.0, clock=clock, max_keys=2)
    assert few.warning("a", "a") and few.warning("b", "b") and few.warning("c", "c")
    assert few.warning("a", "a")  # "a" was forgotten to keep two keys: logged again
    assert not few.warning("c", "c")


# -- against the network ---------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_closed_port_opens_the_breaker_and_queries_then_fail_fast() -> None:
    breaker = CircuitBreaker(failures=3, reset_s=60.0)
    url = f"http://127.0.0.1:{_closed_port()}"
    with ElasticsearchConnection(url, timeout=0.5, breaker=breaker) as es:
        # Two handles (two snapshots' indices) share the connection's breaker.
        first, second = es.index("shopsearch-a"), es.index("shopsearch-b")
        for index in (first, second, first):
            with pytest.raises(LexicalIndexError, match="cannot connect"):
                index.search("drill", 10)
        assert es.breaker is breaker and breaker.state == "open"
        for index in (first, second):
            started = time.perf_counter()
            with pytest.raises(LexicalIndexError, match="circuit breaker is open") as caught:
                index.search("drill", 10)
            # Far under the 0.5 s timeout; the rejected count below shows nothing was sent.
            assert time.perf_counter() - started < 0.25
        with pytest.raises(LexicalIndexError, match="circuit breaker is open"):
            second.facets("drill")
        assert "the last: cannot connect" in str(caught.value)
        assert breaker.status().rejected == 3


def test_a_frozen_node_costs_the_timeout_n_times_then_nothing() -> None:
    """A socket that accepts connections and never answers: each query waits for the
    timeout until the breaker opens; then a query fails in far less than the timeout."""
    timeout = 0.3
    with socket.socket() as frozen:
        frozen.bind(("127.0.0.1", 0))
        frozen.listen(64)
        url = f"http://127.0.0.1:{frozen.getsockname()[1]}"
        breaker = CircuitBreaker(failures=2, reset_s=60.0)
        with ElasticsearchConnection(url, timeout=timeout, breaker=breaker) as es:
            index = es.index("shopsearch")
            for _ in range(2):
                started = time.perf_counter()
                with pytest.raises(LexicalIndexError, match="timed out"):
                    index.search("drill", 10)
                assert time.perf_counter() - started >= timeout * 0.9
            started = time.perf_counter()
            with pytest.raises(LexicalIndexError, match="circuit breaker is open"):
                index.search("drill", 10)
            fast = time.perf_counter() - started
    # Half the timeout, not less: a shared machine can stall any call for tens of ms.
    assert fast < timeout / 2, f"the open breaker took {fast * 1000:.1f} ms"


# -- the real node: closes again on health ---------------------------------------------------


@pytest.fixture
def es_products_index(es_client: Any) -> Iterator[str]:
    from shopsearch.retrieval.elasticsearch_index import ElasticsearchIndex

    name = f"test-breaker-{uuid.uuid4().hex[:10]}"
    index = ElasticsearchIndex(name, client=es_client, timeout=5.0)
    index.build([Product(id=f"w-{i}", title=f"Widget number {i}") for i in range(5)])
    yield name
    es_client.indices.delete(index=name)


@pytest.mark.elasticsearch
def test_the_breaker_closes_when_a_probe_finds_the_cluster_healthy(
    es_products_index: str,
) -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failures=2, reset_s=5.0, clock=clock)
    with ElasticsearchConnection(ES_URL, timeout=5.0, breaker=breaker) as es:
        index = es.index(es_products_index)
        assert len(index.search("widget", 3)) == 3
        # Open it as an outage would have (the closed-port test opens it by real failures).
        breaker.record_failure("refused")
        breaker.record_failure("refused")
        with pytest.raises(LexicalIndexError, match="circuit breaker is open"):
            index.search("widget", 3)  # the node is fine, but no request is sent
        clock.advance(5.0)
        assert len(index.search("widget", 3)) == 3  # the probe reaches the healthy node
        assert breaker.state == "closed"
        # A client error is the cluster answering: not a failure.
        with pytest.raises(LexicalIndexError, match="HTTP 404"):
            es.index("test-breaker-no-such-index").search("widget", 3)
        assert breaker.status().consecutive_failures == 0
