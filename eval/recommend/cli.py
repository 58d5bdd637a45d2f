"""``shopsearch eval recommend``: protocols R1, R1-new, R2 (R3) for every strategy in one run.

Mounted on the ``eval`` sub-app by :mod:`eval.cli`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from shopsearch.indexer.progress import Advance

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["holdout_split", "recommend_command"]

log = logging.getLogger(__name__)
console = Console(stderr=True)

DEFAULT_RETAIL = Path("../shared/datasets/online-retail/transactions.csv.gz")


def holdout_split(lines: pd.DataFrame, days: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``lines`` before their last ``days`` and those last days (the cut the trainer's
    validation uses: newest timestamp minus ``days``), each re-indexed from 0.

    Raises:
        ValueError: ``days`` is not a positive finite number.
    """
    if not (days > 0 and math.isfinite(days)):
        raise ValueError(f"holdout days must be a positive number, got {days}")
    import pandas as pd  # deferred: the CLI mounts this module at every start

    if lines.empty:
        return lines, lines
    start = lines["ts"].max() - pd.Timedelta(days=days)
    before = lines[lines["ts"] < start].reset_index(drop=True)
    last = lines[lines["ts"] >= start].reset_index(drop=True)
    return before, last


@contextmanager
def _bar(progress: Progress, description: str, total: int) -> Iterator[Advance]:
    task = progress.add_task(description, total=total)
    try:
        yield lambda n: progress.advance(task, n)
    finally:
        progress.update(task, completed=total)


