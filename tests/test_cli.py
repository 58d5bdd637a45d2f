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


HD_SPLIT = (
    "id,product_uid,product_title,search_term,relevance\n"
    "1,100001,Simpson Strong-Tie 12-Gauge Angle,angle bracket,3\n"
    "2,100002,BEHR Premium Textured DeckOver,angle bracket,1\n"
    "3,100003,Everbilt Corner Brace,angle bracket,2.33\n"
    '4,100002,"BEHR Premium Textured DeckOver, 1-gal.",deck paint,2.67\n'
    "5,100004,Delta Vero Shower Faucet,deck paint,1.33\n"
)


def test_eval_convert_then_generic_eval_matches_homedepot(tmp_path: Path) -> None:
    """`eval convert` names --gain-offset 1, and with it the generic path scores a run
    exactly like the Home Depot path (without it, nDCG differs: gain = grade, not grade - 1)."""
    from eval.commands import _load_dataset
    from eval.metrics import evaluate_protocol_a
    from indexer.judgments import homedepot_qid, load_homedepot

    hd_dir = tmp_path / "hd"
    hd_dir.mkdir()
    (hd_dir / "dev.csv").write_text(HD_SPLIT, encoding="utf-8")
    result = runner.invoke(
        app, ["eval", "convert", "--homedepot-dir", str(hd_dir), "--out", str(tmp_path / "gen")]
    )
    assert result.exit_code == 0, result.output
    output = text(result.output)
    assert "--id-field product_uid --title-field product_title" in output
    queries, qrels = tmp_path / "gen" / "queries.tsv", tmp_path / "gen" / "qrels.txt"
    assert f"shopsearch eval --queries {queries} --qrels {qrels} --gain-offset 1" in output

    # The worst order first: the irrelevant (gain 0) product on top.
    run = {
        homedepot_qid("angle bracket"): {"100002": 3.0, "100003": 2.0, "100001": 1.0},
        homedepot_qid("deck paint"): {"100004": 2.0, "100002": 1.0},
    }
    expected = evaluate_protocol_a(load_homedepot(hd_dir / "dev.csv"), run).metrics
    generic = _load_dataset(hd_dir, "dev", queries, qrels, None, gain_offset=1.0)
    assert generic.gain_offset == 1.0
    assert evaluate_protocol_a(generic, run).metrics == pytest.approx(expected)
    unshifted = _load_dataset(hd_dir, "dev", queries, qrels, None)  # --gain-offset not given
    assert evaluate_protocol_a(unshifted, run).metrics["ndcg@10"] != pytest.approx(
        expected["ndcg@10"]
    )


def test_eval_gain_offset_is_refused_on_the_homedepot_split(tmp_path: Path) -> None:
    hd_dir = tmp_path / "hd"
    hd_dir.mkdir()
    (hd_dir / "dev.csv").write_text(HD_SPLIT, encoding="utf-8")
    result = runner.invoke(
        app,
        [
            "eval",
            "--homedepot-dir",
            str(hd_dir),
            "--index-dir",
            str(tmp_path / "no-index"),
            "--gain-offset",
            "1",
        ],
    )
    assert result.exit_code == 2, result.output
    assert "--gain-offset applies to the generic format" in text(result.output)
