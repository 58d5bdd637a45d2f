"""The nightly job's one-page report: what was built, how it compared with the serving
snapshot, and what was done (Markdown for people, JSON for tools)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shopsearch.indexer.durable import write_atomic
from shopsearch.indexer.nightly import NightlyOutcome

__all__ = ["comparison_rows", "render_markdown", "render_shoppers", "write_report"]

_HEADLINE = {
    "promoted": "PROMOTED",
    "first": "PROMOTED (first snapshot)",
    "refused": "REFUSED",
    "unchanged": "UNCHANGED",
}


def comparison_rows(outcome: NightlyOutcome) -> list[tuple[str, str, str, str, str]]:
    """``(metric, serving, candidate, change, verdict)`` for each gated metric, then the
    other metrics both sides have (not gated, shown for context)."""
    gated = list(outcome.policy.metrics)
    failed = {m.split(":", 1)[0] for m in (outcome.gate.failures if outcome.gate else [])}
    others = sorted(
        (set(outcome.candidate_metrics) & set(outcome.baseline_metrics)) - set(gated),
        key=_metric_order,
    )
    rows = []
    for metric in [*gated, *others]:
        base = outcome.baseline_metrics.get(metric)
        new = outcome.candidate_metrics.get(metric)
        change = (
            f"{new - base:+.4f}"
            if base is not None and new is not None and math.isfinite(new - base)
            else "–"
        )
        if metric not in gated:
            verdict = "not gated"
        elif outcome.gate is None:
            verdict = "no baseline"
        else:
            verdict = "FAIL" if metric in failed else "ok"
        rows.append((metric, _fmt(base), _fmt(new), change, verdict))
    return rows


def _metric_order(metric: str) -> tuple[int, str, int]:
    """Protocol A first, then protocol B (``b.``), then per-stage recall (``stage.``);
    within each, by name and then by cutoff as a number (recall@20 before recall@100)."""
    group = 2 if metric.startswith("stage.") else 1 if metric.startswith("b.") else 0
    name, _, cutoff = metric.partition("@")
    return group, name, int(cutoff) if cutoff.isdigit() else 0


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def render_markdown(outcome: NightlyOutcome) -> str:
    """The report as Markdown: verdict, versions, the comparison table, build facts."""
    lines = [
        f"# Nightly reindex: {_HEADLINE[outcome.status]}",
        "",
        outcome.reason + ".",
        "",
        f"- run at: {outcome.at}",
        f"- serving before: `{outcome.serving_before}`; serving after: `{outcome.serving_after}`",
        f"- candidate: `{outcome.candidate}`",
        f"- judged queries: `{outcome.dataset_key}`",
        f"- gate: {', '.join(outcome.policy.metrics)} may each drop by at most "
        f"{outcome.policy.tolerance:g} (absolute)",
        f"- baseline: {outcome.baseline_source or 'none'}",
        f"- inputs: catalog `{outcome.inputs.catalog_sha256[:12]}`, item tower "
        f"`{outcome.inputs.item_tower_sha256[:12]}`, reranker "
        f"`{(outcome.inputs.reranker_sha256 or 'none')[:12]}`, lexical {outcome.inputs.lexical}",
        "",
    ]
    if outcome.candidate_metrics:
        lines += [
            "| metric | serving | candidate | change | verdict |",
            "|---|---:|---:|---:|---|",
            *(f"| {' | '.join(row)} |" for row in comparison_rows(outcome)),
            "",
        ]
    if outcome.build:
        timings = outcome.build.get("timings_s", {})
        lines += [
            "## Build",
            "",
            f"- products: {outcome.build.get('products')}",
            f"- embedding cache hits: {outcome.build.get('embedding_cache_hits')}",
            f"- approximate vs exact: {json.dumps(outcome.build.get('approx_vs_exact', {}))}",
            f"- timings (s): {', '.join(f'{k} {v}' for k, v in timings.items())}",
            "",
        ]
    return "\n".join(lines)


def render_shoppers(shoppers: Mapping[str, Any]) -> str:
    """The shopper models' section (:meth:`indexer.nightly_shoppers.ShopperModelsOutcome.to_dict`)."""
    lines = ["", "## Shopper models", "", f"**{shoppers['status']}**: {shoppers['reason']}"]
    if shoppers.get("pruned_events"):
        lines.append(f"\nretention: {shoppers['pruned_events']} old events deleted first")
    names = sorted({*shoppers.get("serving", {}), *shoppers.get("candidate", {})})
    if names:
        lines += ["", "| validation figure | serving | new |", "|---|---|---|"]
        for name in names:
            cells = [shoppers.get(k, {}).get(name) for k in ("serving", "candidate")]
            lines.append(
                f"| {name} | " + " | ".join("" if v is None else f"{v:.4f}" for v in cells) + " |"
            )
    for kind in ("recommender", "personal"):
        if shoppers.get(kind):
            lines.append(f"\nregistered: `{shoppers[kind]}`")
    return "\n".join(lines) + "\n"


def write_report(
    outcome: NightlyOutcome, directory: Path, shoppers: Mapping[str, Any] | None = None
) -> Path:
    """Write ``nightly-<time>.md`` and ``.json`` into ``directory`` (atomically, so a
    killed job leaves no half report) and return the Markdown path. ``shoppers``: the
    shopper models' step, when it ran (a section and a ``shoppers`` key)."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = "nightly-" + outcome.at.replace(":", "").replace("-", "").split("+")[0]
    markdown = directory / f"{stem}.md"
    text = render_markdown(outcome)
    document = outcome.to_dict()
    if shoppers is not None:
        text += render_shoppers(shoppers)
        document["shoppers"] = dict(shoppers)
    data = json.dumps(document, indent=2)
    write_atomic(markdown, lambda fh: fh.write(text.encode("utf-8")))
    write_atomic(directory / f"{stem}.json", lambda fh: fh.write(data.encode("utf-8")))
    return markdown
