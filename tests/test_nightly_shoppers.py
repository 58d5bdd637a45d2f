"""The nightly job's shopper step (indexer/nightly_shoppers.py) on two real months of the
online-retail history in a real SQLite event store: it retrains and registers the
recommender and the shopper-aware re-scorer, does nothing when no event is new, and
refuses (registering nothing) a recommender whose validation fell."""

from __future__ import annotations

import json
from datetime import UTC, datetime
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

    # August's first day is deleted (retention: 54 days before 25 September), so the
    # serving recommender learned from events the store no longer holds: it is retrained
    # although nothing is new. Its validation was made to look far better than any new
    # one can: the new one is refused and nothing is registered.
    with EventStore(db) as store:
        assert store.apply_retention(54, now=datetime(2011, 9, 25, tzinfo=UTC)) > 0
    card_path = resolve_model("recommender/latest", models) / "model_card.json"
    card = json.loads(card_path.read_text())
    card["validation"]["metrics"]["R2"]["hit@10"] = 0.99
    card_path.write_text(json.dumps(card))
    refused = retrain_shopper_models(db, texts, models, encoder, max_minutes=1.0, tolerance=0.05)
    assert refused.status == "refused" and "R2 hit@10" in refused.reason, refused
    assert len(list_models(models, "recommender")) == 1
    assert len(list_models(models, "personal")) == 1


def test_the_serving_recommender_is_current_only_for_the_same_span_of_events() -> None:
    from shopsearch.indexer.nightly_shoppers import _same_events

    ts = pd.to_datetime(["2011-08-01", "2011-09-30"], utc=True)
    events = pd.DataFrame({"ts": ts})
    card = {"version": "v1", "trained_on": {"from": str(ts[0]), "until": str(ts[1])}}
    assert _same_events(card, events) is not None
    newer = pd.DataFrame({"ts": ts.append(pd.DatetimeIndex([ts[1] + pd.Timedelta(days=1)]))})
    assert _same_events(card, newer) is None  # an event it has not seen
    pruned = pd.DataFrame({"ts": pd.DatetimeIndex([ts[0] + pd.Timedelta(days=7), ts[1]])})
    assert _same_events(card, pruned) is None  # it learned from events since deleted
    assert _same_events({}, events) is None  # nothing serving yet
