"""Catalog file readers: CSV, JSON Lines and Parquet into raw rows, values as written.

The readers only turn a file into ``(row number, record)`` pairs; checking the values
is :mod:`indexer.catalog`'s job. Two promises make that checking exact:

* **No type coercion.** CSV cells stay text; JSON numbers stay the text they were
  written as (``1000`` is ``"1000"``, never ``1000.0``; ``NaN`` is ``"NaN"``); Parquet
  values are the column's own Python values, with nulls as ``None`` (a null in an
  integer column does not turn the column into floats, as a pandas frame would).
* **Invalid UTF-8 stays in its row.** Undecodable bytes are kept as surrogate escapes
  (``errors="surrogateescape"``), so one bad byte makes one bad row (see
  :func:`invalid_utf8`) instead of failing the whole file at a byte offset.

Row numbers are 1-based: CSV data rows (the header excluded), JSON Lines line numbers
(blank lines are skipped but counted), Parquet rows.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["RawRow", "invalid_utf8", "read_rows"]

_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True, slots=True)
class RawRow:
    """One row as read: its number, its values by column, and a problem found while
    reading it (e.g. a JSON Lines line that is not JSON; ``None`` when it read well)."""

    number: int
    record: dict[str, Any]
    problem: str | None = None


def invalid_utf8(value: str) -> str | None:
    """A description of the first undecodable byte in ``value`` (a surrogate escape left
    by a reader), or ``None`` when ``value`` is valid text."""
    if value.isascii():
        return None
    for i, char in enumerate(value):
        if "\udc80" <= char <= "\udcff":
            return f"byte 0x{ord(char) - 0xDC00:02x} at character {i + 1}"
    return None


def read_rows(path: Path, fmt: str, limit: int | None = None) -> tuple[list[str], list[RawRow]]:
    """The column names and rows of the catalog at ``path`` in format ``fmt`` (``"csv"``,
    ``"jsonl"`` or ``"parquet"``), at most ``limit`` rows.

    Raises ``OSError`` or ``ValueError`` when the file as a whole cannot be read (the
    caller names the file and format).
    """
    if fmt == "csv":
        return _read_csv(path, limit)
    if fmt == "jsonl":
        return _read_jsonl(path, limit)
    if fmt == "parquet":
        return _read_parquet(path, limit)
    raise ValueError(f"unknown catalog format {fmt!r}")


def _from_latin1(text: str) -> str:
    """Text parsed as Latin-1 back into what its bytes say as UTF-8 (bad bytes escaped)."""
    if text.isascii():
        return text
    return text.encode("latin-1").decode("utf-8", "surrogateescape")


def _read_csv(path: Path, limit: int | None) -> tuple[list[str], list[RawRow]]:
    import pandas as pd

    # Parsed as Latin-1, where every byte is one character, so that an invalid UTF-8
    # byte cannot fail the whole file; each cell is then decoded as UTF-8 on its own.
    # Splitting is unaffected: the delimiters, quotes and newlines are ASCII, and no
    # byte of a multi-byte UTF-8 character is. Every cell is text (ids like "00123"
    # keep their zeros; prices are parsed per row by the caller).
    frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="latin-1", nrows=limit)
    columns = [_from_latin1(str(c)) for c in frame.columns]
    if columns and columns[0].startswith(_BOM.decode("utf-8")):
        columns[0] = columns[0][1:]
    for position, name in enumerate(columns, start=1):
        if invalid_utf8(name):
            raise ValueError(f"header column {position} has invalid UTF-8 ({invalid_utf8(name)})")
    rows = [
        RawRow(
            number,
            {
                name: _from_latin1(cell) if isinstance(cell, str) else cell
                for name, cell in zip(columns, cells, strict=True)
            },
        )
        for number, cells in enumerate(frame.itertuples(index=False, name=None), start=1)
    ]
    return columns, rows


def _read_jsonl(path: Path, limit: int | None) -> tuple[list[str], list[RawRow]]:
    columns: dict[str, None] = {}  # in order of first appearance
    rows: list[RawRow] = []
    with path.open("rb") as fh:
        for number, line in enumerate(fh, start=1):
            if limit is not None and len(rows) >= limit:
                break
            if number == 1:
                line = line.removeprefix(_BOM)
                if line.lstrip().startswith(b"["):
                    raise ValueError(
                        "it is one JSON array; write one JSON object per line (JSON Lines)"
                    )
            if not line.strip():
                continue
            text = line.decode("utf-8", "surrogateescape")
            try:
                # Numbers and NaN/Infinity as the text written: no float rounding of ids.
                value = json.loads(text, parse_int=str, parse_float=str, parse_constant=str)
            except json.JSONDecodeError as exc:
                bad = invalid_utf8(text)
                why = f"invalid UTF-8 ({bad})" if bad else f"{exc.msg} at column {exc.colno}"
                rows.append(RawRow(number, {}, f"not valid JSON: {why}"))
                continue
            if not isinstance(value, dict):
                kind = type(value).__name__
                rows.append(RawRow(number, {}, f"a JSON {kind}, not an object {{...}}"))
                continue
            bad_keys = [key for key in value if invalid_utf8(key)]
            if bad_keys:
                rows.append(RawRow(number, {}, f"invalid UTF-8 in a field name ({bad_keys[0]!a})"))
                continue
            for key in value:
                columns.setdefault(key)
            rows.append(RawRow(number, value))
    return list(columns), rows


def _read_parquet(path: Path, limit: int | None) -> tuple[list[str], list[RawRow]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    if limit is not None:
        table = table.slice(0, limit)
    columns = [str(name) for name in table.column_names]
    values: list[Sequence[Any]] = []
    for column in table.columns:
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            # Arrow does not check UTF-8 when it reads; decoding the bytes ourselves keeps
            # a bad byte in its row instead of failing the column.
            raw = column.cast(pa.large_binary()).to_pylist()
            values.append(
                [None if b is None else b.decode("utf-8", "surrogateescape") for b in raw]
            )
        else:
            values.append(column.to_pylist())
    rows = [
        RawRow(number, dict(zip(columns, cells, strict=True)))
        for number, cells in enumerate(zip(*values, strict=True), start=1)
    ]
    return columns, rows
