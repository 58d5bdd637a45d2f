"""Behaviour events: the durable store, pseudonymisation, and imports of history.

``EventStore`` (store.py) keeps events in SQLite; ``pseudonymise`` (privacy.py) turns a
shopper id into the keyed hash the store keeps; importer.py reads history files. The
HTTP models and endpoints are in ``api/event_schemas.py`` and ``api/events_routes.py``.
"""

from shopsearch.indexer.events.privacy import check_key, pseudonymise
from shopsearch.indexer.events.store import EventStore, KnownProducts
from shopsearch.indexer.events.types import (
    EVENT_KINDS,
    INTERACTION_COLUMNS,
    AddReport,
    Event,
    EventKind,
    EventStoreError,
    RecentItem,
)

__all__ = [
    "EVENT_KINDS",
    "INTERACTION_COLUMNS",
    "AddReport",
    "Event",
    "EventKind",
    "EventStore",
    "EventStoreError",
    "KnownProducts",
    "RecentItem",
    "check_key",
    "pseudonymise",
]
