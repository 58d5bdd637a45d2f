"""Recommendation models on tiny hand-made purchases with known answers; cold start;
bundle save/load round trip and the registry."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shopsearch.indexer.training.recommender import interaction_arrays
from shopsearch.retrieval.model_registry import list_models, new_version, register, staging_dir
from shopsearch.retrieval.recommend.base import HistoryItem, Recommender
from shopsearch.retrieval.recommend.blend import Chain
from shopsearch.retrieval.recommend.bundle import (
    RecommenderConfig,
    fit_bundle,
    load_bundle,
    save_bundle,
)
from shopsearch.retrieval.recommend.interactions import ItemVocab
from shopsearch.retrieval.recommend.item2item import ItemToItem, fit_similarity
from shopsearch.retrieval.recommend.popularity import Popularity, popularity_scores
from shopsearch.retrieval.recommend.repurchase import Repurchase
from shopsearch.retrieval.recommend.text import TextNeighbours

T0 = datetime(2011, 9, 1, tzinfo=UTC)

#: basket -> (user, day, items). a+b are bought together three times, a+c once; d is
#: bought alone, recently, by many baskets (trending); "new" is never bought.
BASKETS = {
    "b1": ("u1", 0, ["a", "b"]),
    "b2": ("u2", 1, ["a", "b"]),
    "b3": ("u3", 2, ["a", "b", "c"]),
    "b4": ("u1", 3, ["a", "c"]),
    "b5": ("u4", 20, ["d"]),
    "b6": ("u5", 21, ["d"]),
    "b7": ("", 22, ["d"]),
    "b8": ("u6", 5, ["e"]),
}
ITEMS = ["a", "b", "c", "d", "e", "new"]


def _frame() -> pd.DataFrame:
    rows = [
        (user, item, T0 + timedelta(days=day), basket, "purchase", 1.0)
        for basket, (user, day, items) in BASKETS.items()
        for item in items
    ]
    return pd.DataFrame(rows, columns=["user", "item", "ts", "basket", "kind", "quantity"])


def _embeddings(vocab: ItemVocab) -> np.ndarray:
    """Hand-made unit vectors: "new" is close to "a" then "b"; "e" has no text."""
    vectors = {
        "a": [1.0, 0.0, 0.0],
        "b": [0.8, 0.6, 0.0],
        "c": [0.0, 1.0, 0.0],
        "d": [0.0, 0.0, 1.0],
        "new": [0.96, 0.28, 0.0],
    }
    out = np.zeros((len(vocab), 3), np.float32)
    for item, v in vectors.items():
        out[vocab.index[item]] = np.asarray(v, np.float32) / np.linalg.norm(v)
    return out


def _h(*items: tuple[str, int]) -> list[HistoryItem]:
    """History newest first from (item, day) pairs."""
    hist = [HistoryItem(i, "purchase", T0 + timedelta(days=d)) for i, d in items]
    return sorted(hist, key=lambda h: h.ts, reverse=True)


@pytest.fixture()
def data() -> tuple:
    frame = _frame()
    return interaction_arrays(frame), ItemVocab.of(ITEMS)


def test_popularity_counts_baskets_and_decays(data) -> None:
    events, vocab = data
    as_of = float(events.ts.max())
    flat = Popularity(vocab, popularity_scores(events, vocab, as_of=as_of))
    assert [s.item for s in flat.for_history([], 3)] == ["a", "b", "d"]  # 4, 3, 3 baskets
    trending = Popularity(vocab, popularity_scores(events, vocab, as_of=as_of, half_life_days=2))
    assert trending.for_history([], 1)[0].item == "d"
    month = popularity_scores(events, vocab, as_of=as_of, window_days=5)
    assert month[vocab.index["a"]] == 0 and month[vocab.index["d"]] == 3
    assert "new" not in {s.item for s in flat.for_history([], 10)}  # never bought
    assert flat.similar("a", 2)[0].item != "a"


def test_repurchase_frequency_and_recency(data) -> None:
    events, vocab = data
    pop = popularity_scores(events, vocab, as_of=float(events.ts.max()))
    history = _h(("c", 0), ("c", 1), ("b", 10))
    assert [s.item for s in Repurchase(vocab, pop).for_history(history, 5)] == ["c", "b"]
    recent = Repurchase(vocab, pop, half_life_days=1.0)
    assert [s.item for s in recent.for_history(history, 5)] == ["b", "c"]
    assert recent.for_history(history, 5, exclude=frozenset({"b"}))[0].item == "c"
    assert Repurchase(vocab, pop).for_history([], 5) == []


def test_item2item_variants_know_what_goes_with_a(data) -> None:
    events, vocab = data
    for variant in ("count", "cosine", "rp3beta", "ease"):
        params = {"lambda": 0.5} if variant == "ease" else None
        sim = fit_similarity(events, vocab, variant=variant, unit="basket", params=params)
        model = ItemToItem(vocab, sim)
        assert model.similar("a", 1)[0].item == "b", variant
        assert model.similar("new", 5) == [], variant  # nobody bought it
        assert model.similar("zzz", 5) == []
        assert "a" not in {s.item for s in model.similar("a", 5)}
    count = fit_similarity(events, vocab, variant="count", unit="basket")
    assert count[vocab.index["a"], vocab.index["b"]] == 3
    assert count[vocab.index["a"], vocab.index["c"]] == 2
    # A history of b ranks a (3 baskets together) before c (1).
    got = ItemToItem(vocab, count).for_history(_h(("b", 1)), 5)
    assert [s.item for s in got][:2] == ["a", "c"]
    with pytest.raises(ValueError, match="variant must be one of"):
        fit_similarity(events, vocab, variant="nope")
    with pytest.raises(ValueError, match="takes parameters"):
        fit_similarity(events, vocab, variant="cosine", params={"lambda": 1})


def test_text_neighbours_cold_start(data) -> None:
    _, vocab = data
    text = TextNeighbours(vocab, _embeddings(vocab))
    assert [s.item for s in text.similar("new", 2)] == ["a", "b"]
    assert text.similar("e", 3) == []  # no text
    assert [s.item for s in text.for_history(_h(("c", 0)), 3)] == ["c", "b", "new"]
    assert text.for_history(_h(("c", 0)), 1, exclude=frozenset({"c"}))[0].item == "b"


def test_chain_fills_and_is_never_empty(data) -> None:
    events, vocab = data
    pop = Popularity(vocab, popularity_scores(events, vocab, as_of=float(events.ts.max())))
    count = ItemToItem(vocab, fit_similarity(events, vocab, variant="count"))
    chain = Chain([count, TextNeighbours(vocab, _embeddings(vocab)), pop])
    got = chain.similar("new", 3)
    assert [s.item for s in got][:2] == ["a", "b"] and len(got) == 3
    assert [s.score for s in got] == sorted((s.score for s in got), reverse=True)
    # "e" has neither co-purchases nor text: popularity answers.
    assert len(chain.similar("e", 3)) == 3
    assert len({s.item for s in chain.similar("a", 10)}) == len(chain.similar("a", 10))


def test_bundle_cold_shopper_gets_popular_and_round_trips(data, tmp_path: Path) -> None:
    events, vocab = data
    config = RecommenderConfig(
        history_params={"lambda": 0.5}, popularity_half_life_days=math.inf, neighbours=10
    )
    bundle = fit_bundle(events, vocab, _embeddings(vocab), config)
    assert isinstance(bundle.for_you, Recommender)
    popular = [s.item for s in bundle.popular.for_history([], 5)]
    assert [s.item for s in bundle.for_you.for_history([], 5)] == popular
    assert bundle.similar_chain.similar("new", 3)[0].item == "a"
    shopper = bundle.for_you.for_history(_h(("c", 3)), 3)
    assert shopper[0].item == "c"  # repurchase first
    # Discovery: bought items excluded, the blend still answers.
    new = bundle.for_you.for_history(_h(("c", 3)), 3, exclude=frozenset({"c"}))
    assert new and "c" not in {s.item for s in new}

    version = new_version(tmp_path, "recommender")
    save_bundle(bundle, staging_dir(tmp_path, "recommender", version))
    model = register(tmp_path, "recommender", version, {"config": config.to_dict()})
    assert [m.spec for m in list_models(tmp_path, "recommender")] == [model.spec]
    loaded = load_bundle(model.path, version)
    assert loaded.config == config and loaded.vocab.items == vocab.items
    for history in ([], _h(("c", 3)), _h(("a", 1), ("d", 22))):
        assert loaded.for_you.for_history(history, 5) == bundle.for_you.for_history(history, 5)
    for item in ITEMS:
        assert loaded.similar_chain.similar(item, 4) == bundle.similar_chain.similar(item, 4)
    with pytest.raises(ValueError, match="not a recommender bundle"):
        load_bundle(tmp_path)
