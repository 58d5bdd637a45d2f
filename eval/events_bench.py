"""Throughput of ``POST /v1/events`` over loopback HTTP.

``run_events_bench(url, batches, batch_size, clients)`` sends ``batches`` batches of
``batch_size`` new events from ``clients`` threads (one httpx client each, keep-alive),
``repeats`` times, and reports committed events per second of wall time for each
repeat and their median. Bodies are built and JSON-encoded before the clock starts, so
the figure is the server's (plus loopback HTTP), not the generator's Python. Event ids
are unique per run, so every event is a real insert; the events are synthetic (a pool
of shoppers, two thirds signed in, sessions, products ``bench-P<n>``) and stay in the
target's store: point the server at a scratch database.

Run: ``python -m eval.events_bench --url http://127.0.0.1:8000`` (a server started with
``SHOPSEARCH_USER_KEY`` and ``SHOPSEARCH_EVENTS_DB`` set). Loopback targets only.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

import httpx

from shopsearch.eval.loadtest import check_loopback

__all__ = ["EventsBenchResult", "make_batches", "run_events_bench"]

KINDS = ("view", "view", "view", "click", "click", "add_to_cart", "purchase")


@dataclass(frozen=True)
class EventsBenchResult:
    """Committed events per second of each repeat, their median, and request latency."""

    batches: int
    batch_size: int
    clients: int
    events_per_s: list[float]
    median_events_per_s: float
    p50_ms: float
    p95_ms: float
    errors: int


def make_batches(count: int, batch_size: int, *, seed: int = 0) -> list[bytes]:
    """``count`` JSON bodies of ``batch_size`` new events each (unique ids per call)."""
    rng = random.Random(seed)
    run = uuid.uuid4().hex[:12]
    now = datetime.now(UTC)
    bodies = []
    for b in range(count):
        events = []
        for i in range(batch_size):
            shopper = rng.randrange(3000)
            events.append(
                {
                    "event_id": f"bench-{run}-{b}-{i}",
                    "type": rng.choice(KINDS),
                    "user": f"shopper-{shopper}" if shopper < 2000 else None,
                    "session": f"session-{shopper}-{rng.randrange(5)}",
                    "product_id": f"bench-P{rng.randrange(50_000)}",
                    "timestamp": (now - timedelta(seconds=rng.randrange(86_400))).isoformat(),
                    "position": rng.randrange(1, 21),
                }
            )
        bodies.append(json.dumps({"events": events}).encode())
    return bodies


def _send(url: str, bodies: list[bytes], latencies: list[float], errors: list[int]) -> None:
    with httpx.Client(base_url=url, timeout=30, trust_env=False) as client:
        for body in bodies:
            started = time.perf_counter()
            try:
                r = client.post(
                    "/v1/events", content=body, headers={"content-type": "application/json"}
                )
                ok = r.status_code == 200
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - started)
            if not ok:
                errors.append(1)


def run_events_bench(
    url: str, batches: int = 200, batch_size: int = 100, clients: int = 4, repeats: int = 3
) -> EventsBenchResult:
    """Measure ``POST /v1/events`` throughput at ``url`` (loopback only); see the module
    docstring. Failed requests are counted in ``errors`` and not in the rates."""
    check_loopback(url)
    if min(batches, batch_size, clients, repeats) < 1:
        raise ValueError("batches, batch_size, clients and repeats must be at least 1")
    rates: list[float] = []
    latencies: list[float] = []
    errors: list[int] = []
    for repeat in range(repeats):
        bodies = make_batches(batches, batch_size, seed=repeat)
        shares = [bodies[c::clients] for c in range(clients)]
        failed_before = len(errors)
        threads = [
            threading.Thread(target=_send, args=(url, share, latencies, errors)) for share in shares
        ]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - started
        ok_batches = batches - (len(errors) - failed_before)
        rates.append(ok_batches * batch_size / elapsed)
    ordered = sorted(latencies)
    return EventsBenchResult(
        batches=batches,
        batch_size=batch_size,
        clients=clients,
        events_per_s=rates,
        median_events_per_s=statistics.median(rates),
        p50_ms=1000 * ordered[len(ordered) // 2],
        p95_ms=1000 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))],
        errors=len(errors),
    )


def main() -> None:  # pragma: no cover - a thin command line
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    result = run_events_bench(args.url, args.batches, args.batch_size, args.clients, args.repeats)
    print(json.dumps(asdict(result), indent=2))


if __name__ == "__main__":  # pragma: no cover
    main()
