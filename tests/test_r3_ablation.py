"""The R3 feature ablation (eval/recommend/r3_ablation.py): its extra columns on a
hand-made case, and on the real dev split its ``blend`` row reproduces the shipped
re-scorer scored through the served path (slow)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import DATASETS, require

from shopsearch.eval.recommend.r3_ablation import EXTRA, extra_features, rebuy_rates
from shopsearch.rerank.personal import PersonalRescorer, cosine_copurchase, default_weights
from shopsearch.retrieval.encoders import Encoder
from shopsearch.retrieval.recommend.base import HistoryItem


def test_rebuy_rates_count_distinct_days_per_buyer() -> None:
    day = pd.Timestamp("2011-01-03", tz="UTC")
    lines = pd.DataFrame(
        {
            "stock_code": ["A", "A", "A", "B", "B"],
            "customer": ["c1", "c1", "c2", "c1", ""],
            "ts": [day, day + pd.Timedelta(days=2), day, day, day],
        }
    )
    rates = rebuy_rates(lines)
    # A: c1 on two days, c2 on one -> (1 + 0.5) / (2 + 2); B: one known buyer, one day.
    assert rates == {"A": pytest.approx(1.5 / 4), "B": pytest.approx(0.5 / 3)}


def test_extra_features_on_a_hand_made_history() -> None:
    vectors = np.eye(3, dtype=np.float32)
    counts = sp.csr_matrix(np.array([[0, 2, 0], [2, 0, 1], [0, 1, 0]], dtype=np.float64))
    baskets = np.array([2.0, 3.0, 1.0])
    scorer = PersonalRescorer(["a", "b", "c"], vectors, counts, baskets, default_weights())
    now = datetime(2011, 10, 2, tzinfo=UTC)
    history = [HistoryItem("a", "purchase", now - timedelta(days=30))]
    query = np.array([0.0, 1.0, 0.0], dtype=np.float32)
    out = extra_features(
        scorer,
        cosine_copurchase(counts, baskets),
        query,
        ["a", "b"],
        vectors[:2],
        history,
        now,
        {"a": 0.5},
    )
    assert out.shape == (2, len(EXTRA))
    col = {name: out[:, k] for k, name in enumerate(EXTRA)}
    assert col["query_similarity"].tolist() == [0.0, 1.0]
    assert col["rebuy_if_bought"].tolist() == [0.5, 0.0]  # only "a" was bought
    assert col["rebuy_rate_log"] == pytest.approx([np.log(0.5), np.log(0.25)])
    assert col["bought_last_30d"] == pytest.approx([np.exp(-1.0), 0.0])
    assert col["nearest_newest_10"].tolist() == [1.0, 0.0]
    # "b" shares baskets with "a", the newest basket: cosine 2 / sqrt(2 * 3).
    assert col["copurchase_newest_basket"] == pytest.approx([0.0, 2 / np.sqrt(6)], rel=1e-6)


@pytest.mark.slow
def test_the_blend_row_reproduces_the_shipped_rescorer(encoder: Encoder) -> None:
    from shopsearch.eval.recommend.r3_ablation import run_r3_ablation
    from shopsearch.indexer.retail import dev_split, load_lines

    path = DATASETS / "online-retail" / "transactions.csv.gz"
    require(Path(path).is_file(), f"online-retail data not found at {path}")
    split = dev_split(load_lines(path))
    rows = run_r3_ablation(split.history, split.test, encoder=encoder, max_test_queries=400)
    by_name = {r.variant: r for r in rows}
    # The same weights and order; the served score is base + a rescaled blend, so a near
    # tie may round the other way (one flip among 400 queries moves MRR by <= 0.00125).
    assert by_name["blend"].test == pytest.approx(by_name["shipped"].test, abs=0.0025)
    assert {f"+{name}" for name in EXTRA} <= set(by_name)
    for row in rows[1:]:
        assert row.held_out is not None and 0.3 < row.held_out < 0.8, row
        assert 0.3 < row.test < 0.8, row
