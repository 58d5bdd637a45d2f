"""The training budget, shared by every trainer: what bounds a run and what it says when
the bound cuts it short.

A run is bounded by its ``epochs``, ``max_steps`` (a fixed number of optimisation steps,
whatever the machine's speed, so a run with it is deterministic for a given seed, data
and library versions) and ``max_minutes``. Under ``max_minutes`` the speed is measured
over the :data:`PLAN_AFTER_STEPS` steps after the first (which pays one-off costs); when
the planned steps do not fit, the plan is cut to the steps that fit and a WARNING says
so (:func:`plan_steps`). What bounded the run, and the fraction of an epoch it trained,
is recorded (:func:`budget_report`, the model card's ``budget``), with a "partial epoch"
warning when it trained less than one epoch. :class:`StepBudget` is that plan as a run
trains; :class:`TrainingBudget` the settings every trainer's config starts from.

Pure apart from the clock: no torch here.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Literal

from shopsearch.retrieval.types import ShopsearchError

__all__ = [
    "PLAN_AFTER_STEPS",
    "Deadline",
    "StepBudget",
    "StepPlan",
    "StopReason",
    "TrainingBudget",
    "TrainingError",
    "budget_report",
    "plan_steps",
]

log = logging.getLogger(__name__)


class TrainingError(ShopsearchError):
    """Training cannot start or run with the given examples and settings."""


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
