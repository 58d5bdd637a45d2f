"""Protocol A/B metrics, stage recall and run files on hand-made data with known answers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from shopsearch.eval.metrics import (
    evaluate_protocol_a,
    evaluate_protocol_b,
    rerank_run,
    stage_recall,
)
from shopsearch.indexer.judgments import (
    EvalDataset,
    JudgedQuery,
    RunFileError,
    ranked_ids,
    read_run,
    run_from_rankings,
    write_run,
)

# Home Depot-like grades (1..3), gain = grade - 1, relevant = grade >= 2.5.
#   q1: d1 3.0 (gain 2, relevant), d2 2.5 (gain 1.5, relevant), d3 2.0 (gain 1), d4 1.0 (gain 0)
#   q2: h1 2.67 (gain 1.67, relevant), h2 1.33 (gain 0.33)
#   q3: s1 2.0 (gain 1), s2 1.67 (gain 0.67)        -> no relevant product
#   q4: n1 1.0 (gain 0)                              -> no relevant product, no positive gain
DATASET = EvalDataset(
    name="hand",
    queries=(
        JudgedQuery("q1", "drill", {"d1": 3.0, "d2": 2.5, "d3": 2.0, "d4": 1.0}),
        JudgedQuery("q2", "hammer", {"h1": 2.67, "h2": 1.33}),
        JudgedQuery("q3", "saw", {"s1": 2.0, "s2": 1.67}),
        JudgedQuery("q4", "nail", {"n1": 1.0}),
    ),
    gain_offset=1.0,
)
FILLERS = [f"f{i:02d}" for i in range(2, 21)]  # 19 unjudged products
# q1: f01, d2, d3, f02..f20, d1  -> d2 at rank 2, d3 at 3, d1 at rank 23
# q2: h1 and h2 tie at 0.5       -> doc id breaks the tie: h1 rank 1, h2 rank 2
# q3: s2 at rank 1, s1 at rank 2; q4 is missing from the run
RUN = {
    **run_from_rankings({"q1": ["f01", "d2", "d3", *FILLERS, "d1"], "q3": ["s2", "s1"]}),
    "q2": {"h2": 0.5, "h1": 0.5},
}


def dcg(gains: list[float]) -> float:
    """Linear-gain DCG: sum gain_i / log2(i + 1), i from 1 (trec_eval's form)."""
    return sum(g / math.log2(i + 1) for i, g in enumerate(gains, start=1))


def test_protocol_a_known_values() -> None:
    result = evaluate_protocol_a(DATASET, RUN)
    # nDCG@10 over q1..q3 (q4 has no positive gain: left out).
    #   q1 top 10 gains: 0, 1.5, 1, 0 ... (d1 is at 23) -> DCG = 1.5/log2 3 + 1/2 = 1.446395
    #      ideal 2, 1.5, 1 -> 2 + 1.5/log2 3 + 1/2 = 3.446395 -> 0.419683
    #   q2: h1 then h2 is the ideal order -> 1.0
    #   q3: 0.67 then 1 -> (0.67 + 1/log2 3) / (1 + 0.67/log2 3) = 1.300930 / 1.422723 = 0.914394
    q1 = dcg([0, 1.5, 1]) / dcg([2, 1.5, 1])
    q3 = dcg([0.67, 1]) / dcg([1, 0.67])
    assert q1 == pytest.approx(0.419683, abs=1e-6)
    assert q3 == pytest.approx(0.914394, abs=1e-6)
    assert result.metrics["ndcg@10"] == pytest.approx((q1 + 1.0 + q3) / 3, abs=1e-9)
    assert result.metrics["ndcg@10"] == pytest.approx(0.778026, abs=1e-6)
    # Recall and MRR over q1, q2 (q3, q4 have no relevant product: left out).
    #   q1 relevant {d1, d2}: d2 at 2, d1 at 23 -> recall@10 = recall@20 = 0.5, @50.. = 1
    #   q2 relevant {h1} at 1 -> 1 everywhere.  MRR@10: q1 1/2, q2 1 -> 0.75
    assert result.metrics["recall@10"] == pytest.approx(0.75)
    assert result.metrics["recall@20"] == pytest.approx(0.75)
    for k in (50, 100, 200, 500, 1000):
        assert result.metrics[f"recall@{k}"] == pytest.approx(1.0)
    assert result.metrics["mrr@10"] == pytest.approx(0.75)
    assert (result.n_queries, result.n_left_out, result.n_left_out_ndcg) == (4, 2, 1)
    assert result.per_query["ndcg@10"]["q2"] == pytest.approx(1.0)
    assert set(result.per_query["recall@10"]) == {"q1", "q2"}


def test_protocol_a_threshold_and_cutoffs() -> None:
    # threshold 2.0 makes q1's d3 and q3's s1 relevant: q1 {d1,d2,d3} found 2 of 3 in the
    # top 10; q2 1; q3 {s1} at rank 2 -> recall@10 = (2/3 + 1 + 1) / 3; MRR = (1/2 + 1 + 1/2) / 3
    result = evaluate_protocol_a(DATASET, RUN, threshold=2.0, recall_cutoffs=[10])
    assert result.metrics["recall@10"] == pytest.approx((2 / 3 + 1 + 1) / 3)
    assert result.metrics["mrr@10"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    assert sorted(result.metrics) == ["mrr@10", "ndcg@10", "recall@10"]
    assert result.n_left_out == 1


def test_protocol_a_missing_and_empty_runs_score_zero() -> None:
    empty = evaluate_protocol_a(DATASET, {})
    assert all(v == 0.0 for v in empty.metrics.values())
    # Only q2 answered, perfectly; q1 and q3 count as 0 and extra queries are ignored.
    partial = evaluate_protocol_a(DATASET, {"q2": {"h1": 1.0}, "q1": {}, "zz": {"a": 1.0}})
    # q2 alone: DCG 1.67 vs ideal 1.67 + 0.33/log2 3 -> 0.888...
    q2 = dcg([1.67]) / dcg([1.67, 0.33])
    assert partial.metrics["ndcg@10"] == pytest.approx(q2 / 3)
    assert partial.metrics["recall@10"] == pytest.approx(0.5)


def test_protocol_a_rejects_bad_cutoff() -> None:
    with pytest.raises(ValueError, match="positive"):
        evaluate_protocol_a(DATASET, RUN, recall_cutoffs=[0])


def test_protocol_b_known_values() -> None:
    result = evaluate_protocol_b(DATASET, RUN)
    # Only judged products are ranked; unjudged f.. are dropped, unscored d4 goes last.
    #   q1: d2, d3, d1, d4 -> gains 1.5, 1, 2, 0 -> 3.130930 / 3.446395 = 0.908465
    #   q2: 1.0;  q3: 0.914394 (as in protocol A);  q4: left out
    q1 = dcg([1.5, 1, 2, 0]) / dcg([2, 1.5, 1])
    assert q1 == pytest.approx(0.908465, abs=1e-6)
    q3 = dcg([0.67, 1]) / dcg([1, 0.67])
    assert result.metrics == {"b.ndcg@10": pytest.approx((q1 + 1 + q3) / 3)}
    assert (result.n_queries, result.n_left_out) == (4, 1)


def test_rerank_run_ideal_scorer_scores_one() -> None:
    by_qid = DATASET.by_qid()
    run = rerank_run(DATASET, lambda q, ids: [by_qid[q.qid].judgments[i] for i in ids])
    assert evaluate_protocol_b(DATASET, run).metrics["b.ndcg@10"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="one score per product"):
        rerank_run(DATASET, lambda q, ids: [1.0])


def test_stage_recall_shows_where_products_are_lost() -> None:
    # Relevant: q1 {d1, d2}, q2 {h1}; q3 and q4 are left out.
    stages = {
        "dense": {"q1": ["d1", "x"], "q2": []},  # q1 1/2, q2 0 -> 0.25
        "lexical": {"q1": ["d2"], "q2": ["h1"]},  # q1 1/2, q2 1 -> 0.75
        "fused": {"q1": ["d1", "d2"], "q2": ["h1"]},  # 1.0
        "reranked": {"q1": ["d2", "d1"]},  # q2 missing -> 0 -> 0.5
    }
    assert stage_recall(DATASET, stages) == pytest.approx(
        {"dense": 0.25, "lexical": 0.75, "fused": 1.0, "reranked": 0.5}
    )
    assert list(stage_recall(DATASET, stages)) == ["dense", "lexical", "fused", "reranked"]
    # At k = 1: fused q1 keeps d1 only -> (0.5 + 1) / 2
    assert stage_recall(DATASET, {"fused": stages["fused"]}, k=1)["fused"] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="twice"):
        stage_recall(DATASET, {"dense": {"q1": ["d1", "d1"]}})


def test_ranked_ids_breaks_ties_by_id() -> None:
    assert ranked_ids({"b": 1.0, "a": 1.0, "c": 2.0}) == ["c", "a", "b"]
    with pytest.raises(ValueError, match="twice"):
        run_from_rankings({"q": ["a", "a"]})


def test_trec_run_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "runs" / "lexical.trec"
    write_run(RUN, path, tag="lexical")
    lines = path.read_text().splitlines()
    assert lines[0].split() == ["q1", "Q0", "f01", "1", "23.0", "lexical"]
    assert [line.split()[2] for line in lines if line.startswith("q2 ")] == ["h1", "h2"]
    assert read_run(path) == RUN
    write_run(RUN, path, depth=1)
    assert {qid: len(docs) for qid, docs in read_run(path).items()} == {"q1": 1, "q2": 1, "q3": 1}


def test_trec_run_errors(tmp_path: Path) -> None:
    with pytest.raises(RunFileError, match="whitespace"):
        write_run({"q 1": {"a": 1.0}}, tmp_path / "bad.trec")
    with pytest.raises(RunFileError, match="not finite"):
        write_run({"q1": {"a": math.nan}}, tmp_path / "bad.trec")
    bad = tmp_path / "broken.trec"
    bad.write_text("q1 Q0 a 1 0.5 tag\nq1 Q0 b 2\n")
    with pytest.raises(RunFileError, match=r"broken.trec:2: expected 6 fields"):
        read_run(bad)
    with pytest.raises(RunFileError, match="not found"):
        read_run(tmp_path / "missing.trec")
