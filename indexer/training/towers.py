"""Fine-tuning of the two towers (query and item encoders) from the base MiniLM.

Training takes prepared examples, ``(query, positive item text, hard negative item
text)`` triplets (see ``indexer.training.mined_data``), and optimises
MultipleNegativesRankingLoss: each query must score its positive above every other item
text in the batch (in-batch negatives) and above its own hard negative. Batches never
hold the same text twice, so an in-batch "negative" is never another copy of a positive.
``mini_batch_size`` switches to the cached (GradCache) variant, which allows batches
larger than memory would hold; on a CPU with plenty of memory the plain loss is faster.

Distillation (issue item 7): given a trained cross-encoder's margin for each triplet
(``indexer.training.distill.teacher_margins``), the loss adds ``distill_weight`` x MarginMSELoss,
which fits ``cos(q, pos) - cos(q, neg)`` to the teacher's margin. The teacher says how
much better the positive is, not only that it is.

Two layouts of the towers are possible:

- ``shared``: one encoder for queries and items (the base model's layout);
- ``separate``: a sentence-transformers ``Router`` with a query tower and an item tower,
  both started from the base weights. The model directory stays one unit (one checksum),
  so serving's check that query and item towers match still holds.

``towers="auto"`` decides by measurement: both layouts are trained for the same pilot
steps on the same batches with the same seed, scored on the dev subset, and the better
one (by nDCG@10; ties go to ``shared``, the smaller model) is trained on from where its
pilot stopped. The decision and both pilot scores are returned for the model card.

Budgets: ``max_pairs`` (training triplets used), ``epochs``, ``max_steps`` and
``max_minutes``, as in every trainer (:mod:`indexer.training.budget`): ``max_steps`` makes
a run deterministic for a given seed, data and library versions; under ``max_minutes``
the learning-rate schedule is shortened to the steps that fit, with a WARNING, and at the
deadline training stops after the current step, evaluates and saves. The loop itself,
budget report ("partial epoch") included, is :func:`indexer.training.loop.run_loop`; this
module supplies the batches, the loss and the dev measurement. The GPU is used when
present.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import numpy.typing as npt

from shopsearch.indexer.training.budget import Deadline, TrainingBudget, TrainingError
from shopsearch.indexer.training.dev_metrics import RetrievalDevSet, retrieval_metrics
from shopsearch.indexer.training.loop import (
    Optimisation,
    StepCallback,
    TrainingProgress,
    TrainingRun,
    run_loop,
    save_loss_curve,
    seed_everything,
    start_budget,
)
from shopsearch.retrieval.encoders import ModelError, resolve_device

__all__ = [
    "DEFAULT_DISTILL_WEIGHT",
    "TOWER_LAYOUTS",
    "TowerTrainingConfig",
    "TowerTrainingResult",
    "TrainingError",
    "no_duplicate_batches",
    "train_towers",
]

log = logging.getLogger(__name__)


#: Layouts of the two towers; ``auto`` measures ``shared`` against ``separate``.
TOWER_LAYOUTS: tuple[str, ...] = ("shared", "separate", "auto")
Layout = Literal["shared", "separate", "auto"]

#: Weight of margin-MSE against MultipleNegativesRankingLoss in distillation. The MSE is
#: in cosine units (margins of at most 2) while MNRL's logits are cosine x ``scale`` 20,
#: so the term needs a weight of this order to move the towers at all.
DEFAULT_DISTILL_WEIGHT = 10.0


def no_duplicate_batches(
    keys: Sequence[Sequence[str]], batch_size: int, rng: np.random.Generator
) -> list[list[int]]:
    """Shuffle item indices into batches in which no key appears twice.

    ``keys[i]`` are the strings item ``i`` must not share with another item of its batch
    (its query and item texts). A last batch of fewer than 2 items is dropped.
    """
    remaining = [int(i) for i in rng.permutation(len(keys))]
    batches: list[list[int]] = []
    while remaining:
        batch: list[int] = []
        used: set[str] = set()
        rest: list[int] = []
        for position, i in enumerate(remaining):
            if len(batch) == batch_size:
                rest.extend(remaining[position:])
                break
            if used.isdisjoint(keys[i]):
                batch.append(i)
                used.update(keys[i])
            else:
                rest.append(i)
        remaining = rest
        if len(batch) >= 2:
            batches.append(batch)
        elif len(batch) < 2 and not rest:
            break
    return batches


def _evaluate(model: Any, dev: RetrievalDevSet, batch_size: int = 128) -> dict[str, float]:
    q = model.encode_query(
        dev.queries, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True
    )
    c = model.encode_document(
        dev.corpus, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True
    )
    return retrieval_metrics(np.asarray(q, np.float32), np.asarray(c, np.float32), dev)


@dataclass(frozen=True, slots=True)
class TowerTrainingConfig(TrainingBudget):
    """Hyper-parameters and budgets of :func:`train_towers` (all recorded on the card)."""

    towers: Layout = "separate"  # what the auto pilot chose on Home Depot dev (see the CLI)
    batch_size: int = 64
    scale: float = 20.0
    max_seq_length: int = 128
    mini_batch_size: int | None = None  # set: CachedMultipleNegativesRankingLoss
    pilot_steps: int = 30
    #: Weight of the margin-MSE term when teacher margins are given (distillation).
    distill_weight: float = DEFAULT_DISTILL_WEIGHT

    min_batch: ClassVar[int] = 2
    batch_hint: ClassVar[str] = " for in-batch negatives"

    def __post_init__(self) -> None:
        if self.towers not in TOWER_LAYOUTS:
            raise TrainingError(
                f"towers={self.towers!r}; valid layouts are: {', '.join(TOWER_LAYOUTS)}"
            )
        if self.distill_weight < 0:
            raise TrainingError(f"distill_weight must be >= 0, got {self.distill_weight}")
        # Explicit base call: zero-argument super() fails in slotted dataclasses.
        TrainingBudget.__post_init__(self)


@dataclass(kw_only=True)
class TowerTrainingResult(TrainingRun):
    """What :func:`train_towers` did: the run plus the layout, how it was decided, the loss."""

    layout: str
    decision: dict[str, Any]
    loss_name: str


def _load_base(base_model: Path, device: str, max_seq_length: int) -> Any:
    from sentence_transformers import SentenceTransformer

    try:
        model = SentenceTransformer(str(base_model), device=device, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load base model from {base_model}: {exc}") from exc
    model.max_seq_length = max_seq_length
    return model


def _separate_towers(shared: Any, device: str) -> Any:
    """A Router model with a query tower and an item tower, both copies of ``shared``."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Router

    query_modules = [copy.deepcopy(m) for m in shared]
    document_modules = [copy.deepcopy(m) for m in shared]
    router = Router.for_query_document(
        query_modules=query_modules, document_modules=document_modules
    )
    return SentenceTransformer(modules=[router], device=device)


