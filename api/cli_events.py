"""``shopsearch events import|prune|erase``: the batch side of behaviour events.

A typer sub-app, mounted by :mod:`api.cli` as ``app.add_typer(events_app, name="events")``.
Every command works on ``--events-db`` (default ``$SHOPSEARCH_EVENTS_DB`` or
var/events.db) and needs the pseudonymisation key ``$SHOPSEARCH_USER_KEY`` (the one the
server uses, so imported shoppers and live shoppers share pseudonyms). Safe beside a
running server: SQLite serialises the writers.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from pydantic import ValidationError

from shopsearch.api.cli_common import Bars, console, fail
from shopsearch.api.event_schemas import EventIn
from shopsearch.api.settings import Settings
from shopsearch.indexer.events.importer import (
    ImportReport,
    import_events,
    read_event_records,
    read_online_retail,
    retail_events,
)
from shopsearch.indexer.events.privacy import pseudonymise
from shopsearch.indexer.events.store import EventStore
from shopsearch.indexer.events.types import Event, EventStoreError
from shopsearch.indexer.progress import Advance

__all__ = ["events_app", "load_event_file"]

events_app = typer.Typer(
    help="Behaviour events: import history files, apply retention, erase a shopper.",
    no_args_is_help=True,
)

EventsDbOption = Annotated[
    Path | None,
    typer.Option(
        "--events-db",
        help="Event database file. Default: $SHOPSEARCH_EVENTS_DB or var/events.db.",
    ),
]
Format = Literal["online-retail", "jsonl", "csv"]
#: Bad records listed in an error, at most.
_SHOWN = 20


def _setup(events_db: Path | None) -> tuple[Settings, bytes, Path]:
    settings = Settings()
    try:
        key = settings.require_user_key()
    except ValueError as exc:
        raise fail(exc, 2) from exc
    return settings, key, events_db or settings.events_db


@contextmanager
def _bar(description: str, total: int) -> Iterator[Advance]:
    """One progress bar, drawn while the block runs."""
    bars = Bars()
    with bars.progress, bars(description, total) as advance:
        yield advance


def load_event_file(
    path: Path, fmt: Literal["jsonl", "csv"], key: bytes, *, skip_bad_rows: bool = False
) -> tuple[list[Event], list[str], int]:
    """Read and validate every event of a jsonl/csv file by the rules of ``POST
    /v1/events``; return the valid events, the problems (``"line N: field: reason"``)
    and the number of bad records.

    Without ``skip_bad_rows`` a file with any problem must not be imported at all, so
    reading stops after :data:`_SHOWN` problems; with it, every problem is listed and
    the good events are returned beside them.
    """
    events: list[Event] = []
    problems: list[str] = []
    bad = 0
    # A CSV cell is always text ("3", "2.5"): let those convert; JSON Lines keep the
    # request's strict types (None: the model's own config).
    strict = False if fmt == "csv" else None
    for number, record in read_event_records(path, fmt):
        if fmt == "csv":
            record = _csv_numbers(record)
        try:
            events.append(EventIn.model_validate(record, strict=strict).to_event(key))
        except ValidationError as exc:
            bad += 1
            for error in exc.errors(include_url=False):
                field = ".".join(str(part) for part in error["loc"]) or "event"
                problems.append(f"line {number}: {field}: {error['msg']}")
            if not skip_bad_rows and len(problems) >= _SHOWN:
                break
    return events, problems, bad


@events_app.command("import")
def import_command(
    file: Annotated[Path, typer.Argument(help="History file (.csv, .jsonl; .gz too).")],
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="online-retail (the UCI Online Retail CSV: purchases), jsonl or csv (events "
            "with the fields of POST /v1/events). Default: from the extension (jsonl or csv).",
        ),
    ] = None,
    events_db: EventsDbOption = None,
    skip_bad_rows: Annotated[
        bool,
        typer.Option(
            "--skip-bad-rows", help="Import the valid events of a jsonl/csv file with bad ones."
        ),
    ] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Events per transaction.")] = 5_000,
) -> None:
    """Load a history file into the event store. Idempotent: importing a file twice
    stores its events once."""
    settings, key, db = _setup(events_db)
    if not file.is_file():
        raise fail(f"{file}: no such file", 2)
    chosen = fmt or _format_of(file)
    if chosen not in ("online-retail", "jsonl", "csv"):
        raise fail(f"--format must be online-retail, jsonl or csv, not {chosen!r}", 2)
    started = time.perf_counter()
    report = ImportReport()
    try:
        if chosen == "online-retail":
            history = read_online_retail(file)
            report.skipped = {k: v for k, v in history.skipped.items() if v}
            events: list[Event] | Iterator[Event] = retail_events(history, key)
            total = len(history.lines)
            oldest = history.lines["ts"].min() if total else None
        else:
            events, problems, bad = load_event_file(file, chosen, key, skip_bad_rows=skip_bad_rows)  # type: ignore[arg-type]
            if problems and not skip_bad_rows:
                shown = "\n  ".join(problems[:_SHOWN])
                count = f"{len(problems)}" if len(problems) < _SHOWN else f"{_SHOWN} or more"
                raise fail(
                    f"{file}: {count} problem(s); nothing imported (fix them, or "
                    f"--skip-bad-rows to import the rest):\n  {shown}",
                    2,
                )
            if problems:
                report.skipped = {"invalid": bad}
            total = len(events)
            oldest = min((e.ts for e in events), default=None)
        with EventStore(db) as store, _bar(f"importing {file.name}", total) as advance:
            import_events(store, events, batch_size=batch_size, progress=advance, report=report)
    except EventStoreError as exc:
        raise fail(exc) from exc
    seconds = time.perf_counter() - started
    console.print(
        f"{file}: {report.events:,} events in {seconds:.1f}s into {db}: {report.stored:,} "
        f"stored, {report.duplicates:,} already there"
        + (f"; left out: {report.skipped}" if report.skipped else "")
    )
    days = settings.events_retention_days
    if days and oldest is not None and oldest < datetime.now(UTC) - timedelta(days=days):
        console.print(
            f"[yellow]note:[/] some events are older than the retention window ({days} days); "
            "`shopsearch events prune` (and the nightly job) will delete them. Set "
            "SHOPSEARCH_EVENTS_RETENTION_DAYS=0 to keep history for ever."
        )


def _csv_numbers(record: dict[str, Any]) -> dict[str, Any]:
    """A CSV row's numeric cells as numbers (a cell is text; the API takes JSON numbers).
    A cell that is not a number stays text, so validation names it."""
    out = dict(record)
    for name, kind in (("position", int), ("quantity", float)):
        if isinstance(out.get(name), str):
            with suppress(ValueError):
                out[name] = kind(out[name])
    return out


def _format_of(file: Path) -> str:
    suffixes = [s for s in file.suffixes if s != ".gz"]
    ext = suffixes[-1].lstrip(".") if suffixes else ""
    if ext in ("jsonl", "csv"):
        return ext
    raise fail(f"{file}: cannot tell the format from its name; give --format", 2)


@events_app.command("prune")
def prune_command(
    events_db: EventsDbOption = None,
    days: Annotated[
        int | None,
        typer.Option(
            "--days",
            min=1,
            help="Delete events older than this. Default: $SHOPSEARCH_EVENTS_RETENTION_DAYS.",
        ),
    ] = None,
) -> None:
    """Apply the retention policy: delete events older than the retention window."""
    settings = Settings()
    days = days or settings.events_retention_days
    if not days:
        console.print("retention is off (SHOPSEARCH_EVENTS_RETENTION_DAYS=0); nothing deleted")
        return
    try:
        with EventStore(events_db or settings.events_db) as store:
            deleted = store.apply_retention(days)
            left = store.count()
    except EventStoreError as exc:
        raise fail(exc) from exc
    console.print(f"deleted {deleted:,} events older than {days} days; {left:,} left")


@events_app.command("erase")
def erase_command(
    user: Annotated[str, typer.Argument(help="The shopper's id, as the shop knows them.")],
    events_db: EventsDbOption = None,
) -> None:
    """Erase every event of one shopper (as DELETE /v1/users/{user} does). A running
    server's caches of that shopper are cleared by the endpoint, not by this command."""
    _, key, db = _setup(events_db)
    if not user:
        raise fail("give the shopper id to erase", 2)
    try:
        with EventStore(db) as store:
            erased = store.erase_user(pseudonymise(user, key))
    except EventStoreError as exc:
        raise fail(exc) from exc
    console.print(f"erased {erased:,} events")
