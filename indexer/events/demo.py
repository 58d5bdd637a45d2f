"""Demo shoppers for the sample catalog: a small, seeded, *synthetic* event history.

The sample catalog has no real shoppers, so ``shopsearch demo`` writes this history to
show recommendations and shopper-aware search working end to end. It is made up and
says so: three named shoppers with clear tastes, plus background shoppers whose baskets
stay within one department (so bought-together has something to learn):

- ``demo-diy``: power tools and hardware;
- ``demo-cook``: kitchen;
- ``demo-garden``: garden and outdoor.

Try ``/v1/search?q=gloves&user=demo-garden`` against ``user=demo-diy``, or
``/v1/recommend/for-you?user=demo-cook``. Never use it to measure anything: the
measured numbers come from the real purchases in ``../shared/datasets/online-retail``.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from shopsearch.indexer.events.privacy import pseudonymise
from shopsearch.indexer.events.types import Event
from shopsearch.retrieval.types import Product

__all__ = ["DEMO_SHOPPERS", "demo_events"]

#: Named demo shopper -> the top-level departments they shop in.
DEMO_SHOPPERS: dict[str, tuple[str, ...]] = {
    "demo-diy": ("Tools",),
    "demo-cook": ("Kitchen",),
    "demo-garden": ("Garden & Outdoor",),
}


def _department(product: Product) -> str:
    return product.category.split(" > ")[0] if product.category else ""


def demo_events(
    products: Sequence[Product],
    key: bytes,
    *,
    background_shoppers: int = 120,
    seed: int = 7,
    now: datetime | None = None,
) -> list[Event]:
    """Purchase and view events over the last 60 days before ``now`` (deterministic for a
    ``seed``). User ids are pseudonymised with ``key``, as the API does."""
    rng = random.Random(seed)
    end = now or datetime.now(UTC)
    by_department: dict[str, list[str]] = defaultdict(list)
    for p in products:
        by_department[_department(p)].append(p.id)
    departments = sorted(d for d in by_department if d)
    events: list[Event] = []

    def basket(user: str, session: str, department: str, day: float, size: int) -> None:
        ts = end - timedelta(days=day)
        items = rng.sample(by_department[department], min(size, len(by_department[department])))
        for i, item in enumerate(items):
            for kind in ("view", "purchase"):
                events.append(
                    Event(
                        event_id=f"demo:{session}:{i}:{kind}",
                        kind=kind,  # type: ignore[arg-type]
                        session=session,
                        product_id=item,
                        ts=ts + timedelta(minutes=i),
                        user_hash=pseudonymise(user, key),
                    )
                )

    for n in range(background_shoppers):
        user = f"demo-shopper-{n}"
        home = rng.choice(departments)
        for b in range(rng.randint(1, 4)):
            basket(user, f"{user}-{b}", home, rng.uniform(1, 60), rng.randint(2, 5))
    for user, tastes in DEMO_SHOPPERS.items():
        for b in range(6):
            department = tastes[b % len(tastes)]
            if department in by_department:
                basket(user, f"{user}-{b}", department, 2 + 8 * b + rng.random(), 3)
    return events
