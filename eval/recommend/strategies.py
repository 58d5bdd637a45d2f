"""The strategies compared side by side: the reference points of the datasets README
(simple, no learning) and the trained models.

Reference points (fitted on the evaluation's history, nothing tuned):

- ``popularity-last-month``: most purchases (one per basket) in the last 30 days.
- ``own-most-bought``: the shopper's own items by number of purchases.
- ``item-knn-cosine``: cosine over shopper x item co-purchases, the history's items
  included (self-similarity 1), summed over the history.
- ``copurchase-count``: baskets holding both items (item to item), popularity fill.

Trained (:class:`retrieval.recommend.bundle.RecommenderBundle`): ``popularity``
(trending), ``repurchase``, ``item2item`` (hybrid, with text and popularity fallback),
``text`` (cold start), ``for-you-blend`` (the hand-tuned blend) and ``for-you`` (what the
API serves: the learned ranker when the bundle has one, else the blend).
"""

from __future__ import annotations

import math

import scipy.sparse as sp

from shopsearch.retrieval.recommend.base import Recommender
from shopsearch.retrieval.recommend.blend import Chain
from shopsearch.retrieval.recommend.bundle import RecommenderBundle
from shopsearch.retrieval.recommend.interactions import ItemVocab
from shopsearch.retrieval.recommend.item2item import ItemToItem, fit_similarity
from shopsearch.retrieval.recommend.popularity import Popularity, popularity_scores
from shopsearch.retrieval.recommend.repurchase import Repurchase
from shopsearch.retrieval.recommend.scoring import Interactions

__all__ = ["reference_strategies", "trained_strategies"]


def reference_strategies(events: Interactions, vocab: ItemVocab) -> dict[str, Recommender]:
    """The README's reference points, fitted on ``events``."""
    as_of = float(events.ts.max())
    last_month = Popularity(
        vocab,
        popularity_scores(events, vocab, as_of=as_of, window_days=30),
        "popularity-last-month",
    )
    all_time = popularity_scores(events, vocab, as_of=as_of)
    knn = fit_similarity(events, vocab, variant="cosine", unit="user", neighbours=200)
    knn = (knn + sp.identity(len(vocab), format="csr")).tocsr()
    count = fit_similarity(events, vocab, variant="count", unit="basket", neighbours=200)
    return {
        "popularity-last-month": last_month,
        "own-most-bought": Repurchase(vocab, all_time, math.inf, "own-most-bought"),
        "item-knn-cosine": ItemToItem(vocab, knn, math.inf, "item-knn-cosine"),
        "copurchase-count": Chain(
            [ItemToItem(vocab, count, math.inf, "copurchase-count"), last_month],
            "copurchase-count",
        ),
    }


def trained_strategies(bundle: RecommenderBundle) -> dict[str, Recommender]:
    """The trained models of ``bundle`` under their strategy names."""
    return {
        "popularity": bundle.popular,
        "repurchase": bundle.repurchase,
        "item2item": bundle.similar_chain,
        "text": bundle.text,
        "for-you-blend": Chain([bundle.blend, bundle.text, bundle.popular], "for-you-blend"),
        "for-you": bundle.for_you,
    }
