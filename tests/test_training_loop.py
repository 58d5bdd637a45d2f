"""The training loop both trainers share (indexer/training/loop.py), run over a stand-in
step: which batches it takes, what it counts, when it measures dev, and how the budget
stops it. No model: the trainers themselves are tested in test_training.py."""

from __future__ import annotations

import pytest

from shopsearch.indexer.training.budget import Deadline, TrainingBudget, TrainingError
from shopsearch.indexer.training.loop import (
    LinearWarmupSchedule,
    TrainingProgress,
    run_loop,
    start_budget,
)

#: Two epochs of batches; a batch is a list of example ids.
EPOCHS = [[[0, 1], [2, 3], [4]], [[1, 0], [3, 2], [4]]]


class _Model:
    """Records what the loop asked of it."""

    def __init__(self) -> None:
        self.trained: list[list[int]] = []
        self.measured = 0

    def step(self, batch: list[int]) -> float:
        self.trained.append(batch)
        return float(len(self.trained))

    def evaluate(self) -> dict[str, float]:
        self.measured += 1
        return {"ndcg@10": self.measured / 10}


def _run(config: TrainingBudget, model: _Model, **kwargs: object):
    deadline = Deadline(config.max_minutes)
    budget, before = start_budget(config, EPOCHS, deadline, evaluate=model.evaluate)
    schedule = LinearWarmupSchedule(budget.planned, config.warmup_ratio)
    result = run_loop(
        EPOCHS,
        model.step,
        budget=budget,
        schedule=schedule,
        deadline=deadline,
        evaluate=model.evaluate,
        size=len,
        **kwargs,  # type: ignore[arg-type]
    )
    return result, before, schedule


def test_every_epoch_is_trained_counted_and_measured() -> None:
    model = _Model()
    seen: list[TrainingProgress] = []
    result, before, _ = _run(TrainingBudget(epochs=2), model, on_step=seen.append)
    assert model.trained == [b for epoch in EPOCHS for b in epoch]
    assert before == {"ndcg@10": 0.1}  # measured once before training
    assert (result.steps, result.pairs_seen, result.stopped_by) == (6, 10, "epochs")
    assert [(e.epoch, e.steps, e.pairs_seen) for e in result.epochs] == [(1, 3, 5), (2, 6, 10)]
    assert [e.mean_loss for e in result.epochs] == [2.0, 5.0]
    assert result.dev_after == {"ndcg@10": 0.3} and model.measured == 3
    assert [(p.phase, p.step, p.total) for p in seen][-1] == ("train", 6, 6)
    assert result.budget["steps"] == 6 and result.budget["warnings"] == []


def test_max_steps_stops_mid_epoch_shortens_the_schedule_and_warns() -> None:
    model = _Model()
    result, _, schedule = _run(TrainingBudget(epochs=2, max_steps=2), model)
    assert model.trained == [[0, 1], [2, 3]]
    assert (result.steps, result.stopped_by) == (2, "steps")
    assert [e.steps for e in result.epochs] == [2]
    assert schedule.planned == 2
    assert result.budget["warnings"][0].startswith("partial epoch: 2 of 3 steps")


def test_steps_taken_before_the_loop_are_skipped_and_counted() -> None:
    model = _Model()
    result, _, _ = _run(TrainingBudget(epochs=2), model, done_losses=[9.0, 7.0])
    assert model.trained == [[4], *EPOCHS[1]]  # the pilot took the first two batches
    assert result.losses[:2] == [9.0, 7.0] and result.steps == 6 and result.pairs_seen == 10
    assert result.epochs[0].mean_loss == pytest.approx((9.0 + 7.0 + 1.0) / 3)


def test_a_budget_over_before_the_first_step_is_an_error() -> None:
    model = _Model()
    with pytest.raises(TrainingError, match="before the first step"):
        _run(TrainingBudget(max_minutes=1e-9), model)
    assert model.trained == [] and model.measured == 1  # no dev measurement after it
