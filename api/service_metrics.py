"""The service's Prometheus metrics: one :class:`ServiceMetrics` per app (its own
registry, so several apps can live in one process) and :class:`CacheCollector`, which
reads the service's cache counts at each scrape.

``api/app.py`` makes both in ``create_app`` and serves the registry at ``/metrics``;
the other collectors registered there live beside what they measure
(api/quality_monitor.py, api/click_through.py, api/suggest_routes.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shopsearch.api.service import SearchService

__all__ = ["CacheCollector", "ServiceMetrics"]

# Latency buckets (seconds) from 0.5 ms to 2.5 s: stages range from microseconds (fuse)
# to hundreds of milliseconds (rerank on CPU).
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ServiceMetrics:
    """Prometheus metrics of one app (own registry: several apps can live in one process).

    Each attribute is one metric the app updates as it serves (requests by endpoint and
    status, stage latencies, degraded and cut stages, admission refusals, snapshot
    reloads, search-quality counts); the gauges ``breaker_open``, ``running`` and
    ``waiting`` are read through ``set_function`` callbacks the app installs. Every
    rerank outcome is exported from the start, at 0."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "shopsearch_requests_total",
            "Search API requests.",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.stage = Histogram(
            "shopsearch_stage_latency_seconds",
            "Latency of each query-path stage.",
            ["stage"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.degraded = Counter(
            "shopsearch_degraded_total",
            "Answers served without a failed stage.",
            ["stage"],
            registry=self.registry,
        )
        self.reloads = Counter(
            "shopsearch_snapshot_reloads_total",
            "Snapshot swaps.",
            ["result"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "shopsearch_rejected_total",
            "Searches refused by admission control (queue_full, deadline, cancelled).",
            ["reason"],
            registry=self.registry,
        )
        self.cut = Counter(
            "shopsearch_cut_total",
            "Answers that left out work to meet their deadline, by what was cut.",
            ["stage"],
            registry=self.registry,
        )
        self.abandoned = Counter(
            "shopsearch_abandoned_total",
            "Searches whose client hung up before the answer (their work stopped early).",
            registry=self.registry,
        )
        self.breaker_open = Gauge(
            "shopsearch_es_breaker_open",
            "1 while the Elasticsearch circuit breaker fails lexical queries fast.",
            registry=self.registry,
        )
        self.running = Gauge(
            "shopsearch_searches_running", "Searches computing now.", registry=self.registry
        )
        self.waiting = Gauge(
            "shopsearch_searches_waiting",
            "Searches waiting for a worker.",
            registry=self.registry,
        )
        # Search quality (rates in PromQL: each over shopsearch_searches_total).
        self.searches = Counter(
            "shopsearch_searches",
            "Searches answered (status 200), result-cache hits included.",
            registry=self.registry,
        )
        self.zero_results = Counter(
            "shopsearch_zero_result_searches",
            "Searches answered with no hit at all (total 0; a page past the end is not one).",
            registry=self.registry,
        )
        self.rewritten = Counter(
            "shopsearch_rewritten_searches",
            "Searches whose query the rewriter changed (units, spelling) before retrieval.",
            registry=self.registry,
        )
        self.rerank = Counter(
            "shopsearch_rerank",
            "Searches by rerank outcome: applied; skipped (wanted, not run: no model, the "
            "deadline, too few candidates); degraded (the reranker failed); off (not wanted).",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in ("applied", "skipped", "degraded", "off"):
            self.rerank.labels(outcome)  # every outcome exported from the start, at 0


class CacheCollector(Collector):
    """``shopsearch_cache_{hits,misses}_total`` and ``shopsearch_cache_entries`` by
    ``cache`` (rerank, result), read from the service's caches at each scrape: the caches
    keep the counts (under their own lock), so the request path pays nothing for them.

    ``service()`` returns the serving service, or ``None`` before one is open (then the
    three families are exported without samples)."""

    def __init__(self, service: Callable[[], SearchService | None]) -> None:
        self._service = service

    def collect(self) -> Iterator[Metric]:
        hits = CounterMetricFamily(
            "shopsearch_cache_hits",
            "Lookups answered from a cache (rerank: per query-product pair; result: per search).",
            labels=["cache"],
        )
        misses = CounterMetricFamily(
            "shopsearch_cache_misses",
            "Lookups a cache could not answer (rerank: per pair; result: per search without a "
            "shopper).",
            labels=["cache"],
        )
        entries = GaugeMetricFamily(
            "shopsearch_cache_entries", "Entries a cache holds now.", labels=["cache"]
        )
        svc = self._service()
        for name, stats in (svc.cache_stats() if svc is not None else {}).items():
            hits.add_metric([name], stats.hits)
            misses.add_metric([name], stats.misses)
            entries.add_metric([name], stats.entries)
        yield from (hits, misses, entries)
