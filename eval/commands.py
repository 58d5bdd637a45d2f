"""The ``shopsearch eval`` commands (mounted by eval/cli.py); ``shopsearch bench`` is in
eval/commands_bench.py."""

from __future__ import annotations

import logging
import math
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from shopsearch.api.cli_common import models_dir_setting
from shopsearch.api.settings import Settings
from shopsearch.retrieval.model_registry import resolve_model
from shopsearch.retrieval.search_params import PARAM_NAMES

__all__ = ["eval_app"]

log = logging.getLogger(__name__)
console = Console(stderr=True)

DEFAULT_HOMEDEPOT = Path("../shared/datasets/homedepot")

eval_app = typer.Typer(
    help="Offline evaluation on judged queries: protocol A/B metrics for several configurations, "
    "TREC runs, metrics.json, a Markdown/HTML report with plots, and a quality gate.",
    no_args_is_help=False,
)


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _load_dataset(
    homedepot_dir: Path,
    split: str,
    queries: Path | None,
    qrels: Path | None,
    limit: int | None,
    gain_offset: float | None = None,
):  # type: ignore[no-untyped-def]
    """The judged queries: generic (--queries/--qrels) or a Home Depot split.

    ``gain_offset`` is the value of --gain-offset, ``None`` when it was not given: the
    generic format then uses 0, and the Home Depot path, whose offset is fixed at
    ``HOMEDEPOT_GAIN_OFFSET``, refuses it.
    """
    from shopsearch.indexer.judgments import (
        HOMEDEPOT_GAIN_OFFSET,
        EvalDataset,
        load_generic,
        load_homedepot,
    )

    if gain_offset is not None and not math.isfinite(gain_offset):
        raise typer.BadParameter(f"--gain-offset must be a finite number, got {gain_offset}")
    if queries is not None or qrels is not None:
        if queries is None or qrels is None:
            raise typer.BadParameter(
                "--queries and --qrels go together (TSV qid<TAB>text and TREC qrels)"
            )
        dataset = load_generic(queries, qrels, gain_offset=gain_offset or 0.0)
    else:
        if gain_offset is not None:
            raise typer.BadParameter(
                "--gain-offset applies to the generic format (--queries/--qrels) only; the "
                f"Home Depot split always uses gain = relevance - {HOMEDEPOT_GAIN_OFFSET:g}, "
                "so drop --gain-offset"
            )
        split_csv = homedepot_dir / f"{split}.csv"
        if not split_csv.is_file():
            raise typer.BadParameter(
                f"{split_csv} not found; pass --homedepot-dir or --queries/--qrels"
            )
        dataset = load_homedepot(split_csv)
    if limit is not None:
        dataset = EvalDataset(
            dataset.name, dataset.queries[:limit], dataset.gain_offset, dataset.catalog_ids
        )
    return dataset


@contextmanager
def _bars() -> Iterator[Progress]:
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )
    with progress:
        yield progress


