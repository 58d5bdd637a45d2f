"""Sparse matrices from interaction rows: the item vocabulary, the basket x item
matrix, and item-item co-occurrence counts.

Pure functions over sequences and scipy sparse matrices (no files, no pandas), shared by
every model of :mod:`retrieval.recommend`, by shopper-aware re-scoring and by the
evaluation, so "bought together" means one thing everywhere: two items are co-purchased
once per basket that holds both (quantities and repeated lines do not count twice).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

__all__ = ["ItemVocab", "basket_item_matrix", "cooccurrence"]


@dataclass(frozen=True)
class ItemVocab:
    """Product ids <-> dense indices ``0..n-1`` (in the order given, duplicates dropped)."""

    items: tuple[str, ...]
    index: dict[str, int] = field(repr=False, compare=False)

    @classmethod
    def of(cls, items: Iterable[str]) -> ItemVocab:
        unique = tuple(dict.fromkeys(items))
        return cls(unique, {item: i for i, item in enumerate(unique)})

    def __len__(self) -> int:
        return len(self.items)

    def indices(self, items: Sequence[str]) -> npt.NDArray[np.int64]:
        """Index of each item; ``-1`` for an item not in the vocabulary."""
        get = self.index.get
        return np.fromiter((get(i, -1) for i in items), dtype=np.int64, count=len(items))


def _rows_matrix(
    rows: Sequence[str], items: Sequence[str], vocab: ItemVocab, weights: Sequence[float] | None
) -> tuple[ItemVocab, sp.csr_matrix]:
    if len(rows) != len(items) or (weights is not None and len(weights) != len(items)):
        raise ValueError("rows, items and weights must have the same length")
    row_vocab = ItemVocab.of(rows)
    r = row_vocab.indices(rows)
    c = vocab.indices(items)
    known = c >= 0
    w = np.ones(len(items)) if weights is None else np.asarray(weights, dtype=np.float64)
    matrix = sp.csr_matrix(
        (w[known], (r[known], c[known])), shape=(len(row_vocab), len(vocab)), dtype=np.float64
    )
    matrix.sum_duplicates()
    return row_vocab, matrix


def basket_item_matrix(
    baskets: Sequence[str], items: Sequence[str], vocab: ItemVocab
) -> tuple[ItemVocab, sp.csr_matrix]:
    """Binary basket x item matrix (1 when the basket holds the item, however many lines).

    Returns the basket vocabulary (rows) and the matrix. Items outside ``vocab`` are left out.
    """
    basket_vocab, matrix = _rows_matrix(baskets, items, vocab, None)
    matrix.data[:] = 1.0
    return basket_vocab, matrix


def cooccurrence(basket_item: sp.csr_matrix) -> sp.csr_matrix:
    """Item x item counts of baskets holding both items; the diagonal is zero.

    ``basket_item`` must be binary (:func:`basket_item_matrix`).
    """
    counts = (basket_item.T @ basket_item).tocsr()
    counts.setdiag(0)
    counts.eliminate_zeros()
    return counts
