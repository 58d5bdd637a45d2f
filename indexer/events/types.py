"""What the event store takes and gives back: one :class:`Event`, the report of a batch,
the shopper's recent items, and the columns of the interactions table.

The interactions table (:meth:`EventStore.interactions`) is the contract the
recommendation models, shopper-aware search and evaluation code against:

==========  ============================  ==================================================
column      dtype                         meaning
==========  ============================  ==================================================
user        str                           pseudonymised shopper id; ``""`` for guests
item        str                           product id
ts          datetime64[ns, UTC]           when it happened
basket      str                           session id (invoice for imported purchases)
kind        str                           ``view`` | ``click`` | ``add_to_cart`` | ``purchase``
quantity    float                         items bought (1.0 when unknown)
==========  ============================  ==================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal, NamedTuple, get_args

from shopsearch.retrieval.types import ShopsearchError

__all__ = [
    "EVENT_KINDS",
    "INTERACTION_COLUMNS",
    "AddReport",
    "Event",
    "EventKind",
    "EventStoreError",
    "RecentItem",
]

#: What a shopper did with a product, weakest signal first.
EventKind = Literal["view", "click", "add_to_cart", "purchase"]
EVENT_KINDS: tuple[str, ...] = get_args(EventKind)

#: Columns of :meth:`EventStore.interactions`, in order.
INTERACTION_COLUMNS: tuple[str, ...] = ("user", "item", "ts", "basket", "kind", "quantity")


class EventStoreError(ShopsearchError):
    """The event store cannot be opened, is of an unknown schema, or was given a bad event."""


@dataclass(frozen=True, slots=True)
class Event:
    """One behaviour event as the store keeps it.

    ``user_hash`` is already pseudonymised (:func:`indexer.events.privacy.pseudonymise`);
    ``None`` for a guest. Raw shopper ids never reach the store. ``ts`` must be
    timezone-aware. ``event_id`` is the idempotency key: an event whose id is already
    stored is a duplicate and is not stored again.
    """

    event_id: str
    kind: EventKind
    session: str
    product_id: str
    ts: datetime
    user_hash: str | None = None
    quantity: float = 1.0
    query_id: str | None = None
    position: int | None = None


@dataclass(frozen=True, slots=True)
class AddReport:
    """What :meth:`EventStore.add` did with one batch (all of it committed).

    ``stored + duplicates`` is the batch size. ``unknown_products`` counts the batch's
    events (stored or duplicate) naming a product the catalog check did not know; they
    are stored all the same (the catalog may not have caught up yet). 0 when the store
    has no catalog check.
    """

    stored: int
    duplicates: int
    unknown_products: int

    def to_dict(self) -> dict[str, int]:
        return {
            "stored": self.stored,
            "duplicates": self.duplicates,
            "unknown_products": self.unknown_products,
        }


class RecentItem(NamedTuple):
    """One recent event of a shopper or session: ``(product_id, kind, ts)``; ts in UTC."""

    product_id: str
    kind: str
    ts: datetime
