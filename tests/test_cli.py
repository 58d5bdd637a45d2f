"""The `shopsearch` CLI: help texts, build errors naming rows, search output, snapshots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from api.cli import app, mount_plugins

runner = CliRunner()


def text(output: str) -> str:
    """The output with rich's line wrapping undone."""
    return " ".join(output.split())


@pytest.fixture(scope="module", autouse=True)
def plugins() -> None:
    mount_plugins(app)


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["build"],
        ["serve"],
        ["search"],
        ["snapshots"],
        ["rollback"],
        ["demo"],
        ["eval"],
        ["bench"],
    ],
)
def test_every_command_explains_itself(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_build_with_bad_rows_names_them_and_builds_nothing(tmp_path: Path) -> None:
    catalog = tmp_path / "c.csv"
    catalog.write_text("id,title,price\n1,Drill,99\n2,,5\n3,Saw,cheap\n")
    result = runner.invoke(
        app, ["build", "--catalog", str(catalog), "--index-dir", str(tmp_path / "idx")]
    )
    assert result.exit_code == 1
    assert "row 2 (id 2): missing title" in text(result.output)
    assert "row 3 (id 3): price 'cheap' is not a number" in text(result.output)
    assert not (tmp_path / "idx" / "CURRENT").exists()


def test_search_json_and_snapshots(sample_index: Path) -> None:
    result = runner.invoke(
        app,
        [
            "search",
            "cordless drill",
            "--index-dir",
            str(sample_index),
            "--json",
            "--size",
            "3",
            "--brand",
            "DeWalt",
        ],
    )
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout[result.stdout.index("{") :])
    assert len(body["hits"]) == 3 and all(h["brand"] == "DeWalt" for h in body["hits"])
    listed = runner.invoke(app, ["snapshots", "--index-dir", str(sample_index)])
    assert listed.exit_code == 0 and body["index_version"] in listed.output


def test_rollback_without_history_says_why(sample_index: Path) -> None:
    result = runner.invoke(app, ["rollback", "--index-dir", str(sample_index)])
    assert result.exit_code == 1
    assert "nothing to roll back to" in text(result.output)