class _Run:
    """One model with its loss and :class:`~indexer.training.loop.Optimisation`, stepping
    through given batches."""

    def __init__(
        self,
        model: Any,
        config: TowerTrainingConfig,
        planned_steps: int,
        device: str,
        *,
        distill: bool = False,
    ) -> None:
        from sentence_transformers.sentence_transformer.losses import (
            CachedMultipleNegativesRankingLoss,
            MarginMSELoss,
            MultipleNegativesRankingLoss,
        )
        from sentence_transformers.util import pairwise_cos_sim

        self.model = model
        self.device = device
        self.config = config
        if config.mini_batch_size:
            self.loss: Any = CachedMultipleNegativesRankingLoss(
                model,
                scale=config.scale,
                mini_batch_size=config.mini_batch_size,
                show_progress_bar=False,
            )
        else:
            self.loss = MultipleNegativesRankingLoss(model, scale=config.scale)
        # Distillation: the margin cos(q, pos) - cos(q, neg) is fitted to the teacher's.
        self.margin_loss: Any = (
            MarginMSELoss(model, similarity_fct=pairwise_cos_sim) if distill else None
        )
        self.optimisation = Optimisation(model, config, planned_steps, device)

    def _features(self, texts: list[str], task: str) -> dict[str, Any]:
        from sentence_transformers.util import batch_to_device

        return dict(batch_to_device(self.model.preprocess(texts, task=task), self.model.device))

    def step(
        self, triplets: Sequence[tuple[str, str, str]], margins: Sequence[float] | None = None
    ) -> float:
        """One optimisation step; ``margins`` (the teacher's, aligned with ``triplets``)
        add the margin-MSE term. Returns the step's loss."""
        import torch
        from sentence_transformers.base.losses.merged_forward import embed_columns

        features = [
            self._features([t[0] for t in triplets], "query"),
            self._features([t[1] for t in triplets], "document"),
            self._features([t[2] for t in triplets], "document"),
        ]

        def loss() -> Any:
            if self.margin_loss is None or margins is None:
                return self.loss(features, None)
            # One forward pass feeds both losses.
            embeddings = embed_columns(self.model, features)
            target = torch.tensor(list(margins), dtype=torch.float32, device=self.device)
            return self.loss.compute_loss_from_embeddings(
                embeddings, None
            ) + self.config.distill_weight * self.margin_loss.compute_loss_from_embeddings(
                embeddings, target
            )

        return self.optimisation.step(loss)


