"""The reranker Pareto report: quality against cost for every reranker, runtime and depth.

Each reranker (a full one and its compressed students) runs on each runtime (torch,
onnxruntime fp32 or int8) at each rerank depth over the same judged queries, on the same
snapshot, answering as ``serve`` does otherwise (its default fusion and leg depth). Per
point: nDCG@10 (protocol A), its difference from the reference (the first reranker on the
first runtime at the same depth), and the whole query's p50/p99 latency in-process. The
same answer without rerank is measured first (reranker ``none``, depth 0): a reranker
that does not beat it has no place in the default. The points no other point beats on
both nDCG@10 and p50 are the Pareto front, from which the default is picked.

Writes ``pareto.json``, ``pareto.md`` (the table, front marked) and ``pareto.png``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from shopsearch.api.service import SearchService
from shopsearch.api.settings import Settings
from shopsearch.eval.loadtest import summarize_latencies
from shopsearch.eval.runner import Configuration, evaluate_configurations
from shopsearch.indexer.judgments import EvalDataset
from shopsearch.rerank.cross_encoder import Reranker

__all__ = ["ParetoPoint", "RerankerChoice", "pareto_front", "run_pareto", "write_pareto"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RerankerChoice:
    """One reranker to measure: a short name for the table, its directory, its layers."""

    name: str
    path: Path
    layers: int | None = None


@dataclass(frozen=True, slots=True)
class ParetoPoint:
    """One (reranker, runtime, depth) measured on the whole query set."""

    reranker: str
    layers: int | None
    backend: str
    depth: int
    ndcg10: float
    delta_ndcg10: float
    p50_ms: float | None
    p99_ms: float | None
    n_queries: int
    front: bool = False


def run_pareto(
    settings: Settings,
    dataset: EvalDataset,
    rerankers: Sequence[RerankerChoice],
    backends: Sequence[str],
    depths: Sequence[int],
    *,
    progress: Callable[[str, int], Any] | None = None,
) -> list[ParetoPoint]:
    """Measure every reranker x runtime x depth (see the module docstring); the first
    reranker on the first runtime is the reference of ``delta_ndcg10``.

    Raises:
        rerank.cross_encoder.RerankerError: a reranker cannot be loaded on a runtime.
        indexer.snapshot.SnapshotError: the snapshot of ``settings`` cannot be served.
    """
    points: list[ParetoPoint] = []
    for choice in rerankers:
        for backend in backends:
            reranker = Reranker(
                choice.path,
                device=settings.device,
                batch_size=settings.rerank_batch_size,
                backend=backend,  # type: ignore[arg-type]  # checked by Reranker
            )
            service = SearchService(settings, reranker=reranker)
            service.load()
            if not points:  # the same answer without rerank, once, on the first service
                plain = Configuration("none", fusion=None, rerank=False)
                points.append(
                    _measure(service, dataset, plain, "none", None, "-", 0, settings, progress)
                )
            for depth in depths:
                # The service's defaults (fusion, leg depth), reranked at ``depth``.
                config = Configuration(
                    f"{choice.name}/{reranker.backend}/{depth}", fusion=None, rerank=True
                )
                points.append(
                    _measure(
                        service,
                        dataset,
                        config,
                        choice.name,
                        choice.layers,
                        reranker.backend,
                        depth,
                        settings,
                        progress,
                    )
                )
            service.close()
    return _with_deltas_and_front(points)


def _measure(
    service: SearchService,
    dataset: EvalDataset,
    config: Configuration,
    name: str,
    layers: int | None,
    backend: str,
    depth: int,
    settings: Settings,
    progress: Callable[[str, int], Any] | None,
) -> ParetoPoint:
    outcome = evaluate_configurations(
        service,
        dataset,
        [config],
        depth=settings.leg_depth,
        rerank_depth=max(depth, 1),
        protocol_b=False,
        progress=progress,
    )[0]
    lat = summarize_latencies(outcome.latency_ms)
    point = ParetoPoint(
        reranker=name,
        layers=layers,
        backend=backend,
        depth=depth,
        ndcg10=outcome.protocol_a.metrics["ndcg@10"],
        delta_ndcg10=0.0,
        p50_ms=lat.p50_ms,
        p99_ms=lat.p99_ms,
        n_queries=outcome.protocol_a.n_queries,
    )
    log.info("%s: %s", config.name, point)
    return point


def _with_deltas_and_front(points: list[ParetoPoint]) -> list[ParetoPoint]:
    if not points:
        return points
    first = next((p for p in points if p.reranker != "none"), points[0])
    reference = {
        p.depth: p.ndcg10
        for p in points
        if p.reranker == first.reranker and p.backend == first.backend
    }
    front = pareto_front([(p.ndcg10, p.p50_ms) for p in points])
    return [
        dataclasses.replace(
            p, delta_ndcg10=p.ndcg10 - reference.get(p.depth, p.ndcg10), front=i in front
        )
        for i, p in enumerate(points)
    ]


def pareto_front(points: Sequence[tuple[float, float | None]]) -> set[int]:
    """Indices of the ``(quality, cost)`` points no other point beats: none has quality
    at least as high and cost at most as high with one of them strictly better. A point
    without a cost is never on the front."""
    front = set()
    for i, (q, c) in enumerate(points):
        if c is None:
            continue
        beaten = any(
            oc is not None and oq >= q and oc <= c and (oq > q or oc < c)
            for j, (oq, oc) in enumerate(points)
            if j != i
        )
        if not beaten:
            front.add(i)
    return front


def write_pareto(points: Sequence[ParetoPoint], out: Path, meta: dict[str, Any]) -> list[Path]:
    """``pareto.json``, ``pareto.md`` and ``pareto.png`` in ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path, png_path = out / "pareto.json", out / "pareto.md", out / "pareto.png"
    json_path.write_text(
        json.dumps({"meta": meta, "points": [asdict(p) for p in points]}, indent=2)
    )

    def ms(v: float | None) -> str:
        return "—" if v is None else f"{v:.1f}"

    lines = [
        "# Reranker Pareto report",
        "",
        f"{meta.get('dataset', '')}, {points[0].n_queries if points else 0} queries; "
        "whole query in-process (retrieval, fusion, rerank, merge); "
        "Δ = nDCG@10 minus the reference's at the same depth; * = on the Pareto front "
        "(nDCG@10 vs p50).",
        "",
        "| reranker | layers | runtime | depth | nDCG@10 | Δ | p50 ms | p99 ms | front |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in points:
        lines.append(
            f"| {p.reranker} | {p.layers or '—'} | {p.backend} | {p.depth} | {p.ndcg10:.4f} "
            f"| {p.delta_ndcg10:+.4f} | {ms(p.p50_ms)} | {ms(p.p99_ms)} | "
            f"{'*' if p.front else ''} |"
        )
    lines += ["", f"Command: `{meta.get('command', '')}`", ""]
    md_path.write_text("\n".join(lines))
    _plot(points, png_path)
    return [json_path, md_path, png_path]


def _plot(points: Sequence[ParetoPoint], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for depth in sorted({p.depth for p in points}):
        chosen = [(p, p.p50_ms) for p in points if p.depth == depth and p.p50_ms is not None]
        ax.scatter([ms for _, ms in chosen], [p.ndcg10 for p, _ in chosen], label=f"depth {depth}")
        for p, ms in chosen:
            ax.annotate(f"{p.reranker} {p.backend}", (ms, p.ndcg10), fontsize=7, alpha=0.8)
    ax.set_xlabel("whole query p50 (ms)")
    ax.set_ylabel("nDCG@10")
    ax.set_title("Rerankers: quality vs latency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
