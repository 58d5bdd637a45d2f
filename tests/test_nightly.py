"""``shopsearch nightly`` (issue 15): evaluate before promoting, promote or refuse, never
twice for the same inputs, report, lock.

The real command runs on small catalogs cut from the sample catalog, with judged
queries written from it (a product's first title words find that product). The "worse
version" is a bad catalog feed: titles shifted onto the wrong products, descriptions
emptied, which is how a nightly job most often goes wrong in a shop.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import ES_URL
from typer.testing import CliRunner

from shopsearch.api.cli import app, mount_plugins, sample_catalog_path
from shopsearch.api.settings import Settings
from shopsearch.eval.nightly_eval import ServeDefaultsEvaluator
from shopsearch.indexer.catalog import load_catalog
from shopsearch.indexer.judgments import load_generic
from shopsearch.indexer.nightly import NightlyInputs, dataset_fingerprint, nightly_lock
from shopsearch.indexer.snapshot import SnapshotStore
from shopsearch.indexer.updates import apply_updates
from shopsearch.retrieval.encoders import Encoder
from shopsearch.retrieval.match_set import MATCH_RULE_VERSION

pytestmark = pytest.mark.slow

runner = CliRunner()
PRODUCTS = 60
JUDGED = 40


@pytest.fixture(scope="module", autouse=True)
def plugins() -> None:
    mount_plugins(app)


@pytest.fixture(autouse=True)
def _fast_query_tower(monkeypatch: pytest.MonkeyPatch) -> None:
    # The ONNX query tower gives the same vectors; torch saves the export in a test.
    monkeypatch.setenv("SHOPSEARCH_QUERY_BACKEND", "same")


def words(output: str) -> str:
    """The output with rich's wrapping and error-box borders undone."""
    return " ".join(output.replace("│", " ").split())


def _rows() -> list[dict[str, object]]:
    lines = sample_catalog_path().read_text().splitlines()[:PRODUCTS]
    return [json.loads(line) for line in lines]


