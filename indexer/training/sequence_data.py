"""Data of the sequence model's training (:mod:`indexer.training.sequence`): purchase
lines into examples, and examples into batches.

- :func:`check_lines`, :func:`vocabulary`, :func:`shopper_baskets`: the lines checked,
  the items (bought ones first, then those known only by their text) and each shopper's
  invoices in time order (:class:`Baskets`);
- :func:`training_examples`: one example per (shopper, invoice after the first), the
  target widened to a horizon and weighted by recency; :func:`validation_month_start` and
  :func:`validation_examples`: the held-out month (:class:`Validation`);
- :func:`bucketed_batches` and :func:`tensor_batch`: shuffled batches of similar
  length, as torch tensors.

The training loop, the validation metrics and :func:`~indexer.training.sequence.train_sequence`
are in :mod:`indexer.training.sequence`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd
import scipy.sparse as sp

from shopsearch.indexer.training.budget import TrainingError

__all__ = [
    "REQUIRED_COLUMNS",
    "Baskets",
    "Examples",
    "Objective",
    "Validation",
    "bucketed_batches",
    "check_lines",
    "shopper_baskets",
    "tensor_batch",
    "training_examples",
    "validation_examples",
    "validation_month_start",
    "vocabulary",
]

#: Columns ``train_sequence`` reads from its lines (those of :func:`indexer.retail.load_lines`).
REQUIRED_COLUMNS = ("invoice", "stock_code", "ts", "customer")
#: ``"new"``: items bought before are left out of the targets (and masked in the loss).
Objective = Literal["new", "all"]


@dataclass(frozen=True)
class Baskets:
    """Each shopper's invoices in time order: item indices (distinct, line order) and time."""

    items: list[list[npt.NDArray[np.int64]]]
    times: list[list[pd.Timestamp]]


def check_lines(lines: pd.DataFrame) -> None:
    """Raises :class:`TrainingError` naming the :data:`REQUIRED_COLUMNS` ``lines`` lacks."""
    missing = [c for c in REQUIRED_COLUMNS if c not in lines.columns]
    if missing:
        raise TrainingError(
            f"purchase lines lack column(s) {', '.join(missing)}; pass the frame of "
            "indexer.retail.load_lines (columns invoice, stock_code, ts, customer, ...)"
        )


def vocabulary(lines: pd.DataFrame, item_texts: Mapping[str, str]) -> tuple[list[str], int]:
    """Items shoppers bought (most bought first: learned ids), then items known only by
    their text (no id embedding). Returns the items and how many are trained."""
    bought = lines.loc[lines["customer"] != "", "stock_code"].value_counts()
    # value_counts ties are in no fixed order: sort by (-count, id) for determinism.
    trained = sorted(bought.index, key=lambda i: (-int(bought[i]), i))
    known = set(trained)
    text_only = sorted(i for i in item_texts if i not in known)
    return trained + text_only, len(trained)


def shopper_baskets(lines: pd.DataFrame, index: Mapping[str, int]) -> Baskets:
    """The named shoppers' baskets (guests left out), shoppers in id order, items as their
    position in ``index`` (items not in it dropped)."""
    df = lines.loc[lines["customer"] != "", ["customer", "invoice", "stock_code", "ts"]].copy()
    df["item"] = df["stock_code"].map(index)
    df = df.dropna(subset=["item"]).drop_duplicates(["invoice", "item"])
    df["item"] = df["item"].astype(np.int64)
    heads = df.groupby("invoice", sort=False).agg(customer=("customer", "first"), ts=("ts", "min"))
    heads = heads.reset_index().sort_values(["customer", "ts", "invoice"], kind="stable")
    by_invoice = {inv: g.to_numpy() for inv, g in df.groupby("invoice", sort=False)["item"]}
    items: list[list[npt.NDArray[np.int64]]] = []
    times: list[list[pd.Timestamp]] = []
    for _, group in heads.groupby("customer", sort=True):
        items.append([by_invoice[i] for i in group["invoice"]])
        times.append(list(group["ts"]))
    return Baskets(items, times)


@dataclass(frozen=True)
class Examples:
    """Training (or validation) examples, one row per example."""

    tokens: npt.NDArray[np.int64]  # (n, max_len), right-padded, item index + 1
    lengths: npt.NDArray[np.int64]
    targets: sp.csr_matrix  # (n, n_items) binary
    seen: sp.csr_matrix  # (n, n_items) binary: items bought before (masked for "new")
    weights: npt.NDArray[np.float32]  # per example, mean 1

    def __len__(self) -> int:
        return len(self.lengths)


