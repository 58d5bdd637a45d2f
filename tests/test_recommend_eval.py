"""Recommendation protocols and metrics: a hand-computed example, the protocol
definitions on a tiny purchase set, the runner's outputs and the CLI."""

from __future__ import annotations

import gzip
import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from shopsearch.eval.recommend.runner import run_protocols, write_outputs
from shopsearch.indexer.recommend_protocols import (
    customer_histories,
    evaluate_run,
    r1_queries,
    r2_queries,
)
from shopsearch.retrieval.recommend.base import Scored
from shopsearch.retrieval.recommend.interactions import ItemVocab
from shopsearch.retrieval.recommend.popularity import Popularity

T0 = datetime(2011, 9, 1, tzinfo=UTC)


def _ranked(*items: str) -> list[Scored]:
    return [Scored(i, float(len(items) - n)) for n, i in enumerate(items)]


def test_metrics_match_a_hand_computed_example() -> None:
    relevant = {"q1": frozenset({"a", "c"}), "q2": frozenset({"z"}), "q3": frozenset({"x"})}
    run = {
        "q1": _ranked("a", "b", "c"),  # hits at ranks 1 and 3
        "q2": _ranked(*(f"n{i}" for i in range(10)), "z"),  # hit at rank 11
        "q3": [],  # nothing: scores 0
    }
    means, per_query = evaluate_run(relevant, run)
    ndcg_q1 = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    ndcg_q2 = (1 / math.log2(12)) / 1
    assert per_query["ndcg@20"]["q1"] == pytest.approx(ndcg_q1)
    assert per_query["ndcg@20"]["q2"] == pytest.approx(ndcg_q2)
    assert means["ndcg@20"] == pytest.approx((ndcg_q1 + ndcg_q2) / 3)
    assert means["recall@20"] == pytest.approx((1 + 1 + 0) / 3)
    assert means["recall@10"] == pytest.approx((1 + 0 + 0) / 3)
    assert means["hit@10"] == pytest.approx(1 / 3)


def _frame(rows: list[tuple[str, str, int, str]]) -> pd.DataFrame:
    return pd.DataFrame(
        [(u, i, pd.Timestamp(T0 + timedelta(days=d)), b, "purchase", 1.0) for u, i, d, b in rows],
        columns=["user", "item", "ts", "basket", "kind", "quantity"],
    )


HISTORY = _frame(
    [("u1", "a", 0, "h1"), ("u1", "b", 0, "h1"), ("u2", "c", 1, "h2"), ("", "a", 2, "h3")]
)
TEST = _frame(
    [
        ("u1", "a", 40, "t1"),  # u1 re-buys a (not new) and discovers d
        ("u1", "d", 40, "t1"),
        ("u2", "c", 41, "t2"),  # u2 only re-buys: left out of R1-new
        ("u3", "a", 42, "t3"),  # no history: left out of R1
        ("", "b", 43, "t4"),  # a one-item basket: not an R2 query
    ]
)


def test_protocols_follow_the_readme() -> None:
    histories = customer_histories(HISTORY)
    assert [h.item for h in histories["u1"]] == ["b", "a"] or [h.item for h in histories["u1"]] == [
        "a",
        "b",
    ]
    r1 = r1_queries(histories, TEST, new=False)
    assert [(q.qid, q.relevant) for q in r1] == [
        ("u1", frozenset({"a", "d"})),
        ("u2", frozenset({"c"})),
    ]
    r1_new = r1_queries(histories, TEST, new=True)
    assert [(q.qid, q.relevant, q.exclude) for q in r1_new] == [
        ("u1", frozenset({"d"}), frozenset({"a", "b"}))
    ]
    r2 = r2_queries(TEST, seed=0)
    assert sorted((q.item, q.relevant) for q in r2) == [
        ("a", frozenset({"d"})),
        ("d", frozenset({"a"})),
    ]
    assert r2_queries(TEST, seed=0) == r2  # seeded


def test_runner_writes_every_protocol_and_strategy(tmp_path: Path) -> None:
    vocab = ItemVocab.of(["a", "b", "c", "d"])
    strategies = {
        "pop": Popularity(vocab, pd.Series([3.0, 2.0, 1.0, 0.5]).to_numpy()),
        "pop-d-first": Popularity(vocab, pd.Series([1.0, 1.0, 1.0, 5.0]).to_numpy()),
    }
    ev = run_protocols(HISTORY, TEST, strategies, protocols=("R1", "R1-new", "R2", "R3"))
    assert set(ev.metrics) >= {"R1", "R1-new", "R2"}
    # R1-new: u1's only new item is d; "pop" skips a and b (excluded) -> c, d: d at rank 2.
    assert ev.metrics["R1-new"]["pop"]["ndcg@20"] == pytest.approx(1 / math.log2(3))
    assert ev.metrics["R1-new"]["pop-d-first"]["ndcg@20"] == pytest.approx(1.0)
    assert ev.metrics["R2"]["pop"]["latency_p50_ms"] >= 0
    write_outputs(ev, tmp_path, {"run": "test"})
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["R1"]["pop"]["recall@20"] == ev.metrics["R1"]["pop"]["recall@20"]
    assert "pop-d-first" in (tmp_path / "report.md").read_text()
    assert "<table>" in (tmp_path / "report.html").read_text()
    assert "latency_p50_ms" in json.loads((tmp_path / "latency.json").read_text())["R2"]["pop"]
    with pytest.raises(ValueError, match="unknown protocol"):
        run_protocols(HISTORY, TEST, strategies, protocols=("R9",))


