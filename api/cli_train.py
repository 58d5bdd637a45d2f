"""``shopsearch train towers|reranker`` and ``shopsearch models list|show``.

Two typer sub-apps, mounted by :mod:`api.cli`::

    app.add_typer(train_app, name="train")
    app.add_typer(models_app, name="models")

The commands parse options, run a training job of :mod:`indexer.training.pipeline`
(load the judged queries and the catalog, mine negatives from a snapshot or an in-memory
base index, train, register the model with its card) with progress bars, print the card
or a summary, and turn errors into exit status 1 (a bad option value: 2).

``build`` and ``serve`` take a model spec through :func:`resolve_model_option`
(``towers/latest``, ``reranker/<version>`` or a directory). Comparing the trained
models on the dev split is ``shopsearch eval`` (``--compare-index-dir``, ``--reranker``).

The registry is ``--models-dir`` when given, else the ``models_dir`` setting
(``$SHOPSEARCH_MODELS_DIR``, default ``var/models``): :func:`models_dir_setting`, the one
place every command that reads or writes the registry resolves it, so a model trained
with the variable set is where ``serve --model towers/latest`` looks with it set.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from shopsearch.api.cli_common import (
    Bars,
    ModelsDirOption,
    StageLog,
    console,
    fail,
    models_dir_setting,
    resolve_model_option,
)
from shopsearch.indexer.catalog import CatalogError
from shopsearch.indexer.judgments import DatasetError
from shopsearch.indexer.training.cards import summary_rows
from shopsearch.indexer.training.inputs import DEFAULT_HOMEDEPOT_DIR, InputFiles
from shopsearch.indexer.training.loop import TrainingProgress
from shopsearch.indexer.training.mined_data import MiningOptions
from shopsearch.indexer.training.pipeline import (
    JobOptions,
    RerankerJob,
    TowersJob,
    run_reranker_job,
    run_towers_job,
)
from shopsearch.indexer.training.reranker import RerankerTrainingConfig
from shopsearch.indexer.training.towers import (
    DEFAULT_DISTILL_WEIGHT,
    TOWER_LAYOUTS,
    TowerTrainingConfig,
)
from shopsearch.retrieval.encoders import default_model_path
from shopsearch.retrieval.model_registry import (
    KINDS,
    LATEST,
    RegisteredModel,
    list_models,
    load_card,
    resolve_model,
)
from shopsearch.retrieval.types import ShopsearchError

__all__ = ["models_app", "train_app"]

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
    from shopsearch.indexer.training.loop import bf16_supported
    from shopsearch.retrieval.encoders import resolve_device

    if value not in ("auto", "on", "off"):
        raise typer.BadParameter(f"--bf16 must be auto, on or off, got {value!r}")
    if value == "auto":
        return bf16_supported(resolve_device(device))
    return value == "on"


class _Bars(Bars):
    """:class:`api.cli_common.Bars` plus a training-step callback (loss on the bar)."""

    def __init__(self) -> None:
        super().__init__(info=True)
        self._tasks: dict[str, Any] = {}
        self._stages: dict[str, StageLog | None] = {}

    def on_step(self, p: TrainingProgress) -> None:
        task = self._tasks.get(p.phase)
        if task is None:
            task = self.progress.add_task(p.phase, total=p.total, info="")
            self._tasks[p.phase] = task
            self._stages[p.phase] = self._stage_log(p.phase, p.total)
        self.progress.update(task, completed=p.step, total=p.total, info=f"loss {p.loss:.4f}")
        stage = self._stages[p.phase]
        if stage is not None:
            stage.advance(p.step - stage.done)


# -- options -------------------------------------------------------------------------

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


# -- output --------------------------------------------------------------------------


def _summary(model: RegisteredModel) -> None:
    table = Table(title=f"{model.spec}  ({model.path})", show_header=False)
    for label, value in summary_rows(model.card):
        table.add_row(label, value)
    table.add_row("loss curve", str(model.path / "loss_curve.png"))
    Console().print(table)


def _budget_warnings(card: dict[str, Any]) -> None:
    """Repeat the budget's warnings last, after the progress bars and the card, where
    the user reads (a partial epoch must not pass unnoticed in the scrollback)."""
    for warning in (card.get("budget") or {}).get("warnings", []):
        console.print(f"[bold yellow]warning:[/] {warning}")


def _report(model: RegisteredModel, as_json: bool) -> None:
    """The card as JSON on stdout (``--json``) or a summary table; the budget's warnings last."""
    if as_json:
        sys.stdout.write(json.dumps(model.card, indent=2) + "\n")
    else:
        _summary(model)
    _budget_warnings(model.card)


# -- commands ------------------------------------------------------------------------


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
        mining = MiningOptions(positive_threshold=positive_threshold, seed=seed)
        base = base_model or default_model_path()
        miner = resolve_model_option(mining_model, models_dir) or base
        teacher = resolve_model_option(distill_from, models_dir)
        files = InputFiles(
            homedepot_dir, train, train_qrels, dev, dev_qrels, gain_offset, catalog, id_field,
            title_field,
        )  # fmt: skip
        options = JobOptions(
            models_dir=models_dir, base_model=base, mining_model=miner, files=files,
            index_dir=index_dir, mining=mining, dev_queries=dev_queries, rewrite=rewrite,
            device=device,
        )  # fmt: skip
        with bars.progress:
            model = run_towers_job(
                TowersJob(options, config, teacher), progress=bars, on_step=bars.on_step
            )
    except (ShopsearchError, DatasetError, CatalogError) as exc:
        raise fail(exc) from exc
    _report(model, as_json)


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
        mining = MiningOptions(
            hard_negatives=hard_negatives, random_negatives=random_negatives, seed=seed
        )
        base = base_model or default_model_path()
        teacher_path = resolve_model_option(teacher, models_dir)
        miner = resolve_model_option(mining_model, models_dir) or default_model_path()
        files = InputFiles(
            homedepot_dir, train, train_qrels, dev, dev_qrels, gain_offset, catalog, id_field,
            title_field,
        )  # fmt: skip
        options = JobOptions(
            models_dir=models_dir, base_model=base, mining_model=miner, files=files,
            index_dir=index_dir, mining=mining, dev_queries=dev_queries, rewrite=rewrite,
            device=device,
        )  # fmt: skip
        job = RerankerJob(options, config, teacher_path, teacher_weight)
        with bars.progress:
            model = run_reranker_job(job, progress=bars, on_step=bars.on_step)
    except (ShopsearchError, DatasetError, CatalogError) as exc:
        raise fail(exc) from exc
    _report(model, as_json)


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
