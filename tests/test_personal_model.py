"""Training and registering the shopper-aware re-scorer (indexer/training/personal_model.py)
on three real months of the online-retail history: the model lands in the registry as
``personal/<version>``, loads back with the same weights, and its card says what base
it was fitted over and with which for-you ranker."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from shopsearch.indexer.retail import dev_split, item_descriptions, load_lines
from shopsearch.indexer.training.personal_model import train_personal
from shopsearch.indexer.training.recommender import fit_recommender, retail_interactions
from shopsearch.rerank.personal import FEATURES, PersonalRescorer
from shopsearch.retrieval.encoders import Encoder
from shopsearch.retrieval.model_registry import resolve_model
from tests.conftest import DATASETS, require

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def summer() -> pd.DataFrame:
    """July to September 2011 of the dev history (the validation month is September)."""
    path = DATASETS / "online-retail" / "transactions.csv.gz"
    require(Path(path).is_file(), f"online-retail data not found at {path}")
    history = dev_split(load_lines(path)).history
    return history[history["ts"] >= pd.Timestamp("2011-07-01", tz="UTC")]


def test_train_personal_registers_a_model_with_the_foryou_feature(
    summer: pd.DataFrame, encoder: Encoder, tmp_path: Path
) -> None:
    texts = item_descriptions(summer)
    full = fit_recommender(
        retail_interactions(summer), texts, encoder=encoder, max_minutes=0.5
    ).bundle.ranked
    assert full is not None, "three months are enough to fit a for-you ranker"
    trained = train_personal(
        summer, texts, encoder, foryou_full=full, models_dir=tmp_path, max_minutes=2.0
    )
    assert trained.model is not None and trained.rescorer.foryou is full
    card = trained.model.card
    assert card["kind"] == "personal" and card["trained_on"]["foryou_ranker"] is True
    assert card["trained_on"]["validation_queries"][0].startswith("2011-09")
    # The query's own similarity is part of the base the blend re-orders, and it counts.
    assert card["trained_on"]["search_relevance"]["query_similarity"] > 0
    blend = card["weights"]["blend"]
    assert list(blend) == list(FEATURES) and blend["foryou"] > 0, blend
    # The blend learned something the base order did not know, on shoppers it never saw.
    metrics = card["metrics"]
    assert metrics["held_out.mrr@10.blend"] > metrics["held_out.mrr@10.base"], metrics
    loaded = PersonalRescorer.load(resolve_model("personal/latest", tmp_path))
    assert loaded.weights == trained.rescorer.weights and loaded.foryou is None


def test_without_a_ranker_the_foryou_weight_is_zero(summer: pd.DataFrame, encoder: Encoder) -> None:
    trained = train_personal(summer, item_descriptions(summer), encoder, foryou_full=None)
    assert trained.model is None  # no models_dir: nothing registered
    assert trained.rescorer.weights["blend"]["foryou"] == pytest.approx(0.0, abs=1e-9)
    assert trained.rescorer.card["trained_on"]["foryou_ranker"] is False
