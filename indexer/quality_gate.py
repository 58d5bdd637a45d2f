"""Quality gate: refuse a version when a metric drops below its baseline by more than a
tolerance.

Both sides are flat ``{metric: value}`` dicts (one configuration of an evaluation). Higher
is better for every gated metric. A metric missing on either side is a failure, never a
pass. Used by ``shopsearch eval --gate`` (release gate, :mod:`eval.gate`) and by the
nightly job before it promotes a snapshot (:mod:`indexer.nightly`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["DEFAULT_GATE_METRICS", "GateResult", "check_gate"]

logger = logging.getLogger(__name__)

DEFAULT_GATE_METRICS: tuple[str, ...] = ("ndcg@10", "recall@100")


@dataclass(frozen=True)
class GateResult:
    """Outcome of ``check_gate``: ``failures`` holds one message per failed metric."""

    failures: list[str] = field(default_factory=list)
    checked: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    tolerance: float = 0.0

    @property
    def passed(self) -> bool:
        """True when no gated metric failed."""
        return not self.failures


def check_gate(
    current: Mapping[str, float],
    baseline: Mapping[str, float],
    tolerance: float = 0.01,
    metrics: Sequence[str] = DEFAULT_GATE_METRICS,
) -> GateResult:
    """Compare ``current`` to ``baseline`` on ``metrics``.

    A metric fails when ``current < baseline - tolerance`` (absolute tolerance), or when
    it is missing or not finite on either side. ``checked`` records ``(baseline,
    current)`` for every gated metric.

    Raises:
        ValueError: ``tolerance`` is negative or not finite, or ``metrics`` is empty.

    >>> check_gate({"ndcg@10": 0.37}, {"ndcg@10": 0.39}, metrics=["ndcg@10"]).failures
    ['ndcg@10: current 0.3700 is below baseline 0.3900 by 0.0200 (tolerance 0.0100)']
    """
    if not math.isfinite(tolerance) or tolerance < 0:
        raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance}")
    if not metrics:
        raise ValueError("metrics is empty; name at least one metric to gate on, e.g. ndcg@10")
    failures: list[str] = []
    checked: dict[str, tuple[float | None, float | None]] = {}
    for name in metrics:
        base, now = baseline.get(name), current.get(name)
        checked[name] = (base, now)
        if base is None or not math.isfinite(base):
            failures.append(f"{name}: baseline value is {base!r}; re-create the baseline")
        elif now is None or not math.isfinite(now):
            failures.append(f"{name}: current value is {now!r} (baseline {base:.4f})")
        elif now < base - tolerance:
            failures.append(
                f"{name}: current {now:.4f} is below baseline {base:.4f} by {base - now:.4f} "
                f"(tolerance {tolerance:.4f})"
            )
    for message in failures:
        logger.warning("quality gate: %s", message)
    return GateResult(failures=failures, checked=checked, tolerance=tolerance)
