"""The ``shopsearch`` command line (typer): build, update, serve, search, snapshots, rollback,
demo, bench.

Configures logging and progress bars; everything else is done by the library. The index
commands (build, snapshots, rollback, update) are defined in :mod:`api.cli_index`.

Elasticsearch: ``build --lexical elasticsearch --es-url URL`` puts the lexical leg of the
snapshot on the cluster; ``serve``, ``search``, ``update`` and ``rollback`` then take the
same ``--es-*`` connection options (or ``SHOPSEARCH_ES_*`` variables; prefer those for
secrets, since a command line is visible to other users of the machine). Secrets are
never printed or logged.
"""

from __future__ import annotations

import logging
import os
import sys
from importlib.resources import files
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from shopsearch.api.cli_common import (
    DeviceOption,
    EsApiKeyOption,
    EsCaCertsOption,
    EsPasswordOption,
    EsTimeoutOption,
    EsUrlOption,
    EsUserOption,
    IndexDirOption,
    ModelOption,
    console,
    es_overrides,
    fail,
    models_dir_setting,
    settings_from_options,
)
from shopsearch.api.cli_index import VectorOption, build, rollback, run_build, snapshots, update
from shopsearch.api.settings import DEMO_USER_KEY, Settings
from shopsearch.indexer.catalog import ColumnMapping, load_catalog
from shopsearch.indexer.snapshot import SnapshotError, SnapshotStore
from shopsearch.indexer.snapshot_build import BuildOptions
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


# The index commands live in api/cli_index.py; each is registered where `shopsearch --help`
# lists it.
app.command()(build)


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
    loop, http = http_implementation()
    log.info("HTTP: uvicorn with the %s event loop and the %s parser", loop, http)
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        log_level="info",
        access_log=False,
        loop=loop,
        http=http,
    )


def http_implementation() -> tuple[str, str]:
    """uvicorn's event loop and HTTP parser: uvloop and httptools (C; dependencies of
    shopsearch) when both import, else asyncio's loop and h11. The C pair costs about 1 ms
    less CPU a search over loopback, 3-13% more searches a second at 16 clients (README,
    "Threads and workers on two cores")."""
    from importlib.util import find_spec

    if find_spec("uvloop") is not None and find_spec("httptools") is not None:
        return "uvloop", "httptools"
    return "asyncio", "h11"


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


app.command()(snapshots)
app.command()(rollback)
app.command()(update)


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
    """Store the synthetic demo shoppers' events and train the shopper models on them as
    the nightly job does (the recommender, then the shopper-aware search re-scorer; not
    again while no event is new)."""
    from shopsearch.indexer.events.demo import demo_events
    from shopsearch.indexer.events.store import EventStore
    from shopsearch.indexer.nightly_shoppers import retrain_shopper_models
    from shopsearch.retrieval.encoders import Encoder

    products, _ = load_catalog(sample_catalog_path())
    with EventStore(settings.events_db) as store:
        report = store.add(demo_events(products, settings.require_user_key()))
    console.print(f"demo shoppers: {report.stored:,} new events in {settings.events_db}")
    with console.status("training the demo shopper models (about a minute)..."):
        outcome = retrain_shopper_models(
            settings.events_db,
            {p.id: p.title for p in products},
            settings.models_dir,
            Encoder(settings.model_dir, device=settings.device),
            max_minutes=1.0,
            personal_minutes=1.0,
        )
    console.print(f"demo shopper models {outcome.status}: {outcome.reason}")


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
