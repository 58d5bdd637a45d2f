"""Latency of the shopper endpoints over loopback HTTP, one request at a time.

``run_shopper_bench(url, users)`` measures, against a running server, in ``rounds``
rounds of ``requests`` requests per endpoint (one kept-alive h11 connection, the load
generator of :mod:`eval.loadtest` at concurrency 1, no prober):

- ``for_you``: ``GET /v1/recommend/for-you?user=U&size=10``, cycling over ``users``;
- ``similar``: ``GET /v1/recommend/similar/{id}?size=10``, cycling over the products the
  users' for-you answers hold (so they exist in this catalog);
- ``search`` and ``search_shopper``: the same queries without and with ``user=U``, so the
  difference of their p50 is what shopper-aware search adds (the issue's +5 ms budget).
  The queries are ``queries`` if given, else the first two words of those products'
  titles (any catalog has them).

The figures include loopback HTTP, the server's routing and validation and this client
(a small fraction of a millisecond), which is what a shop's front-end sees. Start the
server with its caches off (``SHOPSEARCH_RESULT_CACHE_SIZE=0``,
``SHOPSEARCH_QUERY_CACHE_SIZE=0``) or the search rows measure the caches; the JSON names
the paths so a run can be repeated.

Run: ``python -m shopsearch.eval.shopper_bench --url http://127.0.0.1:8000`` (defaults to
the demo shoppers of ``shopsearch demo``). Loopback targets only.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

import httpx

from shopsearch.eval.loadtest import check_loopback, run_load_test

__all__ = [
    "DEMO_USERS",
    "ENDPOINTS",
    "EndpointLatency",
    "ShopperBenchError",
    "ShopperBenchResult",
    "run_shopper_bench",
    "shopper_paths",
]

#: The synthetic shoppers ``shopsearch demo`` writes (indexer/events/demo.py).
DEMO_USERS: tuple[str, ...] = ("demo-cook", "demo-diy", "demo-garden")
ENDPOINTS: tuple[str, ...] = ("for_you", "similar", "search", "search_shopper")


class ShopperBenchError(Exception):
    """The target cannot be benchmarked: bad arguments, or answers this bench cannot use."""


@dataclass(frozen=True)
class EndpointLatency:
    """One endpoint: p50/p99 (ms) of each round, their medians, and failed requests."""

    endpoint: str
    p50_ms: list[float]
    p99_ms: list[float]
    median_p50_ms: float
    median_p99_ms: float
    errors: int


@dataclass(frozen=True)
class ShopperBenchResult:
    """Every endpoint's latency and the shopper-aware search overhead (median over rounds
    of ``search_shopper`` p50 minus ``search`` p50, each round's pair measured back to back)."""

    url: str
    rounds: int
    requests: int
    users: list[str]
    items: list[str]
    queries: list[str]
    endpoints: list[EndpointLatency]
    shopper_overhead_p50_ms: float


def shopper_paths(
    users: Sequence[str], items: Sequence[str], queries: Sequence[str], size: int = 10
) -> dict[str, list[str]]:
    """The request targets of each endpoint of :data:`ENDPOINTS` (see the module doc);
    ``search_shopper`` pairs query ``i`` with user ``i mod len(users)``."""
    return {
        "for_you": [f"/v1/recommend/for-you?{urlencode({'user': u, 'size': size})}" for u in users],
        "similar": [f"/v1/recommend/similar/{quote(i, safe='')}?size={size}" for i in items],
        "search": [f"/v1/search?{urlencode({'q': q, 'size': size})}" for q in queries],
        "search_shopper": [
            f"/v1/search?{urlencode({'q': q, 'size': size, 'user': users[n % len(users)]})}"
            for n, q in enumerate(queries)
        ],
    }


def _items_and_titles(url: str, users: Sequence[str]) -> tuple[list[str], list[str]]:
    """The products of the users' for-you answers, ids and titles, first seen first."""
    ids: dict[str, str] = {}
    with httpx.Client(base_url=url, timeout=30) as client:
        for user in users:
            response = client.get("/v1/recommend/for-you", params={"user": user, "size": 20})
            if response.status_code != 200:
                raise ShopperBenchError(
                    f"for-you for user {user!r} answered HTTP {response.status_code}: "
                    f"{response.text[:200]}; is {url} a shopsearch server with a catalog?"
                )
            for hit in response.json().get("hits", []):
                ids.setdefault(str(hit["id"]), str(hit.get("title") or ""))
    if not ids:
        raise ShopperBenchError(f"the for-you answers at {url} hold no products; nothing to time")
    return list(ids), list(ids.values())


