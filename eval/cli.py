"""``shopsearch eval``, ``shopsearch bench`` and ``shopsearch nightly``: registered into the CLI as a plugin."""

from __future__ import annotations

import typer

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add the evaluation commands to the ``shopsearch`` app."""
    from shopsearch.eval.commands import eval_app
    from shopsearch.eval.commands_bench import bench_command
    from shopsearch.eval.facet_honesty import facets_command
    from shopsearch.eval.nightly_cli import nightly_command
    from shopsearch.eval.pareto_cli import pareto_command
    from shopsearch.eval.recommend.cli import recommend_command
    from shopsearch.eval.suggest_bench import suggest_command

    eval_app.command("recommend")(recommend_command)
    eval_app.command("pareto")(pareto_command)
    eval_app.command("suggest")(suggest_command)
    eval_app.command("facets")(facets_command)
    app.add_typer(eval_app, name="eval")
    app.command("bench")(bench_command)
    app.command("nightly")(nightly_command)
