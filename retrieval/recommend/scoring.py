"""Pieces every model of :mod:`retrieval.recommend` shares: the interaction arrays models
are fitted on, history weights (recency x kind), top-k with exclusions, row pruning.

Pure numpy/scipy; no files, no pandas (the indexer turns the event store's interactions
table into :class:`Interactions`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from shopsearch.retrieval.recommend.base import HistoryItem, Scored
from shopsearch.retrieval.recommend.interactions import ItemVocab

__all__ = [
    "DAY_S",
    "KIND_WEIGHTS",
    "Interactions",
    "csr_rows_sum",
    "decay",
    "discovery_request",
    "history_weights",
    "prune_rows",
    "top_k",
]

DAY_S = 86_400.0
#: How much one event of each kind says about a shopper's taste, purchase = 1. Only
#: purchases exist in the training data we have, so these are priors, not fitted values.
KIND_WEIGHTS: Mapping[str, float] = {
    "purchase": 1.0,
    "add_to_cart": 0.5,
    "click": 0.25,
    "view": 0.1,
}

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Interactions:
    """The interactions table (:data:`indexer.events.types.INTERACTION_COLUMNS`) as arrays.

    ``ts`` is seconds since the epoch (UTC). ``user`` is ``""`` for guests. All arrays
    have one entry per event.
    """

    user: npt.NDArray[np.str_]
    item: npt.NDArray[np.str_]
    ts: FloatArray
    basket: npt.NDArray[np.str_]
    kind: npt.NDArray[np.str_]
    quantity: FloatArray

    def __post_init__(self) -> None:
        n = len(self.item)
        for name in ("user", "ts", "basket", "kind", "quantity"):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"Interactions.{name} has {len(getattr(self, name))} rows, item {n}"
                )

    def __len__(self) -> int:
        return len(self.item)

    def select(self, mask: npt.NDArray[np.bool_]) -> Interactions:
        """The events where ``mask`` is true."""
        return Interactions(
            self.user[mask],
            self.item[mask],
            self.ts[mask],
            self.basket[mask],
            self.kind[mask],
            self.quantity[mask],
        )

    def weights(self) -> FloatArray:
        """Each event's :data:`KIND_WEIGHTS` weight (0 for an unknown kind)."""
        out = np.zeros(len(self.kind))
        for kind, w in KIND_WEIGHTS.items():
            out[self.kind == kind] = w
        return out


def decay(age_s: FloatArray, half_life_days: float) -> FloatArray:
    """``0.5 ** (age / half_life)``; ages below 0 count as 0; ``inf`` half-life = 1."""
    if math.isinf(half_life_days):
        return np.ones_like(age_s, dtype=np.float64)
    return np.exp2(-np.maximum(age_s, 0.0) / (half_life_days * DAY_S))


def discovery_request(
    history: Sequence[HistoryItem], vocab: ItemVocab, exclude: frozenset[str]
) -> bool:
    """Whether every history item the model knows is excluded (``exclude_bought=true``):
    the answer is then pure discovery, which models score with their discovery settings."""
    if not history or not exclude:
        return False
    known = {h.item for h in history if h.item in vocab.index}
    return bool(known) and known <= exclude


def history_weights(
    history: Sequence[HistoryItem], vocab: ItemVocab, half_life_days: float
) -> tuple[IntArray, FloatArray]:
    """Known history items (vocabulary indices, unique) and their weights: the sum over
    their events of kind weight x recency decay, age measured from the newest event.

    Decaying from the newest event (not from "now") keeps a shopper's ranking the same
    whenever they come back; exponential decay ranks the same from any reference anyway.
    """
    if not history:
        return np.zeros(0, np.int64), np.zeros(0)
    idx = vocab.indices([h.item for h in history])
    ts = np.fromiter((h.ts.timestamp() for h in history), np.float64, len(history))
    kind_w = np.fromiter((KIND_WEIGHTS.get(h.kind, 0.0) for h in history), np.float64, len(history))
    w = kind_w * decay(ts.max() - ts, half_life_days)
    known = (idx >= 0) & (w > 0)
    if not known.any():
        return np.zeros(0, np.int64), np.zeros(0)
    items, inverse = np.unique(idx[known], return_inverse=True)
    return items.astype(np.int64), np.bincount(inverse, weights=w[known]).astype(np.float64)


def csr_rows_sum(m: sp.csr_matrix, rows: IntArray, weights: FloatArray) -> FloatArray:
    """``weights @ m[rows]`` as a dense float64 vector, straight from the CSR arrays
    (scipy's fancy row indexing costs more than the sum itself at serving sizes)."""
    starts, ends = m.indptr[rows], m.indptr[rows + 1]
    lengths = ends - starts
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(m.shape[1])
    offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    positions = offsets + np.arange(total)
    values = m.data[positions] * np.repeat(weights, lengths)
    summed = np.bincount(m.indices[positions], weights=values, minlength=m.shape[1])
    return summed.astype(np.float64, copy=False)


def top_k(
    scores: FloatArray,
    k: int,
    vocab: ItemVocab,
    exclude: frozenset[str] = frozenset(),
    *,
    exclude_idx: IntArray | None = None,
) -> list[Scored]:
    """The ``k`` best positive scores as :class:`Scored`, best first (ties: lower index).

    ``scores`` is not modified. Items in ``exclude`` (ids) or ``exclude_idx`` are skipped.
    """
    if k <= 0:
        return []
    s = scores.copy()
    if exclude:
        bad = vocab.indices(list(exclude))
        s[bad[bad >= 0]] = -np.inf
    if exclude_idx is not None and len(exclude_idx):
        s[exclude_idx] = -np.inf
    n_pos = int((s > 0).sum())
    if n_pos == 0:
        return []
    k = min(k, n_pos)
    part = np.argpartition(-s, k - 1)[:k] if k < len(s) else np.arange(len(s))
    order = part[np.lexsort((part, -s[part]))]
    items = vocab.items
    return [Scored(items[i], float(s[i])) for i in order if s[i] > 0]


def prune_rows(matrix: sp.csr_matrix | FloatArray, keep: int) -> sp.csr_matrix:
    """Each row's ``keep`` largest positive entries (a sparse top-k neighbour list)."""
    if sp.issparse(matrix):
        m = sp.csr_matrix(matrix)
        m.eliminate_zeros()
        rows, cols, vals = [], [], []
        for r in range(m.shape[0]):
            lo, hi = m.indptr[r], m.indptr[r + 1]
            data = m.data[lo:hi]
            pos = data > 0
            c, d = m.indices[lo:hi][pos], data[pos]
            if len(d) > keep:
                top = np.argpartition(-d, keep - 1)[:keep]
                c, d = c[top], d[top]
            rows.append(np.full(len(c), r))
            cols.append(c)
            vals.append(d)
        shape = m.shape
    else:
        dense = np.asarray(matrix)
        shape = dense.shape
        k = min(keep, dense.shape[1])
        top = np.argpartition(-dense, k - 1, axis=1)[:, :k]
        vals_all = np.take_along_axis(dense, top, axis=1)
        pos = vals_all > 0
        rows = [np.nonzero(pos)[0]]
        cols = [top[pos]]
        vals = [vals_all[pos]]
    if not vals:
        return sp.csr_matrix(shape, dtype=np.float32)
    out = sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=shape,
        dtype=np.float32,
    )
    out.sort_indices()
    return out