def recommend_command(
    out: Annotated[Path, typer.Option(help="Directory for metrics.json, latency.json, reports.")],
    history: Annotated[
        Path,
        typer.Option(
            help="Online-retail CSV(.gz) the models learn from; with --dev, the shared file "
            "that is split (history = before 2011-10-01, test = October 2011)."
        ),
    ] = DEFAULT_RETAIL,
    test: Annotated[
        Path | None,
        typer.Option(help="Online-retail CSV(.gz) of the evaluation period (not with --dev)."),
    ] = None,
    protocols: Annotated[
        str, typer.Option(help="Comma-separated protocols: R1, R1-new, R2, R3.")
    ] = "R1,R1-new,R2,R3",
    dev: Annotated[
        bool, typer.Option("--dev", help="Split --history as the datasets README defines.")
    ] = False,
    model: Annotated[
        str | None,
        typer.Option(
            help="Evaluate this registered recommender (recommender/latest, a version or a "
            "directory) instead of training one on --history. It must not have seen the test "
            "period."
        ),
    ] = None,
    models_dir: Annotated[
        Path | None, typer.Option(help="Model registry (default: $SHOPSEARCH_MODELS_DIR).")
    ] = None,
    max_minutes: Annotated[
        float, typer.Option(help="Budget of the training run (tuning stops at it).")
    ] = 10.0,
    seed: Annotated[int, typer.Option(help="Seed of the R2/R3 item samples.")] = 0,
    holdout_days: Annotated[
        float | None,
        typer.Option(
            help="Score the last N days of the history instead of the test period (which is "
            "then not read): the month to choose settings on. With --dev and 30, models learn "
            "from the history before September 2011 and are scored on September."
        ),
    ] = None,
) -> None:
    """Compare recommendation strategies on R1, R1-new, R2 (and R3) side by side.

    Trains the recommender on --history exactly as `shopsearch train recommender` does
    (tuning on its last 30 days, never on --test; for R3 also a second one on the months
    before the history's last, whose for-you ranker the shopper-aware re-scorer learns
    from), fits the reference points, and writes
    metrics.json ({protocol: {strategy: {metric: value}}}), latency.json, report.md and
    report.html to --out.
    """
    from shopsearch.api.cli_common import models_dir_setting
    from shopsearch.eval.recommend.r3 import ForYouRankers
    from shopsearch.eval.recommend.runner import ALL_PROTOCOLS, run_protocols, write_outputs
    from shopsearch.eval.recommend.strategies import reference_strategies, trained_strategies
    from shopsearch.indexer.retail import dev_split, item_descriptions, load_lines
    from shopsearch.indexer.training.personal_model import fit_foryou_before
    from shopsearch.indexer.training.recommender import (
        fit_recommender,
        interaction_arrays,
        load_recommender,
        retail_interactions,
    )
    from shopsearch.retrieval.encoders import Encoder
    from shopsearch.retrieval.model_registry import resolve_model
    from shopsearch.retrieval.types import ShopsearchError

    wanted = [p.strip() for p in protocols.split(",") if p.strip()]
    bad = [p for p in wanted if p not in ALL_PROTOCOLS]
    if bad or not wanted:
        raise typer.BadParameter(
            f"--protocols {protocols!r}: choose from {', '.join(ALL_PROTOCOLS)}"
        )
    if dev and test is not None:
        raise typer.BadParameter("--dev splits --history itself; leave out --test")
    if not dev and test is None and holdout_days is None:
        raise typer.BadParameter(
            "pass --test FILE (the evaluation period), --dev, or --holdout-days N"
        )
    if holdout_days is not None and test is not None:
        raise typer.BadParameter("--holdout-days scores the end of --history; leave out --test")
    if holdout_days is not None and not (holdout_days > 0 and math.isfinite(holdout_days)):
        raise typer.BadParameter(f"--holdout-days must be a positive number, got {holdout_days}")
    registry = models_dir_setting(models_dir)
    started = time.monotonic()
    try:
        lines = load_lines(history)
        if dev:
            split = dev_split(lines)
            history_lines, test_lines = split.history, split.test
        elif test is not None:
            history_lines, test_lines = lines, load_lines(test)
        else:
            history_lines, test_lines = lines, lines.iloc[:0]
        if holdout_days is not None:
            # The test period is set aside unread: settings are chosen on the history's
            # own last days, the test period only confirms them.
            history_lines, test_lines = holdout_split(history_lines, holdout_days)
        if history_lines.empty or test_lines.empty:
            raise typer.BadParameter(
                f"history has {len(history_lines)} and test {len(test_lines)} purchase lines; "
                "both need some"
            )
        hist = retail_interactions(history_lines)
        tst = retail_interactions(test_lines)
        # The catalog knows every product's description, new ones too (cold start).
        texts = item_descriptions(history_lines, test_lines)
        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as progress:

            def bars(description: str, total: int):  # type: ignore[no-untyped-def]
                return _bar(progress, description, total)

            encoder = Encoder(device="cpu")
            if model is not None:
                bundle = load_recommender(resolve_model(model, registry))
                trained_note = f"model {model}"
            else:
                fitted = fit_recommender(
                    hist,
                    texts,
                    encoder=encoder,
                    max_minutes=max_minutes,
                    cache_dir=registry / ".cache" / "embeddings",
                    progress=bars,
                )
                bundle = fitted.bundle
                trained_note = f"trained on --history, config {fitted.card['config']}"
            foryou = None
            if "R3" in wanted and bundle.ranked is not None:
                # The re-scorer's foryou feature: a ranker that knew only the months
                # before its validation month (fitted only when R3 has enough training
                # queries for a re-scorer), and the one fitted on the whole history.
                foryou = ForYouRankers(
                    full=bundle.ranked,
                    fit_before=partial(
                        fit_foryou_before,
                        history_lines,
                        texts,
                        encoder,
                        cache_dir=registry / ".cache" / "embeddings",
                        progress=bars,
                    ),
                )
            events = interaction_arrays(hist)
            strategies = {
                **reference_strategies(events, bundle.vocab),
                **trained_strategies(bundle),
            }
            total = sum(len(strategies) for p in wanted if p != "R3") + ("R3" in wanted)
            task = progress.add_task("protocols x strategies", total=total)
            evaluation = run_protocols(
                hist,
                tst,
                strategies,
                protocols=wanted,
                seed=seed,
                history_lines=history_lines,
                test_lines=test_lines,
                encoder=encoder,
                on_strategy=lambda p, s: progress.advance(task, 1),
                foryou=foryou,
            )
    except ShopsearchError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    meta = {
        "history": f"{history} ({history_lines['ts'].min()} .. {history_lines['ts'].max()})",
        "test": f"{_test_name(dev, test, holdout_days)} ({test_lines['ts'].min()} .. "
        f"{test_lines['ts'].max()})",
        "recommender": trained_note,
        "seed": seed,
        "minutes": round((time.monotonic() - started) / 60, 1),
    }
    write_outputs(evaluation, out, meta)
    for protocol, results in evaluation.metrics.items():
        table = Table(title=f"{protocol} ({evaluation.queries.get(protocol, '?')} queries)")
        names = [k for k in next(iter(results.values()), {}) if not k.startswith("latency")]
        for column in ("strategy", *names, "p50 ms"):
            table.add_column(column)
        for strategy, m in results.items():
            table.add_row(
                strategy,
                *(f"{m[n]:.4f}" for n in names),
                f"{m.get('latency_p50_ms', 0.0):.2f}",
            )
        console.print(table)
    for note in evaluation.notes:
        console.print(f"note: {note}")
    console.print(f"wrote {out}/metrics.json, latency.json, report.md, report.html")


def _test_name(dev: bool, test: Path | None, holdout_days: float | None) -> str:
    if holdout_days is not None:
        return f"the last {holdout_days:g} days of the {'--dev ' if dev else ''}history"
    return "--dev split" if dev else str(test)
