"""Real data: the sequence model trained on the online-retail development history
(validated on September 2011, never on October) and scored on October 2011 with protocol
R1-new of ``shared/datasets/README.md`` (ranx). The floor sits a little under the figure
measured with the same budget (see the module constant), so a real regression fails.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from ranx import Qrels, Run, evaluate

from shopsearch.indexer.retail import dev_split, item_descriptions, load_lines
from shopsearch.indexer.training.sequence import SequenceTrainingConfig, train_sequence
from shopsearch.retrieval.encoders import Encoder
from shopsearch.retrieval.recommend.base import HistoryItem
from shopsearch.retrieval.recommend.sequence import SequenceRecommender
from tests.conftest import DATASETS, require

pytestmark = pytest.mark.slow

#: R1-new recall@20 measured on October 2011 with this budget (3 epochs, no refit): 0.0568
#: (2026-12-02). The full default training (with refit) measured 0.078.
FLOOR_R1_NEW = 0.05
#: Bounded by epochs, not by time, so the figure does not depend on the machine's load;
#: the minutes are a safety net only.
EPOCHS = 3
MAX_MINUTES = 15.0


@pytest.fixture(scope="module")
def retail_file() -> Path:
    path = DATASETS / "online-retail" / "transactions.csv.gz"
    require(path.is_file(), f"online-retail data not found at {path}")
    return path


def test_r1_new_on_october(retail_file: Path, encoder: Encoder, tmp_path: Path) -> None:
    split = dev_split(load_lines(retail_file))
    # The catalog knows October's products (their text) before anyone buys them; the
    # purchases of October are never seen.
    texts = item_descriptions(split.history, split.test)
    result = train_sequence(
        split.history,
        texts,
        tmp_path,
        encoder,
        config=SequenceTrainingConfig(max_epochs=EPOCHS, patience=EPOCHS, refit=False),
        max_minutes=MAX_MINUTES,
        seed=0,
    )
    assert result.card["trained_range"]["validation_start"].startswith("2011-09-01")
    assert result.stopped_by == "max_epochs", "the budget ran out: the floor does not apply"
    rec = SequenceRecommender.load(tmp_path, encoder_sha256=encoder.info.sha256)

    named = split.history[split.history["customer"] != ""]
    histories = {
        customer: [
            HistoryItem(item, "purchase", ts.to_pydatetime())
            for item, ts in zip(g["stock_code"][::-1], g["ts"][::-1], strict=True)
        ]
        for customer, g in named.groupby("customer")
    }
    qrels: dict[str, dict[str, int]] = {}
    run: dict[str, dict[str, float]] = {}
    for customer, g in split.test[split.test["customer"].isin(histories)].groupby("customer"):
        bought = frozenset(h.item for h in histories[customer])
        new = set(g["stock_code"]) - bought
        if not new:
            continue
        qrels[customer] = dict.fromkeys(new, 1)
        top = rec.for_history(histories[customer], 20, exclude=bought)
        run[customer] = {s.item: s.score for s in top}
    r1_new = evaluate(Qrels(qrels), Run(run), "recall@20")
    print(f"R1-new recall@20 on October 2011: {r1_new:.4f} ({len(qrels)} shoppers)")
    assert len(qrels) > 900
    assert r1_new >= FLOOR_R1_NEW, f"R1-new recall@20 {r1_new:.4f} < floor {FLOOR_R1_NEW}"
