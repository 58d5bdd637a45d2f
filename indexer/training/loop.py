"""The training loop both trainers run (towers and cross-encoder), written once.

A trainer supplies what differs: its batches (one list per epoch), a ``step(batch) ->
loss`` that computes its loss and takes one optimisation step (:class:`Optimisation`
does the common part: train mode, bf16 autocast, backward, gradient clipping, AdamW,
learning-rate schedule), how many examples a batch holds, and how to measure the model
on dev. :func:`run_loop` does the rest, the same way for both:

- the budget (:mod:`indexer.training.budget`): a deadline checked before every step, the
  plan re-made from the measured speed after the first steps (WARNING when the time
  budget cuts it), a stop at ``max_steps``; the learning-rate schedule is shortened to
  end at the last step the budget allows;
- a progress callback after every step (:class:`TrainingProgress`);
- a dev measurement and an :class:`EpochLog` at the end of every epoch and of the run;
- the budget report (the model card's ``budget``, "partial epoch" warnings logged).

Steps taken before the loop (the towers' layout pilot) are passed in and counted.
:func:`start_budget` measures dev before training and plans the steps with that
measurement's time in reserve. Also here: seeding, the schedule, the optimiser, bf16,
the loss-curve plot and :class:`TrainingRun`, what every run returns.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from shopsearch.indexer.training.budget import (
    Deadline,
    StepBudget,
    StopReason,
    TrainingBudget,
    TrainingError,
)

__all__ = [
    "DevEvaluation",
    "EpochLog",
    "LinearWarmupSchedule",
    "LoopResult",
    "Optimisation",
    "StepCallback",
    "TrainingProgress",
    "TrainingRun",
    "autocast",
    "bf16_supported",
    "make_adamw",
    "run_loop",
    "save_loss_curve",
    "seed_everything",
    "start_budget",
]

log = logging.getLogger(__name__)

Batch = TypeVar("Batch")

#: The model's dev metrics as it is now (``{}`` without a dev set).
DevEvaluation = Callable[[], dict[str, float]]


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

    from shopsearch.retrieval.onnx_export import cpu_flags

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


class Optimisation:
    """One model's optimiser, learning-rate schedule and optimisation step.

    AdamW (:func:`make_adamw`) with ``config``'s learning rate and weight decay; a linear
    warm-up and decay over ``planned_steps`` (:attr:`schedule`, which :func:`run_loop`
    shortens when the budget allows fewer steps). Creating one draws no random numbers,
    so it does not change what a seeded run trains.
    """

    def __init__(self, model: Any, config: TrainingBudget, planned_steps: int, device: str) -> None:
        import torch

        self.model = model
        self.device = device
        self._bf16 = config.bf16
        self._max_grad_norm = config.max_grad_norm
        self.optimizer = make_adamw(model, config.learning_rate, config.weight_decay)
        self.schedule = LinearWarmupSchedule(planned_steps, config.warmup_ratio)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.schedule)
        #: Optimisation steps taken.
        self.steps = 0

    def step(self, loss_of: Callable[[], Any]) -> float:
        """One step: ``loss_of()`` (a scalar tensor) computed in train mode under bf16
        autocast when the config asks for it, back-propagated, gradients clipped to
        ``max_grad_norm``, then the optimiser and the schedule advanced. Returns the loss."""
        import torch

        self.model.train()
        with autocast(self.device, self._bf16):
            loss = loss_of()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self._max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.steps += 1
        return float(loss.detach().cpu())


def start_budget(
    config: TrainingBudget,
    epoch_batches: Sequence[Sequence[object]],
    deadline: Deadline,
    *,
    evaluate: DevEvaluation | None = None,
    logger: logging.Logger = log,
) -> tuple[StepBudget, dict[str, float]]:
    """Measure dev before training (``evaluate``, when there is a dev set) and plan the
    run's steps over ``epoch_batches`` (one list of batches per epoch; the first gives
    the epoch length). Returns the budget and the dev metrics before training.

    The dev measurement after the last step must fit in ``max_minutes`` too, so 1.5x the
    time this one took is kept in reserve when the time budget plans the steps.
    """
    dev_before: dict[str, float] = {}
    eval_s = 0.0
    if evaluate is not None:
        started = time.monotonic()
        dev_before = evaluate()
        eval_s = time.monotonic() - started
        logger.info("dev before training: %s (%.1f s)", dev_before, eval_s)
    budget = StepBudget(
        config,
        len(epoch_batches[0]),
        deadline,
        data_steps=sum(len(batches) for batches in epoch_batches),
        reserve_s=eval_s * 1.5,
        logger=logger,
    )
    return budget, dev_before


@dataclass(slots=True)
class LoopResult:
    """What :func:`run_loop` trained: every step's loss (steps before the loop first),
    the per-epoch log, steps and examples seen in all, and the budget."""

    losses: list[float]
    epochs: list[EpochLog]
    steps: int
    pairs_seen: int
    stopped_by: StopReason
    #: :func:`indexer.training.budget.budget_report` of the run.
    budget: dict[str, Any]

    @property
    def dev_after(self) -> dict[str, float]:
        """The last dev measurement (after the last step)."""
        return self.epochs[-1].dev


def run_loop(
    epoch_batches: Sequence[Sequence[Batch]],
    step: Callable[[Batch], float],
    *,
    budget: StepBudget,
    schedule: LinearWarmupSchedule,
    deadline: Deadline,
    evaluate: DevEvaluation,
    size: Callable[[Batch], int],
    on_step: StepCallback | None = None,
    done_losses: Sequence[float] = (),
    logger: logging.Logger = log,
) -> LoopResult:
    """Train ``step`` over ``epoch_batches`` (one list per epoch, taken in order) within
    ``budget``; see the module docstring for what every run does the same way.

    ``done_losses``: the losses of steps already taken on the first batches (a pilot);
    those batches are skipped, their steps and examples counted, their losses part of
    the first epoch's. ``size(batch)``: the examples a batch holds (``pairs_seen``).
    ``schedule`` is shortened as the budget's plan shrinks, so the learning rate reaches
    0 at the last step that fits. An epoch's log is written when the next one starts
    and when the run ends, after a dev measurement (``evaluate``); an epoch the budget
    ended before its first step gets none.

    Raises:
        TrainingError: the budget ended before the first step.
    """
    flat = [(epoch, batch) for epoch, batches in enumerate(epoch_batches) for batch in batches]
    steps = len(done_losses)
    losses = list(done_losses)
    epoch_losses = list(done_losses)
    epochs: list[EpochLog] = []
    pairs_seen = sum(size(batch) for _, batch in flat[:steps])
    current = flat[steps][0] if steps < len(flat) else len(epoch_batches) - 1

    def log_epoch() -> None:
        epochs.append(_epoch_log(current, steps, pairs_seen, epoch_losses, evaluate, deadline))
        entry = epochs[-1]
        logger.info(
            "epoch %d: %d steps, mean loss %.4f, dev %s, %.0f s",
            entry.epoch,
            entry.steps,
            entry.mean_loss,
            entry.dev,
            entry.elapsed_s,
        )

    for epoch, batch in flat[steps:]:
        if epoch != current:
            log_epoch()
            epoch_losses, current = [], epoch
        if not budget.before_step():
            break
        loss = step(batch)
        steps += 1
        losses.append(loss)
        epoch_losses.append(loss)
        pairs_seen += size(batch)
        if on_step:
            on_step(TrainingProgress("train", steps, budget.planned, loss))
        go_on = budget.after_step(steps)
        # The learning rate reaches 0 at the last step the budget allows.
        schedule.shorten(budget.planned)
        if not go_on:
            break
    if not losses:
        raise TrainingError("the time budget ended before the first step; raise --max-minutes")
    if epoch_losses or not epochs:
        log_epoch()
    return LoopResult(losses, epochs, steps, pairs_seen, budget.stopped_by, budget.report(steps))


def _epoch_log(
    epoch: int,
    steps: int,
    pairs_seen: int,
    losses: Sequence[float],
    evaluate: DevEvaluation,
    deadline: Deadline,
) -> EpochLog:
    return EpochLog(
        epoch=epoch + 1,
        steps=steps,
        pairs_seen=pairs_seen,
        mean_loss=float(np.mean(losses)) if losses else float("nan"),
        dev=evaluate(),
        elapsed_s=round(deadline.elapsed(), 1),
    )
