"""The `shopsearch` CLI: help texts, build errors naming rows, search output, snapshots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shopsearch.api.cli import app, http_implementation, mount_plugins

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
        ["nightly"],
    ],
)
def test_every_command_explains_itself(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_serve_runs_on_uvloop_and_httptools() -> None:
    # Both are dependencies: without them uvicorn falls back to asyncio and h11, about
    # 1 ms more CPU a search (README, "Threads and workers on two cores").
    assert http_implementation() == ("uvloop", "httptools")


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


def test_rollback_without_history_says_why(sample_index_copy: Path) -> None:
    # A copy: rollback takes the index's switch lock and would move CURRENT if it could.
    result = runner.invoke(app, ["rollback", "--index-dir", str(sample_index_copy)])
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
    from shopsearch.eval.commands import _load_dataset
    from shopsearch.eval.metrics import evaluate_protocol_a
    from shopsearch.indexer.judgments import homedepot_qid, load_homedepot

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


def test_model_specs_resolve_in_the_models_dir_setting_of_the_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--model towers/latest` looks in $SHOPSEARCH_MODELS_DIR as set when the command
    runs (where `shopsearch train` registers), not as it was when api.cli was imported."""
    registry = tmp_path / "registry"
    monkeypatch.setenv("SHOPSEARCH_MODELS_DIR", str(registry))
    args = ["search", "drill", "--index-dir", str(tmp_path / "idx"), "--model", "towers/latest"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert f"notowersmodelin{registry};" in "".join(result.output.split()), result.output


#: A build manifest as `build` prints it (the fields the summary reads).
MANIFEST: dict[str, object] = {
    "version": "20260101T000000Z",
    "counts": {"products": 3, "skipped_rows": 0},
    "build": {"timings_s": {"encode": 1.0}},
    "vector_index": {"kind": "flat"},
    "approx_vs_exact": {"recall@100": 1.0},
    "lexical_index": {"backend": "tantivy", "analyzer": "en_stem"},
}


@pytest.mark.parametrize("field", ["counts", "lexical_index", "build", "vector_index"])
def test_build_summary_refuses_a_malformed_manifest_by_name(tmp_path: Path, field: str) -> None:
    from shopsearch.api.cli_index import _print_build_summary
    from shopsearch.indexer.snapshot import SnapshotError

    _print_build_summary(MANIFEST, tmp_path, promoted=True)  # the well-formed one prints
    broken = {**MANIFEST, field: ["not", "an", "object"]}
    with pytest.raises(SnapshotError, match=f"manifest of snapshot 20260101T000000Z: '{field}'"):
        _print_build_summary(broken, tmp_path, promoted=True)


def test_build_summary_checks_hold_under_python_optimize(tmp_path: Path) -> None:
    """The checks are not asserts: `python -O` keeps them (exit code and message)."""
    import subprocess
    import sys

    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from api.cli_index import _print_build_summary\n"
        "_print_build_summary(json.loads(sys.argv[1]), Path('.'), promoted=True)\n"
    )
    broken = json.dumps({**MANIFEST, "counts": None})
    done = subprocess.run(
        [sys.executable, "-O", "-c", code, broken], capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0
    assert "SnapshotError: manifest of snapshot 20260101T000000Z: 'counts'" in done.stderr, (
        done.stderr[-2000:]
    )


def test_bench_runs_on_the_device_it_is_given(sample_index: Path, tmp_path: Path) -> None:
    queries = tmp_path / "q.tsv"
    queries.write_text("1\tcordless drill\n2\tgarden hose\n3\tled bulb\n")
    out = tmp_path / "bench.json"
    result = runner.invoke(
        app,
        ["bench", "--index-dir", str(sample_index), "--queries", str(queries), "--n", "2",
         "--warmup", "1", "--device", "cpu", "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["faiss_gpu"] is False
    assert report["query_backend"] == "onnx-int8"  # the default on a CPU for base towers
    assert report["queries"] == 2


def test_a_long_stage_is_logged_when_the_output_is_not_a_terminal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Progress bars draw nothing into a log file (cron, CI): the stage is logged instead,
    at most every ``every_s``, with how much is done and how long is left."""
    import io
    import logging

    from rich.console import Console

    from shopsearch.api.cli_common import Bars, StageLog

    now = [100.0]
    caplog.set_level(logging.INFO, logger="shopsearch.progress")
    stage = StageLog("encoding", 1000, every_s=30.0, clock=lambda: now[0])
    now[0] += 10
    stage.advance(100)  # 10 s after the start: too soon for a line
    now[0] += 30
    stage.advance(300)  # 400 done in 40 s: 10 a second, 60 s left
    now[0] += 60
    stage.advance(600)
    stage.finish()  # already logged as ended: once only
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "encoding: started (1000 to do)",
        "encoding: 400/1000 (40%), 10.0 a second, about 60 s left",
        "encoding: ended after 100.0 s (1000/1000)",
    ]

    caplog.clear()
    to_file = Bars(out=Console(file=io.StringIO()), log_every_s=0.0)
    with to_file.progress, to_file("indexing", 3) as advance:
        advance(1)
        advance(1)
    logged = [r.getMessage() for r in caplog.records]
    assert logged[0] == "indexing: started (3 to do)"
    assert logged[1].startswith("indexing: 1/3 (33%)")
    assert logged[-1].startswith("indexing: ended after") and logged[-1].endswith("(2/3)")

    caplog.clear()
    on_terminal = Bars(out=Console(file=io.StringIO(), force_terminal=True), log_every_s=0.0)
    with on_terminal.progress, on_terminal("indexing", 3) as advance:
        advance(3)
    assert caplog.records == []  # the bar shows it
