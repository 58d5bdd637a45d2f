"""``shopsearch train towers|reranker`` and ``shopsearch models list|show``.

Two typer sub-apps, mounted by :mod:`api.cli`::

    app.add_typer(train_app, name="train")
    app.add_typer(models_app, name="models")

A training run: load judged queries (Home Depot CSV split, or a generic queries TSV +
TREC qrels) and the catalog; mine negatives from a snapshot (``--index-dir``) or from an
in-memory base index over the catalog (BM25 + exact dense search; the catalog's vectors
are cached under ``<models-dir>/.cache/embeddings`` keyed by model checksum, so reruns
do not re-encode); train; register the model with its card in the registry.

``build`` and ``serve`` take a model spec through :func:`resolve_model_option`
(``towers/latest``, ``reranker/<version>`` or a directory). Comparing the trained
models on the dev split is ``shopsearch eval`` (``--compare-index-dir``, ``--reranker``).

The registry is ``--models-dir`` when given, else the ``models_dir`` setting
(``$SHOPSEARCH_MODELS_DIR``, default ``var/models``): :func:`models_dir_setting`, the one
place every command that reads or writes the registry resolves it, so a model trained
with the variable set is where ``serve --model towers/latest`` looks with it set.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import numpy.typing as npt
import typer
from rich.console import Console
from rich.table import Table

from api.cli_common import (
    DEFAULT_MODELS_DIR,
    Bars,
    ModelsDirOption,
    console,
    fail,
    models_dir_setting,
    resolve_model_option,
)
from indexer.catalog import CatalogError, ColumnMapping, load_catalog
from indexer.judgments import (
    DatasetError,
    EvalDataset,
    load_generic,
    load_homedepot,
)
from indexer.training.compress import layer_count
from indexer.training.mined_data import (
    CandidateSource,
    DevData,
    MiningOptions,
    TrainingData,
    build_dev_data,
    build_training_data,
    catalog_embeddings,
    dense_source,
    lexical_source,
    mine_candidates,
    snapshot_sources,
)
from indexer.training.towers import (
    DEFAULT_DISTILL_WEIGHT,
    TOWER_LAYOUTS,
    TrainingProgress,
    TrainingRun,
)
from retrieval.encoders import Encoder, default_model_path, model_info, tokenizer_words
from retrieval.model_registry import (
    KINDS,
    LATEST,
    RegisteredModel,
    list_models,
    load_card,
    new_version,
    register,
    resolve_model,
    staging_dir,
)
from retrieval.query_rewrite import QueryRewriter
from retrieval.types import Product, ShopsearchError

__all__ = [
    "DEFAULT_HOMEDEPOT_DIR",
    "DEFAULT_MODELS_DIR",
    "TrainingInputs",
    "load_training_inputs",
    "models_app",
    "train_app",
]

log = logging.getLogger("shopsearch.train")

DEFAULT_HOMEDEPOT_DIR = Path("../shared/datasets/homedepot")
#: Training-loop budget: with mining (about 5 minutes on a cold cache here) and the
#: dev measurements, a default run on the Home Depot train split ends within 30 minutes.
DEFAULT_MAX_MINUTES = 20.0

train_app = typer.Typer(
    help="Train the two towers or the cross-encoder on judged queries; models land in the registry.",
    no_args_is_help=True,
)
models_app = typer.Typer(help="List and inspect trained models.", no_args_is_help=True)


def _resolve_bf16(value: str, device: str) -> bool:
    """``--bf16`` to a bool; ``auto`` asks the hardware (see ``bf16_supported``)."""
    from indexer.training.towers import bf16_supported
    from retrieval.encoders import resolve_device

    if value not in ("auto", "on", "off"):
        raise typer.BadParameter(f"--bf16 must be auto, on or off, got {value!r}")
    if value == "auto":
        return bf16_supported(resolve_device(device))
    return value == "on"


# -- inputs --------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingInputs:
    """Judged train and dev queries, the catalog, and where they came from."""

    train: EvalDataset
    dev: EvalDataset
    products: list[Product]
    catalog_sha256: str
    sources: dict[str, str]
    #: What query rewriting did to the splits (``{"enabled": False}`` when it was off).
    rewrite: dict[str, Any] = field(default_factory=lambda: {"enabled": False})


def rewrite_splits(inputs: TrainingInputs, tokenizer_dir: Path) -> TrainingInputs:
    """``inputs`` with every train and dev query rewritten the way the service rewrites
    queries (units, spelling; ``retrieval/query_rewrite.py``), over the same catalog, so
    models learn from the text they will be asked at serving time. ``tokenizer_dir``'s
    vocabulary gives the known words spelling correction leaves alone."""
    rewriter = QueryRewriter.for_products(
        inputs.products, known_words=tokenizer_words(tokenizer_dir)
    )
    train = inputs.train.with_texts(lambda text: rewriter.rewrite(text).text)
    dev = inputs.dev.with_texts(lambda text: rewriter.rewrite(text).text)
    counts = {
        name: sum(a.text != b.text for a, b in zip(before.queries, after.queries, strict=True))
        for name, before, after in (("train", inputs.train, train), ("dev", inputs.dev, dev))
    }
    log.info(
        "query rewriting: %d of %d train and %d of %d dev queries rewritten",
        counts["train"],
        len(train.queries),
        counts["dev"],
        len(dev.queries),
    )
    return dataclasses.replace(
        inputs,
        train=train,
        dev=dev,
        rewrite={
            "enabled": True,
            "train_queries_rewritten": counts["train"],
            "dev_queries_rewritten": counts["dev"],
        },
    )


def _load_split(
    path: Path, qrels: Path | None, gain_offset: float, products_csv: Path | None
) -> EvalDataset:
    if path.suffix.lower() == ".csv":
        return load_homedepot(path, products_csv)
    if qrels is None:
        raise DatasetError(
            f"{path} is not a Home Depot .csv split; a generic queries TSV needs its qrels "
            "(--train-qrels / --dev-qrels)"
        )
    return load_generic(path, qrels, gain_offset=gain_offset)


def load_training_inputs(
    *,
    homedepot_dir: Path = DEFAULT_HOMEDEPOT_DIR,
    train: Path | None = None,
    train_qrels: Path | None = None,
    dev: Path | None = None,
    dev_qrels: Path | None = None,
    gain_offset: float = 0.0,
    catalog: Path | None = None,
    id_field: str = "product_uid",
    title_field: str = "product_title",
) -> TrainingInputs:
    """Load the splits and the catalog; unset paths default to the Home Depot files in
    ``homedepot_dir`` (``train.csv``, ``dev.csv``, ``products.csv``).

    Raises:
        DatasetError, CatalogError: a file is missing or malformed.
    """
    train = train or homedepot_dir / "train.csv"
    dev = dev or homedepot_dir / "dev.csv"
    catalog = catalog or homedepot_dir / "products.csv"
    products, report = load_catalog(catalog, ColumnMapping(id=id_field, title=title_field))
    hd_catalog = catalog if catalog.suffix.lower() == ".csv" and id_field == "product_uid" else None
    train_ds = _load_split(train, train_qrels, gain_offset, hd_catalog)
    dev_ds = _load_split(dev, dev_qrels, gain_offset, hd_catalog)
    return TrainingInputs(
        train=train_ds,
        dev=dev_ds,
        products=list(products),
        catalog_sha256=report.sha256,
        sources={
            "train": str(train),
            "train_qrels": str(train_qrels or ""),
            "dev": str(dev),
            "dev_qrels": str(dev_qrels or ""),
            "catalog": str(catalog),
        },
    )


# -- progress ------------------------------------------------------------------------


class _Bars(Bars):
    """:class:`api.cli_common.Bars` plus a training-step callback (loss on the bar)."""

    def __init__(self) -> None:
        super().__init__(info=True)
        self._tasks: dict[str, Any] = {}

    def on_step(self, p: TrainingProgress) -> None:
        task = self._tasks.get(p.phase)
        if task is None:
            task = self.progress.add_task(p.phase, total=p.total, info="")
            self._tasks[p.phase] = task
        self.progress.update(task, completed=p.step, total=p.total, info=f"loss {p.loss:.4f}")


# -- mining --------------------------------------------------------------------------


@dataclass
class _Mining:
    sources: list[CandidateSource]
    description: dict[str, Any]
    encoder: Encoder


def _mining(
    products: Sequence[Product],
    index_dir: Path | None,
    mining_model: Path,
    models_dir: Path,
    device: str,
    workdir: Path,
    bars: _Bars,
) -> _Mining:
    if index_dir is not None:
        from indexer.snapshot import SnapshotStore, load_snapshot

        store = SnapshotStore(index_dir)
        version = store.current()
        if version is None:
            raise ShopsearchError(
                f"{index_dir} has no promoted snapshot; build one or leave out --index-dir"
            )
        snapshot = load_snapshot(store.path(version))
        encoder = Encoder(Path(snapshot.item_model["path"]), device=device)
        lexical, dense = snapshot_sources(snapshot, encoder)
        return _Mining(
            [lexical, dense],
            {
                "from": "snapshot",
                "index_dir": str(index_dir),
                "snapshot": version,
                "model": encoder.info.to_dict(),
            },
            encoder,
        )
    from retrieval.lexical_index import TantivyIndex

    encoder = Encoder(mining_model, device=device)
    lexical_index = TantivyIndex(workdir / "lexical")
    with bars("indexing catalog (BM25) for mining", len(products)) as advance:
        lexical_index.build(products, progress=advance)
    vectors = catalog_embeddings(
        encoder, products, models_dir / ".cache" / "embeddings", progress=bars
    )
    return _Mining(
        [lexical_source(lexical_index), dense_source(encoder, vectors, [p.id for p in products])],
        {
            "from": "in-memory index over the catalog (tantivy BM25 + exact dense)",
            "model": encoder.info.to_dict(),
        },
        encoder,
    )


def _prepare(
    inputs: TrainingInputs,
    mining: _Mining,
    options: MiningOptions,
    bars: _Bars,
    dev_queries: int,
) -> tuple[TrainingData, DevData]:
    candidates = mine_candidates(inputs.train.queries, mining.sources, options.depth, progress=bars)
    data = build_training_data(inputs.train, inputs.products, candidates, options)
    dev = build_dev_data(
        inputs.dev, inputs.products, mining.sources, n_queries=dev_queries, seed=options.seed
    )
    return data, dev


# -- commands ------------------------------------------------------------------------

HomedepotOption = Annotated[
    Path,
    typer.Option(help="Home Depot data dir: train.csv, dev.csv, products.csv (the defaults)."),
]
TrainOption = Annotated[
    Path | None,
    typer.Option(
        "--train",
        help="Train split: Home Depot .csv, or a generic queries TSV (with --train-qrels).",
    ),
]
TrainQrelsOption = Annotated[Path | None, typer.Option(help="TREC qrels of a generic --train TSV.")]
DevOption = Annotated[
    Path | None,
    typer.Option("--dev", help="Dev split for model selection (same formats as --train)."),
]
DevQrelsOption = Annotated[Path | None, typer.Option(help="TREC qrels of a generic --dev TSV.")]
GainOffsetOption = Annotated[
    float,
    typer.Option(help="Generic format: grade minus this is the nDCG gain (Home Depot files: 1)."),
]
CatalogOption = Annotated[
    Path | None,
    typer.Option("--catalog", help="Catalog file (default: products.csv of --homedepot-dir)."),
]
IdFieldOption = Annotated[str, typer.Option(help="Catalog column with the product id.")]
TitleFieldOption = Annotated[str, typer.Option(help="Catalog column with the title.")]
IndexDirOption = Annotated[
    Path | None,
    typer.Option(
        help="Mine negatives from this index's serving snapshot (default: an in-memory base index)."
    ),
]
MiningModelOption = Annotated[
    str | None,
    typer.Option(help="Towers for in-memory mining (spec or dir; default: base MiniLM)."),
]
MaxPairsOption = Annotated[
    int | None, typer.Option(help="Use at most this many training examples.")
]
MaxMinutesOption = Annotated[
    float,
    typer.Option(
        help="Training-loop budget in minutes; stops cleanly and saves at the deadline. The "
        "steps that fit are planned from the measured speed, so a busy machine trains fewer "
        "(a WARNING and the card's budget say how much of an epoch)."
    ),
]
MaxStepsOption = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="Train at most this many optimisation steps, whatever the machine's speed (the "
        "learning-rate schedule ends there); a deterministic budget. --max-minutes still "
        "applies: give one the steps fit in.",
    ),
]
EpochsOption = Annotated[int, typer.Option(help="Passes over the training examples.")]
SeedOption = Annotated[int, typer.Option(help="Seed of every random choice (data, init, order).")]
DeviceOption = Annotated[str, typer.Option(help="'auto' (GPU when present), 'cpu' or 'cuda'.")]
DevQueriesOption = Annotated[
    int, typer.Option(help="Dev queries measured before, after each epoch and after the pilots.")
]
Bf16Option = Annotated[
    str,
    typer.Option(
        help="bfloat16 autocast: 'auto' (on when the GPU, or the CPU via AVX512-BF16/AMX, runs "
        "it natively; about 1.3x faster steps on this project's Zen 4 CPU), 'on' or 'off'."
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the model card as JSON on stdout.")]
RewriteOption = Annotated[
    bool,
    typer.Option(
        "--rewrite/--no-rewrite",
        help="Rewrite train and dev queries as the service does (units, spelling against the "
        "catalog), so the model learns from what it will be asked.",
    ),
]


def _base_card(
    base: Path,
    inputs: TrainingInputs,
    data: TrainingData,
    mining: _Mining,
    options: MiningOptions,
) -> dict[str, Any]:
    info = model_info(base)
    return {
        "base_model": {"id": info.id, "path": info.path, "sha256": info.sha256},
        "training_data": {
            "checksum": data.checksum,
            "catalog_sha256": inputs.catalog_sha256,
            "files": inputs.sources,
            "query_rewrite": inputs.rewrite,
            "stats": data.stats(),
            "mining": {
                **mining.description,
                "options": {
                    "positive_threshold": options.positive_threshold,
                    "negative_threshold": options.negative_threshold,
                    "depth": options.depth,
                    "hard_negatives": options.hard_negatives,
                    "random_negatives": options.random_negatives,
                },
            },
        },
    }


def _threads() -> int:
    import torch

    return int(torch.get_num_threads())


def _run_fields(
    result: TrainingRun,
    hyper_parameters: dict[str, Any],
    seed: int,
    started: float,
    prepared: float,
) -> dict[str, Any]:
    """The model-card fields every training run has."""
    return {
        "hyper_parameters": hyper_parameters,
        "seed": seed,
        "device": result.device,
        "threads": _threads(),
        "steps": result.steps,
        "planned_steps": result.planned_steps,
        "pairs_seen": result.pairs_seen,
        "stopped_by": result.stopped_by,
        # What bounded the run (epochs, --max-steps, --max-minutes) and how much of an
        # epoch it trained; a run cut short says so here, not only in a log line.
        "budget": result.budget,
        "first_step_loss": result.first_step_loss,
        "wall_time_s": {
            "mining_and_data": round(prepared - started, 1),
            "training": round(result.wall_s, 1),
            "total": round(time.monotonic() - started, 1),
        },
        "epochs": [e.to_dict() for e in result.epochs],
        "loss_curve": "loss_curve.png",
    }


def _summary(model: RegisteredModel) -> None:
    card = model.card
    table = Table(title=f"{model.spec}  ({model.path})", show_header=False)
    table.add_row(
        "layout / max_length",
        str(card.get("towers_decision", {}).get("layout", card.get("max_length", ""))),
    )
    table.add_row("dev before", json.dumps(card.get("dev_metrics", {}).get("before", {})))
    table.add_row("dev after", json.dumps(card.get("dev_metrics", {}).get("after", {})))
    table.add_row("steps", f"{card.get('steps')} ({card.get('stopped_by')})")
    budget = card.get("budget") or {}
    if budget:
        table.add_row(
            "budget",
            f"{budget['steps']} of {budget['data_steps']} steps trained "
            f"({budget['fraction_of_epoch']:g} epochs of {budget['epoch_steps']}), "
            f"stopped by {budget['stopped_by']}",
        )
    table.add_row(
        "wall time",
        f"training {card.get('wall_time_s', {}).get('training')} s, total {card.get('wall_time_s', {}).get('total')} s",
    )
    table.add_row("loss curve", str(model.path / "loss_curve.png"))
    Console().print(table)


def _budget_warnings(card: dict[str, Any]) -> None:
    """Repeat the budget's warnings last, after the progress bars and the card, where
    the user reads (a partial epoch must not pass unnoticed in the scrollback)."""
    for warning in (card.get("budget") or {}).get("warnings", []):
        console.print(f"[bold yellow]warning:[/] {warning}")


def _teacher_card(teacher: Any, path: Path) -> dict[str, str]:
    """What a student's model card says of its teacher (a ``rerank.Reranker``)."""
    return {
        "id": teacher.info.id,
        "path": str(path),
        "sha256": teacher.info.sha256,
        "backend": teacher.backend,
    }


