"""The training budget: how many steps a run plans (epochs, --max-steps, --max-minutes
at the measured speed), and what the model card says when a run trains less than an
epoch. Pure functions; the trainers and the CLI are tested in test_training.py."""

from __future__ import annotations

import pytest

from shopsearch.indexer.training.budget import (
    TrainingBudget,
    TrainingError,
    budget_report,
    plan_steps,
)


def test_a_slow_machine_plans_a_fraction_of_the_epoch_and_says_so() -> None:
    # As seen on a busy machine: 10 s a step, 9.5 minutes left after 21 steps.
    plan = plan_steps(376, seconds_per_step=10.0, seconds_left=570.0, steps_done=21)
    assert plan.planned_steps == 78 and plan.bound == "time"
    assert plan.epoch_steps == 376 and plan.fraction_of_epoch == pytest.approx(78 / 376)
    assert plan.warning is not None
    assert "78 of 376 steps" in plan.warning and "partial epoch" in plan.warning
    assert "10.00 s a step" in plan.warning and "--max-steps" in plan.warning


def test_a_budget_that_fits_plans_every_epoch_without_a_warning() -> None:
    plan = plan_steps(376, 2, seconds_per_step=1.0, seconds_left=1000.0, steps_done=21)
    assert (plan.planned_steps, plan.bound, plan.warning) == (752, "epochs", None)
    assert plan.fraction_of_epoch == 2.0
    # No measurement yet (or no --max-minutes): the data decides.
    assert plan_steps(376).planned_steps == 376


def test_max_steps_bounds_the_plan_whatever_the_speed() -> None:
    plan = plan_steps(376, max_steps=50)
    assert (plan.planned_steps, plan.bound, plan.warning) == (50, "steps", None)
    fast = plan_steps(376, max_steps=50, seconds_per_step=0.01, seconds_left=1e6, steps_done=21)
    assert (fast.planned_steps, fast.bound) == (50, "steps")
    # More steps than the data has: the epochs bound the run.
    assert plan_steps(10, 2, max_steps=100).bound == "epochs"
    # The time bound applies under --max-steps too, and says so.
    slow = plan_steps(376, max_steps=50, seconds_per_step=10.0, seconds_left=100.0, steps_done=21)
    assert (slow.planned_steps, slow.bound) == (31, "time") and slow.warning


def test_the_plan_never_falls_below_the_steps_already_taken() -> None:
    plan = plan_steps(376, seconds_per_step=10.0, seconds_left=-5.0, steps_done=21)
    assert plan.planned_steps == 21 and plan.bound == "time"
    with pytest.raises(TrainingError, match="epoch_steps must be >= 1"):
        plan_steps(0)


def test_budget_report_flags_a_partial_epoch() -> None:
    plan = plan_steps(376, seconds_per_step=10.0, seconds_left=570.0, steps_done=21)
    report = budget_report(plan, steps=78, stopped_by="time")
    assert report["planned_steps"] == 78 and report["epoch_steps"] == 376
    assert report["steps"] == 78 and report["stopped_by"] == "time"
    assert report["fraction_of_epoch"] == pytest.approx(0.207, abs=1e-3)
    assert report["seconds_per_step"] == 10.0
    assert len(report["warnings"]) == 1
    assert report["warnings"][0].startswith("partial epoch: 78 of 376 steps")
    full = budget_report(plan_steps(5, 2), steps=10, stopped_by="epochs")
    assert full["fraction_of_epoch"] == 2.0 and full["warnings"] == []
    asked = budget_report(plan_steps(5, max_steps=2), steps=2, stopped_by="steps")
    assert "--max-steps" in asked["warnings"][0]


def test_max_steps_is_validated() -> None:
    assert TrainingBudget(max_steps=3).to_dict()["max_steps"] == 3
    with pytest.raises(TrainingError, match="max_steps must be >= 1, got 0"):
        TrainingBudget(max_steps=0)
