"""The index commands of the ``shopsearch`` command line: ``build`` a snapshot from a catalog,
list the ``snapshots`` kept, ``rollback`` to the one served before, ``update`` products of
the serving snapshot between builds.

:mod:`api.cli` registers these functions on its typer app (``app.command()(build)``), each
where ``shopsearch --help`` lists it; ``demo`` builds through :func:`run_build`.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from shopsearch.api.cli_common import (
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
from shopsearch.api.settings import Settings
from shopsearch.indexer.catalog import CatalogError, ColumnMapping, load_catalog
from shopsearch.indexer.snapshot import SnapshotError, SnapshotStore
from shopsearch.indexer.snapshot_build import BuildOptions
from shopsearch.retrieval.es_vector_index import EsVectorParams
from shopsearch.retrieval.types import ShopsearchError

log = logging.getLogger("shopsearch")


def run_build(
    catalog: Path,
    mapping: ColumnMapping,
    settings: Settings,
    options: BuildOptions,
    *,
    skip_bad_rows: bool = False,
    limit: int | None = None,
) -> dict[str, object]:
    """Load a catalog and build (and promote) a snapshot, with progress bars."""
    products, report = load_catalog(catalog, mapping, skip_bad_rows=skip_bad_rows, limit=limit)
    log.info(
        "catalog %s: %d products (%d rows skipped)", catalog, report.products, len(report.skipped)
    )
    return build_loaded(products, report, settings, options)


VectorOption = Annotated[
    str | None,
    typer.Option(
        "--vector",
        help="Vector backend: faiss (in the snapshot) or elasticsearch (kNN on the cluster, "
        "needs --es-url). build: what the new snapshot uses (default $SHOPSEARCH_VECTOR or "
        "faiss); serve: what the served snapshot must use (serving follows its manifest).",
    ),
]


def build(
    catalog: Annotated[
        Path, typer.Option("--catalog", help="Catalog file: .csv, .jsonl or .parquet.")
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
        bool,
        typer.Option(help="Leave out bad rows (counted in the build report) instead of failing."),
    ] = False,
    limit: Annotated[
        int | None, typer.Option(help="Index only the first N rows (for trials).")
    ] = None,
    model: ModelOption = None,
    device: DeviceOption = "auto",
    backend: EncoderBackendOption = None,
    nprobe: Annotated[
        int | None,
        typer.Option(help="IVF lists visited per query. Default: derived from catalog size."),
    ] = None,
    refine_factor: Annotated[
        int, typer.Option(help="PQ candidates re-scored exactly per wanted result (k * factor).")
    ] = 8,
    keep: Annotated[int, typer.Option(help="Promoted snapshots kept on disk.")] = 3,
    batch_size: Annotated[int, typer.Option(help="Encoding batch size.")] = 64,
    min_recall: Annotated[
        float, typer.Option(help="Refuse to promote when approx-vs-exact recall@100 is below this.")
    ] = 0.0,
    promote: Annotated[
        bool, typer.Option(help="Switch CURRENT to the new snapshot after validation.")
    ] = True,
    embedding_cache: Annotated[
        bool,
        typer.Option(
            help="Reuse item vectors of unchanged texts from <index-dir>/embedding-cache "
            "(--no-embedding-cache re-encodes everything)."
        ),
    ] = True,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the manifest as JSON on stdout.")
    ] = False,
    lexical: Annotated[
        str | None,
        typer.Option(
            "--lexical",
            help="Lexical backend: tantivy (embedded) or elasticsearch (needs --es-url). "
            "Default: $SHOPSEARCH_LEXICAL or tantivy.",
        ),
    ] = None,
    vector: VectorOption = None,
    es_vector_index_type: Annotated[
        str | None,
        typer.Option(
            "--es-vector-index-type",
            help="dense_vector index type of --vector elasticsearch: hnsw, int8_hnsw, "
            "int4_hnsw or bbq_hnsw. Default: $SHOPSEARCH_ES_VECTOR_INDEX_TYPE or int8_hnsw.",
        ),
    ] = None,
    es_num_candidates: Annotated[
        int | None,
        typer.Option(
            "--es-num-candidates",
            help="kNN candidates per shard of --vector elasticsearch (1-10000). "
            "Default: $SHOPSEARCH_ES_NUM_CANDIDATES or 400.",
        ),
    ] = None,
    es_url: EsUrlOption = None,
    es_index_prefix: EsPrefixOption = None,
    es_api_key: EsApiKeyOption = None,
    es_username: EsUserOption = None,
    es_password: EsPasswordOption = None,
    es_ca_certs: EsCaCertsOption = None,
    es_timeout: EsTimeoutOption = None,
) -> None:
    """Build a new index snapshot from a catalog, validate it, and promote it.

    The serving snapshot is only replaced after the new one loads and answers probe
    queries; a failed or interrupted build leaves it untouched. With
    --lexical elasticsearch the lexical leg is a new index <prefix>-<version> on the
    cluster, and promotion also moves the alias <prefix> to it. With --vector elasticsearch
    the vector leg is kNN in <prefix>-vectors-<version> (alias <prefix>-vectors).
    """
    mapping = ColumnMapping(
        id_field, title_field, description_field, brand_field,
        category_field, price_field, in_stock_field, image_url_field,
    )  # fmt: skip
    settings = settings_from_options(
        index_dir,
        model_dir=model,
        device=device,
        encoder_backend=backend,
        lexical=lexical,
        vector=vector,
        es_vector_index_type=es_vector_index_type,
        es_num_candidates=es_num_candidates,
        **es_overrides(
            es_url, es_index_prefix, es_api_key, es_username, es_password, es_ca_certs, es_timeout
        ),
    )
    options = BuildOptions(
        nprobe=nprobe,
        refine_factor=refine_factor,
        keep=keep,
        batch_size=batch_size,
        min_recall=min_recall,
        promote=promote,
        use_cache=embedding_cache,
        lexical=settings.lexical,
        es_index_prefix=settings.es_index_prefix,
        vector=settings.vector,
        es_vector=EsVectorParams(
            index_options=settings.es_vector_index_type,
            num_candidates=settings.es_num_candidates,
        ),
    )
    try:
        manifest = run_build(
            catalog, mapping, settings, options, skip_bad_rows=skip_bad_rows, limit=limit
        )
    except (CatalogError, ShopsearchError) as exc:
        raise fail(exc) from exc
    if as_json:
        sys.stdout.write(json.dumps(manifest, indent=2) + "\n")
        return
    try:
        _print_build_summary(manifest, settings.index_dir, promoted=promote)
    except SnapshotError as exc:
        raise fail(exc) from exc


def _manifest_object(manifest: Mapping[str, object], *keys: str) -> Mapping[str, Any]:
    """The JSON object at ``manifest[keys[0]][keys[1]]...``: a real check, not an
    ``assert`` (those vanish under ``python -O``, and the summary would then fail on a
    bare TypeError).

    Raises:
        SnapshotError: a key is missing or its value is not an object; the message names
            the snapshot, the field and what it holds.
    """
    current: Mapping[str, Any] = manifest
    for depth, key in enumerate(keys):
        value = current.get(key)
        if not isinstance(value, dict):
            field = ".".join(repr(k) for k in keys[: depth + 1])
            raise SnapshotError(
                f"manifest of snapshot {manifest.get('version', '?')}: {field} is "
                f"{type(value).__name__}, not an object; this manifest was not written by "
                "this version of `shopsearch build`: rebuild the snapshot with it"
            )
        current = value
    return current


def _print_build_summary(
    manifest: Mapping[str, object], index_dir: Path, *, promoted: bool
) -> None:
    """Print the build summary table of ``manifest`` (raises :class:`SnapshotError` when a
    field it shows is not an object)."""
    counts = _manifest_object(manifest, "counts")
    timings = _manifest_object(manifest, "build", "timings_s")
    vindex = _manifest_object(manifest, "vector_index")
    lexical = _manifest_object(manifest, "lexical_index")
    table = Table(title=f"snapshot {manifest['version']}", show_header=False)
    table.add_row("index dir", str(index_dir))
    table.add_row("products", str(counts["products"]))
    table.add_row("skipped rows", str(counts["skipped_rows"]))
    table.add_row("vector index", str(vindex["factory"] if "factory" in vindex else vindex["kind"]))
    table.add_row("approx vs exact", json.dumps(manifest["approx_vs_exact"]))
    where = f" index {lexical['index']} (alias {lexical['alias']})" if "index" in lexical else ""
    table.add_row("lexical index", f"{lexical['backend']}, analyzer {lexical['analyzer']}{where}")
    table.add_row("timings (s)", ", ".join(f"{k} {v}" for k, v in timings.items()))
    table.add_row("promoted", "yes" if promoted else "no (--no-promote)")
    console.print(table)


def snapshots(index_dir: IndexDirOption = None) -> None:
    """List the snapshots kept on disk (the serving one is marked)."""
    store = SnapshotStore(index_dir or Settings().index_dir)
    table = Table(title=f"snapshots in {store.root}")
    for col in ("", "version", "created", "products"):
        table.add_column(col)
    for s in store.list_snapshots():
        table.add_row("*" if s.current else "", s.version, s.created_at, str(s.products))
    Console().print(table)


def rollback(
    index_dir: IndexDirOption = None,
    es_url: EsUrlOption = None,
    es_api_key: EsApiKeyOption = None,
    es_username: EsUserOption = None,
    es_password: EsPasswordOption = None,
    es_ca_certs: EsCaCertsOption = None,
) -> None:
    """Serve again the snapshot that served before the current one (a running server
    picks it up by itself).

    The target comes from the promotion history (never a build that was not promoted)
    and must load before CURRENT switches to it; one that does not load is passed over
    with a warning. For Elasticsearch snapshots the alias moves back too (give the
    cluster's --es-url).
    """
    settings = settings_from_options(
        index_dir, **es_overrides(es_url, None, es_api_key, es_username, es_password, es_ca_certs)
    )
    es = settings.elasticsearch()
    try:
        result = SnapshotStore(settings.index_dir, es=es).rollback()
    except SnapshotError as exc:
        raise fail(exc) from exc
    finally:
        if es is not None:
            es.close()
    for version, reason in result.skipped:
        console.print(f"[yellow]skipped[/] {version}: {reason}")
    console.print(f"CURRENT -> {result.version} (was {result.previous})")


def update(
    index_dir: IndexDirOption = None,
    upserts: Annotated[
        Path | None,
        typer.Option(
            "--upserts",
            help="Products to add or replace: .csv, .jsonl or .parquet, read like a catalog.",
        ),
    ] = None,
    deletes: Annotated[
        Path | None,
        typer.Option("--deletes", help="Product ids to delete, one a line ('#' comments)."),
    ] = None,
    id_field: IdFieldOption = "id",
    title_field: TitleFieldOption = "title",
    description_field: DescriptionFieldOption = "description",
    brand_field: BrandFieldOption = "brand",
    category_field: CategoryFieldOption = "category",
    price_field: PriceFieldOption = "price",
    in_stock_field: InStockFieldOption = "in_stock",
    image_url_field: ImageUrlFieldOption = "image_url",
    skip_bad_rows: Annotated[
        bool,
        typer.Option(help="Leave out bad rows of --upserts instead of failing."),
    ] = False,
    model: ModelOption = None,
    device: DeviceOption = "auto",
    batch_size: Annotated[int, typer.Option(help="Encoding batch size.")] = 64,
    es_url: EsUrlOption = None,
    es_api_key: EsApiKeyOption = None,
    es_username: EsUserOption = None,
    es_password: EsPasswordOption = None,
    es_ca_certs: EsCaCertsOption = None,
    es_refresh: Annotated[
        str | None,
        typer.Option(
            "--es-refresh",
            help="Refresh policy: wait_for (searchable on return), true or false. "
            "Default: $SHOPSEARCH_ES_REFRESH or wait_for.",
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the update report as JSON on stdout.")
    ] = False,
) -> None:
    """Upsert and delete products in the serving snapshot, on both legs, between builds.

    A product whose item text is unchanged (price, stock, image, attributes) is updated
    without re-encoding. The change is persisted in the snapshot (a new generation,
    logged in its manifest) and a running server picks it up at its next reload check.
    Rejected products are listed by id (exit code 1); the others are applied.
    """
    from shopsearch.api.service import with_snapshot_towers
    from shopsearch.indexer.catalog import load_catalog
    from shopsearch.indexer.updates import UpdateError, apply_updates, read_delete_ids
    from shopsearch.retrieval.encoders import Encoder

    if upserts is None and deletes is None:
        raise fail(ValueError("nothing to do: give --upserts FILE and/or --deletes FILE"), 2)
    settings = settings_from_options(
        index_dir,
        model_dir=model,
        device=device,
        es_refresh=es_refresh,
        **es_overrides(es_url, None, es_api_key, es_username, es_password, es_ca_certs),
    )
    mapping = ColumnMapping(
        id_field, title_field, description_field, brand_field,
        category_field, price_field, in_stock_field, image_url_field,
    )  # fmt: skip
    es = settings.elasticsearch()
    try:
        products = load_catalog(upserts, mapping, skip_bad_rows=skip_bad_rows)[0] if upserts else []
        ids = read_delete_ids(deletes) if deletes else []
        store = SnapshotStore(settings.index_dir, es=es)
        version = store.current()
        if version is None:
            raise SnapshotError(
                f"{store.current_file} does not exist; build a snapshot with `shopsearch build`"
            )
        # Without --model, the towers that built the snapshot encode its new products.
        settings = with_snapshot_towers(settings)
        encoder = Encoder(
            settings.model_dir, device=settings.device, backend=settings.encoder_backend
        )
        result = apply_updates(
            store.path(version), products, ids, encoder, es=es, batch_size=batch_size
        )
    except (CatalogError, UpdateError, ShopsearchError) as exc:
        raise fail(exc) from exc
    finally:
        if es is not None:
            es.close()
    report = result.report
    if as_json:
        sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")
    else:
        console.print(
            f"snapshot {report.version} generation {report.generation}: "
            f"{len(report.added)} added, {len(report.reencoded)} re-encoded, "
            f"{len(report.fields_only)} updated without re-encoding, "
            f"{len(report.unchanged)} unchanged, "
            f"{len(report.deleted)} deleted, {len(report.not_found)} ids to delete not found"
        )
    if report.rejected:
        lines = "\n".join(f"  {pid}: {reason}" for pid, reason in report.rejected[:50])
        more = len(report.rejected) - 50
        console.print(
            f"[bold red]rejected {len(report.rejected)} product(s)[/] (not applied):\n{lines}"
            + (f"\n  ... and {more} more" if more > 0 else "")
        )
        raise typer.Exit(1)
