"""The ``shopsearch`` command line (typer): build, update, serve, search, snapshots, rollback,
demo, bench.

Configures logging and progress bars; everything else is done by the library.

Elasticsearch: ``build --lexical elasticsearch --es-url URL`` puts the lexical leg of the
snapshot on the cluster; ``serve``, ``search``, ``update`` and ``rollback`` then take the
same ``--es-*`` connection options (or ``SHOPSEARCH_ES_*`` variables; prefer those for
secrets, since a command line is visible to other users of the machine). Secrets are
never printed or logged.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.logging import RichHandler
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
    models_dir_setting,
    settings_from_options,
)
from shopsearch.api.settings import DEMO_USER_KEY, Settings
from shopsearch.indexer.catalog import CatalogError, ColumnMapping, load_catalog
from shopsearch.indexer.snapshot import SnapshotError, SnapshotStore
from shopsearch.indexer.snapshot_build import BuildOptions
from shopsearch.retrieval.es_vector_index import EsVectorParams
from shopsearch.retrieval.types import ShopsearchError

app = typer.Typer(
    name="shopsearch",
    help="Product search for online shops: build index snapshots, serve the API, search, evaluate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
log = logging.getLogger("shopsearch")


def sample_catalog_path() -> Path:
    """The built-in sample catalog shipped with the package."""
    return Path(str(files("shopsearch.indexer") / "sample_data" / "sample_catalog.jsonl"))


@app.callback()
def configure(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, rich_tracebacks=False)],
    )
    for noisy in (
        "httpx",
        "sentence_transformers",
        "transformers",
        "faiss",
        "urllib3",
        "elastic_transport",  # logs every request at INFO
        "elasticsearch",
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING)


#: The registry as the environment named it when this module was imported. Commands
#: resolve it at call time with :func:`api.cli_train.models_dir_setting` (what `train`
#: registers into); this import-time value is kept for plugins that still read it.
MODELS_DIR = models_dir_setting()


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


def check_served_vector_backend(settings: Settings, vector: str) -> None:
    """Exit with the reason when the ``CURRENT`` snapshot's vector leg is not ``vector``."""
    store = SnapshotStore(settings.index_dir)
    version = store.current()
    if version is None:
        return  # nothing built yet: the server says so itself
    try:
        kind = str(store.manifest(version).get("vector_index", {}).get("kind", "faiss"))
    except SnapshotError as exc:
        raise fail(exc) from exc
    served = "elasticsearch" if kind == "elasticsearch" else "faiss"
    if served != vector:
        raise fail(
            ValueError(
                f"--vector {vector}: snapshot {version} was built with the {served} vector "
                f"leg; rebuild with `shopsearch build --vector {vector}` or drop --vector"
            ),
            2,
        )


@app.command()
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


