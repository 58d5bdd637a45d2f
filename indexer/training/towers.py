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
``max_minutes`` (:func:`plan_steps`). ``max_steps`` bounds the optimisation steps whatever
the machine's speed, so a run with it (and without a tighter ``max_minutes``) is
deterministic for a given seed, data and library versions. Under ``max_minutes`` the
speed is measured over the 20 steps after the first (which pays one-off costs); when the
planned steps do not fit, the learning-rate schedule is shortened to the steps that fit
and a WARNING says so; at the deadline training stops after the current step, evaluates
and saves. What bounded the run, and the fraction of an epoch it trained, is recorded
(:func:`budget_report`, the model card's ``budget``), with a "partial epoch" warning when
it trained less than one epoch. The GPU is used when present.

This module also holds the small training utilities the reranker trainer shares
(seeding, schedule, deadline, loss-curve plot, nDCG).
"""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import numpy.typing as npt

from retrieval.encoders import ModelError, resolve_device
from retrieval.types import ShopsearchError

__all__ = [
    "PLAN_AFTER_STEPS",
    "TOWER_LAYOUTS",
    "Deadline",
    "EpochLog",
    "LinearWarmupSchedule",
    "RetrievalDevSet",
    "StepBudget",
    "StepCallback",
    "StepPlan",
    "StopReason",
    "TowerTrainingConfig",
    "TowerTrainingResult",
    "TrainingBudget",
    "TrainingError",
    "TrainingProgress",
    "TrainingRun",
    "autocast",
    "bf16_supported",
    "budget_report",
    "make_adamw",
    "ndcg_at_k",
    "no_duplicate_batches",
    "plan_steps",
    "retrieval_metrics",
    "save_loss_curve",
    "seed_everything",
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


class TrainingError(ShopsearchError):
    """Training cannot start or run with the given examples and settings."""


# -- shared training utilities ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TrainingProgress:
    """What a step callback sees: the phase (``"pilot shared"``, ``"train"``...), the step
    within it, the planned steps of the phase, and the step's loss."""

    phase: str
    step: int
    total: int
    loss: float


#: Called after every optimisation step.
StepCallback = Callable[[TrainingProgress], None]


@dataclass(slots=True)
class EpochLog:
    """One line of the per-epoch log (also written to the model card)."""

    epoch: int
    steps: int
    pairs_seen: int
    mean_loss: float
    dev: dict[str, float]
    elapsed_s: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) generators."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Deadline:
    """A wall-clock budget: ``expired()`` once ``minutes`` have passed (never when None)."""

    def __init__(self, minutes: float | None, *, reserve_s: float = 0.0) -> None:
        self.start = time.monotonic()
        self.end = None if minutes is None else self.start + minutes * 60.0 - reserve_s

    def remaining(self) -> float:
        return math.inf if self.end is None else self.end - time.monotonic()

    def expired(self) -> bool:
        return self.remaining() <= 0

    def elapsed(self) -> float:
        return time.monotonic() - self.start


#: What ended a run's training: all its epochs, ``max_steps``, or ``max_minutes``.
StopReason = Literal["epochs", "steps", "time"]

#: Steps timed, after the first, to measure the speed a time budget is planned from.
PLAN_AFTER_STEPS = 20


@dataclass(frozen=True, slots=True)
class StepPlan:
    """The optimisation steps a run plans and what bounds them (:func:`plan_steps`)."""

    #: Steps the run will take at most.
    planned_steps: int
    #: Steps of one epoch (of the first, when epochs differ a little).
    epoch_steps: int
    epochs: int
    #: Steps of all the epochs: what the data asks for.
    data_steps: int
    #: What sets ``planned_steps``: the epochs, ``max_steps``, or the time budget.
    bound: StopReason
    #: The measured speed the time budget was planned from (None: not measured).
    seconds_per_step: float | None = None
    #: Set when the time budget cut the plan short: what to tell the user.
    warning: str | None = None

    @property
    def fraction_of_epoch(self) -> float:
        """``planned_steps`` in epochs (0.2: a fifth of one epoch; 2.0: two epochs)."""
        return self.planned_steps / self.epoch_steps