def _teacher_labels(
    teacher_path: Path,
    pairs: Sequence[tuple[str, str, float]],
    weight: float,
    device: str,
    bars: _Bars,
) -> tuple[list[tuple[str, str, float]], dict[str, Any]]:
    """Training pairs with the teacher's scores mixed into their labels, and what the
    model card says of it (indexer/training/compress.py)."""
    from indexer.training.compress import distilled_labels
    from rerank.cross_encoder import Reranker

    teacher = Reranker(teacher_path, device=device, backend="auto")
    with bars("teacher scores", len(pairs)) as advance:
        mixed, stats = distilled_labels(teacher, pairs, weight, progress=advance)
    card = {
        "teacher": _teacher_card(teacher, teacher_path),
        "labels": f"(1 - {weight:g}) * judged label + {weight:g} * teacher score",
        **stats,
    }
    log.info("teacher labels: %s", stats)
    return mixed, card


def _teacher_margins(
    teacher_path: Path, triplets: Sequence[tuple[str, str, str]], device: str, bars: _Bars
) -> tuple[npt.NDArray[np.float32], dict[str, Any]]:
    """The teacher's margin for every triplet, and what the model card says of it."""
    from indexer.training.distill import teacher_margins
    from rerank.cross_encoder import Reranker

    started = time.monotonic()
    # auto: onnx-int8 on a CPU, 2.9x faster than torch at the same nDCG (README).
    teacher = Reranker(teacher_path, device=device, backend="auto")
    with bars("teacher margins", len(triplets)) as advance:
        margins = teacher_margins(teacher, triplets, progress=advance)
    card = {
        "teacher": _teacher_card(teacher, teacher_path),
        "margins": {
            "count": len(margins),
            "mean": round(float(np.mean(margins)), 4),
            "std": round(float(np.std(margins)), 4),
            "negative_share": round(float(np.mean(margins < 0)), 4),
        },
        "wall_s": round(time.monotonic() - started, 1),
    }
    log.info("teacher margins: %s", card["margins"])
    return margins, card


