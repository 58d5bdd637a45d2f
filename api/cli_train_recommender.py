"""``shopsearch train recommender``: learn the recommendation models from purchases.

Registered on :data:`api.cli_train.train_app` when :mod:`api.cli` mounts the training
commands. Input: an online-retail CSV (``--history``) or the event store's interactions
table (``settings.events_db``, the default); item texts for cold start come from the
retail file's descriptions or from ``--catalog``.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import pandas as pd
import typer

from shopsearch.api.cli_common import ModelsDirOption, console, models_dir_setting
from shopsearch.api.cli_train import _Bars, train_app

if TYPE_CHECKING:
    from shopsearch.indexer.training.recommender import TrainedRecommender

__all__ = ["train_recommender_command"]


@train_app.command("recommender")
def train_recommender_command(
    history: Annotated[
        Path | None,
        typer.Option(
            help="Online-retail CSV(.gz) to learn from (default: the event store, "
            "settings.events_db / $SHOPSEARCH_EVENTS_DB)."
        ),
    ] = None,
    until: Annotated[
        datetime | None,
        typer.Option(
            help="Use only events before this date (UTC), e.g. 2011-10-01 for the dev split."
        ),
    ] = None,
    catalog: Annotated[
        Path | None,
        typer.Option(
            help="Catalog file whose titles embed items for cold start (default: the "
            "descriptions of --history; none for the event store)."
        ),
    ] = None,
    models_dir: ModelsDirOption = None,
    max_minutes: Annotated[
        float,
        typer.Option(help="Budget in minutes; tuning stops at it and the best settings are kept."),
    ] = 10.0,
    validation_days: Annotated[
        float, typer.Option(help="The last N days of the history are the tuning validation.")
    ] = 30.0,
    sequence_minutes: Annotated[
        float,
        typer.Option(
            help="Budget of the sequence model (a small transformer over the shopper's items "
            "with text-embedding inputs; registered as sequence/<version>); 0: skip it."
        ),
    ] = 5.0,
    personal_minutes: Annotated[
        float,
        typer.Option(
            help="Budget of the shopper-aware search re-scorer (its blend learned on the "
            "history's last month, with a second recommender fitted on the months before "
            "it for the for-you feature; registered as personal/<version>); 0: skip it."
        ),
    ] = 8.0,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the model card as JSON on stdout.")
    ] = False,
) -> None:
    """Train popularity, repurchase, item-to-item (variant chosen on validation), text
    cold start, the for-you blend and the learned for-you ranker (fitted on the
    validation period); register them as recommender/<version>. Then the sequence model
    (sequence/<version>) and the shopper-aware search re-scorer (personal/<version>)."""
    from shopsearch.api.settings import Settings
    from shopsearch.indexer.events.store import EventStore
    from shopsearch.indexer.retail import item_descriptions, load_lines
    from shopsearch.indexer.training.recommender import retail_interactions, train_recommender
    from shopsearch.retrieval.encoders import Encoder
    from shopsearch.retrieval.types import ShopsearchError

    # The registry serve reads (`--models-dir`, else $SHOPSEARCH_MODELS_DIR).
    models_dir = models_dir_setting(models_dir)
    cutoff = None
    if until is not None:
        cutoff = pd.Timestamp(until)
        cutoff = cutoff.tz_localize("UTC") if cutoff.tzinfo is None else cutoff.tz_convert("UTC")
    try:
        texts: dict[str, str] = {}
        if history is not None:
            lines = load_lines(history)
            if cutoff is not None:
                lines = lines[lines["ts"] < cutoff]
            interactions = retail_interactions(lines)
            texts = item_descriptions(lines)
            source = {"history": str(history)}
        else:
            db = Settings().events_db
            with EventStore(db) as store:
                interactions = store.interactions(until=cutoff)
            source = {"events_db": str(db)}
        if catalog is not None:
            from shopsearch.indexer.catalog import load_catalog

            products, _ = load_catalog(catalog)
            texts = {p.id: p.title for p in products}
            source["catalog"] = str(catalog)
        if until is not None:
            source["until"] = str(cutoff)
        bars = _Bars()
        with bars.progress:
            trained = train_recommender(
                interactions,
                texts,
                models_dir,
                encoder=Encoder(device="cpu"),
                max_minutes=max_minutes,
                validation_days=validation_days,
                progress=bars,
                sources=source,
            )
        sequence_spec = personal_spec = None
        retail_lines = (
            lines
            if history is not None
            else interactions.rename(
                columns={"basket": "invoice", "item": "stock_code", "user": "customer"}
            )
        )
        if sequence_minutes > 0:
            sequence_spec = _train_sequence(retail_lines, texts, models_dir, sequence_minutes, bars)
        if personal_minutes > 0:
            personal_spec = _train_personal(
                retail_lines, texts, models_dir, personal_minutes, bars, trained
            )
    except ShopsearchError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    card = trained.model.card
    for spec in (sequence_spec, personal_spec):
        if spec is not None and not as_json:
            console.print(f"registered [bold]{spec}[/bold] in {models_dir}")
    if as_json:
        sys.stdout.write(json.dumps(card, indent=2, default=str) + "\n")
        return
    console.print(f"registered [bold]{trained.model.spec}[/bold] in {models_dir}")
    console.print(f"config: {json.dumps(card['config'])}")
    console.print(f"validation: {json.dumps(card['validation']['metrics'])}")
    for_you = card.get("for_you", {})
    console.print(
        f"for-you: {for_you.get('model', 'blend')} "
        f"{json.dumps(for_you.get('ranker_validation_in_sample', {}))}"
    )
    console.print(f"latency: {json.dumps(card['latency_ms'])}")


def _train_sequence(
    lines: pd.DataFrame, texts: dict[str, str], models_dir: Path, minutes: float, bars: Any
) -> str | None:
    """Train and register the sequence model; a history too short for it is a warning
    (the recommender above stands on its own), not a failure."""
    from shopsearch.indexer.training.sequence import train_sequence
    from shopsearch.retrieval.encoders import Encoder
    from shopsearch.retrieval.model_registry import new_version, register, staging_dir
    from shopsearch.retrieval.types import ShopsearchError

    version = new_version(models_dir, "sequence")
    staged = staging_dir(models_dir, "sequence", version)
    try:
        result = train_sequence(
            lines,
            texts,
            staged,
            Encoder(device="cpu"),
            max_minutes=minutes,
            progress=bars,
            version=version,
        )
    except ShopsearchError as exc:
        console.print(f"[yellow]sequence model skipped:[/yellow] {exc}")
        return None
    return register(models_dir, "sequence", version, result.card).spec


def _train_personal(
    lines: pd.DataFrame,
    texts: dict[str, str],
    models_dir: Path,
    minutes: float,
    bars: Any,
    trained: TrainedRecommender,
) -> str | None:
    """Train and register the shopper-aware re-scorer beside ``trained`` (the
    recommender just registered, whose for-you ranker it reads); a history too short
    for it (no month before its last, no shopper query) is a warning, not a failure."""
    from shopsearch.indexer.training.personal_model import train_personal
    from shopsearch.retrieval.encoders import Encoder
    from shopsearch.retrieval.types import ShopsearchError

    try:
        result = train_personal(
            lines,
            texts,
            Encoder(device="cpu"),
            foryou_full=trained.bundle.ranked,
            models_dir=models_dir,
            max_minutes=minutes,
            recommender_version=trained.model.version,
            progress=bars,
        )
    except (ShopsearchError, ValueError) as exc:
        console.print(f"[yellow]shopper-aware re-scorer skipped:[/yellow] {exc}")
        return None
    if result.model is None:
        return None
    metrics = result.report
    console.print(
        "shopper-aware re-scorer, held-out MRR@10: base "
        f"{metrics.get('held_out.mrr@10.base', 0.0):.4f}, blend "
        f"{metrics.get('held_out.mrr@10.blend', 0.0):.4f}"
    )
    return result.model.spec
