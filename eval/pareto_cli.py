"""``shopsearch eval pareto``: the reranker Pareto report (eval/pareto.py) from the CLI."""

from __future__ import annotations

import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from shopsearch.api.cli_common import models_dir_setting
from shopsearch.api.settings import Settings
from shopsearch.indexer.training.compress import layer_count
from shopsearch.rerank.cross_encoder import RERANKER_BACKENDS
from shopsearch.retrieval.model_registry import resolve_model

__all__ = ["pareto_command"]

console = Console(stderr=True)


def _csv(option: str, value: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise typer.BadParameter(f"{option}: give at least one value, comma-separated")
    return items


def pareto_command(
    rerankers: Annotated[
        str,
        typer.Option(
            help="Comma-separated rerankers (reranker/<version> or directories); the first "
            "is the reference the others are compared with."
        ),
    ],
    index_dir: Annotated[
        Path | None, typer.Option(help="Index dir whose CURRENT snapshot answers.")
    ] = None,
    homedepot_dir: Annotated[
        Path, typer.Option(help="Home Depot data (products/train/dev CSV).")
    ] = Path("../shared/datasets/homedepot"),
    split: Annotated[str, typer.Option(help="Home Depot split: dev or train.")] = "dev",
    backends: Annotated[
        str, typer.Option(help=f"Comma-separated runtimes: {', '.join(RERANKER_BACKENDS)}.")
    ] = "onnx-int8",
    depths: Annotated[str, typer.Option(help="Comma-separated rerank depths.")] = "20,50,100",
    limit: Annotated[int | None, typer.Option(help="Only the first N queries.")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Output dir (default var/eval/pareto-<UTC time>).")
    ] = None,
) -> None:
    """Reranker Pareto report: nDCG@10 against whole-query p50/p99 for every reranker,
    runtime and rerank depth, answering as `serve` does otherwise; writes pareto.md,
    pareto.png and pareto.json."""
    from shopsearch.eval.commands import _bars, _load_dataset
    from shopsearch.eval.pareto import RerankerChoice, run_pareto, write_pareto
    from shopsearch.retrieval.types import ShopsearchError

    wanted_backends = _csv("--backends", backends)
    unknown = [b for b in wanted_backends if b not in RERANKER_BACKENDS]
    if unknown:
        raise typer.BadParameter(
            f"--backends: unknown {unknown}; choose from {', '.join(RERANKER_BACKENDS)}"
        )
    try:
        wanted_depths = [int(d) for d in _csv("--depths", depths)]
    except ValueError as exc:
        raise typer.BadParameter(f"--depths: {exc}; give integers like 20,50,100") from exc
    if not all(1 <= d <= 500 for d in wanted_depths):
        raise typer.BadParameter("--depths: each depth must be in 1..500")
    models_dir = models_dir_setting()
    choices = []
    for spec in _csv("--rerankers", rerankers):
        try:
            path = resolve_model(spec, models_dir)
        except ShopsearchError as exc:
            raise typer.BadParameter(f"--rerankers: {exc}") from exc
        choices.append(RerankerChoice(name=path.name, path=path, layers=layer_count(path)))
    settings = Settings()
    updates: dict[str, object] = {"reload_interval_s": 0.0, "result_cache_size": 0}
    if index_dir is not None:
        updates["index_dir"] = index_dir
    settings = settings.model_copy(update=updates)
    dataset = _load_dataset(homedepot_dir, split, None, None, limit)
    out = out or Path("var/eval") / datetime.now(UTC).strftime("pareto-%Y%m%dT%H%M%SZ")
    started = time.perf_counter()
    try:
        with _bars() as bars:

            def progress(name: str, total: int):  # type: ignore[no-untyped-def]
                task = bars.add_task(name, total=total)
                return lambda n: bars.advance(task, n)

            points = run_pareto(
                settings, dataset, choices, wanted_backends, wanted_depths, progress=progress
            )
    except ShopsearchError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    meta = {
        "dataset": dataset.name,
        "command": shlex.join(["shopsearch", *sys.argv[1:]]),
        "wall_s": round(time.perf_counter() - started, 1),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    paths = write_pareto(points, out, meta)
    print(paths[1].read_text())
    console.print(f"wrote {', '.join(str(p) for p in paths)} ({meta['wall_s']} s)")