def _margins_of(margins: Sequence[float] | None, batch: Sequence[int]) -> list[float] | None:
    """The teacher margins of ``batch``'s triplets (None without distillation)."""
    return None if margins is None else [margins[j] for j in batch]


def _epoch_batches(
    triplets: Sequence[tuple[str, str, str]], config: TowerTrainingConfig
) -> Iterator[list[list[int]]]:
    keys = [("q:" + q, "d:" + p, "d:" + n) for q, p, n in triplets]
    for epoch in range(config.epochs):
        yield no_duplicate_batches(
            keys, config.batch_size, np.random.default_rng([config.seed, epoch])
        )


def train_towers(
    triplets: Sequence[tuple[str, str, str]],
    base_model: Path,
    output_dir: Path,
    config: TowerTrainingConfig | None = None,
    *,
    dev: RetrievalDevSet | None = None,
    on_step: StepCallback | None = None,
    teacher_margins: Sequence[float] | npt.NDArray[np.float32] | None = None,
) -> TowerTrainingResult:
    """Fine-tune the towers from ``base_model`` on ``triplets`` and save them to ``output_dir``.

    ``triplets`` are ``(query, positive item text, negative item text)``. With
    ``teacher_margins`` (one per triplet: a cross-encoder's score of the positive minus
    its score of the negative, see ``indexer.training.distill``), the loss adds
    ``config.distill_weight`` x margin-MSE between the towers' cosine margin and the
    teacher's (distillation). With ``dev``,
    nDCG@10 and recall@100 on it are measured before training, after each epoch and at
    the end (and drive ``towers="auto"``). Saves a sentence-transformers directory and
    ``loss_curve.png`` into ``output_dir``.

    Raises:
        TrainingError: fewer than 2 triplets, ``towers="auto"`` without ``dev``, teacher
            margins not aligned with the triplets or combined with ``mini_batch_size``, or
            the budget ends before the first step.
        ModelError: the base model cannot be loaded.
    """
    config = config or TowerTrainingConfig()
    if len(triplets) < 2:
        raise TrainingError(f"need at least 2 training triplets, got {len(triplets)}")
    if config.towers == "auto" and dev is None:
        raise TrainingError(
            "towers='auto' measures on a dev set; pass dev or choose shared|separate"
        )
    if teacher_margins is not None:
        if len(teacher_margins) != len(triplets):
            raise TrainingError(
                f"{len(teacher_margins)} teacher margins for {len(triplets)} triplets; "
                "score every triplet (indexer.training.distill.teacher_margins)"
            )
        if config.mini_batch_size:
            raise TrainingError(
                "distillation runs with the plain MNRL loss; leave mini_batch_size unset"
            )
    device = resolve_device(config.device)
    deadline = Deadline(config.max_minutes)
    seed_everything(config.seed)
    rng = np.random.default_rng(config.seed)
    chosen: Sequence[int] = range(len(triplets))
    if config.max_pairs is not None and len(triplets) > config.max_pairs:
        chosen = sorted(rng.choice(len(triplets), config.max_pairs, replace=False).tolist())
    pool = [triplets[i] for i in chosen]
    margins = None if teacher_margins is None else [float(teacher_margins[i]) for i in chosen]
    distill = margins is not None
    epoch_plans = list(_epoch_batches(pool, config))
    planned = sum(len(b) for b in epoch_plans)
    if planned == 0:
        raise TrainingError(
            f"{len(pool)} triplets make no batch of >= 2 distinct texts; add examples"
        )
    log.info(
        "training towers (%s) on %d triplets: %d epochs x %d steps of %d, device %s",
        config.towers,
        len(pool),
        config.epochs,
        len(epoch_plans[0]),
        config.batch_size,
        device,
    )
    base = _load_base(base_model, device, config.max_seq_length)
    budget, dev_before = start_budget(
        config,
        epoch_plans,
        deadline,
        evaluate=None if dev is None else lambda: _evaluate(base, dev),
        logger=log,
    )

    pilot_losses: list[float] = []
    decision: dict[str, Any]
    if config.towers == "auto" and dev is not None:
        run, pilot_losses, decision = _pilot(
            base, pool, epoch_plans, margins, config, budget.planned, dev, device, on_step
        )
    else:
        seed_everything(config.seed)
        model = base if config.towers == "shared" else _separate_towers(base, device)
        run = _Run(model, config, budget.planned, device, distill=distill)
        decision = {
            "layout": config.towers,
            "how": "given by --towers (default separate: what the auto pilot chose on the "
            "Home Depot dev split, card of 20261129T055606Z)",
        }
    layout = decision["layout"]

    loop = run_loop(
        epoch_plans,
        lambda batch: run.step([pool[j] for j in batch], _margins_of(margins, batch)),
        budget=budget,
        schedule=run.optimisation.schedule,
        deadline=deadline,
        evaluate=(lambda: {}) if dev is None else lambda: _evaluate(run.model, dev),
        size=len,
        on_step=on_step,
        done_losses=pilot_losses,
        logger=log,
    )

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    run.model.save(str(output_dir))
    loss_name = type(run.loss).__name__
    if distill:
        loss_name += f" + {config.distill_weight:g} x MarginMSELoss (teacher margins)"
    marks = [(decision["pilot_steps"], f"pilot end: {layout}")] if "pilot_steps" in decision else []
    curve = save_loss_curve(
        loop.losses,
        output_dir / "loss_curve.png",
        title=f"towers ({layout}) - {loss_name}",
        epoch_ends=[e.steps for e in loop.epochs[:-1]],
        marks=marks,
    )
    result = TowerTrainingResult(
        output_dir=output_dir,
        layout=layout,
        decision=decision,
        losses=loop.losses,
        epochs=loop.epochs,
        dev_before=dev_before,
        dev_after=loop.dev_after,
        steps=loop.steps,
        planned_steps=planned,
        pairs_seen=loop.pairs_seen,
        train_pairs=len(pool),
        stopped_by=loop.stopped_by,
        wall_s=deadline.elapsed(),
        device=device,
        budget=loop.budget,
        loss_name=loss_name,
        loss_curve=curve,
    )
    log.info(
        "towers trained: %d steps, %s, %.0f s, dev %s -> %s",
        result.steps,
        result.stopped_by,
        result.wall_s,
        dev_before,
        result.dev_after,
    )
    return result


