"""Request and response models of ``POST /v1/events`` (also used by `shopsearch events
import` to validate jsonl/csv files by the same rules)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator

from shopsearch.api.schemas import JSON_NUMBER
from shopsearch.indexer.events.privacy import pseudonymise
from shopsearch.indexer.events.types import Event, EventKind

__all__ = [
    "EARLIEST_EVENT",
    "FUTURE_SLACK",
    "MAX_BATCH",
    "EventBatch",
    "EventIn",
    "EventsAccepted",
]

#: Events one request may carry.
MAX_BATCH = 1_000
#: How far in the future a timestamp may be (client clocks drift; more is a bug).
FUTURE_SLACK = timedelta(days=1)
#: Earlier timestamps are refused: usually seconds sent where milliseconds were meant.
EARLIEST_EVENT = datetime(2000, 1, 1, tzinfo=UTC)


#: The largest Unix time that still parses (year 9999, in milliseconds).
_LATEST_UNIX_MS = 253_402_300_799_999
_TIMESTAMP_SCHEMA = {
    "anyOf": [
        {"type": "string", "format": "date-time"},
        {
            "type": "number",
            "minimum": EARLIEST_EVENT.timestamp(),
            "maximum": _LATEST_UNIX_MS,
            "description": "Unix time in seconds or milliseconds.",
        },
    ]
}


class EventIn(BaseModel):
    """One behaviour event, as a shop's front end sends it.

    Strict: a value of the wrong JSON type is a 422, not coerced; only ``timestamp`` also
    takes a Unix time (a number), as its schema says."""

    model_config = ConfigDict(extra="forbid", strict=True)

    event_id: str = Field(
        min_length=1,
        max_length=128,
        description="Unique id made by the sender (e.g. a UUID); a resent event with the "
        "same id is stored once.",
    )
    type: EventKind = Field(description="view | click | add_to_cart | purchase")
    user: str | None = Field(
        None,
        max_length=256,
        description="The signed-in shopper's id (pseudonymised before storage; never "
        "stored as sent); absent or empty for guests.",
    )
    session: str = Field(min_length=1, max_length=256, description="Browser session id.")
    product_id: str = Field(min_length=1, max_length=512)
    timestamp: Annotated[datetime, WithJsonSchema(_TIMESTAMP_SCHEMA)] = Field(
        strict=False,
        description="When it happened (ISO 8601; a time without zone is taken as UTC; at "
        "most 1 day in the future).",
    )
    query_id: str | None = Field(
        None, max_length=64, description="query_id of the search response that led here."
    )
    position: Annotated[int, Field(ge=1, le=10_000), *JSON_NUMBER] | None = Field(
        None, description="1-based rank of the product in that response."
    )
    quantity: float | None = Field(
        None,
        gt=0,
        le=1_000_000,
        allow_inf_nan=False,
        description="Items bought or added (default 1).",
    )

    @field_validator("timestamp")
    @classmethod
    def _bounded_utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None or value.utcoffset() is None:
            value = value.replace(tzinfo=UTC)
        if value > datetime.now(UTC) + FUTURE_SLACK:
            raise ValueError(
                "is more than 1 day in the future; send the time the event happened (UTC "
                "or with its offset), and check the sender's clock"
            )
        if value < EARLIEST_EVENT:
            raise ValueError(
                "is before 2000-01-01; a Unix time must be in seconds or milliseconds "
                "(or send ISO 8601, e.g. 2024-05-01T12:00:00Z)"
            )
        return value

    def to_event(self, key: bytes) -> Event:
        """The stored form: the shopper id replaced by its pseudonym under ``key``."""
        return Event(
            event_id=self.event_id,
            kind=self.type,
            session=self.session,
            product_id=self.product_id,
            ts=self.timestamp,
            user_hash=pseudonymise(self.user, key) if self.user else None,
            quantity=self.quantity if self.quantity is not None else 1.0,
            query_id=self.query_id,
            position=self.position,
        )


class EventBatch(BaseModel):
    """The body of ``POST /v1/events``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    events: list[EventIn] = Field(min_length=1, max_length=MAX_BATCH)


class EventsAccepted(BaseModel):
    """The answer to an accepted batch: all of it is committed."""

    stored: int = Field(description="New events stored.")
    duplicates: int = Field(description="Events whose event_id was already stored.")
    unknown_products: int = Field(
        description="Events naming a product the serving catalog does not have (stored "
        "all the same)."
    )
