"""``shopsearch eval facets``: how honest ``total`` and the facets are, before and after
result sets (``retrieval/match_set.py``).

Each judged query is answered twice by the serving defaults: with every fused
candidate counted (``match_only=false``, the answer before result sets) and with its
result set. For each answer the facet mass is split by judgment: products judged
irrelevant (grade below :data:`IRRELEVANT_BELOW`), judged relevant (protocol A's
threshold), and not judged. A facet count is a count of products, so the share of the
counted products in each group is the share of the facet mass. Also measured: how
many of the candidates judged relevant stay counted, nDCG@10 of both rankings, and the
cost of the result set in milliseconds.

Judgments of Home Depot were made on products its own search showed, so most counted
products are unjudged; the judged-relevant share and the count per query say most.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import track

from shopsearch.api.schemas import SearchRequest
from shopsearch.api.service import SearchService
from shopsearch.api.settings import Settings
from shopsearch.eval.metrics import DEFAULT_THRESHOLD, evaluate_protocol_a
from shopsearch.indexer.judgments import EvalDataset, load_homedepot
from shopsearch.indexer.match_threshold import dense_threshold
from shopsearch.retrieval.match_set import MATCH_RULE

__all__ = ["IRRELEVANT_BELOW", "FacetMass", "facets_command", "measure_facet_mass"]

console = Console(stderr=True)

#: Home Depot grades run 1 (irrelevant) to 3; below 2 is closer to irrelevant.
IRRELEVANT_BELOW = 2.0


@dataclass
class FacetMass:
    """Means over the judged queries of one way of counting."""

    counted: float  # products counted per query (``total``)
    listed: float  # products in the ranked list per query
    judged_irrelevant: float  # judged-irrelevant products counted per query
    share_irrelevant: float  # of the counted products
    share_relevant: float
    share_unjudged: float
    relevant_kept: float  # judged-relevant candidates that stay counted
    ndcg_at_10: float
    ms_p50: float  # whole retrieve() per query


class _Tally:
    """What one way of counting gathered, query by query."""

    def __init__(self) -> None:
        self.counted: list[int] = []
        self.listed: list[int] = []
        self.irrelevant: list[int] = []
        self.shares: list[tuple[float, float, float]] = []
        self.kept = 0
        self.times: list[float] = []
        self.run: dict[str, dict[str, float]] = {}

    def add(self, qid: str, ids: list[str], total: int | None, judgments: dict[str, float]) -> None:
        self.run[qid] = {pid: float(len(ids) - i) for i, pid in enumerate(ids)}
        grades = [judgments.get(pid) for pid in ids]
        n = len(ids)
        bad = sum(1 for g in grades if g is not None and g < IRRELEVANT_BELOW)
        good = sum(1 for g in grades if g is not None and g >= DEFAULT_THRESHOLD)
        self.listed.append(n)
        self.counted.append(total if total is not None else n)
        self.irrelevant.append(bad)
        if n:
            self.shares.append((bad / n, good / n, grades.count(None) / n))
        self.kept += good

    def mass(self, dataset: EvalDataset, kept_of: int) -> FacetMass:
        shares = self.shares or [(0.0, 0.0, 0.0)]
        return FacetMass(
            counted=statistics.fmean(self.counted),
            listed=statistics.fmean(self.listed),
            judged_irrelevant=statistics.fmean(self.irrelevant),
            share_irrelevant=statistics.fmean(s[0] for s in shares),
            share_relevant=statistics.fmean(s[1] for s in shares),
            share_unjudged=statistics.fmean(s[2] for s in shares),
            relevant_kept=self.kept / kept_of if kept_of else 1.0,
            ndcg_at_10=evaluate_protocol_a(dataset, self.run).metrics["ndcg@10"],
            ms_p50=statistics.median(self.times),
        )


def measure_facet_mass(service: SearchService, dataset: EvalDataset) -> dict[str, FacetMass]:
    """``{"before": ..., "after": ...}``: every candidate counted, then the result set.

    Both answers of a query are computed one after the other, in alternating order, so
    the query-encoding cache and the machine's load favour neither in ``ms_p50``.
    """
    tallies = {False: _Tally(), True: _Tally()}
    judged = [q for q in dataset.queries if q.judgments]
    if not judged:
        raise ValueError(f"dataset {dataset.name!r} has no judged queries")
    for i, query in enumerate(track(judged, description="answering", console=console)):
        request = SearchRequest(q=query.text, size=10)
        base = service.search_params(request)
        for match_only in (i % 2 == 0, i % 2 != 0):
            started = time.perf_counter()
            result = service.retrieve(
                request, params=base.with_overrides({"match_only": match_only})
            )
            tallies[match_only].times.append((time.perf_counter() - started) * 1000)
            table = result.snapshot.table
            ids = [table.products[c.row].id for c in result.filtered]
            tallies[match_only].add(query.qid, ids, result.total, dict(query.judgments))
    whole = tallies[False].kept
    return {
        "before": tallies[False].mass(dataset, whole),
        "after": tallies[True].mass(dataset, whole),
    }


def _markdown(result: dict[str, FacetMass], snapshot: str, threshold: float | None) -> str:
    rows = [
        ("products counted per query (`total`)", "counted", "{:.1f}"),
        ("products listed per query", "listed", "{:.1f}"),
        ("judged-irrelevant products counted per query", "judged_irrelevant", "{:.2f}"),
        ("facet mass on judged-irrelevant products", "share_irrelevant", "{:.2%}"),
        ("facet mass on judged-relevant products", "share_relevant", "{:.2%}"),
        ("facet mass on unjudged products", "share_unjudged", "{:.2%}"),
        ("judged-relevant candidates still counted", "relevant_kept", "{:.1%}"),
        ("nDCG@10", "ndcg_at_10", "{:.4f}"),
        ("retrieve p50 (ms)", "ms_p50", "{:.2f}"),
    ]
    lines = [
        f"# Facet honesty on snapshot {snapshot}",
        "",
        f"Result set: lexical matches ({MATCH_RULE}) plus dense neighbours with similarity "
        f">= {threshold} (the snapshot's calibrated threshold).",
        "",
        "| | every candidate (before) | result set (after) |",
        "|---|---|---|",
    ]
    for label, name, fmt in rows:
        b, a = getattr(result["before"], name), getattr(result["after"], name)
        lines.append(f"| {label} | {fmt.format(b)} | {fmt.format(a)} |")
    return "\n".join(lines) + "\n"


def facets_command(
    homedepot_dir: Annotated[
        Path, typer.Option(help="Home Depot data directory (products.csv, dev.csv).")
    ] = Path("../shared/datasets/homedepot"),
    split: Annotated[str, typer.Option(help="Judged split: dev or train.")] = "dev",
    index_dir: Annotated[
        Path | None, typer.Option(help="Index directory (default: SHOPSEARCH_INDEX_DIR).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Write facets.json and facets.md here.")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N queries.")] = None,
) -> None:
    """Measure how much of the facet mass falls on products judged irrelevant, with every
    candidate counted (before) and with the query's result set (after), on judged
    Home Depot queries, answered as `serve` answers them by default."""
    if split not in ("dev", "train"):
        raise typer.BadParameter(f"--split must be dev or train, got {split!r}")
    split_csv = homedepot_dir / f"{split}.csv"
    if not split_csv.is_file():
        raise typer.BadParameter(f"{split_csv} does not exist; pass --homedepot-dir")
    dataset = load_homedepot(split_csv)
    if limit is not None:
        dataset = EvalDataset(
            name=dataset.name,
            queries=dataset.queries[:limit],
            gain_offset=dataset.gain_offset,
        )
    settings = Settings() if index_dir is None else Settings(index_dir=index_dir)
    service = SearchService(settings.model_copy(update={"reload_interval_s": 0.0}))
    service.load()
    try:
        result = measure_facet_mass(service, dataset)
        threshold = dense_threshold(service.snapshot)
        report = _markdown(result, service.snapshot.version, threshold)
    finally:
        service.close()
    print(report)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        payload = {
            "snapshot": service.snapshot.version,
            "dense_threshold": threshold,
            "rule": MATCH_RULE,
            "queries": sum(1 for q in dataset.queries if q.judgments),
            **{k: asdict(v) for k, v in result.items()},
        }
        (out / "facets.json").write_text(json.dumps(payload, indent=2))
        (out / "facets.md").write_text(report)
        console.print(f"wrote {out / 'facets.json'} and {out / 'facets.md'}")