def plan_steps(
    epoch_steps: int,
    epochs: int = 1,
    *,
    data_steps: int | None = None,
    max_steps: int | None = None,
    seconds_per_step: float | None = None,
    seconds_left: float | None = None,
    steps_done: int = 0,
) -> StepPlan:
    """How many steps a run plans: all ``epochs`` of ``epoch_steps`` (or ``data_steps``
    when the epochs differ in length), at most ``max_steps``, and, once the speed is
    measured (``seconds_per_step``), no more than ``steps_done`` plus the steps that fit
    in ``seconds_left`` (never fewer than ``steps_done``: those are taken). A pure function.

    A plan cut short by the time budget carries a ``warning`` saying how much of an
    epoch it trains and how to get a run of a fixed length (``--max-steps``):

    >>> plan = plan_steps(376, seconds_per_step=10.0, seconds_left=570.0, steps_done=21)
    >>> plan.planned_steps, plan.bound, round(plan.fraction_of_epoch, 3)
    (78, 'time', 0.207)

    Raises:
        TrainingError: ``epoch_steps`` or ``epochs`` below 1.
    """
    if epoch_steps < 1 or epochs < 1:
        raise TrainingError(
            f"epoch_steps must be >= 1, got {epoch_steps}, and epochs >= 1, got {epochs}"
        )
    total = data_steps if data_steps is not None else epoch_steps * epochs
    planned = total
    bound: StopReason = "epochs"
    if max_steps is not None and max_steps < planned:
        planned, bound = max_steps, "steps"
    if seconds_per_step is None or seconds_left is None or seconds_per_step <= 0:
        return StepPlan(planned, epoch_steps, epochs, total, bound)
    fit = steps_done + max(int(seconds_left / seconds_per_step), 0)
    if fit >= planned:
        return StepPlan(planned, epoch_steps, epochs, total, bound, seconds_per_step)
    wanted = f"--max-steps {planned}" if bound == "steps" else f"{epochs} epoch(s)"
    fitted = max(fit, steps_done, 1)
    warning = (
        f"time budget: {seconds_per_step:.2f} s a step measured, so only {fitted} of "
        f"{planned} steps ({wanted}) fit in --max-minutes; the learning-rate schedule is "
        "shortened to end there"
    )
    if fitted < epoch_steps:
        warning += f"; partial epoch: {fitted / epoch_steps:.0%} of one epoch will be trained"
    planned = fitted
    warning += (
        ". For a run whose length does not depend on the machine's speed give --max-steps N "
        "(and a --max-minutes it fits in); else raise --max-minutes or use a quieter machine"
    )
    return StepPlan(planned, epoch_steps, epochs, total, "time", seconds_per_step, warning)


def budget_report(plan: StepPlan, steps: int, stopped_by: StopReason) -> dict[str, Any]:
    """What the model card records of a run's budget (its ``budget`` field): the plan,
    the ``steps`` taken, the fraction of an epoch they are, what stopped the run, and
    ``warnings``: "partial epoch" when it trained less than one epoch. A pure function.
    """
    fraction = steps / plan.epoch_steps
    warnings = []
    if fraction < 1:
        why = {
            "time": "the time budget ran out (--max-minutes; see seconds_per_step)",
            "steps": "--max-steps ended it",
            "epochs": "the data ended",
        }[stopped_by]
        warnings.append(
            f"partial epoch: {steps} of {plan.epoch_steps} steps of one epoch were trained "
            f"({fraction:.0%}): {why}. Part of the training data was never seen; give "
            f"--max-steps {plan.epoch_steps * plan.epochs} (and a --max-minutes that "
            "fits it) to train every epoch"
        )
    return {
        "planned_steps": plan.planned_steps,
        "data_steps": plan.data_steps,
        "epoch_steps": plan.epoch_steps,
        "epochs": plan.epochs,
        "steps": steps,
        "fraction_of_epoch": round(fraction, 3),
        "stopped_by": stopped_by,
        "seconds_per_step": (
            None if plan.seconds_per_step is None else round(plan.seconds_per_step, 3)
        ),
        "warnings": warnings,
    }