def _retail_csv(path: Path, rows: list[tuple[str, str, str, str, str]]) -> Path:
    """An online-retail file: (invoice, code, description, date, customer) rows."""
    lines = ["InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country"]
    lines += [f"{inv},{code},{desc},2,{date},1.5,{cust},UK" for inv, code, desc, date, cust in rows]
    with gzip.open(path, "wt") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


def test_cli_eval_recommend_and_train_recommender(tmp_path: Path) -> None:
    from shopsearch.api.cli import app, mount_plugins

    mount_plugins(app)
    # Codes such as "B" or "D" are not products in this data set (bad debt, discount).
    texts = {"A1": "RED HEART MUG", "B1": "RED HEART CUP", "C1": "BLUE LANTERN", "N1": "RED MUG"}
    rows = []
    for n in range(12):
        day = f"2011-09-{n + 1:02d} 10:00:00"
        rows += [(f"5{n:03d}", "A1", texts["A1"], day, f"{100 + n % 4}")]
        rows += [(f"5{n:03d}", "B1", texts["B1"], day, f"{100 + n % 4}")]
        rows += [(f"6{n:03d}", "C1", texts["C1"], day, f"{200 + n % 3}")]
    history = _retail_csv(tmp_path / "history.csv.gz", rows)
    test = _retail_csv(
        tmp_path / "test.csv.gz",
        [
            ("7001", "A1", texts["A1"], "2011-10-02 10:00:00", "100"),
            ("7001", "N1", texts["N1"], "2011-10-02 10:00:00", "100"),
            ("7002", "C1", texts["C1"], "2011-10-03 10:00:00", "200"),
        ],
    )
    runner = CliRunner()
    out = tmp_path / "eval"
    result = runner.invoke(
        app,
        [
            "eval",
            "recommend",
            "--history",
            str(history),
            "--test",
            str(test),
            "--out",
            str(out),
            "--protocols",
            "R1,R1-new,R2,R3",
            "--models-dir",
            str(tmp_path / "models"),
            "--max-minutes",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    # R3 needs a month of history before its validation month: this one is too short,
    # so it is skipped with a note and the other protocols report.
    assert set(metrics) == {"R1", "R1-new", "R2"}
    assert "R3 skipped" in (out / "report.md").read_text()
    assert {"for-you", "own-most-bought", "copurchase-count", "item-knn-cosine"} <= set(
        metrics["R1"]
    )
    # u100 re-buys A1: repurchase and the blend find it first.
    assert metrics["R1"]["for-you"]["hit@10"] == 1.0
    bad = runner.invoke(app, ["eval", "recommend", "--out", str(out), "--protocols", "R7"])
    assert bad.exit_code != 0 and "choose from" in bad.output

    models = tmp_path / "registry"
    result = runner.invoke(
        app,
        [
            "train",
            "recommender",
            "--history",
            str(history),
            "--models-dir",
            str(models),
            "--max-minutes",
            "2",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    card = json.loads(result.stdout[result.stdout.index("{") :])
    assert card["kind"] == "recommender" and card["trained_on"]["items"] == 3
    assert card["latency_ms"]["similar_p50_ms"] >= 0
    from shopsearch.indexer.training.recommender import load_recommender
    from shopsearch.retrieval.model_registry import resolve_model

    bundle = load_recommender(resolve_model("recommender/latest", models))
    assert bundle.version == card["version"]
    assert bundle.similar_chain.similar("A1", 1)[0].item == "B1"
    # N1 is unknown to this model (not in --history): popularity still answers.
    assert bundle.similar_chain.similar("N1", 1)


def test_holdout_split_cuts_the_last_days_as_the_trainer_validates() -> None:
    from shopsearch.eval.recommend.cli import holdout_split

    ts = pd.to_datetime([T0 + timedelta(days=d) for d in (0, 10, 19, 20, 21, 30)])
    lines = pd.DataFrame({"ts": ts, "item": list("abcdef")})
    before, last = holdout_split(lines, 10.0)
    # The cut is the newest timestamp minus 10 days: day 20 is in the held-out part.
    assert before["item"].tolist() == ["a", "b", "c"]
    assert last["item"].tolist() == ["d", "e", "f"]
    assert list(last.index) == [0, 1, 2]
    with pytest.raises(ValueError, match="positive"):
        holdout_split(lines, 0.0)
    empty_before, empty_last = holdout_split(lines.iloc[:0], 10.0)
    assert empty_before.empty and empty_last.empty


def test_cli_holdout_days_refuses_a_test_file_and_bad_numbers(tmp_path: Path) -> None:
    from shopsearch.api.cli import app, mount_plugins

    mount_plugins(app)
    runner = CliRunner()
    out = str(tmp_path / "eval")
    test_file = tmp_path / "t.csv"
    test_file.write_text("x")
    both = runner.invoke(
        app, ["eval", "recommend", "--out", out, "--test", str(test_file), "--holdout-days", "30"]
    )
    assert both.exit_code != 0 and "leave out --test" in both.output
    bad = runner.invoke(app, ["eval", "recommend", "--out", out, "--holdout-days", "-1"])
    assert bad.exit_code != 0 and "positive" in bad.output
    none = runner.invoke(app, ["eval", "recommend", "--out", out])
    assert none.exit_code != 0 and "--holdout-days" in none.output
