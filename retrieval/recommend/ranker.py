"""The learned for-you ranker: candidates from several models, one linear score.

The hand-tuned blend (:class:`retrieval.recommend.blend.ForYou`) adds three normalised
signals with fixed weights. :class:`RankedForYou` instead gathers candidates (the
shopper's own items, their co-purchase neighbours, the neighbours of their last items,
trending items), describes each candidate by :data:`RANKER_FEATURES` and orders them by a
logistic model fitted on a validation month (:mod:`indexer.training.recommender_ranker`): "will this
shopper buy this item in the next weeks?". Two models are kept: one for the usual answer
(replenishment and discovery mixed) and one for discovery (``exclude_bought=true``, when
every history item the model knows is excluded), because what predicts a first purchase
(neighbours, trends) is not what predicts a re-purchase (own frequency and recency).

Features are computed from the history alone (plus item statistics frozen at training
time), so a new shopper, a guest and an erased shopper all go through the same code.
A shopping *day* stands in for a basket: the event API has no basket id, and the shops
we learn from rarely order twice a day.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from shopsearch.retrieval.recommend.base import HistoryItem, Scored
from shopsearch.retrieval.recommend.interactions import ItemVocab
from shopsearch.retrieval.recommend.scoring import (
    DAY_S,
    KIND_WEIGHTS,
    FloatArray,
    Interactions,
    csr_rows_sum,
    discovery_request,
    top_k,
)

__all__ = [
    "ITEM_STATS",
    "RANKER_FEATURES",
    "LinearRanker",
    "RankedForYou",
    "candidate_features",
    "item_statistics",
]

#: Item statistics frozen at training time (all ``log1p`` of counts except ``rebuy``).
ITEM_STATS: tuple[str, ...] = ("pop7", "pop30", "pop90", "pop365", "rebuy", "buyers")
#: The columns of :func:`candidate_features`, in order.
RANKER_FEATURES: tuple[str, ...] = (
    "events",  # kind-weighted count of the shopper's events of the item
    "days_since",  # days since the shopper's last event of the item (9999: never)
    "recent30",  # events decayed with a 30-day half-life
    "recent180",  # ... 180-day half-life
    "neighbours",  # shopper-level co-purchase score of the history
    "neighbours_rel",  # the same / its maximum over the vocabulary
    "last_items",  # item-to-item score from the 10 newest distinct items
    "last_items_rel",
    "text",  # cosine to the recency-weighted centroid of the history's descriptions
    *ITEM_STATS,
    "days",  # shopping days on which the shopper had the item
    "share",  # days / the shopper's shopping days
    "in_last_day",  # events of the item on the newest shopping day
    "in_last_3_days",  # ... on the 3 newest shopping days
    "recent7",  # events decayed with a 7-day half-life
    "owned",  # 1 if the history holds the item
    "share_x_rebuy",
    "owned_x_rebuy",
    "owned_x_pop7",
    "log_days_x_rebuy",
)
#: Candidates per source (the history's own items are always candidates).
NEIGHBOUR_CANDIDATES = 150
LAST_ITEM_CANDIDATES = 75
POPULAR_CANDIDATES = 50
#: Distinct newest items whose item-to-item rows give ``last_items``.
LAST_ITEMS = 10
#: ``days_since`` of an item the shopper never had.
NEVER_DAYS = 9999.0

IntArray = npt.NDArray[np.int64]


def item_statistics(events: Interactions, vocab: ItemVocab) -> dict[str, FloatArray]:
    """:data:`ITEM_STATS` over ``vocab`` from purchase ``events``, as of their newest.

    ``popN``: log1p of distinct shoppers who bought the item in the last N days;
    ``buyers``: log1p of all distinct buyers; ``rebuy``: (shoppers who bought it on 2+
    baskets + 0.1) / (buyers + 1), a smoothed re-purchase rate.
    """
    n = len(vocab)
    bought = events.kind == "purchase"
    if not bought.any():
        return {name: np.zeros(n) for name in ITEM_STATS}
    ev = events.select(bought)
    idx = vocab.indices(list(ev.item))
    known = idx >= 0
    idx = idx[known]
    user = np.unique(ev.user[known], return_inverse=True)[1]
    basket = np.unique(ev.basket[known], return_inverse=True)[1]
    age = (float(ev.ts.max()) - ev.ts[known]) / DAY_S
    out: dict[str, FloatArray] = {}
    for window in (7, 30, 90, 365):
        recent = age < window
        pairs = np.unique(np.stack([idx[recent], user[recent]]), axis=1)
        out[f"pop{window}"] = np.log1p(np.bincount(pairs[0], minlength=n)).astype(np.float64)
    item_user_basket = np.unique(np.stack([idx, user, basket]), axis=1)
    item_user, baskets = np.unique(item_user_basket[:2], axis=1, return_counts=True)
    buyers = np.bincount(item_user[0], minlength=n).astype(np.float64)
    rebuyers = np.bincount(item_user[0], weights=(baskets >= 2).astype(float), minlength=n)
    out["rebuy"] = (rebuyers + 0.1) / (buyers + 1.0)
    out["buyers"] = np.log1p(buyers)
    return out


@dataclass(frozen=True)
class LinearRanker:
    """``sigmoid(w . (log1p(max(x, 0)) - mean) / scale + bias)`` over :data:`RANKER_FEATURES`.

    A positive, monotone score, so :class:`retrieval.recommend.blend.Chain` keeps it.
    """

    weights: tuple[float, ...]
    bias: float
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    features: tuple[str, ...] = RANKER_FEATURES

    def __post_init__(self) -> None:
        n = len(self.features)
        if not (len(self.weights) == len(self.mean) == len(self.scale) == n):
            raise ValueError(f"a ranker over {n} features needs {n} weights, means and scales")
        if tuple(self.features) != RANKER_FEATURES:
            raise ValueError(
                f"ranker features {list(self.features)} are not this code's "
                f"{list(RANKER_FEATURES)}; retrain with `shopsearch train recommender`"
            )

    @staticmethod
    def transform(x: FloatArray) -> FloatArray:
        """The input transform (counts and scores are heavy-tailed)."""
        return np.log1p(np.maximum(x, 0.0))

    def score(self, x: FloatArray) -> FloatArray:
        """Scores of the rows of the raw feature matrix ``x``."""
        z = (self.transform(x) - np.asarray(self.mean)) / np.asarray(self.scale)
        logit = z @ np.asarray(self.weights) + self.bias
        return 1.0 / (1.0 + np.exp(-logit))

    def to_dict(self) -> dict[str, Any]:
        return {
            "features": list(self.features),
            "weights": list(self.weights),
            "bias": self.bias,
            "mean": list(self.mean),
            "scale": list(self.scale),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LinearRanker:
        return cls(
            tuple(float(w) for w in data["weights"]),
            float(data["bias"]),
            tuple(float(m) for m in data["mean"]),
            tuple(float(s) for s in data["scale"]),
            tuple(str(f) for f in data["features"]),
        )


def _top(scores: FloatArray, k: int) -> IntArray:
    k = min(k, len(scores))
    if k <= 0:
        return np.zeros(0, np.int64)
    part = np.argpartition(-scores, k - 1)[:k]
    return part[scores[part] > 0].astype(np.int64)


@dataclass
class RankedForYou:
    """Candidates + :data:`RANKER_FEATURES` + a :class:`LinearRanker` (module docstring).

    ``as_of`` is the newest training event (epoch seconds): ages are measured from it or
    from the history's newest event, whichever is later, so the same history ranks the
    same whenever it is asked about until the next training.
    """

    vocab: ItemVocab
    neighbours_matrix: sp.csr_matrix
    neighbours_half_life: float
    last_items: sp.csr_matrix
    embeddings: npt.NDArray[np.float32]
    stats: Mapping[str, FloatArray]
    as_of: float
    ranker: LinearRanker
    ranker_discovery: LinearRanker
    similar_model: Any  # a Recommender (its ``similar`` is this model's)
    name: str = "for-you-ranker"
    version: str = "unversioned"
    _popular: IntArray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        missing = [s for s in ITEM_STATS if s not in self.stats]
        if missing:
            raise ValueError(f"item statistics lack {missing}")
        self.last_items = sp.csr_matrix(self.last_items)
        self.neighbours_matrix = sp.csr_matrix(self.neighbours_matrix)
        popular = np.concatenate(
            [_top(np.asarray(self.stats[s]), POPULAR_CANDIDATES) for s in ("pop7", "pop30")]
        )
        self._popular = np.unique(popular)

    def features(
        self, history: Sequence[HistoryItem], exclude_idx: IntArray, *, owned_candidates: bool
    ) -> tuple[IntArray, FloatArray]:
        """Candidate vocabulary indices and their raw feature rows (same order)."""
        return candidate_features(self, history, exclude_idx, owned_candidates=owned_candidates)

    def score_items(self, history: Sequence[HistoryItem], items: Sequence[str]) -> FloatArray:
        """The usual (not discovery) ranker's probability that the shopper with ``history``
        buys each of ``items`` next, in their order; 0 for an item outside the vocabulary
        and for every item when the history holds no known item."""
        out = np.zeros(len(items))
        idx = self.vocab.indices(list(items))
        known = idx >= 0
        if not known.any():
            return out
        cand, x = candidate_features(
            self, history, np.zeros(0, np.int64), owned_candidates=True, candidates=idx[known]
        )
        if len(cand):
            scores = self.ranker.score(x)
            out[known] = scores[np.searchsorted(cand, idx[known])]
        return out

    def for_history(
        self, history: Sequence[HistoryItem], k: int, exclude: frozenset[str] = frozenset()
    ) -> list[Scored]:
        if not any(h.item in self.vocab.index for h in history):
            # Nothing known about the shopper: the caller's fallbacks (popular) answer,
            # so a shopper without history gets exactly the popular list.
            return []
        discovery = discovery_request(history, self.vocab, exclude)
        bad = self.vocab.indices(list(exclude)) if exclude else np.zeros(0, np.int64)
        cand, x = self.features(history, bad[bad >= 0], owned_candidates=not discovery)
        if len(cand) == 0:
            return []
        model = self.ranker_discovery if discovery else self.ranker
        dense = np.zeros(len(self.vocab))
        dense[cand] = model.score(x)
        return top_k(dense, k, self.vocab, exclude)

    def similar(self, item: str, k: int, exclude: frozenset[str] = frozenset()) -> list[Scored]:
        result: list[Scored] = self.similar_model.similar(item, k, exclude)
        return result


def candidate_features(
    model: RankedForYou,
    history: Sequence[HistoryItem],
    exclude_idx: IntArray,
    *,
    owned_candidates: bool,
    candidates: IntArray | None = None,
) -> tuple[IntArray, FloatArray]:
    """Candidates for ``history`` (``exclude_idx`` left out; the history's own items
    only when ``owned_candidates``) and their :data:`RANKER_FEATURES` rows. Given
    ``candidates`` (vocabulary indices), those are described instead (sorted, unique;
    ``owned_candidates`` then has no effect).

    Per-item history aggregates are computed over the history's distinct items only and
    looked up for the candidates: a request costs O(history + candidates), plus two
    sparse row sums over the vocabulary for candidate selection.
    """
    vocab = model.vocab
    empty = (np.zeros(0, np.int64), np.zeros((0, len(RANKER_FEATURES))))
    if not history:
        return empty
    idx = vocab.indices([h.item for h in history])
    ts_all = np.fromiter((h.ts.timestamp() for h in history), np.float64, len(history))
    kind_all = np.fromiter(
        (KIND_WEIGHTS.get(h.kind, 0.0) for h in history), np.float64, len(history)
    )
    known = idx >= 0
    if not known.any():
        return empty
    idx, ts, kind_w = idx[known], ts_all[known], kind_all[known]
    now = max(model.as_of, float(ts.max()))
    age = (now - ts) / DAY_S
    # The history's distinct items; ``first`` is each one's newest event (newest first).
    items, first, inv = np.unique(idx, return_index=True, return_inverse=True)

    # Candidate selection: shopper-level neighbours (recency-weighted as
    # ItemToItem.scores weighs a history) and the item-to-item rows of the newest items.
    nb_w = kind_all * np.exp2(-(ts_all.max() - ts_all) / (model.neighbours_half_life * DAY_S))
    nb_w = np.bincount(inv, weights=nb_w[known], minlength=len(items)).astype(np.float64)
    positive = nb_w > 0
    neighbours = csr_rows_sum(model.neighbours_matrix, items[positive], nb_w[positive])
    newest = items[np.argsort(first, kind="stable")[:LAST_ITEMS]]
    last = csr_rows_sum(model.last_items, newest, np.ones(len(newest), dtype=np.float64))
    neighbours_rel = neighbours / (neighbours.max() or 1.0)
    last_rel = last / (last.max() or 1.0)
    if candidates is None:
        pool = [_top(neighbours, NEIGHBOUR_CANDIDATES), _top(last_rel, LAST_ITEM_CANDIDATES)]
        pool.append(model._popular)
        if owned_candidates:
            pool.append(items)
        candidates = np.concatenate(pool)
    cand = np.unique(candidates).astype(np.int64)
    if len(exclude_idx):
        cand = cand[~np.isin(cand, exclude_idx)]
    if not len(cand):
        return empty

    # History aggregates per distinct item, then looked up for the candidates.
    m = len(items)

    def per_item(weights: FloatArray) -> FloatArray:
        return np.bincount(inv, weights=weights, minlength=m).astype(np.float64, copy=False)

    day = np.floor(ts / DAY_S).astype(np.int64)
    days_list, day_of = np.unique(day, return_inverse=True)
    n_days = len(days_list)
    item_day = np.unique(np.stack([inv, day_of]), axis=1)
    day_rank = n_days - 1 - item_day[1]  # 0 = the newest shopping day
    own = {
        "events": per_item(kind_w),
        "days_since": age[first],
        "recent30": per_item(kind_w * np.exp2(-age / 30.0)),
        "recent180": per_item(kind_w * np.exp2(-age / 180.0)),
        "recent7": per_item(kind_w * np.exp2(-age / 7.0)),
        "days": np.bincount(item_day[0], minlength=m).astype(np.float64),
        "in_last_day": np.bincount(item_day[0][day_rank < 1], minlength=m).astype(np.float64),
        "in_last_3": np.bincount(item_day[0][day_rank < 3], minlength=m).astype(np.float64),
    }
    pos = np.minimum(np.searchsorted(items, cand), m - 1)
    mine = items[pos] == cand

    def at(name: str, missing: float = 0.0) -> FloatArray:
        out = np.full(len(cand), missing)
        out[mine] = own[name][pos[mine]]
        return out

    centroid = (model.embeddings[idx] * np.exp2(-age / 30.0)[:, None]).sum(axis=0)
    norm = float(np.linalg.norm(centroid))
    text = model.embeddings[cand] @ (centroid / norm) if norm > 0 else np.zeros(len(cand))
    days = at("days")
    share = days / max(n_days, 1)
    owned = (at("events") > 0).astype(np.float64)
    stat = {name: np.asarray(model.stats[name])[cand] for name in ITEM_STATS}
    rebuy = stat["rebuy"]
    columns: list[FloatArray] = [
        at("events"),
        at("days_since", NEVER_DAYS),
        at("recent30"),
        at("recent180"),
        neighbours[cand],
        neighbours_rel[cand],
        last[cand],
        last_rel[cand],
        np.asarray(text, dtype=np.float64),
        *(stat[name] for name in ITEM_STATS),
        days,
        share,
        at("in_last_day"),
        at("in_last_3"),
        at("recent7"),
        owned,
        share * rebuy,
        owned * rebuy,
        owned * stat["pop7"],
        np.log1p(days) * rebuy,
    ]
    return cand, np.column_stack(columns)