class StepBudget:
    """A run's :class:`StepPlan` as it trains, shared by the trainers' loops.

    Starts from the data and ``max_steps``; under a deadline, times the
    :data:`PLAN_AFTER_STEPS` steps after the first (which pays one-off costs: allocation,
    lazy initialisation) and plans again from that speed, logging a WARNING when the time
    budget cuts the plan. Remembers what stopped the run.
    """

    def __init__(
        self,
        config: TrainingBudget,
        epoch_steps: int,
        deadline: Deadline,
        *,
        data_steps: int | None = None,
        reserve_s: float = 0.0,
        logger: logging.Logger = log,
    ) -> None:
        self._config = config
        self._deadline = deadline
        self._reserve_s = reserve_s
        self._log = logger
        self.plan = plan_steps(
            epoch_steps, config.epochs, data_steps=data_steps, max_steps=config.max_steps
        )
        self._timed_from: tuple[int, float] | None = None
        self._measured = False
        self.stopped_by: StopReason = "epochs"

    @property
    def planned(self) -> int:
        """The step the run stops after (unless the data or the deadline ends it first)."""
        return self.plan.planned_steps

    def before_step(self) -> bool:
        """False, and ``stopped_by`` ``"time"``, once the deadline has passed."""
        if self._deadline.expired():
            self.stopped_by = "time"
            return False
        return True

    def after_step(self, steps: int) -> bool:
        """Account for a finished step (``steps`` taken in all, pilots included). Returns
        False, with ``stopped_by`` set, when the plan ends short of the data."""
        if self._deadline.end is not None and not self._measured:
            now = time.monotonic()
            if self._timed_from is None:
                self._timed_from = (steps, now)
            elif steps - self._timed_from[0] >= PLAN_AFTER_STEPS:
                self._measured = True
                self.plan = plan_steps(
                    self.plan.epoch_steps,
                    self.plan.epochs,
                    data_steps=self.plan.data_steps,
                    max_steps=self._config.max_steps,
                    seconds_per_step=(now - self._timed_from[1]) / (steps - self._timed_from[0]),
                    seconds_left=self._deadline.remaining() - self._reserve_s,
                    steps_done=steps,
                )
                if self.plan.warning:
                    self._log.warning("%s", self.plan.warning)
        if steps >= self.plan.planned_steps and self.plan.planned_steps < self.plan.data_steps:
            self.stopped_by = self.plan.bound
            return False
        return True

    def report(self, steps: int) -> dict[str, Any]:
        """:func:`budget_report` of the run, its warnings logged as WARNINGs."""
        report = budget_report(self.plan, steps, self.stopped_by)
        for warning in report["warnings"]:
            self._log.warning("%s", warning)
        return report


class LinearWarmupSchedule:
    """Linear warm-up over ``warmup_ratio`` of the planned steps, then linear decay to 0.

    ``planned`` may be lowered mid-run (:meth:`shorten`) when the budget will not allow
    all steps, so the learning rate still reaches 0 at the last step that fits.
    """

    def __init__(self, planned: int, warmup_ratio: float) -> None:
        self.planned = max(planned, 1)
        self.warmup = max(round(self.planned * warmup_ratio), 1)

    def shorten(self, planned: int) -> None:
        self.planned = max(min(self.planned, planned), self.warmup + 1)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        return max(0.0, (self.planned - step) / max(self.planned - self.warmup, 1))


def make_adamw(model: Any, learning_rate: float, weight_decay: float) -> Any:
    """AdamW without weight decay on biases and LayerNorm weights; the fused kernel when
    the device supports it (several times faster per step on CPU)."""
    import torch

    decay: list[Any] = []
    no_decay: list[Any] = []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if name.endswith("bias") or "LayerNorm" in name else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    try:
        return torch.optim.AdamW(groups, lr=learning_rate, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, lr=learning_rate)


def bf16_supported(device: str) -> bool:
    """Whether bfloat16 autocast runs natively on ``device``: a CUDA GPU that supports it,
    or a CPU whose flags (Linux ``/proc/cpuinfo``) include AVX512-BF16 or AMX-BF16.

    Measured on this project's 2-core AMD EPYC (Zen 4, avx512_bf16): a MiniLM training
    step over 192 titles takes 3.5 s in bf16 against 4.3-5.2 s in float32. Without these
    instructions bf16 does not run natively, so ``--bf16 auto`` leaves it off."""
    import torch

    from retrieval.onnx_export import cpu_flags

    if device.startswith("cuda"):
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def autocast(device: str, bf16: bool) -> AbstractContextManager[Any]:
    """bfloat16 autocast on ``device`` when ``bf16``, else a no-op context."""
    import torch

    if not bf16:
        return nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)