@train_app.command("towers")
def train_towers_command(
    homedepot_dir: HomedepotOption = DEFAULT_HOMEDEPOT_DIR,
    train: TrainOption = None,
    train_qrels: TrainQrelsOption = None,
    dev: DevOption = None,
    dev_qrels: DevQrelsOption = None,
    gain_offset: GainOffsetOption = 0.0,
    catalog: CatalogOption = None,
    id_field: IdFieldOption = "product_uid",
    title_field: TitleFieldOption = "product_title",
    index_dir: IndexDirOption = None,
    mining_model: MiningModelOption = None,
    models_dir: ModelsDirOption = None,
    base_model: Annotated[
        Path | None, typer.Option(help="Start from this model (default: bundled MiniLM).")
    ] = None,
    towers: Annotated[
        str,
        typer.Option(
            help=f"Layout: {', '.join(TOWER_LAYOUTS)}. auto trains both for --pilot-steps and "
            "keeps the better on dev; the default, separate, is what that pilot chose on the "
            "Home Depot dev split (nDCG@10 0.405 vs 0.392, towers 20261129T055606Z), so a "
            "default run spends its whole budget on one layout."
        ),
    ] = "separate",
    max_pairs: MaxPairsOption = None,
    max_steps: MaxStepsOption = None,
    max_minutes: MaxMinutesOption = DEFAULT_MAX_MINUTES,
    epochs: EpochsOption = 1,
    batch_size: Annotated[int, typer.Option(help="Triplets per step (in-batch negatives).")] = 64,
    mini_batch_size: Annotated[
        int | None,
        typer.Option(
            help="Use the cached MNRL loss with this mini-batch (larger --batch-size in bounded memory)."
        ),
    ] = None,
    learning_rate: Annotated[float, typer.Option(help="Peak learning rate.")] = 5e-5,
    pilot_steps: Annotated[
        int, typer.Option(help="Steps per layout in the --towers auto pilot.")
    ] = 30,
    positive_threshold: Annotated[
        float, typer.Option(help="Grades at or above are positives.")
    ] = 2.5,
    seed: SeedOption = 1234,
    device: DeviceOption = "auto",
    bf16: Bf16Option = "auto",
    dev_queries: DevQueriesOption = 150,
    rewrite: RewriteOption = True,
    distill_from: Annotated[
        str | None,
        typer.Option(
            help="A trained cross-encoder (reranker/<version> or a directory) as teacher: "
            "each triplet's margin, its score of the positive minus that of the negative, "
            "is added as a margin-MSE target (distillation). Off by default."
        ),
    ] = None,
    distill_weight: Annotated[
        float, typer.Option(help="Weight of the margin-MSE term against MNRL (--distill-from).")
    ] = DEFAULT_DISTILL_WEIGHT,
    as_json: JsonOption = False,
) -> None:
    """Fine-tune the query and item towers (MultipleNegativesRankingLoss, in-batch + mined
    hard negatives; with --distill-from also margin-MSE to a cross-encoder) and register
    them as ``towers/<version>``."""
    from indexer.training.towers import TowerTrainingConfig, train_towers

    started = time.monotonic()
    bars = _Bars()
    models_dir = models_dir_setting(models_dir)
    try:
        config = TowerTrainingConfig(
            towers=towers,  # type: ignore[arg-type]  # validated by the config
            epochs=epochs,
            batch_size=batch_size,
            mini_batch_size=mini_batch_size,
            learning_rate=learning_rate,
            max_pairs=max_pairs,
            max_steps=max_steps,
            max_minutes=max_minutes,
            pilot_steps=pilot_steps,
            seed=seed,
            device=device,
            bf16=_resolve_bf16(bf16, device),
            distill_weight=distill_weight,
        )
        options = MiningOptions(positive_threshold=positive_threshold, seed=seed)
        base = base_model or default_model_path()
        miner_path = resolve_model_option(mining_model, models_dir) or base
        teacher_path = resolve_model_option(distill_from, models_dir)
        inputs = load_training_inputs(
            homedepot_dir=homedepot_dir,
            train=train,
            train_qrels=train_qrels,
            dev=dev,
            dev_qrels=dev_qrels,
            gain_offset=gain_offset,
            catalog=catalog,
            id_field=id_field,
            title_field=title_field,
        )
        if rewrite:
            inputs = rewrite_splits(inputs, base)
        version = new_version(models_dir, "towers")
        with tempfile.TemporaryDirectory(prefix="shopsearch-mining-") as work, bars.progress:
            mining = _mining(
                inputs.products, index_dir, miner_path, models_dir, device, Path(work), bars
            )
            data, dev_data = _prepare(inputs, mining, options, bars, dev_queries)
            triplets = data.tower_triplets()
            distillation = margins = None
            if teacher_path is not None:
                margins, distillation = _teacher_margins(teacher_path, triplets, device, bars)
            prepared = time.monotonic()
            out = staging_dir(models_dir, "towers", version)
            result = train_towers(
                triplets,
                base,
                out,
                config,
                dev=dev_data.retrieval,
                on_step=bars.on_step,
                teacher_margins=margins,
            )
        card = _base_card(base, inputs, data, mining, options)
        card.update(
            {
                "training_examples": {
                    "triplets": len(triplets),
                    "used": result.train_pairs,
                    "format": "(query, positive item text, hard negative item text)",
                },
                **_run_fields(result, config.to_dict(), seed, started, prepared),
                "loss": result.loss_name,
                "distillation": distillation,
                "towers_decision": result.decision,
                "dev_metrics": {
                    "subset_queries": len(dev_data.retrieval.queries),
                    "sub_corpus": len(dev_data.retrieval.corpus),
                    "before": result.dev_before,
                    "after": result.dev_after,
                },
            }
        )
        model = register(models_dir, "towers", version, card)
    except ShopsearchError as exc:
        raise fail(exc) from exc
    except (DatasetError, CatalogError) as exc:
        raise fail(exc) from exc
    if as_json:
        sys.stdout.write(json.dumps(model.card, indent=2) + "\n")
    else:
        _summary(model)
    _budget_warnings(model.card)