@eval_app.callback(invoke_without_command=True)
def evaluate(
    ctx: typer.Context,
    index_dir: Annotated[
        Path | None, typer.Option(help="Index dir whose CURRENT snapshot is evaluated.")
    ] = None,
    homedepot_dir: Annotated[
        Path, typer.Option(help="Home Depot data (products/train/dev CSV).")
    ] = DEFAULT_HOMEDEPOT,
    split: Annotated[str, typer.Option(help="Home Depot split: dev or train.")] = "dev",
    queries: Annotated[Path | None, typer.Option(help="Generic format: TSV qid<TAB>text.")] = None,
    qrels: Annotated[
        Path | None, typer.Option(help="Generic format: TREC qrels 'qid 0 docid grade'.")
    ] = None,
    gain_offset: Annotated[
        float | None,
        typer.Option(
            help="Generic format: grade minus this is the nDCG gain, gain = max(grade - offset, "
            "0); default 0 (Home Depot files, e.g. from `eval convert`: 1). Not allowed with "
            "the Home Depot split, which always uses 1."
        ),
    ] = None,
    configs: Annotated[
        str | None,
        typer.Option(help="Comma-separated configuration names (default: all that apply)."),
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Evaluate only the first N queries.")] = None,
    depth: Annotated[
        int, typer.Option(help="Candidates per leg and run depth (recall@1000 needs 1000).")
    ] = 1000,
    reranker: Annotated[
        Path | None, typer.Option(help="Cross-encoder dir: adds '+rerank' configurations.")
    ] = None,
    rerank_depth: Annotated[int, typer.Option(help="Candidates the reranker scores.")] = 50,
    rerank_weights: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated weights of the reranker's order in the merge (0..1): adds "
            "'<hybrid>+rerank-w<W>' configurations. Each pair is scored once, so a sweep "
            "costs little (the reused configurations report no latency)."
        ),
    ] = None,
    model: Annotated[
        Path | None, typer.Option(help="Two-tower model dir (must match the snapshot).")
    ] = None,
    fusion_weights: Annotated[
        str,
        typer.Option(
            help="Comma-separated BM25 weights (0..1) of the 'hybrid-weighted-<W>' configurations."
        ),
    ] = "0.3,0.5,0.7",
    out: Annotated[
        Path | None, typer.Option(help="Output dir (default var/eval/<UTC time>).")
    ] = None,
    gate: Annotated[
        Path | None,
        typer.Option(help="Baseline metrics.json: exit 1 when nDCG@10 or recall@100 drop."),
    ] = None,
    tolerance: Annotated[float, typer.Option(help="Allowed drop below the baseline.")] = 0.01,
    gate_config: Annotated[
        str,
        typer.Option(
            help="Configuration the gate compares; 'default' is what `serve` answers with "
            "its defaults for the snapshot."
        ),
    ] = "default",
    compare_index_dir: Annotated[
        Path | None,
        typer.Option(
            help="A second index dir (e.g. built with fine-tuned towers, model read from its "
            "manifest): its configurations join the same table as '<name>@<model id>'."
        ),
    ] = None,
    param_sweeps: Annotated[
        list[str] | None,
        typer.Option(
            "--sweep",
            help="NAME=V1,V2,...: adds a copy of each chosen configuration per value of the "
            "search parameter NAME, named '<config>-<NAME>-<V>' (e.g. --configs default --sweep "
            "nprobe=1,4,16 gives default-nprobe-1, -4, -16). NAME is any field of "
            f"SearchParams: {', '.join(PARAM_NAMES)}. Repeat to sweep a grid.",
        ),
    ] = None,
) -> None:
    """Evaluate the serving snapshot on judged queries (protocol A and B).

    Writes runs/<config>.trec, metrics.json, report.md and report.html (with plots) to --out,
    prints the table, and with --gate fails when quality fell below the baseline.
    """
    if ctx.invoked_subcommand is not None:
        return
    from shopsearch.api.service import SearchService
    from shopsearch.eval.gate import check_gate, load_gate_metrics
    from shopsearch.eval.report import write_report
    from shopsearch.eval.runner import (
        default_configurations,
        evaluate_configurations,
        parse_sweep,
        sweep_configurations,
    )
    from shopsearch.indexer.judgments import write_run
    from shopsearch.retrieval.types import ShopsearchError

    settings = Settings()
    updates: dict[str, object] = {"reload_interval_s": 0.0}
    if index_dir is not None:
        updates["index_dir"] = index_dir
    if model is not None:
        updates["model_dir"] = resolve_model(str(model), models_dir_setting())
    if reranker is not None:
        updates["reranker_dir"] = resolve_model(str(reranker), models_dir_setting())
    # Without --model, SearchService serves with the towers that built the snapshot.
    settings = settings.model_copy(update=updates)
    try:
        sweeps = [parse_sweep(text) for text in param_sweeps or []]
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--sweep") from exc
    dataset = _load_dataset(homedepot_dir, split, queries, qrels, limit, gain_offset)
    try:
        service = SearchService(settings)
        service.load()
    except ShopsearchError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    sweep: list[float | None] = [None]
    if rerank_weights:
        try:
            sweep += [float(w) for w in rerank_weights.split(",") if w.strip()]
        except ValueError as exc:
            raise typer.BadParameter(
                f"--rerank-weights: {exc}; give numbers in [0, 1] like 0.3,0.5,0.7"
            ) from exc
        if not all(0.0 <= w <= 1.0 for w in sweep if w is not None):
            raise typer.BadParameter("--rerank-weights: each weight must be in [0, 1]")
    try:
        weights = [float(w) for w in fusion_weights.split(",") if w.strip()]
    except ValueError as exc:
        raise typer.BadParameter(
            f"--fusion-weights: {exc}; give numbers in [0, 1] like 0.5,0.7,0.8"
        ) from exc
    if not all(0.0 <= w <= 1.0 for w in weights):
        raise typer.BadParameter("--fusion-weights: each weight must be in [0, 1]")
    available = default_configurations(
        with_reranker=service.reranker is not None, weights=weights, rerank_weights=sweep
    )
    if configs:
        wanted = [c.strip() for c in configs.split(",") if c.strip()]
        by_name = {c.name: c for c in available}
        unknown = [w for w in wanted if w not in by_name]
        if unknown:
            raise typer.BadParameter(
                f"unknown configuration(s) {unknown}; choose from {sorted(by_name)}"
            )
        chosen = [by_name[w] for w in wanted]
    else:
        chosen = available
    chosen = sweep_configurations(chosen, sweeps)
    out = out or Path("var/eval") / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (out / "runs").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with _bars() as bars:

        def progress(name: str, total: int):  # type: ignore[no-untyped-def]
            task = bars.add_task(name, total=total)
            return lambda n: bars.advance(task, n)

        try:
            outcomes = evaluate_configurations(
                service, dataset, chosen, depth=depth, rerank_depth=rerank_depth, progress=progress
            )
        except ValueError as exc:  # a configuration out of range, checked before any query
            raise typer.BadParameter(str(exc)) from exc
        if compare_index_dir is not None:
            outcomes += _compare_outcomes(
                settings, compare_index_dir, dataset, chosen, depth, rerank_depth, progress
            )
    for outcome in outcomes:
        write_run(
            outcome.run, out / "runs" / f"{outcome.config.name}.trec", tag=outcome.config.name
        )
    import torch

    meta = {
        "dataset": dataset.name,
        "queries": len(dataset.queries),
        "gain_offset": dataset.gain_offset,
        "index_version": service.snapshot.version,
        "models": service.models(),
        "command": " ".join(["shopsearch", *sys.argv[1:]]),
        "commit": _commit(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "depth": depth,
        "threads": torch.get_num_threads(),
        "latency_note": f"per-query in-process latency at depth {depth} (serving uses 100); see `shopsearch bench`",
        "wall_s": round(time.perf_counter() - started, 1),
    }
    results = [o.result() for o in outcomes]
    paths = write_report(results, out, title=f"shopsearch evaluation — {dataset.name}", meta=meta)
    table = Table(
        title=f"{dataset.name}: protocol A ({len(dataset.queries)} queries, snapshot {service.snapshot.version})"
    )
    for col in (
        "configuration",
        "nDCG@10",
        "R@10",
        "R@100",
        "R@1000",
        "MRR@10",
        "B nDCG@10",
        "p50 ms",
    ):
        table.add_column(col, justify="right" if col != "configuration" else "left")
    for r in results:
        m = r.metrics

        def f(key: str, metrics: Mapping[str, float] = m) -> str:
            return f"{metrics[key]:.4f}" if key in metrics else "—"

        p50 = f"{r.latency_p50_ms:.1f}" if r.latency_p50_ms is not None else "—"
        table.add_row(
            r.name,
            f("ndcg@10"),
            f("recall@10"),
            f("recall@100"),
            f("recall@1000"),
            f("mrr@10"),
            f("b.ndcg@10"),
            p50,
        )
    Console().print(table)
    left_out = outcomes[0].protocol_a.n_left_out if outcomes else 0
    console.print(f"{left_out} queries without a relevant product were left out of recall and MRR")
    console.print(
        f"wrote {paths.metrics_json}, {paths.markdown}, {paths.html} ({meta['wall_s']} s)"
    )
    if gate is not None:
        result = check_gate(
            load_gate_metrics(paths.metrics_json, gate_config),
            load_gate_metrics(gate, gate_config),
            tolerance,
        )
        if not result.passed:
            for failure in result.failures:
                console.print(f"[bold red]gate failed:[/] {failure}")
            raise typer.Exit(1)
        console.print(f"[green]gate passed[/] ({gate_config}, tolerance {tolerance})")


def _compare_outcomes(  # type: ignore[no-untyped-def]
    settings: Settings, index_dir: Path, dataset, configs, depth: int, rerank_depth: int, progress
) -> list:  # type: ignore[type-arg]
    """The same configurations on another snapshot, served with the towers that built it."""
    import dataclasses

    from shopsearch.api.service import SearchService
    from shopsearch.eval.runner import evaluate_configurations
    from shopsearch.indexer.snapshot import SnapshotStore

    tower = SnapshotStore(index_dir).current_item_tower()
    if tower is None:
        raise typer.BadParameter(f"{index_dir} has no CURRENT snapshot; build one first")
    other = SearchService(
        settings.model_copy(update={"index_dir": index_dir, "model_dir": Path(tower["path"])})
    )
    other.load()
    outcomes = evaluate_configurations(
        other, dataset, configs, depth=depth, rerank_depth=rerank_depth, progress=progress
    )
    for outcome in outcomes:
        outcome.config = dataclasses.replace(
            outcome.config, name=f"{outcome.config.name}@{tower['id']}"
        )
    return outcomes


@eval_app.command("convert")
def convert(
    out: Annotated[Path, typer.Option(help="Directory for queries.tsv and qrels.txt.")],
    homedepot_dir: Annotated[
        Path, typer.Option(help="Home Depot data directory.")
    ] = DEFAULT_HOMEDEPOT,
    split: Annotated[str, typer.Option(help="dev or train.")] = "dev",
) -> None:
    """Convert a Home Depot split into the generic format (queries TSV + TREC qrels).

    The qrels keep the raw relevance (1..3), so evaluate them with --gain-offset 1. The
    catalog is products.csv, read with --id-field product_uid --title-field product_title.
    """
    import shlex

    from shopsearch.indexer.judgments import HOMEDEPOT_GAIN_OFFSET, convert_homedepot

    queries_path, qrels_path = convert_homedepot(homedepot_dir / f"{split}.csv", out)
    console.print(f"wrote {queries_path} and {qrels_path}")
    products = shlex.quote(str(homedepot_dir / "products.csv"))
    console.print(
        "index the catalog, then evaluate (gain = relevance - 1, as on the Home Depot split):",
        f"  shopsearch build --catalog {products} --id-field product_uid "
        "--title-field product_title",
        f"  shopsearch eval --queries {shlex.quote(str(queries_path))} "
        f"--qrels {shlex.quote(str(qrels_path))} --gain-offset {HOMEDEPOT_GAIN_OFFSET:g}",
        sep="\n",
        soft_wrap=True,
        markup=False,
        highlight=False,
    )