def _write(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Catalogs (good, the same products reworded, a bad feed) and judged queries."""
    root = tmp_path_factory.mktemp("nightly-data")
    rows = _rows()
    titles = [r["title"] for r in rows]
    bad = [
        {**r, "title": t, "description": ""}
        for r, t in zip(rows, titles[7:] + titles[:7], strict=True)
    ]
    reworded = [{**r, "description": f"{r.get('description', '')} Ships free."} for r in rows]
    with (root / "queries.tsv").open("w") as q, (root / "qrels.txt").open("w") as qrels:
        for i, row in enumerate(rows[:JUDGED]):
            q.write(f"q{i}\t{' '.join(str(row['title']).split()[:4])}\n")
            qrels.write(f"q{i} 0 {row['id']} 3\n")
    return {
        "good": _write(root / "good.jsonl", rows),
        "bad": _write(root / "bad.jsonl", bad),
        "reworded": _write(root / "reworded.jsonl", reworded),
        "queries": root / "queries.tsv",
        "qrels": root / "qrels.txt",
    }


def argv(
    data: dict[str, Path], index: Path, catalog: str, *, qrels: Path | None = None
) -> list[str]:
    """``shopsearch nightly`` on ``data[catalog]`` into ``index`` with the judged queries."""
    judged = ["--queries", str(data["queries"]), "--qrels", str(qrels or data["qrels"])]
    return ["nightly", "--catalog", str(data[catalog]), "--index-dir", str(index), *judged]


def nightly(
    data: dict[str, Path], index: Path, catalog: str, *extra: str
) -> tuple[int, dict[str, Any]]:
    """Run the command; its exit code and its JSON outcome."""
    # No event store: the shopper step is skipped (tests/test_nightly_shoppers.py runs it).
    no_events = ["--events-db", str(index.parent / "no-events.db")]
    args = [*argv(data, index, catalog), "--device", "cpu", "--json", *no_events, *extra]
    result = runner.invoke(app, args)
    if result.exit_code not in (0, 3):
        raise AssertionError(f"exit {result.exit_code}: {result.output[-3000:]}")
    start = result.stdout.index("{\n")
    return result.exit_code, json.loads(result.stdout[start:])


def test_promotes_once_refuses_a_worse_version_and_promotes_an_equal_one(
    data: dict[str, Path], tmp_path: Path
) -> None:
    index = tmp_path / "index"
    store = SnapshotStore(index)

    code, first = nightly(data, index, "good")
    assert (code, first["status"]) == (0, "first")
    served = store.current() or ""
    assert served == first["candidate"]
    manifest = store.manifest(served)
    assert manifest["evaluation"]["metrics"]["ndcg@10"] > 0.5  # the judged titles are found
    assert manifest["nightly"]["gate"] == "no-baseline"
    assert first["shoppers"]["status"] == "skipped"

    # The same catalog and models again: nothing built, nothing promoted.
    code, again = nightly(data, index, "good")
    assert (code, again["status"], again["candidate"]) == (0, "unchanged", None)
    assert store.versions() == [served] and store.history() == [served]

    # A bad feed: refused, the serving snapshot untouched, the refused one kept.
    code, bad = nightly(data, index, "bad")
    assert (code, bad["status"]) == (3, "refused")
    assert store.current() == served and store.history() == [served]
    refused = bad["candidate"]
    assert refused in store.versions()
    assert store.manifest(refused)["nightly"]["gate"] == "refused"
    (failure,) = [f for f in bad["gate"]["failures"] if f.startswith("ndcg@10")]
    base, new = bad["baseline_metrics"]["ndcg@10"], bad["candidate_metrics"]["ndcg@10"]
    assert f"current {new:.4f} is below baseline {base:.4f}" in failure
    assert bad["baseline_source"] == "stored"  # the first night's evaluation, not redone
    report = Path(bad["report"]).read_text()
    assert report.startswith("# Nightly reindex: REFUSED")
    assert f"| ndcg@10 | {base:.4f} | {new:.4f} | {new - base:+.4f} | FAIL |" in report

    # The bad feed again: the refused snapshot is judged again, not rebuilt; accepting it
    # takes a deliberate, larger tolerance.
    code, again = nightly(data, index, "bad")
    assert (code, again["candidate"], again["build"]) == (3, refused, {"reused": refused})
    code, accepted = nightly(data, index, "bad", "--tolerance", "1")
    assert (code, accepted["status"], store.current()) == (0, "promoted", refused)
    store.rollback()
    assert store.current() == served

    # The same products reworded (a new catalog, as good): promoted over the stored baseline.
    code, equal = nightly(data, index, "reworded")
    assert (code, equal["status"]) == (0, "promoted")
    assert store.current() == equal["candidate"] != served
    assert store.history()[-1] == equal["candidate"]


def test_a_refusal_names_the_metric_on_the_terminal(data: dict[str, Path], tmp_path: Path) -> None:
    index = tmp_path / "index"
    nightly(data, index, "good")
    result = runner.invoke(app, argv(data, index, "bad"))
    assert result.exit_code == 3
    said = words(result.output)
    assert "refused" in said and "ndcg@10: current" in said and "is below baseline" in said


def test_a_stored_evaluation_is_redone_after_an_update(
    data: dict[str, Path], tmp_path: Path, own_encoder: Encoder
) -> None:
    """An update (``shopsearch update``) changes what the serving snapshot answers, so its
    stored evaluation no longer counts as the baseline."""
    index = tmp_path / "index"
    nightly(data, index, "good")
    store = SnapshotStore(index)
    served = store.current() or ""
    products, _ = load_catalog(data["good"])
    changed = dataclasses.replace(products[0], title=f"{products[0].title} (new)")
    apply_updates(store.path(served), [changed], [], own_encoder)
    _, out = nightly(data, index, "reworded")
    assert out["baseline_source"] == "evaluated"
    assert store.manifest(served)["evaluation"]["generation"] == 1


def test_a_second_job_fails_at_once_on_the_lock(data: dict[str, Path], tmp_path: Path) -> None:
    index = tmp_path / "index"
    with nightly_lock(index):
        result = runner.invoke(app, argv(data, index, "good"))
    assert result.exit_code == 1
    assert "another nightly job holds" in words(result.output)
    assert SnapshotStore(index).current() is None


def test_judged_queries_are_required_and_checked(data: dict[str, Path], tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["nightly", "--catalog", str(data["good"]), "--index-dir", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert "needs judged queries" in words(result.output)
    broken = tmp_path / "qrels.txt"
    broken.write_text("q0 0\n")
    result = runner.invoke(app, argv(data, tmp_path, "good", qrels=broken))
    assert result.exit_code == 2
    assert "qrels" in words(result.output)


def test_dataset_key_follows_queries_judgments_and_reranker(data: dict[str, Path]) -> None:
    dataset = load_generic(data["queries"], data["qrels"])
    items = [(q.qid, q.text, q.judgments) for q in dataset.queries]
    key = dataset_fingerprint("d", items)
    assert key == dataset_fingerprint("d", list(reversed(items)))  # order does not matter
    changed = [(items[0][0], items[0][1], {"other": 3.0}), *items[1:]]
    assert dataset_fingerprint("d", changed) != key
    plain = ServeDefaultsEvaluator(Settings(), dataset).dataset_key
    reranked = ServeDefaultsEvaluator(Settings(reranker_dir=Path(".")), dataset).dataset_key
    assert plain.endswith(f"default-no-rerank:{MATCH_RULE_VERSION}")
    assert reranked.endswith(f"default-rerank:{MATCH_RULE_VERSION}")


def test_inputs_of_a_plain_build_never_match_a_reranker() -> None:
    manifest = {
        "catalog": {"sha256": "c"},
        "models": {"item_tower": {"sha256": "t"}},
        "lexical_index": {"backend": "tantivy"},
    }
    assert NightlyInputs.of_manifest(manifest) == NightlyInputs("c", "t", None, "tantivy")
    assert NightlyInputs.of_manifest(manifest) != NightlyInputs("c", "t", "r", "tantivy")
    assert NightlyInputs.of_manifest({"catalog": {}}) is None


@pytest.mark.elasticsearch
def test_with_elasticsearch_the_alias_moves_only_on_promotion(
    data: dict[str, Path], tmp_path: Path, es_client: Any
) -> None:
    """The lexical leg in Elasticsearch: a promotion moves the alias with ``CURRENT``; a
    refusal leaves the alias on the serving index and keeps the refused index."""
    prefix = f"test-nightly-{uuid.uuid4().hex[:8]}"
    index = tmp_path / "index"
    es = ["--lexical", "elasticsearch", "--es-url", ES_URL, "--es-index-prefix", prefix]
    try:

        def run(catalog: str) -> tuple[int, dict[str, Any]]:
            result = runner.invoke(
                app, [*argv(data, index, catalog), "--device", "cpu", "--json", *es]
            )
            assert result.exit_code in (0, 3), result.output[-3000:]
            return result.exit_code, json.loads(result.stdout[result.stdout.index("{\n") :])

        def aliased() -> list[str]:
            return sorted(es_client.indices.get_alias(name=prefix).body)

        code, first = run("good")
        assert (code, first["status"]) == (0, "first")
        serving_index = f"{prefix}-{first['candidate'].lower()}"
        assert aliased() == [serving_index]

        code, bad = run("bad")
        assert (code, bad["status"]) == (3, "refused")
        assert aliased() == [serving_index]  # the alias did not move
        refused_index = f"{prefix}-{bad['candidate'].lower()}"
        assert es_client.indices.exists(index=refused_index)  # kept for inspection
        assert SnapshotStore(index).current() == first["candidate"]
    finally:
        existing = es_client.indices.get(index=f"{prefix}*", allow_no_indices=True)
        if existing.body:
            es_client.indices.delete(index=",".join(existing.body))


def test_the_shopper_step_retrains_from_the_event_store_once(
    data: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shopsearch.indexer.events.demo import demo_events
    from shopsearch.indexer.events.store import EventStore
    from shopsearch.retrieval.model_registry import list_models

    products, _ = load_catalog(data["good"])
    db = tmp_path / "events.db"
    # 60 days of demo events up to now; the retention window keeps the last 30 of them.
    with EventStore(db) as store:
        store.add(demo_events(products, b"nightly-test-key-0123456789abcdef"))
        before = store.count()
    models = tmp_path / "models"
    monkeypatch.setenv("SHOPSEARCH_MODELS_DIR", str(models))
    monkeypatch.setenv("SHOPSEARCH_EVENTS_RETENTION_DAYS", "30")
    index = tmp_path / "index"
    code, first = nightly(data, index, "good", "--events-db", str(db), "--shopper-minutes", "0.5")
    assert code == 0 and first["shoppers"]["status"] == "retrained", first["shoppers"]
    with EventStore(db) as store:
        kept = store.count()
        oldest = store.interactions()["ts"].min()
    assert 0 < kept < before and first["shoppers"]["pruned_events"] == before - kept
    assert oldest >= datetime.now(UTC) - timedelta(days=30, minutes=5)
    (recommender,) = list_models(models, "recommender")
    assert first["shoppers"]["recommender"] == recommender.spec
    # The demo's searches are too few to learn the re-scorer's blend from: the built-in
    # weights stay, and the outcome says why.
    # (Too few training queries, or on some dates no month before the last at all.)
    assert "re-scorer was kept" in first["shoppers"]["reason"]
    assert not list_models(models, "personal")
    report = Path(first["report"]).read_text()
    assert "## Shopper models" in report and recommender.spec in report
    # The same events again: nothing is trained.
    code, second = nightly(data, index, "good", "--events-db", str(db))
    assert code == 0 and second["shoppers"]["status"] == "unchanged"
    assert len(list_models(models, "recommender")) == 1
