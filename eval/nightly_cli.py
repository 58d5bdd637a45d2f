"""``shopsearch nightly``: the nightly reindex job as one command (see
:mod:`indexer.nightly` for the steps and their guarantees).

Exit status: 0 promoted (or nothing to do), 3 refused by the quality gate (the report
names the metric and both values), 1 failed (nothing changed), 2 bad options.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from shopsearch.api.cli_common import (
    Bars,
    BrandFieldOption,
    CategoryFieldOption,
    DescriptionFieldOption,
    DeviceOption,
    EncoderBackendOption,
    EsApiKeyOption,
    EsCaCertsOption,
    EsPasswordOption,
    EsPrefixOption,
    EsTimeoutOption,
    EsUrlOption,
    EsUserOption,
    IdFieldOption,
    ImageUrlFieldOption,
    IndexDirOption,
    InStockFieldOption,
    ModelOption,
    PriceFieldOption,
    TitleFieldOption,
    build_loaded,
    console,
    es_overrides,
    fail,
    settings_from_options,
)
from shopsearch.eval.commands import _load_dataset

__all__ = ["nightly_command"]

log = logging.getLogger("shopsearch")


def nightly_command(
    catalog: Annotated[
        Path,
        typer.Option(
            "--catalog",
            envvar="SHOPSEARCH_CATALOG",
            help="Tonight's catalog: .csv, .jsonl or .parquet ($SHOPSEARCH_CATALOG).",
        ),
    ],
    index_dir: IndexDirOption = None,
    id_field: IdFieldOption = "id",
    title_field: TitleFieldOption = "title",
    description_field: DescriptionFieldOption = "description",
    brand_field: BrandFieldOption = "brand",
    category_field: CategoryFieldOption = "category",
    price_field: PriceFieldOption = "price",
    in_stock_field: InStockFieldOption = "in_stock",
    image_url_field: ImageUrlFieldOption = "image_url",
    skip_bad_rows: Annotated[
        bool, typer.Option(help="Leave out bad rows (counted in the report) instead of failing.")
    ] = False,
    model: ModelOption = None,
    reranker: Annotated[
        Path | None,
        typer.Option(
            help="Cross-encoder the evaluation reranks with: a directory or registry spec "
            "(reranker/latest). Default: $SHOPSEARCH_RERANKER_DIR; none: no rerank."
        ),
    ] = None,
    device: DeviceOption = "auto",
    backend: EncoderBackendOption = None,
    homedepot_dir: Annotated[
        Path | None,
        typer.Option(
            envvar="SHOPSEARCH_NIGHTLY_HOMEDEPOT_DIR",
            help="Judged queries in the Home Depot format (a dir with dev.csv/train.csv).",
        ),
    ] = None,
    split: Annotated[str, typer.Option(help="Home Depot split evaluated.")] = "dev",
    queries: Annotated[
        Path | None,
        typer.Option(
            envvar="SHOPSEARCH_NIGHTLY_QUERIES",
            help="Judged queries, generic format: TSV qid<TAB>text (with --qrels).",
        ),
    ] = None,
    qrels: Annotated[
        Path | None,
        typer.Option(
            envvar="SHOPSEARCH_NIGHTLY_QRELS", help="TREC qrels 'qid 0 docid grade' for --queries."
        ),
    ] = None,
    gain_offset: Annotated[
        float | None, typer.Option(help="Generic format: nDCG gain = max(grade - offset, 0).")
    ] = None,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Evaluate only the first N judged queries.")
    ] = None,
    metrics: Annotated[
        str, typer.Option(help="Comma-separated gated metrics (higher is better).")
    ] = "ndcg@10,recall@100",
    tolerance: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Largest absolute drop a gated metric may show."),
    ] = 0.01,
    keep: Annotated[
        int, typer.Option(min=1, help="Snapshots kept on disk (serving and refused included).")
    ] = 3,
    report_dir: Annotated[
        Path | None,
        typer.Option(help="Where the report goes (default <index-dir>/reports)."),
    ] = None,
    lexical: Annotated[
        str | None,
        typer.Option(
            "--lexical", help="tantivy (embedded) or elasticsearch. Default: $SHOPSEARCH_LEXICAL."
        ),
    ] = None,
    es_url: EsUrlOption = None,
    es_index_prefix: EsPrefixOption = None,
    es_api_key: EsApiKeyOption = None,
    es_username: EsUserOption = None,
    es_password: EsPasswordOption = None,
    es_ca_certs: EsCaCertsOption = None,
    es_timeout: EsTimeoutOption = None,
    shopper_models: Annotated[
        bool,
        typer.Option(
            help="Then retrain the recommender and the shopper-aware search re-scorer from "
            "the event store when it holds events newer than the serving recommender's, "
            "registering them only when their validation holds (see --shopper-tolerance)."
        ),
    ] = True,
    events_db: Annotated[
        Path | None,
        typer.Option(help="Event store of the shopper step (default $SHOPSEARCH_EVENTS_DB)."),
    ] = None,
    shopper_minutes: Annotated[
        float, typer.Option(min=0.1, help="Budget of the recommender's training, minutes.")
    ] = 10.0,
    shopper_tolerance: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Largest drop of the new recommender's validation R1 nDCG@20 / R2 hit@10 "
            "below the serving one's before it is refused.",
        ),
    ] = 0.05,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the outcome as JSON on stdout.")
    ] = False,
) -> None:
    """Build tonight's snapshot, evaluate it BEFORE it serves, then promote or refuse it;
    then retrain the shopper models from the event store.

    Steps, under a lock (a second run fails at once): skip when the serving snapshot was
    built from the same catalog and models; build (cached embeddings reused) and
    validate without promoting; evaluate the new snapshot as `serve` answers with its
    defaults on the judged queries; compare with the evaluation stored for the serving
    snapshot (evaluated now if none is comparable); promote only when no gated metric
    drops by more than --tolerance. A refused snapshot stays on disk for inspection.
    The shopper step (unless --no-shopper-models) deletes events older than the retention
    window ($SHOPSEARCH_EVENTS_RETENTION_DAYS), then retrains recommender/<version> and
    personal/<version> on the event store, with the catalog's titles as item texts.
    A one-page report (Markdown and JSON) goes to --report-dir.

    Exit status: 0 promoted or up to date, 3 refused (the snapshot or the shopper
    models; metric and both values printed), 1 failed (serving snapshot untouched),
    2 bad options.
    """
    from shopsearch.indexer.catalog import CatalogError, ColumnMapping, load_catalog
    from shopsearch.indexer.judgments import DatasetError
    from shopsearch.indexer.nightly import NightlyInputs, NightlyPolicy, run_nightly
    from shopsearch.indexer.nightly_report import comparison_rows, write_report
    from shopsearch.indexer.snapshot import SnapshotStore
    from shopsearch.indexer.snapshot_build import BuildOptions
    from shopsearch.retrieval.encoders import model_info
    from shopsearch.retrieval.types import ShopsearchError

    gated = tuple(m.strip() for m in metrics.split(",") if m.strip())
    if not gated:
        raise typer.BadParameter("--metrics: name at least one metric, e.g. ndcg@10")
    if homedepot_dir is None and queries is None and qrels is None:
        raise typer.BadParameter(
            "nightly evaluates before it promotes, so it needs judged queries: give "
            "--queries and --qrels (or $SHOPSEARCH_NIGHTLY_QUERIES/_QRELS), or --homedepot-dir"
        )
    try:
        dataset = _load_dataset(
            homedepot_dir or Path("."), split, queries, qrels, limit, gain_offset
        )
    except DatasetError as exc:
        raise fail(exc, 2) from exc
    mapping = ColumnMapping(
        id_field, title_field, description_field, brand_field,
        category_field, price_field, in_stock_field, image_url_field,
    )  # fmt: skip
    settings = settings_from_options(
        index_dir,
        model_dir=model,
        reranker_dir=reranker,
        device=device,
        encoder_backend=backend,
        lexical=lexical,
        **es_overrides(
            es_url, es_index_prefix, es_api_key, es_username, es_password, es_ca_certs, es_timeout
        ),
    )
    options = BuildOptions(
        keep=keep, promote=False, lexical=settings.lexical, es_index_prefix=settings.es_index_prefix
    )
    bars = Bars()
    es = settings.elasticsearch()
    try:
        products, report = load_catalog(catalog, mapping, skip_bad_rows=skip_bad_rows)
        inputs = NightlyInputs(
            catalog_sha256=report.sha256,
            item_tower_sha256=model_info(_towers_path(settings)).sha256,
            reranker_sha256=None
            if settings.reranker_dir is None
            else model_info(settings.reranker_dir).sha256,
            lexical=settings.lexical,
        )
        from shopsearch.eval.nightly_eval import ServeDefaultsEvaluator

        evaluator = ServeDefaultsEvaluator(settings, dataset, progress=bars.task)
        with bars.progress:
            outcome = run_nightly(
                SnapshotStore(settings.index_dir, es=es),
                inputs,
                lambda: build_loaded(products, report, settings, options),
                evaluator,
                NightlyPolicy(metrics=gated, tolerance=tolerance, keep=keep),
            )
    except (CatalogError, ShopsearchError, ValueError) as exc:
        raise fail(exc) from exc
    finally:
        if es is not None:
            es.close()
    shoppers = None
    if shopper_models:
        shoppers = _shopper_step(
            settings,
            events_db or settings.events_db,
            {p.id: p.title for p in products},
            shopper_minutes,
            shopper_tolerance,
            bars,
        )
    path = write_report(
        outcome,
        report_dir or settings.index_dir / "reports",
        shoppers.to_dict() if shoppers else None,
    )
    if as_json:
        document = {**outcome.to_dict(), "report": str(path)}
        if shoppers is not None:
            document["shoppers"] = shoppers.to_dict()
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
    else:
        _print_outcome(outcome, comparison_rows(outcome), path)
        if shoppers is not None:
            style = "bold red" if shoppers.status == "refused" else "bold green"
            console.print(f"[{style}]shopper models {shoppers.status}:[/] {shoppers.reason}")
    exit_code = outcome.exit_code or (3 if shoppers and shoppers.status == "refused" else 0)
    if exit_code:
        raise typer.Exit(exit_code)


def _shopper_step(
    settings: Any,
    events_db: Path,
    texts: dict[str, str],
    minutes: float,
    tolerance: float,
    bars: Any,
) -> Any:
    """:func:`indexer.nightly_shoppers.retrain_shopper_models` on the registry serve reads;
    a failure here fails the job (exit 1) after the snapshot step has done its part."""
    from shopsearch.indexer.nightly_shoppers import retrain_shopper_models
    from shopsearch.retrieval.encoders import Encoder
    from shopsearch.retrieval.types import ShopsearchError

    try:
        with bars.progress:
            return retrain_shopper_models(
                events_db,
                texts,
                settings.models_dir,
                Encoder(device="cpu"),
                max_minutes=minutes,
                tolerance=tolerance,
                retention_days=settings.events_retention_days,
                progress=bars,
            )
    except ShopsearchError as exc:
        raise fail(exc) from exc


def _towers_path(settings: Any) -> Path:
    """The towers the build encodes with: ``settings.model_dir`` or the bundled model."""
    from shopsearch.retrieval.encoders import default_model_path

    if settings.model_dir is not None:
        return Path(settings.model_dir)
    return default_model_path()


def _print_outcome(outcome: Any, rows: list[tuple[str, str, str, str, str]], path: Path) -> None:
    style = "bold red" if outcome.status == "refused" else "bold green"
    console.print(f"[{style}]{outcome.status}:[/] {outcome.reason}")
    if outcome.candidate_metrics:
        table = Table(title=f"{outcome.candidate} vs {outcome.serving_before}")
        for col in ("metric", "serving", "candidate", "change", "verdict"):
            table.add_column(col, justify="left" if col in ("metric", "verdict") else "right")
        for row in rows[: len(outcome.policy.metrics) + 6]:
            table.add_row(*row)
        console.print(table)
    console.print(f"report: {path}")
