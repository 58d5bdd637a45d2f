"""Catalog loading: CSV, JSON Lines and Parquet with a column mapping, row by row checked.

The files are read by :mod:`indexer.catalog_readers` (values as written: no float ids,
invalid UTF-8 kept in its row). Every row is checked; bad rows (missing, duplicate or
non-text id, missing title, a price that is not a finite non-negative number, a stock
value that is not a boolean, invalid UTF-8, a value longer than its limit in
:data:`retrieval.types.PRODUCT_FIELD_LIMITS`, a line of a JSON Lines file that is not a
JSON object) are collected with their row numbers and reasons. By default they stop the
build with a :class:`CatalogError` that lists them; with ``skip_bad_rows=True`` they are
left out and reported in :class:`CatalogReport`. Nothing is dropped silently.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shopsearch.indexer.catalog_readers import invalid_utf8, read_rows
from shopsearch.retrieval.checksums import file_sha256
from shopsearch.retrieval.types import (
    MAX_ATTRIBUTE_KEY_CHARS,
    MAX_ATTRIBUTE_VALUE_CHARS,
    PRODUCT_FIELD_LIMITS,
    Product,
    ShopsearchError,
)

__all__ = [
    "CatalogError",
    "CatalogReport",
    "ColumnMapping",
    "RowProblem",
    "file_sha256",
    "load_catalog",
]

log = logging.getLogger(__name__)

FORMATS = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
}
_TRUE = {"true", "1", "yes", "y", "t", "in stock", "instock"}
_FALSE = {"false", "0", "no", "n", "f", "out of stock", "outofstock"}
#: How many bad rows an error message lists before it says "and N more".
MAX_LISTED = 20


@dataclass(frozen=True, slots=True)
class ColumnMapping:
    """Which catalog column holds each product field (``None``: the catalog has none)."""

    id: str = "id"
    title: str = "title"
    description: str | None = "description"
    brand: str | None = "brand"
    category: str | None = "category"
    price: str | None = "price"
    in_stock: str | None = "in_stock"
    image_url: str | None = "image_url"

    def used_columns(self) -> set[str]:
        return {
            c
            for c in (
                self.id,
                self.title,
                self.description,
                self.brand,
                self.category,
                self.price,
                self.in_stock,
                self.image_url,
            )
            if c
        }


@dataclass(frozen=True, slots=True)
class RowProblem:
    """A rejected row: its 1-based row number (CSV and Parquet: data rows, the header
    excluded; JSON Lines: the line number), its id if one was read, and the reason."""

    row: int
    id: str | None
    reason: str

    def __str__(self) -> str:
        who = f" (id {self.id})" if self.id else ""
        return f"row {self.row}{who}: {self.reason}"


class CatalogError(ShopsearchError):
    """The catalog cannot be read, or has bad rows and skipping was not asked for."""

    def __init__(self, message: str, problems: list[RowProblem] | None = None) -> None:
        self.problems = problems or []
        if self.problems:
            listed = "\n".join(f"  - {p}" for p in self.problems[:MAX_LISTED])
            more = len(self.problems) - MAX_LISTED
            tail = f"\n  ... and {more} more" if more > 0 else ""
            message = f"{message}\n{listed}{tail}"
        super().__init__(message)


@dataclass(slots=True)
class CatalogReport:
    """What loading a catalog found: counts, skipped rows and the file's checksum."""

    path: str
    format: str
    sha256: str
    rows_read: int = 0
    products: int = 0
    skipped: list[RowProblem] = field(default_factory=list)
    attribute_columns: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "format": self.format,
            "sha256": self.sha256,
            "rows_read": self.rows_read,
            "products": self.products,
            "skipped": len(self.skipped),
            "skipped_rows": [str(p) for p in self.skipped[:100]],
            "attribute_columns": self.attribute_columns,
        }


def _text(value: Any) -> str:
    # A NaN of a Parquet float column is no text: treated as empty (a NaN *price* is
    # caught by _price before this).
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