def _pilot(
    base: Any,
    pool: Sequence[tuple[str, str, str]],
    epoch_plans: Sequence[Sequence[list[int]]],
    margins: Sequence[float] | None,
    config: TowerTrainingConfig,
    planned: int,
    dev: RetrievalDevSet,
    device: str,
    on_step: StepCallback | None,
) -> tuple[_Run, list[float], dict[str, Any]]:
    """``towers="auto"``: both layouts trained on the run's first batches with the same
    seed, scored on dev; returns the better run (ties go to ``shared``), its pilot
    losses, and the decision for the model card."""
    flat = [batch for batches in epoch_plans for batch in batches]
    pilot = max(1, min(config.pilot_steps, planned // 4))
    scores: dict[str, dict[str, float]] = {}
    runs: dict[str, _Run] = {}
    pilot_losses: dict[str, list[float]] = {}
    for layout in ("shared", "separate"):
        seed_everything(config.seed)
        model = copy.deepcopy(base) if layout == "shared" else _separate_towers(base, device)
        run = _Run(model, config, planned, device, distill=margins is not None)
        pilot_losses[layout] = []
        for i in range(pilot):
            loss = run.step([pool[j] for j in flat[i]], _margins_of(margins, flat[i]))
            pilot_losses[layout].append(loss)
            if on_step:
                on_step(TrainingProgress(f"pilot {layout}", i + 1, pilot, loss))
        scores[layout] = _evaluate(model, dev)
        runs[layout] = run
        log.info("pilot %s after %d steps: dev %s", layout, pilot, scores[layout])
    winner = "separate" if scores["separate"]["ndcg@10"] > scores["shared"]["ndcg@10"] else "shared"
    decision = {
        "layout": winner,
        "how": f"both layouts trained {pilot} steps on the same batches (seed {config.seed}); "
        "higher dev nDCG@10 wins, ties go to shared",
        "pilot_steps": pilot,
        "pilot_dev": scores,
    }
    return runs[winner], pilot_losses[winner], decision
