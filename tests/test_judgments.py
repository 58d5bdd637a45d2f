"""Dataset loaders: the real Home Depot splits, the generic format and malformed input."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shopsearch.eval.metrics import evaluate_protocol_a, evaluate_protocol_b
from shopsearch.indexer.judgments import (
    HOMEDEPOT_GAIN_OFFSET,
    DatasetError,
    EvalDataset,
    JudgedQuery,
    convert_homedepot,
    homedepot_qid,
    load_generic,
    load_homedepot,
)

DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
HOMEDEPOT = DATASETS / "homedepot"
HD_HEADER = "id,product_uid,product_title,search_term,relevance\n"


def require_homedepot() -> Path:
    """The Home Depot folder; fail when it is missing in CI, skip elsewhere."""
    if not (HOMEDEPOT / "dev.csv").is_file():
        message = f"Home Depot data not found at {HOMEDEPOT}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return HOMEDEPOT


@pytest.fixture(scope="module")
def dev() -> EvalDataset:
    folder = require_homedepot()
    return load_homedepot(folder / "dev.csv", folder / "products.csv")


def test_homedepot_dev_counts_and_gains(dev: EvalDataset) -> None:
    assert dev.name == "homedepot-dev"
    assert len(dev.queries) == 1248
    assert dev.n_pairs == 7764
    assert dev.gain_offset == HOMEDEPOT_GAIN_OFFSET == 1.0
    assert dev.catalog_ids is not None and len(dev.catalog_ids) == 54667
    grades = {g for q in dev.queries for g in q.judgments.values()}
    assert grades == {1.0, 1.33, 1.67, 2.0, 2.25, 2.33, 2.5, 2.67, 3.0}
    assert dev.gain(2.33) == pytest.approx(1.33)
    assert dev.gain(1.0) == 0.0
    # Relevant (>= 2.5) pairs, and queries with no relevant product (left out of recall/MRR).
    relevant = [sum(g >= 2.5 for g in q.judgments.values()) for q in dev.queries]
    assert sum(relevant) == 3668
    assert relevant.count(0) == 217
    # First row of dev.csv: "l bracket" judged 2.5 for product 100001.
    first = dev.by_qid()[homedepot_qid("l bracket")]
    assert first.text == "l bracket" and first.judgments["100001"] == 2.5
    assert all(q.qid.startswith("hd-") and len(q.qid) == 15 for q in dev.queries)


def test_homedepot_train_counts() -> None:
    train = load_homedepot(require_homedepot() / "train.csv")
    assert (len(train.queries), train.n_pairs) == (8219, 51728)
    assert train.catalog_ids is None
    assert sum(1 for q in train.queries if max(q.judgments.values()) < 2.5) == 1453
    assert sum(1 for q in train.queries if max(q.judgments.values()) == 1.0) == 28


def test_homedepot_oracle_runs_score_one(dev: EvalDataset) -> None:
    # Ranking each query's judged products by grade is the ideal ranking.
    oracle = {q.qid: dict(q.judgments) for q in dev.queries}
    a = evaluate_protocol_a(dev, oracle)
    assert a.metrics["ndcg@10"] == pytest.approx(1.0)
    assert a.metrics["recall@100"] == pytest.approx(1.0)
    assert a.metrics["mrr@10"] == pytest.approx(1.0)
    assert (a.n_queries, a.n_left_out, a.n_left_out_ndcg) == (1248, 217, 0)
    assert evaluate_protocol_b(dev, oracle).metrics["b.ndcg@10"] == pytest.approx(1.0)


def test_convert_round_trip(tmp_path: Path, dev: EvalDataset) -> None:
    queries_tsv, qrels = convert_homedepot(HOMEDEPOT / "dev.csv", tmp_path / "generic")
    assert queries_tsv.read_text().splitlines()[0] == f"{homedepot_qid('l bracket')}\tl bracket"
    assert "2.33" in qrels.read_text()
    generic = load_generic(queries_tsv, qrels, gain_offset=HOMEDEPOT_GAIN_OFFSET)
    assert generic.queries == dev.queries
    assert generic.gain_offset == dev.gain_offset


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_generic_loader(tmp_path: Path) -> None:
    queries = write(
        tmp_path / "queries.tsv", "q1\tcordless drill\nq2\thammer\n\nq3\tno judgments\n"
    )
    qrels = write(tmp_path / "qrels.txt", "q1 0 p1 2\nq1 0 p2 0.5\n\nq2 0 p3 3\n")
    dataset = load_generic(queries, qrels, name="shop")
    assert dataset == EvalDataset(
        name="shop",
        queries=(
            JudgedQuery("q1", "cordless drill", {"p1": 2.0, "p2": 0.5}),
            JudgedQuery("q2", "hammer", {"p3": 3.0}),
            JudgedQuery("q3", "no judgments", {}),
        ),
        gain_offset=0.0,
    )
    assert dataset.gain(0.5) == 0.5


@pytest.mark.parametrize(
    ("queries", "qrels", "message"),
    [
        ("q1 no tab\n", "", r"queries.tsv:1: expected 'qid<TAB>text'"),
        ("q1\ta\nq1\tb\n", "", r"queries.tsv:2: query id 'q1' appears twice"),
        ("q1\ta\n", "q1 0 p1\n", r"qrels.txt:1: expected 4 fields"),
        ("q1\ta\n", "q1 0 p1 high\n", r"qrels.txt:1: grade 'high' is not a number"),
        ("q1\ta\n", "q1 0 p1 1\nq2 0 p1 1\n", r"qrels.txt:2: query 'q2' is not in"),
        ("q1\ta\n", "q1 0 p1 1\nq1 0 p1 2\n", r"qrels.txt:2: q1 p1 is judged twice"),
    ],
)
def test_generic_loader_errors(tmp_path: Path, queries: str, qrels: str, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        load_generic(write(tmp_path / "queries.tsv", queries), write(tmp_path / "qrels.txt", qrels))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("1,100001,Angle,l bracket,high\n", r"split.csv:2: grade 'high' is not a number"),
        ("1,100001,Angle,l bracket,3.5\n", r"split.csv:2: relevance 3.5 is outside 1..3"),
        ("1,100001,Angle,,2\n", r"split.csv:2: empty search_term"),
        (
            "1,100001,Angle,l bracket,2\n2,100001,Angle,l bracket,3\n",
            r"split.csv:3: .*judged twice",
        ),
        ("1,100001,Angle,l bracket\n", r"split.csv:2: expected 5 fields"),
    ],
)
def test_homedepot_loader_errors(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        load_homedepot(write(tmp_path / "split.csv", HD_HEADER + body))


def test_homedepot_loader_header_and_catalog_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"split.csv:1: .* lacks columns \['relevance'\]"):
        load_homedepot(write(tmp_path / "split.csv", "id,product_uid,product_title,search_term\n"))
    split = write(tmp_path / "ok.csv", HD_HEADER + "1,100001,Angle,l bracket,2\n")
    catalog = write(tmp_path / "products.csv", "product_uid,product_title\n999,Other\n")
    with pytest.raises(DatasetError, match=r"1 judged products are not in"):
        load_homedepot(split, catalog)
    with pytest.raises(DatasetError, match="not found"):
        load_homedepot(tmp_path / "missing.csv")