@app.command()
def serve(
    index_dir: IndexDirOption = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    model: ModelOption = None,
    reranker: Annotated[
        Path | None, typer.Option(help="Cross-encoder directory; without it rerank is skipped.")
    ] = None,
    device: DeviceOption = "auto",
    reload_interval: Annotated[
        float, typer.Option(help="Seconds between checks of CURRENT for a new snapshot (0: never).")
    ] = 2.0,
    es_url: EsUrlOption = None,
    es_api_key: EsApiKeyOption = None,
    es_username: EsUserOption = None,
    es_password: EsPasswordOption = None,
    es_ca_certs: EsCaCertsOption = None,
    es_timeout: EsTimeoutOption = None,
    vector: VectorOption = None,
) -> None:
    """Serve the search API over HTTP (FastAPI + uvicorn).

    A snapshot built with --lexical elasticsearch needs the cluster's --es-url; when the
    cluster is down or slower than --es-timeout, answers come from the dense leg with
    degraded: ["lexical"].
    """
    import uvicorn

    from shopsearch.api.app import create_app

    settings = settings_from_options(
        index_dir,
        model_dir=model,
        reranker_dir=reranker,
        device=device,
        reload_interval_s=reload_interval,
        host=host,
        port=port,
        **es_overrides(es_url, None, es_api_key, es_username, es_password, es_ca_certs, es_timeout),
    )
    if vector is not None:  # serving follows the manifest; --vector says what it must say
        check_served_vector_backend(settings, vector)
    try:
        settings.require_user_key()  # shopper ids are never stored or used raw
    except ValueError as exc:
        raise fail(
            ValueError(f"{exc}\n(`shopsearch demo` runs with a built-in, public demo key.)"), 2
        ) from exc
    # Small matrix products per request (shopper re-scoring, recommendations) lose more to
    # BLAS threads fighting the search workers than they gain: one BLAS thread each.
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")
    # The event loop (health checks, refusals, admission) shares the GIL with the search
    # workers; at the default 5 ms switch interval each of its wake-ups can wait that long
    # behind a worker. 1 ms keeps refusals and /healthz fast under load.
    sys.setswitchinterval(0.001)
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info", access_log=False)


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="The query, as a shopper would type it.")],
    index_dir: IndexDirOption = None,
    size: Annotated[int, typer.Option(help="Hits per page.")] = 10,
    page: Annotated[int, typer.Option(help="1-based page.")] = 1,
    mode: Annotated[str, typer.Option(help="hybrid, dense or lexical.")] = "hybrid",
    brand: Annotated[list[str] | None, typer.Option(help="Only these brands (repeatable).")] = None,
    category: Annotated[str | None, typer.Option(help="Category path prefix.")] = None,
    min_price: Annotated[float | None, typer.Option(help="Lowest price.")] = None,
    max_price: Annotated[float | None, typer.Option(help="Highest price.")] = None,
    in_stock: Annotated[
        bool | None, typer.Option("--in-stock/--out-of-stock", help="Stock filter.")
    ] = None,
    explain: Annotated[bool, typer.Option(help="Show per-leg ranks and scores.")] = False,
    model: ModelOption = None,
    reranker: Annotated[Path | None, typer.Option(help="Cross-encoder directory.")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the full response as JSON.")
    ] = False,
    es_url: EsUrlOption = None,
    es_api_key: EsApiKeyOption = None,
    es_username: EsUserOption = None,
    es_password: EsPasswordOption = None,
    es_ca_certs: EsCaCertsOption = None,
    es_timeout: EsTimeoutOption = None,
) -> None:
    """Search the serving snapshot in-process and print the hits."""
    from shopsearch.api.schemas import SearchRequest
    from shopsearch.api.service import SearchService

    settings = settings_from_options(
        index_dir,
        model_dir=model,
        reranker_dir=reranker,
        **es_overrides(es_url, None, es_api_key, es_username, es_password, es_ca_certs, es_timeout),
    )
    filters: dict[str, object] = {}
    if brand:
        filters["brand"] = brand
    if category:
        filters["category"] = category
    if min_price is not None or max_price is not None:
        filters["price"] = {"min": min_price, "max": max_price}
    if in_stock is not None:
        filters["in_stock"] = in_stock
    try:
        request = SearchRequest.model_validate(
            {
                "q": query,
                "size": size,
                "page": page,
                "mode": mode,
                "filters": filters or None,
                "explain": explain,
            }
        )
        service = SearchService(settings)
        try:
            service.load()
            response = service.search(request)
        finally:
            service.close()
    except ValidationError as exc:
        raise fail(ValueError(exc.errors(include_url=False)), 2) from exc
    except ShopsearchError as exc:
        raise fail(exc) from exc
    if as_json:
        sys.stdout.write(response.model_dump_json(indent=2, exclude_none=True) + "\n")
        return
    out = Console()
    table = Table(
        title=f"{response.total} results for {query!r} ({response.mode}, {response.index_version})"
    )
    table.add_column("#", justify="right")
    table.add_column("id")
    table.add_column("title")
    table.add_column("brand")
    table.add_column("price", justify="right")
    table.add_column("score", justify="right")
    if explain:
        table.add_column("dense rank", justify="right")
        table.add_column("lexical rank", justify="right")
    for i, hit in enumerate(response.hits, start=(page - 1) * size + 1):
        row = [
            str(i),
            hit.id,
            hit.title,
            hit.brand,
            "" if hit.price is None else f"{hit.price:.2f}",
            f"{hit.score:.4f}",
        ]
        if explain and hit.explain:
            row += [str(hit.explain.dense_rank or "-"), str(hit.explain.lexical_rank or "-")]
        table.add_row(*row)
    out.print(table)
    out.print("timings (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in response.timings_ms.items()))
    out.print(
        f"rerank: {response.rerank}"
        + (f"; degraded: {response.degraded}" if response.degraded else "")
    )


@app.command()
def snapshots(index_dir: IndexDirOption = None) -> None:
    """List the snapshots kept on disk (the serving one is marked)."""
    store = SnapshotStore(index_dir or Settings().index_dir)
    table = Table(title=f"snapshots in {store.root}")
    for col in ("", "version", "created", "products"):
        table.add_column(col)
    for s in store.list_snapshots():
        table.add_row("*" if s.current else "", s.version, s.created_at, str(s.products))
    Console().print(table)


@app.command()
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


@app.command()
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


@app.command()
def demo(
    index_dir: Annotated[Path, typer.Option(help="Where the demo snapshot goes.")] = Path(
        "var/demo-index"
    ),
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    serve_after: Annotated[
        bool, typer.Option("--serve/--no-serve", help="Serve after building.")
    ] = True,
) -> None:
    """Build the built-in sample catalog and serve it on 127.0.0.1:8000.

    Then try: curl '127.0.0.1:8000/v1/search?q=cordless+drill'
    """
    # The demo's own key, events and models (never the shop's var/events.db or registry).
    os.environ.setdefault("SHOPSEARCH_USER_KEY", DEMO_USER_KEY)
    os.environ.setdefault("SHOPSEARCH_EVENTS_DB", "var/demo-events.db")
    os.environ.setdefault("SHOPSEARCH_MODELS_DIR", "var/demo-models")
    settings = settings_from_options(index_dir)
    try:
        run_build(sample_catalog_path(), ColumnMapping(), settings, BuildOptions())
        _demo_shoppers(settings)
    except ShopsearchError as exc:
        raise fail(exc) from exc
    if serve_after:
        base = f"{host}:{port}"
        console.print(
            f"serving the sample catalog on http://{base} — try:\n"
            f"  curl '{base}/v1/search?q=cordless+drill'\n"
            f"  curl '{base}/v1/search?q=gloves&user=demo-garden&explain=true'   (vs user=demo-diy)\n"
            f"  curl '{base}/v1/recommend/for-you?user=demo-cook'\n"
            f"  curl '{base}/v1/recommend/similar/SKU-10001'\n"
            "(demo-diy, demo-cook and demo-garden are synthetic demo shoppers)"
        )
        serve(index_dir=index_dir, host=host, port=port, reload_interval=2.0)


def _demo_shoppers(settings: Settings) -> None:
    """Store the synthetic demo shoppers' events and, once, train a recommender on them."""
    from shopsearch.indexer.events.demo import demo_events
    from shopsearch.indexer.events.store import EventStore
    from shopsearch.indexer.training.recommender import train_recommender
    from shopsearch.retrieval.encoders import Encoder
    from shopsearch.retrieval.model_registry import list_models

    products, _ = load_catalog(sample_catalog_path())
    with EventStore(settings.events_db) as store:
        report = store.add(demo_events(products, settings.require_user_key()))
        interactions = store.interactions()
    console.print(f"demo shoppers: {report.stored:,} new events in {settings.events_db}")
    if list_models(settings.models_dir, "recommender"):
        return
    with console.status("training the demo recommender (about a minute)..."):
        trained = train_recommender(
            interactions,
            {p.id: p.title for p in products},
            settings.models_dir,
            encoder=Encoder(settings.model_dir, device=settings.device),
            max_minutes=1.0,
        )
    console.print(f"demo recommender: {trained.model.path}")


def mount_plugins(target: typer.Typer) -> None:
    """Mount the commands that packages above ``api`` register (``eval``: eval, bench).

    Imports flow one way (``api`` <- ``eval``), so ``api`` never imports ``eval``; each
    plugin is an entry point in the ``shopsearch.commands`` group (see pyproject.toml)
    naming a ``register(app)`` function.
    """
    from importlib.metadata import entry_points

    for entry in entry_points(group="shopsearch.commands"):
        entry.load()(target)


def _mount_training() -> None:
    from shopsearch.api.cli_events import events_app
    from shopsearch.api.cli_rules import rules_app
    from shopsearch.api.cli_train import models_app, train_app
    from shopsearch.api.cli_train_recommender import (
        train_recommender_command,  # registers on train_app
    )

    del train_recommender_command

    app.add_typer(train_app, name="train")
    app.add_typer(models_app, name="models")
    app.add_typer(events_app, name="events")
    app.add_typer(rules_app, name="rules")


_mount_training()


def main() -> None:
    """Console-script entry point: the core commands plus registered plugins."""
    mount_plugins(app)
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
