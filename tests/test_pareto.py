"""The reranker Pareto report: the front (the real run is in test_homedepot_recall.py)."""

from __future__ import annotations

from shopsearch.eval.pareto import pareto_front


def test_pareto_front_keeps_only_unbeaten_points() -> None:
    points = [(0.43, 100.0), (0.42, 40.0), (0.41, 60.0), (0.43, 120.0), (0.40, 30.0), (0.5, None)]
    # (0.41, 60) is beaten by (0.42, 40); (0.43, 120) by (0.43, 100); no cost, no front.
    assert pareto_front(points) == {0, 1, 4}
    assert pareto_front([]) == set()