def _id(value: Any) -> tuple[str, str | None]:
    """The id as text, exactly as written; an error for a value that is no id."""
    if isinstance(value, (float, bool, dict, list)):
        # A float id (a Parquet double column) has already lost the digits it was
        # written with (1000 reads back as 1000.0; long ids round): refuse, not guess.
        return "", (
            f"id {value!r} is a {type(value).__name__}, not text or an integer "
            "(store the id column as strings)"
        )
    return _text(value), None


def _price(value: Any) -> tuple[float | None, str | None]:
    fix = "write it like 19.99, or leave it empty"
    if isinstance(value, float) and not math.isfinite(value):  # Parquet NaN / inf
        return None, f"price {value!r} is not a finite number ({fix})"
    text = _text(value)
    if text == "":
        return None, None
    try:
        price = float(text.replace(",", "").lstrip("$"))
    except ValueError:
        return None, f"price {text!r} is not a number ({fix})"
    if not math.isfinite(price):  # "nan", "inf", "NaN" and "Infinity" of JSON
        return None, f"price {text!r} is not a finite number ({fix})"
    if price < 0:
        return None, f"price {text!r} must be a non-negative number"
    return price, None


def _stock(value: Any) -> tuple[bool | None, str | None]:
    if isinstance(value, bool):
        return value, None
    text = _text(value).casefold()
    if text == "":
        return None, None
    if text in _TRUE:
        return True, None
    if text in _FALSE:
        return False, None
    return None, f"in_stock {text!r} is not a boolean (use true/false, 1/0 or yes/no)"


def _encoding_problems(record: dict[str, Any]) -> list[str]:
    """One reason per value of ``record`` that holds invalid UTF-8."""
    return [
        f"invalid UTF-8 in column {column!r} ({where}); save the catalog as UTF-8"
        for column, value in record.items()
        # isascii() first: the common case, and next to free.
        if isinstance(value, str) and not value.isascii() and (where := invalid_utf8(value))
    ]


def _length_problems(values: dict[str, str], columns: dict[str, str | None]) -> list[str]:
    """One reason per product field in ``values`` longer than its limit."""
    return [
        f"{name} is {len(value):,} characters (column {columns[name]!r}); "
        f"at most {PRODUCT_FIELD_LIMITS[name]:,} are allowed"
        for name, value in values.items()
        if len(value) > PRODUCT_FIELD_LIMITS[name]
    ]


def _attribute_problems(attributes: dict[str, str]) -> list[str]:
    """One reason per attribute value longer than its limit."""
    return [
        f"attribute {key!r} is {len(value):,} characters; "
        f"at most {MAX_ATTRIBUTE_VALUE_CHARS:,} are allowed"
        for key, value in attributes.items()
        if len(value) > MAX_ATTRIBUTE_VALUE_CHARS
    ]


