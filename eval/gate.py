"""Release gate of ``shopsearch eval --gate``: the metrics of a ``metrics.json`` compared
with :func:`indexer.quality_gate.check_gate` (the same gate the nightly job applies)."""

from __future__ import annotations

from pathlib import Path

from shopsearch.eval.report import read_metrics_json
from shopsearch.indexer.quality_gate import DEFAULT_GATE_METRICS, GateResult, check_gate

__all__ = [
    "DEFAULT_GATE_METRICS",
    "GateResult",
    "check_gate",
    "load_gate_metrics",
]


def load_gate_metrics(path: Path, configuration: str | None = None) -> dict[str, float]:
    """The metrics of one configuration of a ``metrics.json`` (the only one when ``None``).

    Raises:
        eval.report.ReportError: the file is missing or malformed, or the configuration
            is not in it (the message lists the valid names).
    """
    return dict(read_metrics_json(path).get(configuration).metrics)
