"""Behaviour-event endpoints, as an ``APIRouter`` the app mounts.

- ``POST /v1/events``: a batch of 1..1,000 events. 200 means the whole batch is committed
  to the event store (durably: see indexer/events/store.py); the body counts the events
  ``stored``, the ``duplicates`` (event ids already stored) and the ``unknown_products``.
  A bad event makes the batch a 422 whose ``loc`` names the event's index and field
  (``["body", "events", 3, "timestamp"]``), and nothing of it is stored. 503 when the
  store cannot commit (nothing stored; resend the batch, duplicates are harmless).
- ``DELETE /v1/users/{user}`` (admin): erase every event of that shopper; answers
  ``{"erased": n}`` (0 for a shopper with no events: erasure is idempotent).

Shopper ids are pseudonymised with ``settings.user_key`` before they touch the store
and are never logged. Without a key both endpoints answer 503 naming
SHOPSEARCH_USER_KEY; a server should refuse to start without one
(:meth:`api.settings.Settings.require_user_key`).
"""

# No `from __future__ import annotations`: FastAPI must see the real types of the
# endpoint parameters, which refer to dependencies defined inside events_router().

import logging
import sqlite3
from collections.abc import Callable, Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException
from fastapi.exceptions import RequestValidationError

from shopsearch.api.event_schemas import EventBatch, EventsAccepted
from shopsearch.api.schemas import error_responses
from shopsearch.api.settings import Settings
from shopsearch.indexer.events.privacy import pseudonymise
from shopsearch.indexer.events.store import EventStore
from shopsearch.indexer.events.types import Event, EventStoreError

__all__ = ["events_router"]

log = logging.getLogger(__name__)


def events_router(
    store_provider: Callable[[], EventStore | None],
    settings: Settings,
    admin_dependency: Callable[..., Any],
    *,
    on_erase: Callable[[str], None] | None = None,
    on_stored: Callable[[Sequence[Event]], None] | None = None,
) -> APIRouter:
    """The event endpoints over the store ``store_provider()`` returns (``None``: not
    open yet, answered 503).

    ``admin_dependency`` guards ``DELETE /v1/users/{user}`` (the app's bearer-token
    check). ``on_erase(user_hash)`` runs after an erasure is committed, so the app can
    drop what it derived from that shopper (caches of recent items, profiles).
    ``on_stored(events)`` runs after a batch is committed, with every event of it
    (duplicates included: it must be idempotent), e.g. to count click-through.
    """
    try:
        key: bytes | None = settings.require_user_key()
        no_key_reason = ""
    except ValueError as exc:
        key, no_key_reason = None, str(exc)

    router = APIRouter(tags=["events"])

    def get_store() -> EventStore:
        store = store_provider()
        if store is None:
            raise HTTPException(status_code=503, detail="the event store is not open yet")
        return store

    def get_key() -> bytes:
        if key is None:
            raise HTTPException(status_code=503, detail=f"events are off: {no_key_reason}")
        return key

    @router.post(
        "/v1/events", response_model=EventsAccepted, responses=error_responses(400, 413, 503)
    )
    def post_events(
        batch: EventBatch,
        store: Annotated[EventStore, Depends(get_store)],
        key: Annotated[bytes, Depends(get_key)],
    ) -> EventsAccepted:
        """Store a batch of behaviour events; 200 means all of it is committed."""
        events = [event.to_event(key) for event in batch.events]
        try:
            report = store.add(events)
        except (sqlite3.Error, EventStoreError) as exc:
            log.error("event batch of %d not stored: %s", len(events), exc)
            raise HTTPException(
                status_code=503,
                detail="the event store could not commit the batch; nothing of it was "
                "stored; send it again (events already stored count as duplicates)",
            ) from exc
        if on_stored is not None:
            on_stored(events)
        return EventsAccepted(**report.to_dict())

    @router.delete(
        "/v1/users/{user:path}",
        dependencies=[Depends(admin_dependency)],
        responses=error_responses(400, 401, 404, 413, 503),
    )
    def erase_user(
        user: str,
        store: Annotated[EventStore, Depends(get_store)],
        key: Annotated[bytes, Depends(get_key)],
    ) -> dict[str, int]:
        """Erase every event of one shopper (the raw id the shop knows them by)."""
        if not user:
            raise RequestValidationError(
                [
                    {
                        "loc": ("path", "user"),
                        "msg": "give the shopper id to erase",
                        "type": "missing",
                    }
                ]
            )
        user_hash = pseudonymise(user, key)
        try:
            erased = store.erase_user(user_hash)
        except (sqlite3.Error, EventStoreError) as exc:
            log.error("erasure not done: %s", exc)  # no user id in the log
            raise HTTPException(
                status_code=503, detail="the event store could not erase; try again"
            ) from exc
        if on_erase is not None:
            on_erase(user_hash)
        log.info("erased %d events of one shopper", erased)
        return {"erased": erased}

    return router