@train_app.command("reranker")
def train_reranker_command(
    homedepot_dir: HomedepotOption = DEFAULT_HOMEDEPOT_DIR,
    train: TrainOption = None,
    train_qrels: TrainQrelsOption = None,
    dev: DevOption = None,
    dev_qrels: DevQrelsOption = None,
    gain_offset: GainOffsetOption = 0.0,
    catalog: CatalogOption = None,
    id_field: IdFieldOption = "product_uid",
    title_field: TitleFieldOption = "product_title",
    index_dir: IndexDirOption = None,
    mining_model: MiningModelOption = None,
    models_dir: ModelsDirOption = None,
    base_model: Annotated[
        Path | None,
        typer.Option(
            help="Weights to start from (default: bundled MiniLM with a fresh head); a trained "
            "reranker directory continues its training, head included."
        ),
    ] = None,
    max_pairs: MaxPairsOption = None,
    max_steps: MaxStepsOption = None,
    max_minutes: MaxMinutesOption = DEFAULT_MAX_MINUTES,
    epochs: EpochsOption = 1,
    loss: Annotated[
        str,
        typer.Option(
            help="'lambda' (default): listwise LambdaLoss over each query's judged and mined "
            "products, the order nDCG measures; 'bce': pointwise binary cross-entropy on graded "
            "labels. On Home Depot dev (fine-tuned hybrid candidates) lambda reranks better: "
            "nDCG@10 0.4333 vs 0.4295 (RRF, w 0.5)."
        ),
    ] = "lambda",
    batch_size: Annotated[
        int, typer.Option(help="Pairs per step (lambda: whole queries packed up to this many).")
    ] = 32,
    learning_rate: Annotated[float, typer.Option(help="Peak learning rate.")] = 4e-5,
    max_length: Annotated[
        int | None, typer.Option(help="Word pieces per pair (default: p99 of the training pairs).")
    ] = None,
    hard_negatives: Annotated[int, typer.Option(help="Mined negatives per query.")] = 6,
    random_negatives: Annotated[int, typer.Option(help="Random catalog negatives per query.")] = 2,
    seed: SeedOption = 1234,
    device: DeviceOption = "auto",
    bf16: Bf16Option = "auto",
    dev_queries: DevQueriesOption = 150,
    rewrite: RewriteOption = True,
    keep_layers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Compress: keep this many transformer layers of --base-model (evenly "
            "spaced, the last always; indexer/training/compress.py). Start from a trained reranker "
            "and give it as --teacher too.",
        ),
    ] = None,
    teacher: Annotated[
        str | None,
        typer.Option(
            help="A trained reranker (reranker/<version> or a directory) whose scores are "
            "mixed into every training label (distillation); off by default."
        ),
    ] = None,
    teacher_weight: Annotated[
        float,
        typer.Option(
            min=0.0, max=1.0, help="Share of the teacher's score in each label (--teacher)."
        ),
    ] = 0.5,
    as_json: JsonOption = False,
) -> None:
    """Train the cross-encoder reranker (graded labels + mined and random negatives) and
    register it as ``reranker/<version>``; with --keep-layers and --teacher, a compressed
    reranker distilled from a trained one."""
    from indexer.training.reranker import RerankDevSet, RerankerTrainingConfig, train_reranker

    started = time.monotonic()
    bars = _Bars()
    models_dir = models_dir_setting(models_dir)
    try:
        config = RerankerTrainingConfig(
            loss=loss,  # type: ignore[arg-type]  # validated by the config
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            max_length=max_length,
            max_pairs=max_pairs,
            max_steps=max_steps,
            max_minutes=max_minutes,
            seed=seed,
            device=device,
            bf16=_resolve_bf16(bf16, device),
            keep_layers=keep_layers,
        )
        options = MiningOptions(
            hard_negatives=hard_negatives, random_negatives=random_negatives, seed=seed
        )
        base = base_model or default_model_path()
        teacher_path = resolve_model_option(teacher, models_dir)
        miner_path = resolve_model_option(mining_model, models_dir) or default_model_path()
        inputs = load_training_inputs(
            homedepot_dir=homedepot_dir,
            train=train,
            train_qrels=train_qrels,
            dev=dev,
            dev_qrels=dev_qrels,
            gain_offset=gain_offset,
            catalog=catalog,
            id_field=id_field,
            title_field=title_field,
        )
        if rewrite:
            inputs = rewrite_splits(inputs, base)
        version = new_version(models_dir, "reranker")
        with tempfile.TemporaryDirectory(prefix="shopsearch-mining-") as work, bars.progress:
            mining = _mining(
                inputs.products, index_dir, miner_path, models_dir, device, Path(work), bars
            )
            data, dev_data = _prepare(inputs, mining, options, bars, dev_queries)
            pairs = data.reranker_pairs()
            distillation: dict[str, Any] = {}
            if teacher_path is not None:
                pairs, distillation = _teacher_labels(
                    teacher_path, pairs, teacher_weight, device, bars
                )
            prepared = time.monotonic()
            rerank_dev = RerankDevSet(
                queries=dev_data.rerank_queries,
                texts=dev_data.rerank_texts,
                gains=dev_data.rerank_gains,
                judged=dev_data.rerank_judged,
            )
            out = staging_dir(models_dir, "reranker", version)
            result = train_reranker(pairs, base, out, config, dev=rerank_dev, on_step=bars.on_step)
        card = _base_card(base, inputs, data, mining, options)
        card.update(
            {
                "training_examples": {
                    "pairs": len(pairs),
                    "used": result.train_pairs,
                    "labels": result.label_stats,
                    "label_map": f"(grade - {data.grade_range[0]}) / "
                    f"({data.grade_range[1]} - {data.grade_range[0]}); negatives 0",
                },
                **_run_fields(result, config.to_dict(), seed, started, prepared),
                "loss": (
                    "LambdaLoss (NDCG-Loss2++, one list per query)"
                    if config.loss == "lambda"
                    else "BinaryCrossEntropyLoss (soft labels)"
                ),
                "max_length": result.max_length,
                "max_length_measurement": result.length_stats,
                "compression": {
                    "kept_layers": result.kept_layers,
                    "of_base_layers": layer_count(base),
                }
                if result.kept_layers
                else None,
                "distillation": distillation or None,
                "dev_metrics": {
                    "subset_queries": len(rerank_dev.queries),
                    "candidates": sum(len(t) for t in rerank_dev.texts),
                    "metric": "nDCG@10/MRR@10 over judged + mined candidates (unjudged = 0); "
                    "b.ndcg@10 over judged only",
                    "before": result.dev_before,
                    "after": result.dev_after,
                },
            }
        )
        model = register(models_dir, "reranker", version, card)
    except ShopsearchError as exc:
        raise fail(exc) from exc
    except (DatasetError, CatalogError) as exc:
        raise fail(exc) from exc
    if as_json:
        sys.stdout.write(json.dumps(model.card, indent=2) + "\n")
    else:
        _summary(model)
    _budget_warnings(model.card)