def load_catalog(
    path: Path,
    mapping: ColumnMapping | None = None,
    *,
    skip_bad_rows: bool = False,
    limit: int | None = None,
) -> tuple[list[Product], CatalogReport]:
    """Read a catalog file into products, in file order.

    The format follows the suffix (``.csv``, ``.jsonl``/``.ndjson``/``.json`` (JSON Lines),
    ``.parquet``). Columns not in ``mapping`` become keyword attributes. ``limit`` keeps
    only the first N data rows (for trying things out).

    Raises :class:`CatalogError` when the file cannot be read, the id or title column is
    missing (the message lists the columns found and the option to set), or any row is bad
    and ``skip_bad_rows`` is False.
    """
    mapping = mapping or ColumnMapping()
    path = Path(path)
    if not path.is_file():
        raise CatalogError(f"catalog file {path} does not exist")
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise CatalogError(
            f"{path}: unknown catalog format {path.suffix!r}; use one of {', '.join(sorted(FORMATS))}"
        )
    try:
        columns, rows = read_rows(path, fmt, limit)
    except (ValueError, OSError) as exc:
        raise CatalogError(f"cannot read {path} as {fmt}: {exc}") from exc
    for field_name, column, option in (
        ("id", mapping.id, "--id-field"),
        ("title", mapping.title, "--title-field"),
    ):
        if column not in columns:
            raise CatalogError(
                f"{path}: the {field_name} column {column!r} is missing; columns found: "
                f"{', '.join(columns)}. Name the right one with {option}"
            )
    # Optional mapped columns that the file lacks are simply absent, unless the user asked
    # for a non-default name (then a typo must not go unnoticed).
    defaults = ColumnMapping()
    for name in ("description", "brand", "category", "price", "in_stock", "image_url"):
        column = getattr(mapping, name)
        if column and column not in columns and column != getattr(defaults, name):
            raise CatalogError(
                f"{path}: the {name} column {column!r} is missing; columns found: {', '.join(columns)}"
            )
    attribute_columns = [c for c in columns if c not in mapping.used_columns()]
    for column in attribute_columns:  # a column name is an attribute key
        if len(column) > MAX_ATTRIBUTE_KEY_CHARS:
            raise CatalogError(
                f"{path}: the column name {column[:60]!r}... is {len(column):,} characters; "
                f"attribute keys may have at most {MAX_ATTRIBUTE_KEY_CHARS:,}: rename the column"
            )
    report = CatalogReport(
        path=str(path), format=fmt, sha256=file_sha256(path), attribute_columns=attribute_columns
    )
    problems: list[RowProblem] = []
    products: list[Product] = []
    seen: dict[str, int] = {}

    def col(record: dict[str, Any], name: str | None) -> Any:
        return record.get(name) if name else None

    text_columns = {
        "id": mapping.id,
        "title": mapping.title,
        "description": mapping.description,
        "brand": mapping.brand,
        "category": mapping.category,
        "image_url": mapping.image_url,
    }
    mapped_text = [(n, c) for n, c in text_columns.items() if c and n != "id"]
    for row in rows:
        number, record = row.number, row.record
        report.rows_read += 1
        pid, id_error = _id(record.get(mapping.id))
        if row.problem is not None:  # the row could not be read into values at all
            problems.append(RowProblem(row=number, id=None, reason=row.problem))
            continue
        reasons = _encoding_problems(record)
        if id_error:
            reasons.append(id_error)
        elif not pid:
            reasons.append(f"missing id (column {mapping.id!r})")
        values = dict.fromkeys(text_columns, "")
        values.update((name, _text(record.get(column))) for name, column in mapped_text)
        values["id"] = pid
        if not values["title"]:
            reasons.append(f"missing title (column {mapping.title!r})")
        if pid and pid in seen:
            reasons.append(f"duplicate id {pid!r} (first seen in row {seen[pid]})")
        price, price_error = _price(col(record, mapping.price))
        in_stock, stock_error = _stock(col(record, mapping.in_stock))
        reasons += [e for e in (price_error, stock_error) if e]
        reasons += _length_problems(values, text_columns)
        attributes = {c: _text(record.get(c)) for c in attribute_columns if _text(record.get(c))}
        reasons += _attribute_problems(attributes)
        if reasons:
            # An over-long or undecodable id is not repeated in the listing.
            shown = pid if pid and len(pid) <= 100 and not invalid_utf8(pid) else None
            problems.append(RowProblem(row=number, id=shown, reason="; ".join(reasons)))
            continue
        seen[pid] = number
        products.append(
            Product(
                id=pid,
                title=values["title"],
                description=values["description"],
                brand=values["brand"],
                category=values["category"],
                price=price,
                in_stock=in_stock,
                image_url=values["image_url"],
                attributes=attributes,
            )
        )
    if problems and not skip_bad_rows:
        raise CatalogError(
            f"{path}: {len(problems)} bad row(s); fix them or pass --skip-bad-rows to leave them out",
            problems,
        )
    if problems:
        log.warning("%s: skipped %d bad row(s), first: %s", path, len(problems), problems[0])
    report.skipped = problems
    report.products = len(products)
    if not products:
        raise CatalogError(f"{path}: no usable products ({report.rows_read} rows read)")
    return products, report
