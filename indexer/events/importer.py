"""Reading history files into events, and loading events into the store in batches.

Formats:

- ``online-retail``: the UCI Online Retail CSV (``InvoiceNo, StockCode, Description,
  Quantity, InvoiceDate, UnitPrice, CustomerID, Country``; .csv or .csv.gz). Each kept
  line becomes one ``purchase`` event (see :func:`read_online_retail` for the mapping
  and the cleaning rules).
- ``jsonl`` / ``csv``: one event per line/row with the fields of the ``POST /v1/events``
  body (``event_id, type, user, session, product_id, timestamp``, optional
  ``query_id, position, quantity``). :func:`read_event_records` yields the raw records;
  the caller validates them (the CLI uses the API's own event model, so a file and a
  request obey one set of rules).

Imports are idempotent: every event has a deterministic ``event_id``, so importing a
file twice stores it once.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pandas as pd

from shopsearch.indexer.events.privacy import check_key, pseudonymise
from shopsearch.indexer.events.store import EventStore
from shopsearch.indexer.events.types import Event, EventStoreError
from shopsearch.indexer.progress import Advance

__all__ = [
    "EVENT_FIELDS",
    "NON_PRODUCT_CODES",
    "RETAIL_COLUMNS",
    "ImportReport",
    "RetailHistory",
    "import_events",
    "read_event_records",
    "read_online_retail",
    "retail_events",
]

RETAIL_COLUMNS = ("InvoiceNo", "StockCode", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID")
#: Stock codes that are charges, fees or adjustments, not products (compared upper-case):
#: postage (POST, DOT: dotcom postage, C2: carriage), discount (D), manual (M),
#: bank charges, Amazon fee, charity (CRUK), samples (S), padding (PADS), bad debt (B).
NON_PRODUCT_CODES = frozenset(
    {"POST", "DOT", "C2", "D", "M", "BANK CHARGES", "AMAZONFEE", "CRUK", "S", "PADS", "B"}
)
#: Columns every jsonl/csv event has (the required fields of ``POST /v1/events``).
EVENT_FIELDS = ("event_id", "type", "session", "product_id", "timestamp")
#: Gift vouchers (``gift_0001_20`` ...) are sold as lines but are money, not products.
_VOUCHER_PREFIX = "GIFT_"


@dataclass
class RetailHistory:
    """The purchase lines kept from an Online Retail file, and what was left out why.

    ``lines`` has columns ``invoice, stock_code, quantity (float), ts (UTC),
    customer (str, "" for guests), line (0-based occurrence of the stock code within
    its invoice), description (str, "" when the file has none), price (float)``, in
    file order.
    """

    lines: pd.DataFrame
    rows_read: int
    skipped: dict[str, int]


def read_online_retail(path: Path) -> RetailHistory:
    """Read and clean an Online Retail CSV the way a shop would.

    Kept: the sale lines. Left out (counted in ``skipped``, first rule that applies):
    ``cancellation`` (invoice starts with ``C``), ``adjustment`` (invoice starts with
    ``A``: bad-debt adjustments), ``not_a_product`` (a code of
    :data:`NON_PRODUCT_CODES` or a gift voucher), ``returned_or_adjusted`` (Quantity
    <= 0), ``no_price`` (UnitPrice <= 0: stock corrections, not sales).

    Mapping: invoice = ``InvoiceNo``; customer = ``CustomerID`` as an integer string
    (``17850.0`` -> ``17850``), ``""`` for guests; ``InvoiceDate`` has no time zone and
    is read as UTC (the shop is in the UK; keeping the wall-clock time keeps date
    boundaries such as the 2011-10-01 development split where the data set puts them).

    Raises:
        EventStoreError: a column is missing or a value does not parse (names it).
    """
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise EventStoreError(f"{path}: cannot read it as an Online Retail CSV ({exc})") from exc
    missing = [c for c in RETAIL_COLUMNS if c not in raw.columns]
    if missing:
        raise EventStoreError(
            f"{path}: not an Online Retail CSV: column(s) {', '.join(missing)} missing "
            f"(it has {', '.join(map(str, raw.columns))}); for event files use --format jsonl or csv"
        )
    invoice = raw["InvoiceNo"].str.strip()
    code = raw["StockCode"].str.strip()
    quantity = _numbers(raw["Quantity"], "Quantity", path)
    price = _numbers(raw["UnitPrice"], "UnitPrice", path)
    upper = code.str.upper()
    rules = {
        "cancellation": invoice.str.startswith("C"),
        "adjustment": invoice.str.startswith("A"),
        "not_a_product": upper.isin(NON_PRODUCT_CODES) | upper.str.startswith(_VOUCHER_PREFIX),
        "returned_or_adjusted": quantity <= 0,
        "no_price": price <= 0,
    }
    keep = pd.Series(True, index=raw.index)
    skipped: dict[str, int] = {}
    for name, hit in rules.items():
        skipped[name] = int((keep & hit).sum())
        keep &= ~hit
    kept = raw[keep]
    try:
        ts = pd.to_datetime(kept["InvoiceDate"], format="%Y-%m-%d %H:%M:%S", utc=True)
    except ValueError as exc:
        raise EventStoreError(
            f"{path}: InvoiceDate must look like 2010-12-01 08:26:00 ({exc})"
        ) from exc
    customer = kept["CustomerID"].str.strip()
    has_id = customer != ""
    try:
        customer = customer.where(~has_id, customer[has_id].astype(float).astype(int).astype(str))
    except ValueError as exc:
        raise EventStoreError(f"{path}: CustomerID must be a number or empty ({exc})") from exc
    lines = pd.DataFrame(
        {
            "invoice": invoice[keep],
            "stock_code": code[keep],
            "quantity": quantity[keep],
            "ts": ts,
            "customer": customer,
            "description": (
                raw["Description"][keep].str.strip() if "Description" in raw.columns else ""
            ),
            "price": price[keep],
        }
    ).reset_index(drop=True)
    # The same code can appear twice in an invoice: number the occurrences so each
    # line has its own stable event id.
    lines["line"] = lines.groupby(["invoice", "stock_code"], sort=False).cumcount()
    return RetailHistory(lines=lines, rows_read=len(raw), skipped=skipped)


def _numbers(column: pd.Series, name: str, path: Path) -> pd.Series:
    values = pd.to_numeric(column, errors="coerce")
    bad = values.isna()
    if bad.any():
        row = int(bad.idxmax()) + 2  # 1-based, after the header
        raise EventStoreError(f"{path}: line {row}: {name} {column[bad].iloc[0]!r} is not a number")
    return values.astype(float)


def retail_events(history: RetailHistory, key: bytes) -> Iterator[Event]:
    """One ``purchase`` event per kept line: ``event_id`` =
    ``retail:<invoice>:<stock code>:<line>``, session = invoice, product = stock code,
    user = the customer's pseudonym under ``key`` (``None`` for guests), quantity =
    ``Quantity``."""
    check_key(key)
    pseudonyms: dict[str, str] = {}
    df = history.lines
    for invoice, code, quantity, ts, customer, line in zip(
        df["invoice"].tolist(),
        df["stock_code"].tolist(),
        df["quantity"].tolist(),
        df["ts"].dt.to_pydatetime().tolist(),  # vectorised: per-row conversion is slow
        df["customer"].tolist(),
        df["line"].tolist(),
        strict=True,
    ):
        user_hash = None
        if customer:
            user_hash = pseudonyms.get(customer)
            if user_hash is None:
                user_hash = pseudonyms[customer] = pseudonymise(customer, key)
        yield Event(
            event_id=f"retail:{invoice}:{code}:{line}",
            kind="purchase",
            session=invoice,
            product_id=code,
            ts=ts,
            user_hash=user_hash,
            quantity=quantity,
        )


def _open_text(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return path.open(encoding="utf-8", newline="")


def read_event_records(path: Path, fmt: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, record)`` for each event of a ``jsonl`` or ``csv`` file (plain
    or .gz). CSV: a header row naming the event fields; empty cells are left out (an
    optional field unset). Blank JSONL lines are skipped.

    Raises:
        EventStoreError: a line is not a JSON object, or the CSV has no header.
    """
    if fmt not in ("jsonl", "csv"):
        raise ValueError(f"format must be jsonl or csv, not {fmt!r}")
    with _open_text(path) as fh:
        if fmt == "jsonl":
            for number, text in enumerate(fh, start=1):
                if not text.strip():
                    continue
                try:
                    record = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise EventStoreError(f"{path}: line {number}: not JSON ({exc})") from exc
                if not isinstance(record, dict):
                    raise EventStoreError(f"{path}: line {number}: not a JSON object")
                yield number, record
        else:
            reader = csv.DictReader(fh)
            if not reader.fieldnames:
                raise EventStoreError(f"{path}: empty file; a CSV of events needs a header row")
            missing = [c for c in EVENT_FIELDS if c not in reader.fieldnames]
            if missing:
                hint = (
                    "; this looks like the UCI Online Retail file: use --format online-retail"
                    if "InvoiceNo" in reader.fieldnames
                    else ""
                )
                raise EventStoreError(
                    f"{path}: the header lacks the event column(s) {', '.join(missing)} "
                    f"(it has {', '.join(reader.fieldnames)}){hint}"
                )
            for row in reader:
                yield reader.line_num, {k: v for k, v in row.items() if v not in ("", None)}


@dataclass
class ImportReport:
    """Totals of an import: stored + duplicates = events offered to the store."""

    events: int = 0
    stored: int = 0
    duplicates: int = 0
    unknown_products: int = 0
    skipped: dict[str, int] = field(default_factory=dict)


def import_events(
    store: EventStore,
    events: Iterable[Event],
    *,
    batch_size: int = 5_000,
    progress: Advance = lambda n: None,
    report: ImportReport | None = None,
) -> ImportReport:
    """Add events to the store in transactions of ``batch_size``; return the totals.

    Each batch is committed before the next is read, so an interrupted import keeps the
    batches before it, and running it again completes it (event ids are idempotent).
    ``progress(n)`` is called after each batch with its size.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    report = report or ImportReport()
    batch: list[Event] = []

    def flush() -> None:
        added = store.add(batch)
        report.events += len(batch)
        report.stored += added.stored
        report.duplicates += added.duplicates
        report.unknown_products += added.unknown_products
        progress(len(batch))
        batch.clear()

    for event in events:
        batch.append(event)
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    return report