def save_loss_curve(
    losses: Sequence[float],
    path: Path,
    *,
    title: str,
    epoch_ends: Sequence[int] = (),
    marks: Sequence[tuple[int, str]] = (),
) -> Path:
    """Plot per-step losses (and a moving average) to a PNG; returns ``path``.

    Uses matplotlib's object API (no global pyplot state), safe in threads and servers.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    steps = np.arange(1, len(losses) + 1)
    ax.plot(steps, losses, color="0.7", linewidth=0.8, label="loss per step")
    if len(losses) >= 5:
        window = max(5, len(losses) // 30)
        kernel = np.ones(window) / window
        smooth = np.convolve(np.asarray(losses, dtype=float), kernel, mode="valid")
        ax.plot(steps[window - 1 :], smooth, color="C0", linewidth=1.8, label=f"mean of {window}")
    for end in epoch_ends:
        ax.axvline(end, color="C1", linestyle="--", linewidth=0.8)
    for step, label in marks:
        ax.axvline(step, color="C2", linestyle=":", linewidth=0.8)
        ax.annotate(label, (step, ax.get_ylim()[1]), fontsize=8, va="top", rotation=90)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path


def ndcg_at_k(ranked_gains: Sequence[float], all_gains: Sequence[float], k: int = 10) -> float:
    """Linear-gain nDCG@k: ``ranked_gains`` in the system's order, ``all_gains`` every
    relevant item's gain (for the ideal DCG). 0.0 when there is no positive gain.

    >>> round(ndcg_at_k([0.0, 2.0], [2.0], 10), 4)
    0.6309
    """
    ideal = sorted((g for g in all_gains if g > 0), reverse=True)[:k]
    if not ideal:
        return 0.0
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = float(
        np.dot(
            np.asarray(list(ranked_gains)[:k], dtype=float), discounts[: min(k, len(ranked_gains))]
        )
    )
    idcg = float(np.dot(np.asarray(ideal, dtype=float), discounts[: len(ideal)]))
    return dcg / idcg


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


# -- dev measurement ----------------------------------------------------------------


@dataclass(frozen=True)
class RetrievalDevSet:
    """Dev queries ranked against a sub-corpus of item texts.

    ``gains[i]`` maps corpus rows to the nDCG gain of query ``i`` (positive gains only);
    ``relevant[i]`` are its relevant rows (for recall).
    """

    queries: list[str]
    corpus: list[str]
    gains: list[dict[int, float]]
    relevant: list[frozenset[int]]

    def __post_init__(self) -> None:
        if not (len(self.queries) == len(self.gains) == len(self.relevant)):
            raise TrainingError(
                f"dev set: {len(self.queries)} queries, {len(self.gains)} gain maps and "
                f"{len(self.relevant)} relevant sets; pass one of each per query"
            )


def retrieval_metrics(
    query_vectors: npt.NDArray[np.float32],
    corpus_vectors: npt.NDArray[np.float32],
    dev: RetrievalDevSet,
    *,
    ndcg_k: int = 10,
    recall_k: int = 100,
) -> dict[str, float]:
    """nDCG@``ndcg_k`` and recall@``recall_k`` (mean over queries with a relevant row) of
    exact inner-product search; pure NumPy."""
    k = min(max(ndcg_k, recall_k), len(corpus_vectors))
    scores = query_vectors @ corpus_vectors.T
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    ndcgs, recalls = [], []
    for i in range(len(dev.queries)):
        order = top[i][np.argsort(-scores[i, top[i]], kind="stable")]
        gains = dev.gains[i]
        if gains:
            ranked = [gains.get(int(r), 0.0) for r in order[:ndcg_k]]
            ndcgs.append(ndcg_at_k(ranked, list(gains.values()), ndcg_k))
        if dev.relevant[i]:
            found = len(dev.relevant[i].intersection(int(r) for r in order[:recall_k]))
            recalls.append(found / len(dev.relevant[i]))
    return {
        f"ndcg@{ndcg_k}": float(np.mean(ndcgs)) if ndcgs else 0.0,
        f"recall@{recall_k}": float(np.mean(recalls)) if recalls else 0.0,
    }


def _evaluate(model: Any, dev: RetrievalDevSet, batch_size: int = 128) -> dict[str, float]:
    q = model.encode_query(
        dev.queries, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True
    )
    c = model.encode_document(
        dev.corpus, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True
    )
    return retrieval_metrics(np.asarray(q, np.float32), np.asarray(c, np.float32), dev)


# -- training -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TrainingBudget:
    """What both trainers take: optimiser settings, budgets (``max_pairs``, ``epochs``,
    ``max_minutes``), precision, seed and device. Recorded on the model card."""

    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 5e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    max_pairs: int | None = None
    #: At most this many optimisation steps (independent of the machine's speed).
    max_steps: int | None = None
    max_minutes: float | None = None
    bf16: bool = False  # bfloat16 autocast (CPUs with AVX512-BF16/AMX, recent GPUs)
    seed: int = 1234
    device: str = "auto"

    #: The smallest ``batch_size`` and ``max_pairs`` the loss can learn from.
    min_batch: ClassVar[int] = 1
    batch_hint: ClassVar[str] = ""

    def __post_init__(self) -> None:
        if self.batch_size < self.min_batch:
            raise TrainingError(
                f"batch_size must be >= {self.min_batch}{self.batch_hint}, got {self.batch_size}"
            )
        if self.epochs < 1:
            raise TrainingError(f"epochs must be >= 1, got {self.epochs}")
        if self.max_pairs is not None and self.max_pairs < self.min_batch:
            raise TrainingError(f"max_pairs must be >= {self.min_batch}, got {self.max_pairs}")
        if self.max_steps is not None and self.max_steps < 1:
            raise TrainingError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise TrainingError(f"max_minutes must be > 0, got {self.max_minutes}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
class TrainingRun:
    """What a training run did, whichever the model; the CLI turns it into the model card."""

    output_dir: Path
    losses: list[float]
    epochs: list[EpochLog]
    dev_before: dict[str, float]
    dev_after: dict[str, float]
    steps: int
    #: Steps of all the epochs (what the data asked for; ``budget`` says what was planned).
    planned_steps: int
    pairs_seen: int
    train_pairs: int
    stopped_by: StopReason
    wall_s: float
    device: str
    #: :func:`budget_report` of the run (the model card's ``budget``).
    budget: dict[str, Any] = field(default_factory=dict)
    loss_curve: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def first_step_loss(self) -> float | None:
        return self.losses[0] if self.losses else None


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
    """One model with its loss, optimiser and schedule, stepping through given batches."""

    def __init__(
        self,
        model: Any,
        config: TowerTrainingConfig,
        planned_steps: int,
        device: str,
        *,
        distill: bool = False,
    ) -> None:
        import torch
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
        self.optimizer = make_adamw(model, config.learning_rate, config.weight_decay)
        self.schedule = LinearWarmupSchedule(planned_steps, config.warmup_ratio)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.schedule)
        self.steps = 0

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

        self.model.train()
        features = [
            self._features([t[0] for t in triplets], "query"),
            self._features([t[1] for t in triplets], "document"),
            self._features([t[2] for t in triplets], "document"),
        ]
        with autocast(self.device, self.config.bf16):
            if self.margin_loss is None or margins is None:
                loss = self.loss(features, None)
            else:
                # One forward pass feeds both losses.
                embeddings = embed_columns(self.model, features)
                target = torch.tensor(list(margins), dtype=torch.float32, device=self.device)
                loss = self.loss.compute_loss_from_embeddings(
                    embeddings, None
                ) + self.config.distill_weight * self.margin_loss.compute_loss_from_embeddings(
                    embeddings, target
                )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.steps += 1
        return float(loss.detach().cpu())


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

    def batch_margins(batch: Sequence[int]) -> list[float] | None:
        return None if margins is None else [margins[j] for j in batch]

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
    dev_before: dict[str, float] = {}
    eval_s = 0.0
    if dev is not None:
        t = time.monotonic()
        dev_before = _evaluate(base, dev)
        eval_s = time.monotonic() - t
        log.info("dev before training: %s (%.1f s)", dev_before, eval_s)
    # The final dev measurement must fit too: keep 1.5x its measured time in reserve.
    budget = StepBudget(
        config, len(epoch_plans[0]), deadline, data_steps=planned, reserve_s=eval_s * 1.5
    )

    losses: list[float] = []
    flat = [(e, batch) for e, batches in enumerate(epoch_plans) for batch in batches]
    decision: dict[str, Any]
    start_at = 0
    if config.towers == "auto" and dev is not None:
        pilot = max(1, min(config.pilot_steps, budget.planned // 4))
        scores: dict[str, dict[str, float]] = {}
        runs: dict[str, _Run] = {}
        pilot_losses: dict[str, list[float]] = {}
        for layout in ("shared", "separate"):
            seed_everything(config.seed)
            model = copy.deepcopy(base) if layout == "shared" else _separate_towers(base, device)
            run = _Run(model, config, budget.planned, device, distill=distill)
            pilot_losses[layout] = []
            for i in range(pilot):
                loss = run.step([pool[j] for j in flat[i][1]], batch_margins(flat[i][1]))
                pilot_losses[layout].append(loss)
                if on_step:
                    on_step(TrainingProgress(f"pilot {layout}", i + 1, pilot, loss))
            scores[layout] = _evaluate(model, dev)
            runs[layout] = run
            log.info("pilot %s after %d steps: dev %s", layout, pilot, scores[layout])
        winner = (
            "separate" if scores["separate"]["ndcg@10"] > scores["shared"]["ndcg@10"] else "shared"
        )
        decision = {
            "layout": winner,
            "how": f"both layouts trained {pilot} steps on the same batches (seed {config.seed}); "
            "higher dev nDCG@10 wins, ties go to shared",
            "pilot_steps": pilot,
            "pilot_dev": scores,
        }
        run = runs[winner]
        del runs
        losses = pilot_losses[winner]
        start_at = pilot
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

    epochs: list[EpochLog] = []
    epoch_losses: list[float] = list(losses)
    pairs_seen = sum(len(b) for _, b in flat[:start_at])
    current_epoch = flat[start_at][0] if start_at < len(flat) else config.epochs - 1
    for i in range(start_at, len(flat)):
        epoch, batch = flat[i]
        if epoch != current_epoch:
            epochs.append(_epoch_log(current_epoch, run, pairs_seen, epoch_losses, dev, deadline))
            epoch_losses, current_epoch = [], epoch
        if not budget.before_step():
            break
        loss = run.step([pool[j] for j in batch], batch_margins(batch))
        losses.append(loss)
        epoch_losses.append(loss)
        pairs_seen += len(batch)
        if on_step:
            on_step(TrainingProgress("train", run.steps, budget.planned, loss))
        go_on = budget.after_step(run.steps)
        # The learning rate reaches 0 at the last step the budget allows.
        run.schedule.shorten(budget.planned)
        if not go_on:
            break
    if epoch_losses or not epochs:
        epochs.append(_epoch_log(current_epoch, run, pairs_seen, epoch_losses, dev, deadline))
    if not losses:
        raise TrainingError("the time budget ended before the first step; raise --max-minutes")
    stopped_by = budget.stopped_by
    budget_card = budget.report(run.steps)

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    run.model.save(str(output_dir))
    epoch_ends = [e.steps for e in epochs]
    loss_name = type(run.loss).__name__
    if distill:
        loss_name += f" + {config.distill_weight:g} x MarginMSELoss (teacher margins)"
    marks = [(decision["pilot_steps"], f"pilot end: {layout}")] if "pilot_steps" in decision else []
    curve = save_loss_curve(
        losses,
        output_dir / "loss_curve.png",
        title=f"towers ({layout}) - {loss_name}",
        epoch_ends=epoch_ends[:-1],
        marks=marks,
    )
    result = TowerTrainingResult(
        output_dir=output_dir,
        layout=layout,
        decision=decision,
        losses=losses,
        epochs=epochs,
        dev_before=dev_before,
        dev_after=epochs[-1].dev if epochs else {},
        steps=run.steps,
        planned_steps=planned,
        pairs_seen=pairs_seen,
        train_pairs=len(pool),
        stopped_by=stopped_by,
        wall_s=deadline.elapsed(),
        device=device,
        budget=budget_card,
        loss_name=loss_name,
        loss_curve=curve,
    )
    log.info(
        "towers trained: %d steps, %s, %.0f s, dev %s -> %s",
        result.steps,
        stopped_by,
        result.wall_s,
        dev_before,
        result.dev_after,
    )
    return result


def _epoch_log(
    epoch: int,
    run: _Run,
    pairs_seen: int,
    losses: Sequence[float],
    dev: RetrievalDevSet | None,
    deadline: Deadline,
) -> EpochLog:
    metrics = _evaluate(run.model, dev) if dev is not None else {}
    entry = EpochLog(
        epoch=epoch + 1,
        steps=run.steps,
        pairs_seen=pairs_seen,
        mean_loss=float(np.mean(losses)) if losses else float("nan"),
        dev=metrics,
        elapsed_s=round(deadline.elapsed(), 1),
    )
    log.info(
        "epoch %d: %d steps, mean loss %.4f, dev %s, %.0f s",
        entry.epoch,
        entry.steps,
        entry.mean_loss,
        metrics,
        entry.elapsed_s,
    )
    return entry
