"""The learned for-you ranker: item statistics, candidate features, fitting, and the
bundle serving it (saved, loaded, cold shoppers, discovery)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shopsearch.indexer.training.recommender import interaction_arrays
from shopsearch.indexer.training.recommender_ranker import (
    MIN_POSITIVES,
    fit_linear_ranker,
    fit_rankers,
    neutral_ranker,
)
from shopsearch.indexer.training.recommender_tuning import validation_set
from shopsearch.retrieval.recommend.base import HistoryItem
from shopsearch.retrieval.recommend.bundle import (
    RecommenderConfig,
    fit_bundle,
    load_bundle,
    save_bundle,
)
from shopsearch.retrieval.recommend.interactions import ItemVocab
from shopsearch.retrieval.recommend.ranker import (
    NEVER_DAYS,
    RANKER_FEATURES,
    LinearRanker,
    item_statistics,
)

T0 = datetime(2011, 9, 1, tzinfo=UTC)
#: basket -> (user, day, items): u1 buys "a" twice, "d" is bought by three shoppers lately.
BASKETS = {
    "b1": ("u1", 0, ["a", "b"]),
    "b2": ("u2", 1, ["a", "b"]),
    "b3": ("u3", 2, ["a", "b", "c"]),
    "b4": ("u1", 3, ["a", "c"]),
    "b5": ("u4", 20, ["d"]),
    "b6": ("u5", 21, ["d"]),
    "b7": ("u6", 22, ["d", "e"]),
}
ITEMS = ["a", "b", "c", "d", "e", "new"]
COL = {name: i for i, name in enumerate(RANKER_FEATURES)}


def _frame() -> pd.DataFrame:
    rows = [
        (user, item, T0 + timedelta(days=day), basket, "purchase", 1.0)
        for basket, (user, day, items) in BASKETS.items()
        for item in items
    ]
    return pd.DataFrame(rows, columns=["user", "item", "ts", "basket", "kind", "quantity"])


def _h(*items: tuple[str, int]) -> list[HistoryItem]:
    hist = [HistoryItem(i, "purchase", T0 + timedelta(days=d)) for i, d in items]
    return sorted(hist, key=lambda h: h.ts, reverse=True)


def _one_hot_ranker(feature: str, weight: float = 5.0) -> LinearRanker:
    n = len(RANKER_FEATURES)
    w = [0.0] * n
    w[COL[feature]] = weight
    return LinearRanker(tuple(w), 0.0, (0.0,) * n, (1.0,) * n)


@pytest.fixture()
def bundle():
    vocab = ItemVocab.of(ITEMS)
    emb = np.eye(len(ITEMS), 3, dtype=np.float32)
    config = RecommenderConfig(history_params={"lambda": 0.5}, neighbours=10)
    rankers = (_one_hot_ranker("events"), _one_hot_ranker("pop7"))
    return fit_bundle(interaction_arrays(_frame()), vocab, emb, config, rankers=rankers)


def test_item_statistics_counts_shoppers_and_rebuyers() -> None:
    vocab = ItemVocab.of(ITEMS)
    stats = item_statistics(interaction_arrays(_frame()), vocab)
    a, d, new = vocab.index["a"], vocab.index["d"], vocab.index["new"]
    # "a": buyers u1, u2, u3; u1 bought it in two baskets -> (1 + 0.1) / (3 + 1).
    assert stats["rebuy"][a] == pytest.approx(1.1 / 4)
    assert stats["buyers"][a] == pytest.approx(math.log1p(3))
    # Last 7 days (as of day 22): only "d" (3 shoppers) and "e" (1).
    assert stats["pop7"][d] == pytest.approx(math.log1p(3))
    assert stats["pop7"][a] == 0 and stats["pop365"][a] == pytest.approx(math.log1p(3))
    assert stats["buyers"][new] == 0 and stats["rebuy"][new] == pytest.approx(0.1)


def test_candidate_features_describe_the_history(bundle) -> None:
    model = bundle.ranked
    vocab = bundle.vocab
    history = _h(("a", 0), ("a", 3), ("c", 3))
    cand, x = model.features(history, np.zeros(0, np.int64), owned_candidates=True)
    assert x.shape == (len(cand), len(RANKER_FEATURES))
    row = {vocab.items[c]: x[k] for k, c in enumerate(cand)}
    assert {"a", "c", "d"} <= set(row)  # owned items and trending ones
    # Ages count from the model's newest training event (day 22).
    assert row["a"][COL["events"]] == 2 and row["a"][COL["days_since"]] == pytest.approx(19)
    assert row["a"][COL["days"]] == 2 and row["a"][COL["share"]] == 1.0
    assert row["c"][COL["share"]] == 0.5 and row["c"][COL["in_last_day"]] == 1
    assert row["a"][COL["in_last_day"]] == 1 and row["a"][COL["owned"]] == 1
    assert row["d"][COL["owned"]] == 0 and row["d"][COL["days_since"]] == NEVER_DAYS
    # Discovery candidates leave the owned items out, and exclusions always hold.
    cand2, _ = model.features(history, vocab.indices(["a", "c"]), owned_candidates=False)
    assert not {"a", "c"} & {vocab.items[c] for c in cand2}


def test_score_items_scores_the_items_asked_in_their_order(bundle) -> None:
    model = bundle.ranked
    history = _h(("a", 0), ("a", 3), ("c", 3))
    cand, x = model.features(history, np.zeros(0, np.int64), owned_candidates=True)
    pooled = dict(zip((bundle.vocab.items[c] for c in cand), model.ranker.score(x), strict=True))
    # Items outside the ranker's own pool ("b", "e") are described all the same; one
    # outside the vocabulary scores 0.
    got = model.score_items(history, ["c", "zzz", "a", "b", "e"])
    assert got[0] == pytest.approx(pooled["c"]) and got[2] == pytest.approx(pooled["a"])
    assert got[1] == 0.0 and 0.0 < got[3] < 1.0 and 0.0 < got[4] < 1.0
    # The usual ranker weighs own events: "a" (bought twice) above "c" above unowned "b".
    assert got[2] > got[0] > got[3]
    assert model.score_items([], ["a", "b"]).tolist() == [0.0, 0.0]
    assert model.score_items(_h(("zzz", 1)), ["a"]).tolist() == [0.0]


def test_bundle_serves_the_ranker_and_its_fallbacks(bundle, tmp_path: Path) -> None:
    # A shopper with history: the usual ranker (weight on own events) puts "a" first.
    got = bundle.for_you.for_history(_h(("a", 0), ("a", 3), ("c", 3)), 3)
    assert got[0].item == "a"
    # Every history item excluded: the discovery ranker (weight on pop7) puts "d" first.
    new = bundle.for_you.for_history(_h(("a", 3)), 3, exclude=frozenset({"a"}))
    assert new[0].item == "d" and "a" not in {s.item for s in new}
    # No known history: exactly the popular list.
    popular = [s.item for s in bundle.popular.for_history([], 5)]
    assert [s.item for s in bundle.for_you.for_history([], 5)] == popular
    assert [s.item for s in bundle.for_you.for_history(_h(("zzz", 1)), 5)] == popular
    # Saved and loaded: the same answers.
    save_bundle(bundle, tmp_path)
    loaded = load_bundle(tmp_path)
    assert loaded.rankers == bundle.rankers and loaded.as_of == bundle.as_of
    for history in ([], _h(("c", 3)), _h(("a", 1), ("d", 22))):
        assert loaded.for_you.for_history(history, 5) == bundle.for_you.for_history(history, 5)


def test_fit_linear_ranker_learns_the_signal_and_refuses_noise() -> None:
    rng = np.random.default_rng(0)
    x = rng.exponential(1.0, size=(4000, len(RANKER_FEATURES)))
    y = rng.random(4000) < 1 / (1 + np.exp(-(3 * np.log1p(x[:, COL["events"]]) - 3)))
    ranker = fit_linear_ranker(x, y)
    assert ranker is not None
    assert int(np.argmax(ranker.weights)) == COL["events"]
    assert fit_linear_ranker(x[:100], np.arange(100) < MIN_POSITIVES - 1) is None
    assert neutral_ranker().score(x[:3]).tolist() == [0.5, 0.5, 0.5]


def test_fit_rankers_with_too_little_data_keeps_the_blend() -> None:
    frame = _frame()
    vocab = ItemVocab.of(ITEMS)
    val = validation_set(frame, interaction_arrays, 5.0)
    plain = fit_bundle(
        val.events, vocab, np.eye(len(ITEMS), 3, dtype=np.float32), RecommenderConfig()
    )
    assert fit_rankers(plain, val) is None
    assert plain.ranked is None  # no rankers: for-you is the blend


def test_csr_rows_sum_equals_the_sparse_product() -> None:
    import scipy.sparse as sp

    from shopsearch.retrieval.recommend.scoring import csr_rows_sum

    m = sp.random(30, 40, density=0.2, format="csr", random_state=0)
    rows = np.array([3, 7, 7, 29])
    weights = np.array([0.5, 1.0, 2.0, -1.0])
    expected = np.asarray(m[rows].T @ weights).ravel()
    assert np.allclose(csr_rows_sum(m, rows, weights), expected)
    assert csr_rows_sum(m, np.zeros(0, np.int64), np.zeros(0)).tolist() == [0.0] * 40
