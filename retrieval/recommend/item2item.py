"""Item-to-item models from co-occurrence: "bought together" and the neighbours of a
shopper's history.

All variants produce one item x item similarity ``S`` (row = the item you have, column =
the item recommended), pruned to each row's ``neighbours`` best entries so it is small
and fast to score:

- ``count``: baskets (or shoppers) holding both items; ``S = X^T X``, zero diagonal.
- ``cosine``: ``count_ij / (pop_i^alpha * pop_j^beta)``; ``alpha = beta = 0.5`` is
  item-kNN cosine; a larger ``beta`` demotes items that are merely popular.
- ``rp3beta``: random walk item -> unit -> item (``P_iu @ P_ui``) raised to ``alpha``,
  divided by ``pop_j^beta`` (Paudel et al. 2017).
- ``ease``: closed-form linear auto-encoder ``B = I - P / diag(P)``, ``P = (X^T X +
  lambda I)^-1`` (Steck 2019); ``lambda`` in ``params``.

``X`` is binary and its rows are baskets (``unit="basket"``: bought in the same order)
or shoppers (``unit="user"``: bought by the same customer; a guest's basket is its own
row). A shopper's history is scored as the recency-weighted sum of its items' rows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from shopsearch.retrieval.recommend.base import HistoryItem, Scored
from shopsearch.retrieval.recommend.interactions import ItemVocab, basket_item_matrix
from shopsearch.retrieval.recommend.scoring import (
    FloatArray,
    Interactions,
    decay,
    history_weights,
    prune_rows,
    top_k,
)

__all__ = ["UNITS", "VARIANTS", "ItemToItem", "fit_similarity", "unit_item_matrix"]

VARIANTS: tuple[str, ...] = ("count", "cosine", "rp3beta", "ease")
UNITS: tuple[str, ...] = ("basket", "user")
#: Default parameters of each variant (``params`` overrides them).
DEFAULT_PARAMS: Mapping[str, Mapping[str, float]] = {
    "count": {},
    "cosine": {"alpha": 0.5, "beta": 0.5},
    "rp3beta": {"alpha": 1.0, "beta": 0.5},
    "ease": {"lambda": 200.0},
}


def unit_item_matrix(events: Interactions, vocab: ItemVocab, unit: str) -> sp.csr_matrix:
    """Binary unit x item matrix: rows are baskets, or shoppers (guests: their basket)."""
    rows = _unit_rows(events, unit)
    _, matrix = basket_item_matrix(rows.tolist(), events.item.tolist(), vocab)
    return matrix


def _unit_rows(events: Interactions, unit: str) -> np.ndarray:
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {', '.join(UNITS)}, got {unit!r}")
    if unit == "basket":
        return events.basket
    return np.where(events.user == "", np.char.add("basket\x1f", events.basket), events.user)


def _unit_recency(events: Interactions, unit: str, half_life_days: float) -> FloatArray:
    """Decay weight of each unit (rows in order of first appearance, as the matrix)."""
    rows = _unit_rows(events, unit)
    _, first, inverse = np.unique(rows, return_index=True, return_inverse=True)
    newest = np.full(len(first), -np.inf)
    np.maximum.at(newest, inverse, events.ts)
    # The matrix numbers units by first appearance; np.unique sorts them.
    order = np.argsort(first, kind="stable")
    return decay(events.ts.max() - newest[order], half_life_days)


def fit_similarity(
    events: Interactions,
    vocab: ItemVocab,
    *,
    variant: str,
    unit: str = "basket",
    params: Mapping[str, float] | None = None,
    neighbours: int = 200,
    half_life_days: float = math.inf,
) -> sp.csr_matrix:
    """The pruned item x item similarity of ``variant`` (see the module docstring).

    With a finite ``half_life_days`` each unit's row weighs ``0.5 ** (age / half-life)``
    (age of its newest event at the end of the data): what sells together now counts more
    than what sold together last year (this shop's range is seasonal).

    Raises:
        ValueError: unknown ``variant``/``unit`` or parameter name.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    p = dict(DEFAULT_PARAMS[variant])
    unknown = set(params or {}) - set(p)
    if unknown:
        raise ValueError(f"{variant} takes parameters {sorted(p) or 'none'}, not {sorted(unknown)}")
    p.update(params or {})
    x = unit_item_matrix(events, vocab, unit)
    if not math.isinf(half_life_days) and len(events):
        w = _unit_recency(events, unit, half_life_days)
        # rp3beta walks rows normalised to 1, so only its item -> unit step sees w;
        # the Gram-based variants get w once per pair: X^T diag(w) X.
        x = sp.diags(w if variant == "rp3beta" else np.sqrt(w)) @ x
    # Units holding each item (weighted): the column sums of X, or the Gram diagonal.
    pop = np.asarray((x if variant == "rp3beta" else x.multiply(x)).sum(axis=0)).ravel()
    if variant == "ease":
        gram = (x.T @ x).toarray()
        gram[np.diag_indices_from(gram)] += p["lambda"]
        inv = np.linalg.inv(gram)
        b = -inv / np.diag(inv)[None, :]
        np.fill_diagonal(b, 0.0)
        # Items nobody bought have no evidence: their rows and columns stay empty.
        b[:, pop == 0] = 0.0
        b[pop == 0, :] = 0.0
        return prune_rows(b, neighbours)
    if variant == "rp3beta":
        row_sum = np.asarray(x.sum(axis=1)).ravel()
        p_ui = sp.diags(1.0 / np.maximum(row_sum, 1.0)) @ x
        p_iu = sp.diags(1.0 / np.maximum(pop, 1.0)) @ x.T
        w = (p_iu @ p_ui).tocsr()
        w.setdiag(0)
        w.eliminate_zeros()
        w.data = np.power(w.data, p["alpha"])
        w = w @ sp.diags(1.0 / np.power(np.maximum(pop, 1.0), p["beta"]))
        return prune_rows(w.tocsr(), neighbours)
    counts = (x.T @ x).tocsr()
    counts.setdiag(0)
    counts.eliminate_zeros()
    if variant == "cosine":
        safe = np.maximum(pop, 1.0)
        counts = (
            sp.diags(1.0 / np.power(safe, p["alpha"]))
            @ counts
            @ sp.diags(1.0 / np.power(safe, p["beta"]))
        )
    return prune_rows(counts.tocsr(), neighbours)


@dataclass
class ItemToItem:
    """Scores a history by its items' similarity rows; ``similar`` reads one row.

    Returns only items with a positive score, so a product nobody bought gets ``[]``
    from ``similar``: chain a text model after it (:class:`retrieval.recommend.blend.Chain`).
    """

    vocab: ItemVocab
    sim: sp.csr_matrix
    half_life_days: float = math.inf
    name: str = "item2item"
    version: str = "unversioned"

    def __post_init__(self) -> None:
        n = len(self.vocab)
        if self.sim.shape != (n, n):
            raise ValueError(f"similarity is {self.sim.shape}, vocabulary has {n} items")
        self.sim = sp.csr_matrix(self.sim)

    def scores(self, history: Sequence[HistoryItem]) -> FloatArray:
        """Dense scores over the vocabulary: sum of weight x similarity row."""
        items, weights = history_weights(history, self.vocab, self.half_life_days)
        return self.scores_of(items, weights)

    def scores_of(self, items: np.ndarray, weights: FloatArray) -> FloatArray:
        """Dense scores for vocabulary indices ``items`` with ``weights``."""
        if len(items) == 0:
            return np.zeros(len(self.vocab))
        rows = self.sim[items]
        return np.asarray(rows.T @ weights, dtype=np.float64).ravel()

    def for_history(
        self, history: Sequence[HistoryItem], k: int, exclude: frozenset[str] = frozenset()
    ) -> list[Scored]:
        return top_k(self.scores(history), k, self.vocab, exclude)

    def similar(self, item: str, k: int, exclude: frozenset[str] = frozenset()) -> list[Scored]:
        i = self.vocab.index.get(item)
        if i is None:
            return []
        lo, hi = self.sim.indptr[i], self.sim.indptr[i + 1]
        scores = np.zeros(len(self.vocab))
        scores[self.sim.indices[lo:hi]] = self.sim.data[lo:hi]
        return top_k(scores, k, self.vocab, exclude | {item})
