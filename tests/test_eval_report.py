"""Report: metrics.json round trip, Markdown/HTML files that show the table and the plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shopsearch.eval.report import (
    SCHEMA,
    ConfigResult,
    ReportError,
    read_metrics_json,
    write_metrics_json,
    write_report,
)

CUTOFFS = (10, 20, 50, 100, 200, 500, 1000)


def config(name: str, ndcg: float, recall_100: float, p50: float | None) -> ConfigResult:
    recalls = {f"recall@{k}": min(1.0, recall_100 * (k / 100) ** 0.2) for k in CUTOFFS}
    return ConfigResult(
        name=name,
        metrics={"ndcg@10": ndcg, "mrr@10": ndcg + 0.05, **recalls, "b.ndcg@10": 0.93},
        latency_p50_ms=p50,
        latency_p95_ms=None if p50 is None else p50 * 2,
        n_queries=1248,
        n_left_out=217,
        params={"mode": name},
    )


RESULTS = [
    config("lexical", 0.387, 0.765, 0.3),
    config("dense-exact", 0.284, 0.696, 12.0),
    config("hybrid-rrf <b>", 0.353, 0.800, 13.0),
    config("no-latency", 0.2, 0.5, None),
]


def test_write_report_files(tmp_path: Path) -> None:
    meta = {"dataset": "homedepot-dev", "command": "shopsearch eval --split dev", "commit": "abc"}
    paths = write_report(RESULTS, tmp_path / "out", meta=meta)
    for path in (
        paths.metrics_json,
        paths.markdown,
        paths.html,
        paths.recall_plot,
        paths.scatter_plot,
    ):
        assert path is not None and path.is_file() and path.stat().st_size > 0
    assert paths.recall_plot is not None and paths.scatter_plot is not None
    assert paths.recall_plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    markdown = paths.markdown.read_text()
    assert "| configuration | ndcg@10 | mrr@10 | recall@10 | recall@20 |" in markdown
    assert "| lexical | 0.3870 | 0.4370 |" in markdown
    assert f"![Recall@k per configuration]({paths.recall_plot.name})" in markdown
    assert paths.scatter_plot.name in markdown
    assert "commit" in markdown

    page = paths.html.read_text()
    assert page.count('<img src="data:image/png;base64,') == 2
    assert paths.recall_plot.name in page and paths.scatter_plot.name in page
    assert "hybrid-rrf &lt;b&gt;" in page and "hybrid-rrf <b>" not in page
    assert "<td>—</td>" in page  # the configuration without latency


def test_metrics_json_layout_and_round_trip(tmp_path: Path) -> None:
    path = write_metrics_json(RESULTS, tmp_path / "metrics.json", meta={"dataset": "hd"})
    document = json.loads(path.read_text())
    assert document["schema"] == SCHEMA
    assert document["meta"] == {"dataset": "hd"}
    first = document["configurations"][0]
    assert set(first) == {"name", "metrics", "latency_ms", "n_queries", "n_left_out", "params"}
    assert first["latency_ms"] == {"p50": 0.3, "p95": 0.6}
    assert document["configurations"][3]["latency_ms"] == {"p50": None, "p95": None}
    loaded = read_metrics_json(path)
    assert loaded.configurations == tuple(RESULTS)
    assert loaded.get("lexical").metrics["ndcg@10"] == 0.387


def test_report_without_latency_or_recall(tmp_path: Path) -> None:
    paths = write_report([ConfigResult("b-only", {"b.ndcg@10": 0.93})], tmp_path)
    assert paths.recall_plot is None and paths.scatter_plot is None
    assert "nothing to plot" in paths.html.read_text()


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unique"):
        write_report([RESULTS[0], RESULTS[0]], tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "other/1", "configurations": []}')
    with pytest.raises(ReportError, match="schema is 'other/1'"):
        read_metrics_json(bad)
    bad.write_text(json.dumps({"schema": SCHEMA, "configurations": [{"name": "x", "metrics": 1}]}))
    with pytest.raises(ReportError, match=r"configurations\[0\]: 'metrics' must be an object"):
        read_metrics_json(bad)
    bad.write_text("{not json")
    with pytest.raises(ReportError, match="not valid JSON"):
        read_metrics_json(bad)