def _pack(
    inputs: Sequence[npt.NDArray[np.int64]],
    targets: Sequence[npt.NDArray[np.int64]],
    seen: Sequence[npt.NDArray[np.int64]],
    n_items: int,
    max_len: int,
) -> Examples:
    tokens = np.zeros((len(inputs), max_len), dtype=np.int64)
    lengths = np.zeros(len(inputs), dtype=np.int64)
    for row, seq in enumerate(inputs):
        seq = seq[-max_len:]
        tokens[row, : len(seq)] = seq + 1
        lengths[row] = len(seq)

    def csr(rows: Sequence[npt.NDArray[np.int64]]) -> sp.csr_matrix:
        indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])])
        cols = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        data = np.ones(len(cols), dtype=np.float32)
        return sp.csr_matrix((data, cols, indptr), shape=(len(rows), n_items))

    weights = np.ones(len(inputs), dtype=np.float32)
    return Examples(tokens, lengths, csr(targets), csr(seen), weights)


def training_examples(
    baskets: Baskets,
    n_items: int,
    before: pd.Timestamp | None,
    *,
    objective: Objective,
    horizon_days: float,
    recency_half_life_days: float,
    max_len: int,
) -> Examples:
    """One example per (shopper, invoice after the first) whose invoice is before
    ``before``: the target is that invoice's items and those of the shopper's invoices in
    the next ``horizon_days`` (still before ``before``), less the items bought before with
    ``objective="new"``, weighted by recency (``recency_half_life_days``, 0 = all equal;
    weights have mean 1). Inputs keep the last ``max_len`` items of the history."""
    inputs, targets, seen, stamps = [], [], [], []
    horizon = pd.Timedelta(days=horizon_days)
    for items, times in zip(baskets.items, baskets.times, strict=True):
        for t in range(1, len(items)):
            if before is not None and times[t] >= before:
                break
            history = np.concatenate(items[:t])
            bought = np.unique(history)
            u = t + 1
            while (
                u < len(items)
                and times[u] < times[t] + horizon
                and (before is None or times[u] < before)
            ):
                u += 1
            target = np.unique(np.concatenate(items[t:u]))
            if objective == "new":
                target = target[~np.isin(target, bought)]
            if len(target) == 0:
                continue
            inputs.append(history)
            targets.append(target)
            seen.append(bought)
            stamps.append(times[t])
    packed = _pack(inputs, targets, seen, n_items, max_len)
    if recency_half_life_days and stamps:
        end = max(stamps)
        age = np.array([(end - ts).total_seconds() / 86400.0 for ts in stamps])
        weights = 0.5 ** (age / recency_half_life_days)
        packed.weights[:] = weights / weights.mean()
    return packed


@dataclass(frozen=True)
class Validation:
    """The held-out month: one example per shopper who bought in it and before it."""

    examples: Examples  # targets: everything bought in the month; seen: before it
    shoppers: list[str]


def validation_examples(
    baskets: Baskets, n_items: int, max_len: int, start: pd.Timestamp
) -> Validation:
    """Per shopper with invoices both before and on or after ``start``: the history
    before ``start`` as input, everything bought from ``start`` on as target."""
    inputs, targets, seen, shoppers = [], [], [], []
    for s, (items, times) in enumerate(zip(baskets.items, baskets.times, strict=True)):
        cut = next((t for t, ts in enumerate(times) if ts >= start), len(items))
        if cut == 0 or cut == len(items):
            continue
        history = np.concatenate(items[:cut])
        inputs.append(history)
        targets.append(np.unique(np.concatenate(items[cut:])))
        seen.append(np.unique(history))
        shoppers.append(str(s))
    return Validation(_pack(inputs, targets, seen, n_items, max_len), shoppers)


def tensor_batch(ex: Examples, rows: npt.NDArray[np.int64]) -> tuple[Any, ...]:
    """Torch tensors ``(tokens, lengths, targets, seen, weights)`` of the examples ``rows``."""
    import torch

    lengths = ex.lengths[rows]
    return (
        # Cut to the longest sequence of the batch: attention costs the padded length.
        torch.from_numpy(np.ascontiguousarray(ex.tokens[rows, : int(lengths.max())])),
        torch.from_numpy(lengths),
        torch.from_numpy(ex.targets[rows].toarray()),
        torch.from_numpy(ex.seen[rows].toarray() > 0),
        torch.from_numpy(ex.weights[rows]),
    )


def bucketed_batches(
    lengths: npt.NDArray[np.int64], batch_size: int, rng: np.random.Generator
) -> list[npt.NDArray[np.int64]]:
    """Shuffled batches of examples of similar length (sorted within random chunks of 20
    batches), so a batch of short histories is not padded to the longest one."""
    order = rng.permutation(len(lengths))
    chunk = batch_size * 20
    batches = []
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def validation_month_start(lines: pd.DataFrame, start: pd.Timestamp | None) -> pd.Timestamp:
    """``start``, or by default the first day of the last calendar month in ``lines``."""
    if start is not None:
        return pd.Timestamp(start)
    last = lines["ts"].max()
    return pd.Timestamp(year=last.year, month=last.month, day=1, tz=last.tz)
