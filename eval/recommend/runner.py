"""Run protocols R1, R1-new, R2 and R3 for every strategy in one pass, with per-request
latency, and write ``metrics.json``, ``latency.json``, ``report.md`` and ``report.html``.

``metrics.json`` is ``{protocol: {strategy: {metric: value}}}``; each strategy's
``latency_p50_ms`` / ``latency_p95_ms`` sit beside its metrics.
"""

from __future__ import annotations

import html
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from shopsearch.indexer.recommend_protocols import (
    DEPTH,
    METRICS,
    ForYouQuery,
    SimilarQuery,
    customer_histories,
    evaluate_run,
    r1_queries,
    r2_queries,
)
from shopsearch.rerank.personal import PersonalError
from shopsearch.retrieval.encoders import Encoder
from shopsearch.retrieval.recommend.base import Recommender, Scored

if TYPE_CHECKING:  # r3 loads the re-scorer's training code; it is imported when R3 runs
    from shopsearch.eval.recommend.r3 import ForYouRankers

__all__ = ["ALL_PROTOCOLS", "Evaluation", "run_protocols", "write_outputs"]

log = logging.getLogger(__name__)

ALL_PROTOCOLS: tuple[str, ...] = ("R1", "R1-new", "R2", "R3")
#: Metrics shown per protocol in the report (metrics.json keeps all of them).
HEADLINE: Mapping[str, tuple[str, ...]] = {
    "R1": ("recall@20", "ndcg@20"),
    "R1-new": ("recall@20", "ndcg@20"),
    "R2": ("hit@10", "recall@10"),
    "R3": ("mrr@10", "ndcg@10"),
}


@dataclass
class Evaluation:
    """``metrics[protocol][strategy][metric]``, and query counts per protocol."""

    metrics: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    queries: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _timed(
    calls: Sequence[tuple[str, Callable[[], list[Scored]]]],
) -> tuple[dict[str, list[Scored]], dict[str, float]]:
    run: dict[str, list[Scored]] = {}
    times = np.empty(len(calls))
    for n, (qid, call) in enumerate(calls):
        t = time.perf_counter()
        run[qid] = call()
        times[n] = (time.perf_counter() - t) * 1000
    lat = {"latency_p50_ms": 0.0, "latency_p95_ms": 0.0}
    if len(times):
        lat = {
            "latency_p50_ms": float(np.percentile(times, 50)),
            "latency_p95_ms": float(np.percentile(times, 95)),
        }
    return run, lat


def _for_you(model: Recommender, queries: Sequence[ForYouQuery]) -> dict[str, float]:
    calls: list[tuple[str, Callable[[], list[Scored]]]] = [
        (q.qid, partial(model.for_history, q.history, DEPTH, q.exclude)) for q in queries
    ]
    run, lat = _timed(calls)
    means, _ = evaluate_run({q.qid: q.relevant for q in queries}, run)
    return {**means, **lat}


def _similar(model: Recommender, queries: Sequence[SimilarQuery]) -> dict[str, float]:
    calls: list[tuple[str, Callable[[], list[Scored]]]] = [
        (q.qid, partial(model.similar, q.item, DEPTH)) for q in queries
    ]
    run, lat = _timed(calls)
    means, _ = evaluate_run({q.qid: q.relevant for q in queries}, run)
    return {**means, **lat}


def run_protocols(
    history: pd.DataFrame,
    test: pd.DataFrame,
    strategies: Mapping[str, Recommender],
    *,
    protocols: Sequence[str] = ALL_PROTOCOLS,
    seed: int = 0,
    history_lines: pd.DataFrame | None = None,
    test_lines: pd.DataFrame | None = None,
    encoder: Encoder | None = None,
    on_strategy: Callable[[str, str], None] | None = None,
    foryou: ForYouRankers | None = None,
) -> Evaluation:
    """Every strategy on every protocol of ``protocols``.

    ``history``/``test`` are interactions-shaped frames. R3 (:mod:`eval.recommend.r3`,
    shopper-aware search: its own strategies, the re-scorer trained on the history)
    needs the raw retail lines ``history_lines``/``test_lines`` (descriptions) and the
    ``encoder`` (query and item vectors); without them it is skipped with a note.
    ``foryou``: the for-you rankers of the re-scorer's ``foryou`` feature
    (:class:`eval.recommend.r3.ForYouRankers`).
    """
    unknown = set(protocols) - set(ALL_PROTOCOLS)
    if unknown:
        raise ValueError(
            f"unknown protocol(s) {sorted(unknown)}; choose from {', '.join(ALL_PROTOCOLS)}"
        )
    out = Evaluation()
    histories = customer_histories(history)
    for protocol in protocols:
        if protocol == "R3":
            _run_r3(out, history_lines, test_lines, encoder, seed, foryou)
            continue
        if protocol == "R2":
            similar_qs = r2_queries(test, seed=seed)
            out.queries[protocol] = len(similar_qs)
        else:
            fy_qs = r1_queries(histories, test, new=protocol == "R1-new")
            out.queries[protocol] = len(fy_qs)
        results: dict[str, dict[str, float]] = {}
        for name, model in strategies.items():
            if on_strategy is not None:
                on_strategy(protocol, name)
            results[name] = (
                _similar(model, similar_qs) if protocol == "R2" else _for_you(model, fy_qs)
            )
            log.info("%s %s: %s", protocol, name, results[name])
        out.metrics[protocol] = results
    return out