@models_app.command("list")
def models_list(
    models_dir: ModelsDirOption = None,
    kind: Annotated[str | None, typer.Option(help=f"Only this kind: {', '.join(KINDS)}.")] = None,
) -> None:
    """List registered models, oldest first (``<kind>/latest`` is the last of its kind)."""
    models_dir = models_dir_setting(models_dir)
    try:
        models = list_models(models_dir, kind)
    except ShopsearchError as exc:
        raise fail(exc) from exc
    table = Table(title=f"models in {models_dir}")
    for col in ("spec", "created", "base", "dev after", "steps", "train s"):
        table.add_column(col)
    for m in models:
        card = m.card
        table.add_row(
            m.spec,
            str(card.get("created_at", "")),
            str(card.get("base_model", {}).get("id", "")),
            json.dumps(
                {k: round(v, 4) for k, v in card.get("dev_metrics", {}).get("after", {}).items()}
            ),
            str(card.get("steps", "")),
            str(card.get("wall_time_s", {}).get("training", "")),
        )
    Console().print(table)


@models_app.command("show")
def models_show(
    spec: Annotated[
        str, typer.Argument(help=f"<kind>/<version>, <kind>/{LATEST} or a model directory.")
    ],
    models_dir: ModelsDirOption = None,
) -> None:
    """Print a model's card (JSON)."""
    models_dir = models_dir_setting(models_dir)
    try:
        card = load_card(resolve_model(spec, models_dir))
    except ShopsearchError as exc:
        raise fail(exc) from exc
    sys.stdout.write(json.dumps(card, indent=2) + "\n")
