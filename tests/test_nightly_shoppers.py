"""The nightly job's shopper step (indexer/nightly_shoppers.py) on two real months of the
online-retail history in a real SQLite event store: it retrains and registers the
recommender and the shopper-aware re-scorer, does nothing when no event is new, and
refuses (registering nothing) a recommender whose validation fell."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from shopsearch.indexer.events.importer import (
    RetailHistory,
    import_events,
    read_online_retail,
    retail_events,
)
from shopsearch.indexer.events.store import EventStore
from shopsearch.indexer.nightly_shoppers import retrain_shopper_models
from shopsearch.retrieval.encoders import Encoder
from shopsearch.retrieval.model_registry import list_models, resolve_model
from tests.conftest import DATASETS, require

pytestmark = pytest.mark.slow
KEY = b"nightly-shoppers-test-key-0123456"


def _months(history: RetailHistory, start: str, end: str) -> RetailHistory:
    lines = history.lines
    keep = (lines["ts"] >= pd.Timestamp(start, tz="UTC")) & (
        lines["ts"] < pd.Timestamp(end, tz="UTC")
    )
    return RetailHistory(lines[keep], int(keep.sum()), {})


def test_retrains_then_stays_then_refuses_a_fallen_recommender(
    encoder: Encoder, tmp_path: Path
) -> None:
    path = DATASETS / "online-retail" / "transactions.csv.gz"
    require(Path(path).is_file(), f"online-retail data not found at {path}")
    history = read_online_retail(path)
    texts = dict(zip(history.lines["stock_code"], history.lines["description"], strict=True))
    db, models = tmp_path / "events.db", tmp_path / "models"

    assert retrain_shopper_models(db, texts, models, encoder).status == "skipped"
    with EventStore(db) as store:
        import_events(store, retail_events(_months(history, "2011-08-01", "2011-10-01"), KEY))
    first = retrain_shopper_models(
        db, texts, models, encoder, max_minutes=1.0, personal_minutes=3.0
    )
    assert first.status == "retrained", first.reason
    assert first.recommender and first.personal, first
    assert set(first.candidate) == {"R1 ndcg@20", "R2 hit@10"}
    personal = json.loads(
        (resolve_model("personal/latest", models) / "model_card.json").read_text()
    )
    assert personal["recommender"] == first.recommender.split("/")[1]

    again = retrain_shopper_models(db, texts, models, encoder, max_minutes=1.0)
    assert again.status == "unchanged", again.reason

    # A week more of events, and a serving recommender whose validation looks far better
    # than any new one can: the new one is refused and nothing is registered.
    with EventStore(db) as store:
        import_events(store, retail_events(_months(history, "2011-10-01", "2011-10-08"), KEY))
    card_path = resolve_model("recommender/latest", models) / "model_card.json"
    card = json.loads(card_path.read_text())
    card["validation"]["metrics"]["R2"]["hit@10"] = 0.99
    card_path.write_text(json.dumps(card))
    refused = retrain_shopper_models(db, texts, models, encoder, max_minutes=1.0, tolerance=0.05)
    assert refused.status == "refused" and "R2 hit@10" in refused.reason, refused
    assert len(list_models(models, "recommender")) == 1
    assert len(list_models(models, "personal")) == 1