def _run_r3(
    out: Evaluation,
    history_lines: pd.DataFrame | None,
    test_lines: pd.DataFrame | None,
    encoder: Encoder | None,
    seed: int,
    foryou: ForYouRankers | None = None,
) -> None:
    if history_lines is None or test_lines is None or encoder is None:
        out.notes.append("R3 skipped: it needs the retail lines (with descriptions) and an encoder")
        return
    from shopsearch.eval.recommend.r3 import run_r3  # deferred: loads the re-scorer's training code

    try:
        result = run_r3(history_lines, test_lines, encoder=encoder, seed=seed, foryou=foryou)
    except (ValueError, PersonalError) as exc:
        # Too short a history to train the re-scorer on (it needs a month before its
        # validation month and enough queries in it) or no query word: the other
        # protocols still report.
        log.warning("R3 skipped: %s", exc)
        out.notes.append(f"R3 skipped: {exc}")
        return
    out.queries["R3"] = result.n_queries
    out.metrics["R3"] = {
        name: {
            **metrics,
            "latency_p50_ms": result.latency_ms.get(name, {}).get("p50", 0.0),
            "latency_p95_ms": result.latency_ms.get(name, {}).get("p95", 0.0),
        }
        for name, metrics in result.metrics.items()
    }
    out.notes.append(
        f"R3: {result.n_queries} queries of {result.n_shoppers} shoppers; latency is the "
        "re-scoring call alone"
    )


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}" if value < 10 else f"{value:.1f}"


def _tables(ev: Evaluation) -> list[tuple[str, list[str], list[list[str]]]]:
    tables = []
    for protocol, results in ev.metrics.items():
        names = HEADLINE.get(protocol) or tuple(
            dict.fromkeys(k for r in results.values() for k in r if not k.startswith("latency"))
        )
        columns = ["strategy", *names, "p50 ms", "p95 ms"]
        rows = [
            [
                strategy,
                *(_fmt(m.get(n)) for n in names),
                _fmt(m.get("latency_p50_ms")),
                _fmt(m.get("latency_p95_ms")),
            ]
            for strategy, m in results.items()
        ]
        title = f"{protocol} ({ev.queries.get(protocol, '?')} queries)"
        tables.append((title, columns, rows))
    return tables


def write_outputs(ev: Evaluation, out_dir: Path, meta: Mapping[str, Any]) -> None:
    """metrics.json, latency.json, report.md and report.html in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(ev.metrics, indent=2, sort_keys=False))
    latency = {
        p: {s: {k: v for k, v in m.items() if k.startswith("latency")} for s, m in r.items()}
        for p, r in ev.metrics.items()
    }
    (out_dir / "latency.json").write_text(json.dumps(latency, indent=2))
    md = ["# Recommendation evaluation", ""]
    md += [f"- {k}: {v}" for k, v in meta.items()]
    md += [f"- note: {n}" for n in ev.notes]
    md += ["", f"Metrics: ranx ({', '.join(METRICS)}); latency per request on this machine.", ""]
    page = [
        "<!doctype html><meta charset='utf-8'><title>Recommendation evaluation</title>",
        "<style>table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}"
        "td{text-align:right}td:first-child{text-align:left}</style>",
        "<h1>Recommendation evaluation</h1><ul>",
        *(f"<li>{html.escape(str(k))}: {html.escape(str(v))}</li>" for k, v in meta.items()),
        *(f"<li>note: {html.escape(n)}</li>" for n in ev.notes),
        "</ul>",
    ]
    for title, columns, rows in _tables(ev):
        md += [f"## {title}", "", "| " + " | ".join(columns) + " |"]
        md += ["|" + "---|" * len(columns)]
        md += ["| " + " | ".join(r) + " |" for r in rows]
        md += [""]
        page += [f"<h2>{html.escape(title)}</h2><table><tr>"]
        page += [f"<th>{html.escape(c)}</th>" for c in columns]
        page += ["</tr>"]
        page += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows]
        page += ["</table>"]
    (out_dir / "report.md").write_text("\n".join(md) + "\n")
    (out_dir / "report.html").write_text("\n".join(page) + "\n")
