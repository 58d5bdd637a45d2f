"""What every ``shopsearch`` command shares: the console, errors, progress bars, the
model registry setting, the common options, and settings built from options.

The core CLI (:mod:`api.cli`, :mod:`api.cli_train`, :mod:`api.cli_events`) and the
commands ``eval`` registers as a plugin (:mod:`eval.cli`) import from here, never from
each other: ``api.cli`` mounts the plugins, so a plugin importing ``api.cli`` would close
an import loop through the entry point.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from pydantic import SecretStr, ValidationError
from pydantic_settings import BaseSettings
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from shopsearch.api.settings import Settings
from shopsearch.indexer.catalog import CatalogReport
from shopsearch.indexer.progress import Advance
from shopsearch.indexer.snapshot_build import BuildOptions
from shopsearch.retrieval.model_registry import resolve_model
from shopsearch.retrieval.types import Product, ShopsearchError

__all__ = [
    "DEFAULT_INDEX_DIR",
    "DEFAULT_MODELS_DIR",
    "Bars",
    "StageLog",
    "build_loaded",
    "console",
    "es_overrides",
    "fail",
    "models_dir_setting",
    "resolve_model_option",
    "settings_from_options",
]

console = Console(stderr=True)
log = logging.getLogger("shopsearch.progress")

#: The registry when neither --models-dir nor $SHOPSEARCH_MODELS_DIR names one.
DEFAULT_MODELS_DIR: Path = Settings.model_fields["models_dir"].default

DEFAULT_INDEX_DIR = Settings.model_fields["index_dir"].default
IndexDirOption = Annotated[
    Path | None,
    typer.Option(
        "--index-dir",
        help="Directory of snapshots and the CURRENT pointer. Default: $SHOPSEARCH_INDEX_DIR or var/index.",
    ),
]
ModelOption = Annotated[
    Path | None,
    typer.Option("--model", help="Two-tower model directory. Default: bundled all-MiniLM-L6-v2."),
]
# Catalog column options, shared by every command that reads a catalog (build, update).
IdFieldOption = Annotated[str, typer.Option("--id-field", help="Column with the product id.")]
TitleFieldOption = Annotated[
    str, typer.Option("--title-field", help="Column with the product title.")
]
DescriptionFieldOption = Annotated[
    str, typer.Option("--description-field", help="Column with the description.")
]
BrandFieldOption = Annotated[str, typer.Option("--brand-field", help="Column with the brand.")]
CategoryFieldOption = Annotated[
    str, typer.Option("--category-field", help="Column with the category path ('A > B > C').")
]
PriceFieldOption = Annotated[str, typer.Option("--price-field", help="Column with the price.")]
InStockFieldOption = Annotated[
    str, typer.Option("--in-stock-field", help="Column with the stock flag.")
]
ImageUrlFieldOption = Annotated[
    str, typer.Option("--image-url-field", help="Column with the image URL.")
]

DeviceOption = Annotated[
    str, typer.Option("--device", help="'auto' (GPU when present), 'cpu' or 'cuda'.")
]
EncoderBackendOption = Annotated[
    str | None,
    typer.Option(
        "--backend",
        help="Encoder backend: torch, onnx (fp32) or onnx-int8 (CPU; exported once and cached). "
        "Serving must use the same one. Default: $SHOPSEARCH_ENCODER_BACKEND or torch.",
    ),
]
EsUrlOption = Annotated[
    str | None,
    typer.Option(
        "--es-url",
        help="Elasticsearch URL, e.g. http://127.0.0.1:9200. Default: $SHOPSEARCH_ES_URL.",
    ),
]
EsPrefixOption = Annotated[
    str | None,
    typer.Option(
        "--es-index-prefix",
        help="Indices are <prefix>-<version>, the alias <prefix>; one prefix per index dir. "
        "Default: $SHOPSEARCH_ES_INDEX_PREFIX or shopsearch.",
    ),
]
EsApiKeyOption = Annotated[
    str | None,
    typer.Option(
        "--es-api-key",
        help="API key (prefer $SHOPSEARCH_ES_API_KEY: command lines are visible to others).",
    ),
]
EsUserOption = Annotated[
    str | None, typer.Option("--es-username", help="Basic-auth user (with --es-password).")
]
EsPasswordOption = Annotated[
    str | None,
    typer.Option(
        "--es-password",
        help="Basic-auth password (prefer $SHOPSEARCH_ES_PASSWORD).",
    ),
]
EsCaCertsOption = Annotated[
    Path | None, typer.Option("--es-ca-certs", help="CA certificate bundle for https.")
]
EsTimeoutOption = Annotated[
    float | None,
    typer.Option(
        "--es-timeout",
        help="Seconds a lexical query may take before the answer degrades to the dense leg. "
        "Default: $SHOPSEARCH_ES_TIMEOUT or 0.5.",
    ),
]
ModelsDirOption = Annotated[
    Path | None,
    typer.Option(
        help="Model registry directory. Default: $SHOPSEARCH_MODELS_DIR (the models_dir "
        "setting serve reads) or var/models."
    ),
]


class _RegistrySetting(BaseSettings):
    """``models_dir`` alone, read by :class:`api.settings.Settings`'s own rules (prefix,
    case, no .env): a training run needs the registry, not a valid serving configuration."""

    model_config = Settings.model_config
    models_dir: Path = DEFAULT_MODELS_DIR


def models_dir_setting(option: Path | None = None) -> Path:
    """The model registry a command uses: ``option`` (its ``--models-dir``) when given,
    else the ``models_dir`` setting, ``$SHOPSEARCH_MODELS_DIR`` as the environment holds
    it now (default ``var/models``), exactly what :class:`api.settings.Settings` reads.

    ``train`` and ``models`` register and list here, and ``build``/``serve``/``search``/
    ``update`` resolve ``--model``/``--reranker`` specs here, so what one trains the other
    finds. Read at each call, not at import: a variable set later (``demo``) counts.
    """
    if option is not None:
        return option
    return _RegistrySetting().models_dir


def resolve_model_option(spec: str | Path | None, models_dir: Path | None = None) -> Path | None:
    """What ``build``/``serve`` do with ``--model``/``--reranker``: None stays None (the
    default model); a spec (``towers/latest``, ``reranker/<version>``, a directory) becomes
    a model directory, looked up in ``models_dir`` (default: :func:`models_dir_setting`).
    Raises :class:`retrieval.model_registry.RegistryError`."""
    if spec is None:
        return None
    return resolve_model(spec, models_dir_setting(models_dir))


def fail(exc: object, code: int = 1) -> typer.Exit:
    """Print ``exc`` as the command's error on stderr; raise the returned exit (status
    ``code``: 1 failed, 2 bad options) ``from`` the exception."""
    console.print(f"[bold red]error:[/] {exc}")
    return typer.Exit(code)


class StageLog:
    """One stage's progress as log lines, for an output that is not a terminal (a log
    file, cron, CI), where a progress bar draws nothing until the job ends: a line when
    the stage starts, one at most every ``every_s`` seconds while it runs (done, rate,
    time left) and one when it ends."""

    def __init__(
        self,
        description: str,
        total: int,
        *,
        every_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.description = description
        self.total = total
        self.done = 0
        self._every_s = every_s
        self._clock = clock
        self._start = self._last = clock()
        self._finished = False
        log.info("%s: started (%d to do)", description, total)

    def advance(self, n: int) -> None:
        """``n`` more units are done (logs when ``every_s`` has passed since the last line)."""
        self.done += n
        if self.done >= self.total:
            self.finish()
            return
        now = self._clock()
        if now - self._last < self._every_s:
            return
        self._last = now
        rate = self.done / max(now - self._start, 1e-9)
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        log.info(
            "%s: %d/%d (%.0f%%), %.1f a second, about %.0f s left",
            self.description,
            self.done,
            self.total,
            100 * self.done / max(self.total, 1),
            rate,
            left,
        )

    def finish(self) -> None:
        """Log the end of the stage (once)."""
        if self._finished:
            return
        self._finished = True
        log.info(
            "%s: ended after %.1f s (%d/%d)",
            self.description,
            self._clock() - self._start,
            self.done,
            self.total,
        )


class Bars:
    """Rich progress bars on stderr: a :data:`indexer.progress.ProgressFactory`
    (``with bars(description, total) as advance``) and, for callers that report
    progress through a callback, :meth:`task`. Draws while ``with bars.progress:``.

    When stderr is not a terminal (output sent to a file), each stage is also logged
    by a :class:`StageLog`, every ``log_every_s`` seconds."""

    def __init__(
        self, *, info: bool = False, out: Console | None = None, log_every_s: float = 30.0
    ) -> None:
        out = out or console
        # ``info``: a free-text column (``progress.update(task, info=...)``), e.g. the loss.
        extra = [TextColumn("{task.fields[info]}")] if info else []
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            *extra,
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=out,
        )
        self._info = info
        self._log_every_s = log_every_s if not out.is_terminal else None

    def _stage_log(self, description: str, total: int) -> StageLog | None:
        if self._log_every_s is None:
            return None
        return StageLog(description, total, every_s=self._log_every_s)

    @contextmanager
    def __call__(self, description: str, total: int) -> Iterator[Advance]:
        task = self._add(description, total)
        stage = self._stage_log(description, total)
        try:
            yield self._advancer(task, stage)
        finally:
            self.progress.update(task, completed=total)
            if stage is not None:
                stage.finish()

    def _add(self, description: str, total: int) -> TaskID:
        if self._info:
            return self.progress.add_task(description, total=total, info="")
        return self.progress.add_task(description, total=total)

    def task(self, description: str, total: int) -> Advance:
        """A new bar; returns the callable advancing it by ``n``."""
        task = self._add(description, total)
        return self._advancer(task, self._stage_log(description, total))

    def _advancer(self, task: TaskID, stage: StageLog | None) -> Advance:
        """Advances the bar ``task`` and, output not being a terminal, its ``stage`` log."""

        def advance(n: int) -> None:
            self.progress.advance(task, n)
            if stage is not None:
                stage.advance(n)

        return advance


def settings_from_options(index_dir: Path | None, **overrides: object) -> Settings:
    """``SHOPSEARCH_*`` settings with the options given on the command line (not None)
    on top, validated (a bad combination exits with the reason)."""
    values = {k: v for k, v in overrides.items() if v is not None}
    if index_dir is not None:
        values["index_dir"] = index_dir
    # --model / --reranker take a directory or a registry spec (towers/latest,
    # reranker/<version>), looked up where `shopsearch train` registers models.
    for key in ("model_dir", "reranker_dir"):
        if key in values:
            try:
                values[key] = resolve_model_option(str(values[key]))
            except ShopsearchError as exc:
                raise fail(exc, 2) from exc
    try:
        return Settings(**values)  # type: ignore[arg-type]
    except ValidationError as exc:
        reasons = "; ".join(e["msg"] for e in exc.errors(include_url=False))
        raise fail(ValueError(reasons), 2) from exc


def es_overrides(
    url: str | None,
    prefix: str | None = None,
    api_key: str | None = None,
    username: str | None = None,
    password: str | None = None,
    ca_certs: Path | None = None,
    timeout: float | None = None,
) -> dict[str, object]:
    """The ``--es-*`` options as :class:`Settings` overrides (secrets as SecretStr)."""
    return {
        "es_url": url,
        "es_index_prefix": prefix,
        "es_api_key": SecretStr(api_key) if api_key is not None else None,
        "es_username": username,
        "es_password": SecretStr(password) if password is not None else None,
        "es_ca_certs": ca_certs,
        "es_timeout": timeout,
    }


def build_loaded(
    products: Sequence[Product], report: CatalogReport, settings: Settings, options: BuildOptions
) -> dict[str, object]:
    """Build (and, per ``options``, promote) a snapshot of loaded products with progress
    bars, encoding with ``settings``' towers (raises what ``build_snapshot`` raises)."""
    from shopsearch.indexer.snapshot_build import build_snapshot
    from shopsearch.retrieval.encoders import Encoder

    encoder = Encoder(settings.model_dir, device=settings.device, backend=settings.encoder_backend)
    bars = Bars()
    es = settings.elasticsearch()
    try:
        with bars.progress:
            return build_snapshot(
                products, report, settings.index_dir, encoder, options, progress=bars, es=es
            )
    finally:
        if es is not None:
            es.close()
