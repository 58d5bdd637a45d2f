"""The online-retail purchase history as the recommendation models and protocols see it.

Cleaning is :func:`indexer.events.importer.read_online_retail` (one rule set for the
event import and for the models). This module adds the development split of
``shared/datasets/README.md`` and per-item descriptions (the text a new product is
recommended by).

The development split: history = lines before 2011-10-01, test = October 2011. The
independent evaluation runs the same code with history = the whole shared file and test =
later months, so nothing may assume the dev dates except :func:`dev_split`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from shopsearch.indexer.events.importer import read_online_retail

__all__ = ["DEV_CUTOFF", "DEV_END", "RetailSplit", "dev_split", "item_descriptions", "load_lines"]

DEV_CUTOFF = pd.Timestamp("2011-10-01", tz="UTC")
DEV_END = pd.Timestamp("2011-11-01", tz="UTC")


@dataclass(frozen=True)
class RetailSplit:
    """History and test lines (columns of :class:`indexer.events.importer.RetailHistory`)."""

    history: pd.DataFrame
    test: pd.DataFrame


def load_lines(path: Path | str) -> pd.DataFrame:
    """The cleaned purchase lines of an online-retail CSV, sorted by time (stable, so
    lines of one invoice keep their file order). Raises ``EventStoreError`` naming the
    file and the problem."""
    lines = read_online_retail(Path(path)).lines
    return lines.sort_values("ts", kind="stable").reset_index(drop=True)


def dev_split(lines: pd.DataFrame) -> RetailSplit:
    """History = lines before 2011-10-01; test = October 2011 (the datasets README)."""
    history = lines[lines["ts"] < DEV_CUTOFF].reset_index(drop=True)
    test = lines[(lines["ts"] >= DEV_CUTOFF) & (lines["ts"] < DEV_END)].reset_index(drop=True)
    return RetailSplit(history=history, test=test)


def item_descriptions(*frames: pd.DataFrame) -> dict[str, str]:
    """Each item's latest non-empty description across ``frames`` (they drift slightly)."""
    parts = [f[["stock_code", "description", "ts"]] for f in frames if len(f)]
    if not parts:
        return {}
    lines = pd.concat(parts)
    lines = lines[lines["description"] != ""].sort_values("ts", kind="stable")
    return dict(zip(lines["stock_code"], lines["description"], strict=True))