def _check_personalized(url: str, path: str) -> None:
    """The shopper's search must really be re-scored, or its overhead means nothing."""
    response = httpx.get(url + path, timeout=30)
    said = response.json().get("personalized", "") if response.status_code == 200 else ""
    if not str(said).startswith("applied"):
        raise ShopperBenchError(
            f"GET {path} answered HTTP {response.status_code} with personalized={said!r}, "
            "not 'applied': give --users shoppers with events in the server's store "
            "(SHOPSEARCH_EVENTS_DB) and leave personalisation on"
        )


def _title_queries(titles: Sequence[str], limit: int = 40) -> list[str]:
    seen: dict[str, None] = {}
    for title in titles:
        words = title.split()[:2]
        if words:
            seen.setdefault(" ".join(words).lower(), None)
    return list(seen)[:limit]


def run_shopper_bench(
    url: str,
    users: Sequence[str] = DEMO_USERS,
    *,
    queries: Sequence[str] | None = None,
    requests: int = 200,
    rounds: int = 3,
) -> ShopperBenchResult:
    """Measure the shopper endpoints at ``url`` (loopback only); see the module doc.

    Raises:
        ShopperBenchError: no users, ``requests`` or ``rounds`` below 1, the users'
            for-you answers are not usable, or the first shopper's search is not
            personalised (no events for them): the message says which answer.
        LoadTestError: ``url`` is not loopback.
    """
    check_loopback(url)
    if not users:
        raise ShopperBenchError("users is empty; name at least one shopper (--users)")
    if requests < 1 or rounds < 1:
        raise ShopperBenchError(f"requests ({requests}) and rounds ({rounds}) must be >= 1")
    items, titles = _items_and_titles(url, users)
    query_list = list(queries) if queries else _title_queries(titles)
    paths = shopper_paths(users, items, query_list)
    _check_personalized(url, paths["search_shopper"][0])
    samples: dict[str, tuple[list[float], list[float], list[int]]] = {
        e: ([], [], []) for e in ENDPOINTS
    }
    overheads: list[float] = []
    for _ in range(rounds):
        for endpoint in ENDPOINTS:
            (level,) = run_load_test(
                url,
                [],
                paths=paths[endpoint],
                concurrency_levels=(1,),
                max_requests=requests,
                max_seconds=600.0,
                warmup_requests=min(20, requests),
                probe=False,
            )
            p50s, p99s, errors = samples[endpoint]
            p50s.append(level.latency.p50_ms or float("nan"))
            p99s.append(level.latency.p99_ms or float("nan"))
            errors.append(level.n_errors + level.n_rejected)
        overheads.append(samples["search_shopper"][0][-1] - samples["search"][0][-1])
    endpoints = [
        EndpointLatency(
            endpoint=e,
            p50_ms=p50s,
            p99_ms=p99s,
            median_p50_ms=statistics.median(p50s),
            median_p99_ms=statistics.median(p99s),
            errors=sum(errors),
        )
        for e, (p50s, p99s, errors) in samples.items()
    ]
    return ShopperBenchResult(
        url=url,
        rounds=rounds,
        requests=requests,
        users=list(users),
        items=items,
        queries=query_list,
        endpoints=endpoints,
        shopper_overhead_p50_ms=statistics.median(overheads),
    )


def main() -> None:  # pragma: no cover - a thin command line
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="a loopback server")
    parser.add_argument(
        "--users", default=",".join(DEMO_USERS), help="comma-separated shopper ids to time"
    )
    parser.add_argument(
        "--queries", type=Path, help="a file of search queries, one a line (default: from titles)"
    )
    parser.add_argument("--requests", type=int, default=200, help="requests per endpoint/round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; medians are reported")
    parser.add_argument("--out", type=Path, help="also write the result as JSON here")
    args = parser.parse_args()
    queries = None
    if args.queries is not None:
        queries = [q.strip() for q in args.queries.read_text().splitlines() if q.strip()]
    try:
        result = run_shopper_bench(
            args.url,
            [u for u in args.users.split(",") if u],
            queries=queries,
            requests=args.requests,
            rounds=args.rounds,
        )
    except ShopperBenchError as exc:
        parser.exit(2, f"shopper_bench: {exc}\n")
    for e in result.endpoints:
        print(
            f"{e.endpoint:15s} p50 {e.median_p50_ms:6.2f} ms  p99 {e.median_p99_ms:6.2f} ms"
            f"  (rounds p50 {', '.join(f'{v:.2f}' for v in e.p50_ms)}; errors {e.errors})"
        )
    print(f"shopper-aware search adds {result.shopper_overhead_p50_ms:+.2f} ms p50")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(asdict(result), indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":  # pragma: no cover
    main()
