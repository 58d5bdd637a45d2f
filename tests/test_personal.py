"""Shopper-aware re-scoring (rerank/personal.py) and its fit (rerank/personal_fit.py), on
small hand-made vectors and co-purchase counts whose right answers are known."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from shopsearch.rerank.personal import (
    FEATURES,
    FORYOU_FLOOR,
    PersonalError,
    PersonalParams,
    PersonalRescorer,
    default_weights,
)
from shopsearch.rerank.personal_fit import fit_weights, mrr_at_10
from shopsearch.retrieval.recommend.base import HistoryItem

NOW = datetime(2011, 9, 30, 12, tzinfo=UTC)
ITEMS = ("bag-red", "bag-blue", "candle-red", "candle-white", "mug")


def unit(*xs: float) -> np.ndarray:
    v = np.asarray(xs, dtype=np.float32)
    return v / np.linalg.norm(v)


#: dim 0: "bag", 1: "candle", 2: "red", 3: "mug-ness"
VECTORS = np.stack(
    [unit(1, 0, 1, 0), unit(1, 0, 0, 0.2), unit(0, 1, 1, 0), unit(0, 1, 0, 0.2), unit(0, 0, 0, 1)]
)


def rescorer(weights: dict[str, dict[str, float]] | None = None) -> PersonalRescorer:
    counts = np.zeros((5, 5))
    counts[0, 4] = counts[4, 0] = 6  # bag-red is bought with the mug
    counts[1, 2] = counts[2, 1] = 1
    return PersonalRescorer(
        items=ITEMS,
        item_vectors=VECTORS,
        copurchase=sp.csr_matrix(counts),
        baskets=np.array([10.0, 10, 10, 10, 10]),
        weights=weights
        or default_weights(
            {"bought": 1, "bought_before": 1, "copurchase": 1, "attention": 1, "nearest": 0.5}
        ),
        params=PersonalParams(tau=0.1, half_life_days=30),
        card={"version": "test"},
    )


def history(*items: str) -> list[HistoryItem]:
    return [HistoryItem(item, "purchase", NOW - timedelta(days=k)) for k, item in enumerate(items)]


def rank(ids: list[str], scores: np.ndarray) -> list[str]:
    return [ids[k] for k in sorted(range(len(ids)), key=lambda k: (-scores[k], ids[k]))]


def test_empty_history_returns_the_base_scores_unchanged() -> None:
    base = np.array([3.0, 2.5, 2.5, 0.1])
    ids = ["bag-blue", "bag-red", "candle-red", "unknown"]
    vecs = np.vstack([VECTORS[1], VECTORS[0], VECTORS[2], unit(1, 1, 1, 1)])
    for strategy in ("blend", "copurchase"):
        out = rescorer().rescore(VECTORS[0], ids, vecs, base, [], strategy=strategy)  # type: ignore[arg-type]
        assert np.array_equal(out.scores, base)
        assert out.scores is not base
        assert not out.personal.any()


def test_only_reorders_the_candidates_given() -> None:
    ids = ["bag-blue", "bag-red", "unknown-item"]
    vecs = np.vstack([VECTORS[1], VECTORS[0], unit(1, 0, 0, 0)])
    base = np.array([2.0, 1.0, 1.5])
    out = rescorer().rescore(VECTORS[0], ids, vecs, base, history("mug", "bag-red", "candle-red"))
    assert out.scores.shape == (3,) and out.personal.shape == (3,)
    assert np.allclose(out.scores, base + out.personal)
    assert sorted(rank(ids, out.scores)) == sorted(ids)
    # bag-red was bought (and goes with the mug): it overtakes the more popular bag-blue.
    assert rank(ids, out.scores)[0] == "bag-red"


def test_no_personal_evidence_keeps_the_base_order() -> None:
    # A history of items the model does not know and that are not candidates.
    ids = ["bag-blue", "bag-red", "candle-red"]
    base = np.array([1.0, 3.0, 2.0])
    out = rescorer().rescore(VECTORS[0], ids, VECTORS[[1, 0, 2]], base, history("x", "y"))
    assert np.array_equal(out.scores, base)


def test_attention_picks_the_history_item_related_to_the_query() -> None:
    only_attention = default_weights({"attention": 1.0})
    scorer = rescorer(only_attention)
    shopper = history("bag-red", "candle-white")  # a red bag and a white candle
    base = np.array([1.0, 1.0])
    # "bag": the attention goes to the red bag, so the red bag ranks first...
    bags = ["bag-blue", "bag-red"]
    out = scorer.rescore(unit(1, 0, 0, 0), bags, VECTORS[[1, 0]], base, shopper)
    assert rank(bags, out.scores)[0] == "bag-red"
    # ...and for "candle" the white candle leads, although the same shopper bought red.
    candles = ["candle-red", "candle-white"]
    out = scorer.rescore(unit(0, 1, 0, 0), candles, VECTORS[[2, 3]], base, shopper)
    assert rank(candles, out.scores)[0] == "candle-white"
    # The query matters: the context vector differs between the two queries.
    x_bag = scorer.features(unit(1, 0, 0, 0), ["bag-red"], VECTORS[[0]], np.ones(1), shopper)
    x_candle = scorer.features(unit(0, 1, 0, 0), ["bag-red"], VECTORS[[0]], np.ones(1), shopper)
    att = FEATURES.index("attention")
    assert x_bag[0, att] > x_candle[0, att] + 0.3


def test_copurchase_boost_prefers_what_goes_with_the_history() -> None:
    scorer = rescorer()
    ids = ["bag-blue", "bag-red"]
    out = scorer.rescore(
        unit(1, 0, 0, 0),
        ids,
        VECTORS[[1, 0]],
        np.array([1.0, 1.0]),
        history("mug"),
        strategy="copurchase",
    )
    assert rank(ids, out.scores)[0] == "bag-red"
    assert out.personal[0] == 0.0 and out.personal[1] > 0


def test_recency_weights_newer_purchases_more() -> None:
    scorer = rescorer()
    old_new = [
        HistoryItem("bag-blue", "purchase", NOW),
        HistoryItem("bag-red", "purchase", NOW - timedelta(days=120)),
    ]
    x = scorer.features(
        unit(1, 0, 0, 0), ["bag-blue", "bag-red"], VECTORS[[1, 0]], np.ones(2), old_new
    )
    bought = FEATURES.index("bought")
    assert x[0, bought] == pytest.approx(np.log1p(1.0))
    assert x[1, bought] == pytest.approx(np.log1p(0.5**4))


def test_save_load_round_trip(tmp_path: Path) -> None:
    scorer = rescorer()
    scorer.save(tmp_path / "model")
    loaded = PersonalRescorer.load(tmp_path / "model")
    assert loaded.weights == scorer.weights and loaded.params == scorer.params
    assert loaded.card == {"version": "test"}
    ids = ["bag-blue", "bag-red", "candle-red"]
    args = (
        unit(1, 0, 1, 0),
        ids,
        VECTORS[[1, 0, 2]],
        np.array([1.0, 2.0, 3.0]),
        history("mug", "bag-red"),
    )
    assert np.array_equal(loaded.rescore(*args).scores, scorer.rescore(*args).scores)


def test_load_refuses_a_directory_that_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(PersonalError, match="not a personal re-scoring model"):
        PersonalRescorer.load(tmp_path)


def test_bad_shapes_and_strategies_are_named() -> None:
    scorer = rescorer()
    with pytest.raises(PersonalError, match="same length"):
        scorer.rescore(VECTORS[0], ["bag-red"], VECTORS[:2], np.ones(2), history("mug"))
    with pytest.raises(PersonalError, match="strategy 'nope'"):
        scorer.rescore(
            VECTORS[0], ["bag-red"], VECTORS[:1], np.ones(1), history("mug"), strategy="nope"
        )  # type: ignore[arg-type]
    with pytest.raises(PersonalError, match="base must be > 0"):
        rescorer({"blend": {f: 0.0 for f in FEATURES}})


def test_fit_learns_that_bought_items_are_relevant() -> None:
    rng = np.random.default_rng(0)
    xs, ys = [], []
    for _ in range(200):
        x = rng.random((20, len(FEATURES)))
        x[:, FEATURES.index("bought_before")] = 0
        hit = rng.integers(20)
        x[hit, FEATURES.index("bought_before")] = 1
        xs.append(x)
        ys.append(np.arange(20) == hit)
    w = fit_weights(xs, ys, list(range(len(FEATURES))))
    assert w[FEATURES.index("bought_before")] > 5 * abs(w[FEATURES.index("attention")])
    assert w[0] >= 0.01


def test_mrr_at_10_ties_break_by_id() -> None:
    assert (
        mrr_at_10(np.array([1.0, 1.0, 0.5]), np.array([False, True, False]), ["b", "a", "c"]) == 1.0
    )
    assert mrr_at_10(np.array([1.0, 2.0]), np.array([True, False]), ["a", "b"]) == 0.5


class FixedForYou:
    """The for-you ranker's exact twin for these tests: a fixed probability per item,
    0 for the others (what :meth:`RankedForYou.score_items` gives an unknown item)."""

    def __init__(self, chances: dict[str, float]) -> None:
        self.chances = chances
        self.histories: list[int] = []

    def score_items(self, history: Sequence[HistoryItem], items: Sequence[str]) -> np.ndarray:
        self.histories.append(len(history))
        return np.array([self.chances.get(i, 0.0) for i in items])


def test_foryou_feature_is_the_log_of_the_rankers_probability() -> None:
    ids = ["bag-blue", "bag-red", "candle-red"]
    vecs = VECTORS[[1, 0, 2]]
    base = np.array([3.0, 2.0, 1.0])
    column = FEATURES.index("foryou")
    without = rescorer().features(VECTORS[0], ids, vecs, base, history("mug"))
    assert not without[:, column].any()  # no ranker attached: the feature is 0
    weights = default_weights({"foryou": 2.0})
    scorer = rescorer(weights)
    scorer.foryou = FixedForYou({"candle-red": 0.5, "bag-blue": 0.01})
    x = scorer.features(VECTORS[0], ids, vecs, base, history("mug"))
    assert x[:, column] == pytest.approx(np.log([0.01, FORYOU_FLOOR, 0.5]))
    # The ranker's favourite climbs from last to first; the base order holds otherwise.
    out = scorer.rescore(VECTORS[0], ids, vecs, base, history("mug"))
    assert rank(ids, out.scores) == ["candle-red", "bag-blue", "bag-red"]
    # An empty history is never shown to the ranker: the answer is the base itself.
    calls = len(scorer.foryou.histories)
    assert np.array_equal(scorer.rescore(VECTORS[0], ids, vecs, base, []).scores, base)
    assert len(scorer.foryou.histories) == calls


def test_a_six_feature_model_loads_with_a_foryou_weight_of_zero(tmp_path: Path) -> None:
    scorer = rescorer()
    scorer.save(tmp_path / "old")
    blend_file = tmp_path / "old" / "blend.json"
    blend = json.loads(blend_file.read_text())
    blend["format"] = "shopsearch-personal-1"
    del blend["weights"]["blend"]["foryou"]
    blend_file.write_text(json.dumps(blend))
    loaded = PersonalRescorer.load(tmp_path / "old")
    assert loaded.weights["blend"]["foryou"] == 0.0
    assert loaded.weights == scorer.weights
    blend["format"] = "shopsearch-personal-0"
    blend_file.write_text(json.dumps(blend))
    with pytest.raises(PersonalError, match="retrain it"):
        PersonalRescorer.load(tmp_path / "old")


def test_too_few_training_queries_are_refused_not_fitted() -> None:
    from shopsearch.indexer.training.personal import (
        PersonalStats,
        PreparedPersonal,
        TrainingExample,
    )
    from shopsearch.rerank.personal_fit import MIN_EXAMPLES, train_rescorer

    stats = PersonalStats(ITEMS, VECTORS, sp.csr_matrix((5, 5)), np.ones(5))
    ids = ("bag-blue", "bag-red", "candle-red")
    examples = [
        TrainingExample(
            qid=f"q{k}",
            customer=f"c{k}",
            query_vec=VECTORS[0],
            candidate_ids=ids,
            candidate_vecs=VECTORS[[1, 0, 2]],
            base_scores=np.array([3.0, 2.0, 1.0]),
            relevant=np.array([False, True, False]),
            history=tuple(history("bag-red")),
            now=NOW,
        )
        for k in range(MIN_EXAMPLES - 1)
    ]
    prepared = PreparedPersonal(stats, stats, examples, ("a", "b"), ("c", "d"), len(examples))
    with pytest.raises(PersonalError, match=f"needs at least {MIN_EXAMPLES}"):
        train_rescorer(prepared)
    prepared.examples.append(examples[0])
    scorer, report = train_rescorer(prepared)  # one more, and the blend is fitted
    assert scorer.weights["blend"]["bought_before"] > 0 and report["fit.queries"] > 0
