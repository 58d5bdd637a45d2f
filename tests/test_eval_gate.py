"""Quality gate: fails on a worse run, passes on an equal one, reads metrics.json."""

from __future__ import annotations

from pathlib import Path

import pytest

from shopsearch.eval.gate import check_gate, load_gate_metrics
from shopsearch.eval.report import ConfigResult, ReportError, write_metrics_json

BASELINE = {"ndcg@10": 0.387, "recall@100": 0.765, "mrr@10": 0.41}


def test_equal_run_passes() -> None:
    result = check_gate(dict(BASELINE), BASELINE)
    assert result.passed and result.failures == []
    assert result.checked == {"ndcg@10": (0.387, 0.387), "recall@100": (0.765, 0.765)}


def test_drop_within_tolerance_passes_and_beyond_fails() -> None:
    assert check_gate({"ndcg@10": 0.380, "recall@100": 0.760}, BASELINE).passed
    worse = check_gate({"ndcg@10": 0.370, "recall@100": 0.790}, BASELINE, tolerance=0.01)
    assert not worse.passed
    assert worse.failures == [
        "ndcg@10: current 0.3700 is below baseline 0.3870 by 0.0170 (tolerance 0.0100)"
    ]
    # A stricter tolerance also catches the smaller drop; other metrics can be gated.
    strict = check_gate({"ndcg@10": 0.380, "recall@100": 0.760, "mrr@10": 0.2}, BASELINE, 0.0)
    assert [f.split(":")[0] for f in strict.failures] == ["ndcg@10", "recall@100"]
    assert not check_gate({"mrr@10": 0.2}, BASELINE, metrics=["mrr@10"]).passed


def test_missing_metric_fails() -> None:
    result = check_gate({"ndcg@10": 0.5}, BASELINE)
    assert result.failures == ["recall@100: current value is None (baseline 0.7650)"]
    assert "baseline value is None" in check_gate(BASELINE, {"ndcg@10": 0.3}).failures[0]


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="tolerance"):
        check_gate(BASELINE, BASELINE, tolerance=-0.1)
    with pytest.raises(ValueError, match="metrics is empty"):
        check_gate(BASELINE, BASELINE, metrics=())


def test_gate_from_metrics_files(tmp_path: Path) -> None:
    baseline_path = write_metrics_json(
        [ConfigResult("hybrid", BASELINE), ConfigResult("lexical", {"ndcg@10": 0.3})],
        tmp_path / "baseline.json",
    )
    current_path = write_metrics_json(
        [ConfigResult("hybrid", {**BASELINE, "ndcg@10": 0.35})], tmp_path / "current.json"
    )
    current = load_gate_metrics(current_path)  # the only configuration
    baseline = load_gate_metrics(baseline_path, "hybrid")
    result = check_gate(current, baseline)
    assert result.failures == [
        "ndcg@10: current 0.3500 is below baseline 0.3870 by 0.0370 (tolerance 0.0100)"
    ]
    with pytest.raises(ReportError, match=r"holds configurations \['hybrid', 'lexical'\]"):
        load_gate_metrics(baseline_path)
    with pytest.raises(ReportError, match="'dense' is not in the metrics file"):
        load_gate_metrics(baseline_path, "dense")
