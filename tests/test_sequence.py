"""The sequence recommender on a tiny synthetic shop where the next basket is determined:
it learns the pattern, scores a product added after training by its text, survives a
save/load round trip bit for bit, and refuses damaged or mismatched inputs.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shopsearch.indexer.training.sequence import (
    SequenceTrainingConfig,
    SequenceTrainingResult,
    train_sequence,
)
from shopsearch.indexer.training.towers import TrainingError
from shopsearch.retrieval.encoders import Encoder
from shopsearch.retrieval.recommend.base import HistoryItem, Recommender
from shopsearch.retrieval.recommend.sequence import (
    ITEMS_FILE,
    WEIGHTS_FILE,
    SequenceConfig,
    SequenceModelError,
    SequenceRecommender,
)

#: A ring of products: whoever buys item i buys item i+1 in their next invoice.
TEXTS = [
    "red ceramic mug",
    "wooden chopping board",
    "glass storage jar",
    "paper party napkins",
    "metal cake tin",
    "linen tea towel",
    "wicker picnic basket",
    "scented candle",
    "feather cushion",
    "cotton shopping bag",
]
ITEMS = [f"P{i}" for i in range(len(TEXTS))]
SMALL = SequenceTrainingConfig(
    horizon_days=0.0,
    recency_half_life_days=0.0,
    model=SequenceConfig(d_model=32, n_heads=2, n_layers=1, max_len=10, dropout=0.0),
    batch_size=32,
    learning_rate=5e-3,
    max_epochs=15,
    patience=3,
    threads=1,
)


def ring_lines(n_shoppers: int = 80, invoices: int = 4, seed: int = 0) -> pd.DataFrame:
    """Shoppers start anywhere on the ring and walk it, one item per invoice, ten days
    apart, from January 2011; the last invoices fall in February (the validation month)."""
    rng = np.random.default_rng(seed)
    start = datetime(2011, 1, 1, tzinfo=UTC)
    rows = []
    for s in range(n_shoppers):
        first = int(rng.integers(len(ITEMS)))
        day0 = start + timedelta(days=int(rng.integers(0, 10)))
        for t in range(invoices):
            ts = day0 + timedelta(days=10 * t)
            item = ITEMS[(first + t) % len(ITEMS)]
            rows.append((f"{s}-{t}", item, 1.0, pd.Timestamp(ts), f"c{s}", 0, "", 1.0))
    columns = ["invoice", "stock_code", "quantity", "ts", "customer", "line", "description"]
    lines = pd.DataFrame(rows, columns=[*columns, "price"])
    return lines.sort_values("ts", kind="stable").reset_index(drop=True)


def history(*items: str) -> list[HistoryItem]:
    """A newest-first history: ``items`` given oldest first, a day apart."""
    t0 = datetime(2011, 3, 1, tzinfo=UTC)
    chronological = [
        HistoryItem(i, "purchase", t0 + timedelta(days=d)) for d, i in enumerate(items)
    ]
    return chronological[::-1]


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory, encoder: Encoder
) -> tuple[SequenceTrainingResult, Path]:
    out = tmp_path_factory.mktemp("seq-model")
    texts = dict(zip(ITEMS, TEXTS, strict=True))
    result = train_sequence(ring_lines(), texts, out, encoder, config=SMALL, seed=3, max_minutes=10)
    return result, out


def test_learns_the_next_basket(trained: tuple[SequenceTrainingResult, Path]) -> None:
    result, out = trained
    rec = SequenceRecommender.load(out)
    assert isinstance(rec, Recommender)
    hits = 0
    for i, item in enumerate(ITEMS):
        before = ITEMS[(i - 1) % len(ITEMS)]
        top = rec.for_history(history(before, item), 1, exclude=frozenset({before, item}))
        hits += top[0].item == ITEMS[(i + 1) % len(ITEMS)]
    assert hits >= 9, f"next item first for only {hits}/10 histories"
    # The validation month was scored with ranx: the pattern is learnable to ~1.0.
    assert result.metrics["R1-new"]["recall@20"] >= 0.9
    assert result.refitted and result.card["trained_range"]["refitted_on_all"]


def test_model_card(trained: tuple[SequenceTrainingResult, Path], encoder: Encoder) -> None:
    _, out = trained
    card = json.loads((out / "model_card.json").read_text())
    assert card["name"] == "sequence" and card["format_version"] == 1
    assert card["parameters"]["d_model"] == 32 and card["n_items"] == len(ITEMS)
    assert card["text_encoder"]["sha256"] == encoder.info.sha256
    assert card["trained_range"]["validation_start"].startswith("2011-02-01")
    assert len(card["weights_sha256"]) == 64 and card["training"]["seed"] == 3
    assert card["metrics"]["validation"]["R1-new"]["shoppers"] > 0


def test_empty_or_unknown_history_returns_nothing(
    trained: tuple[SequenceTrainingResult, Path],
) -> None:
    rec = SequenceRecommender.load(trained[1])
    assert rec.for_history([], 10) == []
    assert rec.for_history(history("NOT-A-PRODUCT"), 10) == []
    assert rec.similar("NOT-A-PRODUCT", 10) == []


def test_k_and_exclude_are_respected(trained: tuple[SequenceTrainingResult, Path]) -> None:
    rec = SequenceRecommender.load(trained[1])
    top = rec.for_history(history("P1", "P2"), 4, exclude=frozenset({"P3", "P2"}))
    assert len(top) == 4 and not {"P2", "P3"} & {s.item for s in top}
    assert [s.score for s in top] == sorted((s.score for s in top), reverse=True)
    assert len(rec.for_history(history("P1"), 100)) == len(ITEMS)
    similar = rec.similar("P4", 3)
    assert similar[0].item == "P5" and "P4" not in {s.item for s in similar}


def test_new_product_is_scored_by_its_text(
    trained: tuple[SequenceTrainingResult, Path], encoder: Encoder, tmp_path: Path
) -> None:
    rec = SequenceRecommender.load(trained[1])
    # A new listing of the item that follows P4 (same text, no purchases, no id): the
    # learned text path must rank it far above the other products.
    vector = encoder.encode_document([TEXTS[5]])[0]
    assert rec.add_items({"P5-NEW": vector, "P5": vector}) == 1  # known items are kept
    ranked = [
        s.item for s in rec.for_history(history("P3", "P4"), 11, exclude=frozenset({"P3", "P4"}))
    ]
    assert "P5-NEW" in ranked[:3], ranked
    # Its own history works too (the text is its input representation).
    assert rec.similar("P5-NEW", 3)
    # Saved with the added item, loaded back: identical scores.
    rec.save(tmp_path / "grown")
    again = SequenceRecommender.load(tmp_path / "grown")
    assert again.items == rec.items
    h = history("P3", "P4")
    np.testing.assert_array_equal(again.scores(h), rec.scores(h))
    with pytest.raises(SequenceModelError, match="dimension"):
        rec.add_items({"BAD": np.ones(7, dtype=np.float32)})


def test_save_load_round_trip_is_exact(
    trained: tuple[SequenceTrainingResult, Path], tmp_path: Path
) -> None:
    a = SequenceRecommender.load(trained[1])
    a.save(tmp_path / "copy")
    b = SequenceRecommender.load(tmp_path / "copy")
    for h in (history("P0"), history("P7", "P8", "P9"), history(*ITEMS)):
        np.testing.assert_array_equal(a.scores(h), b.scores(h))
        assert a.for_history(h, 5) == b.for_history(h, 5)


def test_training_is_deterministic(
    trained: tuple[SequenceTrainingResult, Path], encoder: Encoder, tmp_path: Path
) -> None:
    result, _ = trained
    texts = dict(zip(ITEMS, TEXTS, strict=True))
    again = train_sequence(
        ring_lines(), texts, tmp_path, encoder, config=SMALL, seed=3, max_minutes=10
    )
    assert again.card["weights_sha256"] == result.card["weights_sha256"]


def test_damaged_or_mismatched_model_is_refused(
    trained: tuple[SequenceTrainingResult, Path], tmp_path: Path
) -> None:
    copy = tmp_path / "m"
    shutil.copytree(trained[1], copy)
    with pytest.raises(SequenceModelError, match="text encoder"):
        SequenceRecommender.load(copy, encoder_sha256="0" * 64)
    (copy / ITEMS_FILE).write_bytes(b"oops")
    with pytest.raises(SequenceModelError, match="items_sha256"):
        SequenceRecommender.load(copy)
    (copy / WEIGHTS_FILE).unlink()
    with pytest.raises(SequenceModelError, match="missing"):
        SequenceRecommender.load(copy)
    with pytest.raises(SequenceModelError, match="not a sequence model"):
        SequenceRecommender.load(tmp_path / "nothing-here")


def test_bad_training_input_is_refused(encoder: Encoder, tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="customer"):
        train_sequence(ring_lines().drop(columns=["customer"]), {}, tmp_path, encoder)
    one_month = ring_lines(invoices=1)
    with pytest.raises(TrainingError, match="nothing to train"):
        train_sequence(one_month, {}, tmp_path, encoder, config=SMALL)
    with pytest.raises(TrainingError, match="max_minutes"):
        train_sequence(ring_lines(), {}, tmp_path, encoder, config=SMALL, max_minutes=1e-6)
    with pytest.raises(ValueError, match="objective"):
        SequenceTrainingConfig(objective="repeat")  # type: ignore[arg-type]


def test_train_recommender_registers_a_loadable_sequence_model(tmp_path: Path) -> None:
    """The path `shopsearch train recommender` takes: train into the registry's staging
    directory, register as sequence/<version>, resolve and load it for serving."""
    from shopsearch.api.cli_train_recommender import _train_sequence
    from shopsearch.indexer.progress import no_progress
    from shopsearch.retrieval.model_registry import resolve_model

    spec = _train_sequence(
        ring_lines(), dict(zip(ITEMS, TEXTS, strict=True)), tmp_path, 2.0, no_progress
    )
    assert spec is not None and spec.startswith("sequence/")
    model = SequenceRecommender.load(resolve_model("sequence/latest", tmp_path))
    assert model.for_history(history("P1", "P2"), 3)
