"""Training: the registry, the training data, tiny runs of both trainers on the real MiniLM,
reloading through the registry, reproducibility, and the train/models CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from shopsearch.indexer.judgments import EvalDataset, JudgedQuery, load_homedepot
from shopsearch.indexer.training.candidate_mining import (
    catalog_embeddings,
    dense_source,
    lexical_source,
    mine_candidates,
)
from shopsearch.indexer.training.dev_metrics import (
    RerankDevSet,
    RetrievalDevSet,
    ndcg_at_k,
    rerank_metrics,
    retrieval_metrics,
)
from shopsearch.indexer.training.distill import teacher_margins
from shopsearch.indexer.training.mined_data import (
    MiningOptions,
    TrainingDataError,
    build_dev_data,
    build_training_data,
)
from shopsearch.indexer.training.reranker import (
    RerankerTrainingConfig,
    query_groups,
    train_reranker,
)
from shopsearch.indexer.training.towers import (
    TowerTrainingConfig,
    TrainingError,
    no_duplicate_batches,
    train_towers,
)
from shopsearch.rerank.cross_encoder import Reranker
from shopsearch.retrieval.encoders import Encoder, default_model_path, model_info
from shopsearch.retrieval.model_registry import (
    RegistryError,
    list_models,
    load_card,
    new_version,
    register,
    resolve_model,
    staging_dir,
)
from shopsearch.retrieval.types import Product
from tests.conftest import require

BASE = default_model_path()

PRODUCTS = [
    Product(id="p1", title="DeWalt 20V cordless drill driver kit"),
    Product(id="p2", title="Milwaukee M18 cordless hammer drill"),
    Product(id="p3", title="Round front toilet seat in white"),
    Product(id="p4", title="Elongated toilet seat with slow close"),
    Product(id="p5", title="50 ft garden hose with nozzle"),
    Product(id="p6", title="Heavy duty garden hose reel"),
    Product(id="p7", title="LED flush mount ceiling light"),
    Product(id="p8", title="Cordless drill bit set 29 piece"),
    Product(id="p9", title="Round front toilet seat in white"),  # same title as p3
    Product(id="p10", title="Interior latex paint eggshell white 1 gal"),
    Product(id="p11", title="Exterior wood stain cedar 1 gal"),
    Product(id="p12", title="Ceiling fan with light kit 52 in"),
]
QUERIES = (
    JudgedQuery("q1", "cordless drill", {"p1": 3.0, "p2": 2.67, "p8": 1.33}),
    JudgedQuery("q2", "toilet seat round", {"p3": 3.0, "p4": 2.0}),
    JudgedQuery("q3", "garden hose", {"p5": 3.0, "p6": 2.33}),
    JudgedQuery("q4", "ceiling light", {"p7": 2.67, "p12": 1.67}),
    JudgedQuery("q5", "white paint", {"p10": 3.0, "p11": 1.0}),
)
DATASET = EvalDataset(name="tiny", queries=QUERIES, gain_offset=1.0)


def _lexical_like(queries: list[str] | tuple[str, ...], k: int) -> list[list[str]]:
    """A deterministic stand-in source: products sharing a word with the query."""
    out = []
    for q in queries:
        words = set(q.split())
        hits = [p.id for p in PRODUCTS if words & set(p.title.lower().split())]
        out.append((hits + [p.id for p in PRODUCTS if p.id not in hits])[:k])
    return out


@pytest.fixture(scope="module")
def tiny_data():
    candidates = mine_candidates(QUERIES, [_lexical_like], depth=8)
    return build_training_data(
        DATASET, PRODUCTS, candidates, MiningOptions(hard_negatives=3, random_negatives=2)
    )


# -- registry ---------------------------------------------------------------------


def _stage_fake(models_dir: Path, kind: str, payload: bytes = b"weights") -> str:
    version = new_version(models_dir, kind)
    (staging_dir(models_dir, kind, version) / "model.safetensors").write_bytes(payload)
    return version


def test_registry_register_list_resolve(tmp_path: Path) -> None:
    v1 = _stage_fake(tmp_path, "towers", b"one")
    m1 = register(tmp_path, "towers", v1, {"seed": 1})
    v2 = _stage_fake(tmp_path, "towers", b"two")
    m2 = register(tmp_path, "towers", v2, {"seed": 2})
    assert v1 != v2 and m1.path.name == v1
    assert [m.version for m in list_models(tmp_path, "towers")] == [v1, v2]
    assert list_models(tmp_path, "reranker") == []
    assert resolve_model("towers/latest", tmp_path) == m2.path
    assert resolve_model(f"towers/{v1}", tmp_path) == m1.path
    assert resolve_model(str(m1.path), tmp_path) == m1.path
    card = load_card(m2.path)
    assert card["seed"] == 2 and card["kind"] == "towers" and card["version"] == v2
    assert card["model"]["sha256"] == model_info(m2.path).sha256
    assert {"torch", "sentence-transformers", "transformers"} <= set(card["libraries"])
    # Nothing half-written is listed.
    staging_dir(tmp_path, "towers", "20990101T000000Z")
    assert len(list_models(tmp_path)) == 2


def test_registry_errors_list_the_choices(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match=r"no reranker model.*shopsearch train reranker"):
        resolve_model("reranker/latest", tmp_path)
    v1 = _stage_fake(tmp_path, "reranker")
    register(tmp_path, "reranker", v1, {})
    with pytest.raises(RegistryError, match=f"valid versions: {v1}"):
        resolve_model("reranker/nope", tmp_path)
    with pytest.raises(
        RegistryError, match="valid kinds are: towers, reranker, recommender, sequence"
    ):
        list_models(tmp_path, "encoder")
    with pytest.raises(RegistryError, match="neither a directory nor a registry spec"):
        resolve_model("encoders/latest", tmp_path)
    with pytest.raises(RegistryError, match="nothing staged"):
        register(tmp_path, "towers", "20200101T000000Z", {})
    with pytest.raises(RegistryError, match="not a registered model"):
        load_card(tmp_path)


# -- training data ----------------------------------------------------------------


def test_training_data_positives_and_negatives(tiny_data) -> None:
    by_qid = {q.qid: q for q in tiny_data.queries}
    assert by_qid["q1"].positives == ("p1", "p2")
    assert by_qid["q4"].positives == ("p7",)
    # Judged low-grade products are negatives, first; relevant-ish ones (>= 2) never are.
    assert by_qid["q1"].hard_negatives[0] == "p8"
    for q in tiny_data.queries:
        assert not set(q.hard_negatives) & {p for p, g in q.judgments.items() if g >= 2.0}
        assert not set(q.random_negatives) & set(q.judgments)
    # p9 has the title of p3 (judged relevant for q2): never a negative of q2.
    assert "p9" not in by_qid["q2"].hard_negatives + by_qid["q2"].random_negatives
    triplets = tiny_data.tower_triplets()
    assert len(triplets) == sum(len(q.positives) for q in tiny_data.queries)
    pairs = tiny_data.reranker_pairs()
    labels = {(q, t): y for q, t, y in pairs}
    assert labels[("cordless drill", PRODUCTS[0].title)] == 1.0
    assert labels[("toilet seat round", PRODUCTS[3].title)] == pytest.approx(0.5)
    assert labels[("white paint", PRODUCTS[10].title)] == 0.0
    assert all(0.0 <= y <= 1.0 for *_, y in pairs)


def test_training_data_checksum_is_stable_and_seeded(tiny_data) -> None:
    candidates = mine_candidates(QUERIES, [_lexical_like], depth=8)
    again = build_training_data(
        DATASET, PRODUCTS, candidates, MiningOptions(hard_negatives=3, random_negatives=2)
    )
    other = build_training_data(
        DATASET, PRODUCTS, candidates, MiningOptions(hard_negatives=3, random_negatives=2, seed=9)
    )
    assert again.checksum == tiny_data.checksum
    assert other.checksum != tiny_data.checksum


def test_training_data_errors() -> None:
    with pytest.raises(TrainingDataError, match="catalog is empty"):
        build_training_data(DATASET, [], {})
    with pytest.raises(TrainingDataError, match="positive threshold"):
        build_training_data(DATASET, PRODUCTS, {}, MiningOptions(positive_threshold=3.5))
    with pytest.raises(TrainingDataError, match="cannot be both"):
        MiningOptions(positive_threshold=2.0, negative_threshold=2.5)


def test_dev_data_and_metrics() -> None:
    dev = build_dev_data(DATASET, PRODUCTS, [_lexical_like], n_queries=3, depth=4, n_distractors=4)
    r = dev.retrieval
    assert len(r.queries) == 3 and len(r.corpus) >= 3
    perfect = retrieval_metrics(
        np.eye(3, len(r.corpus), dtype=np.float32),
        np.eye(len(r.corpus), dtype=np.float32),
        RetrievalDevSet(
            r.queries, r.corpus, [{i: 1.0} for i in range(3)], [frozenset({i}) for i in range(3)]
        ),
    )
    assert perfect == {"ndcg@10": 1.0, "recall@100": 1.0}
    assert ndcg_at_k([0.0, 2.0], [2.0], 10) == pytest.approx(1 / math.log2(3))
    rerank = RerankDevSet(dev.rerank_queries, dev.rerank_texts, dev.rerank_gains, dev.rerank_judged)
    ideal = rerank_metrics(rerank.gains, rerank)
    assert ideal["ndcg@10"] == pytest.approx(1.0) and ideal["b.ndcg@10"] == pytest.approx(1.0)


def test_no_duplicate_batches_never_repeat_a_text() -> None:
    keys = [("q:a", "d:x"), ("q:a", "d:y"), ("q:b", "d:x"), ("q:c", "d:z"), ("q:d", "d:w")]
    batches = no_duplicate_batches(keys, 3, np.random.default_rng(0))
    for batch in batches:
        seen = [k for i in batch for k in keys[i]]
        assert len(seen) == len(set(seen))


# -- tiny training runs on the real MiniLM ----------------------------------------


def test_towers_tiny_run_registers_reloads_and_is_reproducible(tmp_path: Path, tiny_data) -> None:
    triplets = tiny_data.tower_triplets() * 4
    config = TowerTrainingConfig(towers="shared", batch_size=4, max_pairs=4, seed=7)
    first_losses = []
    for _ in range(2):
        version = new_version(tmp_path, "towers")
        out = staging_dir(tmp_path, "towers", version)
        result = train_towers(triplets, BASE, out, config)
        first_losses.append(result.first_step_loss)
        register(tmp_path, "towers", version, {"towers_decision": result.decision})
    assert first_losses[0] == pytest.approx(first_losses[1], abs=1e-6)
    assert result.steps >= 1 and result.stopped_by == "epochs"
    path = resolve_model("towers/latest", tmp_path)
    assert (path / "loss_curve.png").stat().st_size > 1000
    encoder = Encoder(path, device="cpu")
    q = encoder.encode_query(["cordless drill"])
    d = encoder.encode_document([PRODUCTS[0].title, PRODUCTS[2].title])
    assert q.shape == (1, 384) and float((q @ d.T)[0, 0]) > float((q @ d.T)[0, 1])


def test_towers_auto_decides_between_layouts(tmp_path: Path, tiny_data) -> None:
    dev = build_dev_data(DATASET, PRODUCTS, [_lexical_like], n_queries=3, depth=4, n_distractors=4)
    triplets = tiny_data.tower_triplets() * 3
    result = train_towers(
        triplets,
        BASE,
        tmp_path / "auto",
        TowerTrainingConfig(towers="auto", batch_size=4, pilot_steps=1, seed=3),
        dev=dev.retrieval,
    )
    assert result.decision["layout"] in ("shared", "separate")
    assert set(result.decision["pilot_dev"]) == {"shared", "separate"}
    assert result.dev_before and result.dev_after and result.epochs[-1].dev
    with pytest.raises(TrainingError, match="dev set"):
        train_towers(triplets, BASE, tmp_path / "x", TowerTrainingConfig(towers="auto"))


def test_separate_towers_reload_as_one_model(tmp_path: Path, tiny_data) -> None:
    triplets = tiny_data.tower_triplets() * 2
    train_towers(
        triplets,
        BASE,
        tmp_path / "sep",
        TowerTrainingConfig(towers="separate", batch_size=4, max_pairs=4),
    )
    assert (tmp_path / "sep" / "router_config.json").is_file()
    encoder = Encoder(tmp_path / "sep", device="cpu")
    assert encoder.encode_query(["drill"]).shape == encoder.encode_document(["a drill"]).shape

    # A snapshot built with these towers is served with them when no model is given
    # (the bundled base towers would be refused for the mismatch).
    from shopsearch.api.schemas import SearchRequest
    from shopsearch.api.service import SearchService
    from shopsearch.api.settings import Settings
    from shopsearch.indexer.catalog import CatalogReport
    from shopsearch.indexer.snapshot_build import BuildOptions, build_snapshot

    report = CatalogReport(path="t", format="jsonl", sha256="t" * 64, rows_read=12, products=12)
    index_dir = tmp_path / "index"
    build_snapshot(PRODUCTS, report, index_dir, encoder, BuildOptions(probe_count=4))
    service = SearchService(Settings(index_dir=index_dir, reload_interval_s=0, device="cpu"))
    service.load()
    assert service.encoder.info.sha256 == encoder.info.sha256 != model_info(BASE).sha256
    assert service.search(SearchRequest(q="garden hose", size=2)).hits


def test_towers_distillation_adds_the_margin_term(tmp_path: Path, tiny_data) -> None:
    triplets = tiny_data.tower_triplets() * 4
    config = TowerTrainingConfig(towers="shared", batch_size=4, max_pairs=4, seed=7)
    plain = train_towers(triplets, BASE, tmp_path / "plain", config)
    # The teacher asks for a margin of 1.0 (in cosine units) that the base model lacks.
    margins = [1.0] * len(triplets)
    runs = [
        train_towers(triplets, BASE, tmp_path / f"distill{i}", config, teacher_margins=margins)
        for i in range(2)
    ]
    assert runs[0].first_step_loss == pytest.approx(runs[1].first_step_loss, abs=1e-6)
    assert runs[0].first_step_loss > plain.first_step_loss + 0.1
    assert "MarginMSELoss" in runs[0].loss_name and "MarginMSE" not in plain.loss_name
    with pytest.raises(TrainingError, match="teacher margins for"):
        train_towers(triplets, BASE, tmp_path / "x", config, teacher_margins=[1.0])
    cached = TowerTrainingConfig(towers="shared", batch_size=4, mini_batch_size=2)
    with pytest.raises(TrainingError, match="mini_batch_size"):
        train_towers(triplets, BASE, tmp_path / "y", cached, teacher_margins=margins)
    with pytest.raises(TrainingError, match="distill_weight"):
        TowerTrainingConfig(distill_weight=-1.0)


def test_training_budget_errors(tmp_path: Path, tiny_data) -> None:
    with pytest.raises(TrainingError, match="budget ended before the first step"):
        train_towers(
            tiny_data.tower_triplets(),
            BASE,
            tmp_path / "t",
            TowerTrainingConfig(towers="shared", batch_size=2, max_minutes=1e-6),
        )
    with pytest.raises(TrainingError, match="valid layouts"):
        TowerTrainingConfig(towers="twin")  # type: ignore[arg-type]
    with pytest.raises(TrainingError, match="outside \\[0, 1\\]"):
        train_reranker([("q", "t", 2.0)], BASE, tmp_path / "r")


def test_towers_max_steps_stops_there_and_warns_of_a_partial_epoch(
    tmp_path: Path, tiny_data, caplog: pytest.LogCaptureFixture
) -> None:
    triplets = tiny_data.tower_triplets() * 4
    config = TowerTrainingConfig(towers="shared", batch_size=2, max_steps=2, seed=7)
    with caplog.at_level("WARNING", logger="shopsearch.indexer.training.towers"):
        result = train_towers(triplets, BASE, tmp_path / "t", config)
    assert result.steps == 2 and len(result.losses) == 2 and result.stopped_by == "steps"
    budget = result.budget
    assert budget["planned_steps"] == 2 and budget["epoch_steps"] > 2
    assert budget["fraction_of_epoch"] == pytest.approx(2 / budget["epoch_steps"], abs=1e-3)
    assert any("partial epoch: 2 of" in r.getMessage() for r in caplog.records)


def test_reranker_max_steps_stops_there_and_warns_of_a_partial_epoch(
    tmp_path: Path, tiny_data, caplog: pytest.LogCaptureFixture
) -> None:
    config = RerankerTrainingConfig(loss="bce", batch_size=2, max_steps=3, seed=5)
    with caplog.at_level("WARNING", logger="shopsearch.indexer.training.reranker"):
        result = train_reranker(tiny_data.reranker_pairs(), BASE, tmp_path / "r", config)
    assert result.steps == 3 and result.stopped_by == "steps"
    assert result.budget["planned_steps"] == 3 and result.budget["stopped_by"] == "steps"
    assert [e.steps for e in result.epochs] == [3]
    assert any("partial epoch: 3 of" in r.getMessage() for r in caplog.records)


def test_reranker_tiny_run_registers_reloads_and_is_reproducible(tmp_path: Path, tiny_data) -> None:
    pairs = tiny_data.reranker_pairs()
    config = RerankerTrainingConfig(loss="bce", batch_size=16, max_pairs=16, seed=5)
    first_losses = []
    for _ in range(2):
        version = new_version(tmp_path, "reranker")
        out = staging_dir(tmp_path, "reranker", version)
        result = train_reranker(pairs, BASE, out, config)
        first_losses.append(result.first_step_loss)
        register(tmp_path, "reranker", version, {"max_length": result.max_length})
    assert first_losses[0] == pytest.approx(first_losses[1], abs=1e-6)
    assert result.steps == 1 and 8 <= result.max_length <= 64
    path = resolve_model("reranker/latest", tmp_path)
    assert (path / "loss_curve.png").is_file()
    scores = Reranker(path, device="cpu").score("drill", ["cordless drill", "toilet seat"])
    assert scores.shape == (2,) and np.isfinite(scores).all()


def test_query_groups_keep_lists_with_an_order_to_learn() -> None:
    pairs = [
        ("drill", "cordless drill", 1.0),
        ("saw", "miter saw", 0.5),
        ("drill", "toilet seat", 0.0),
        ("saw", "circular saw", 0.5),  # both "saw" labels equal: nothing to order
        ("drill", "drill bit set", 0.5),
    ]
    assert query_groups(pairs) == [
        ("drill", ["cordless drill", "toilet seat", "drill bit set"], [1.0, 0.0, 0.5])
    ]


def test_reranker_lambda_loss_packs_whole_queries(tmp_path: Path, tiny_data) -> None:
    pairs = tiny_data.reranker_pairs()
    groups = query_groups(pairs)
    assert len(groups) >= 2
    budget = max(len(g[1]) for g in groups)  # every step holds at least one whole query
    config = RerankerTrainingConfig(loss="lambda", batch_size=budget, epochs=1, seed=5)
    result = train_reranker(pairs, BASE, tmp_path / "r", config)
    assert result.pairs_seen == sum(len(g[1]) for g in groups)  # each query's list, once
    assert 1 <= result.steps <= len(groups) and result.label_stats["queries"] == len(groups)
    assert all(np.isfinite(result.losses))
    with pytest.raises(TrainingError, match="two different labels"):
        train_reranker([("q", "t", 0.0), ("q", "u", 0.0)], BASE, tmp_path / "x", config)
    with pytest.raises(TrainingError, match="loss must be one of bce, lambda"):
        RerankerTrainingConfig(loss="listnet")  # type: ignore[arg-type]


def test_snapshot_refuses_a_fine_tuned_query_tower(
    tmp_path: Path, sample_index: Path, tiny_data
) -> None:
    from shopsearch.api.service import SearchService
    from shopsearch.api.settings import Settings
    from shopsearch.indexer.snapshot import SnapshotError

    out = tmp_path / "towers"
    train_towers(
        tiny_data.tower_triplets(),
        BASE,
        out,
        TowerTrainingConfig(towers="shared", batch_size=4, max_pairs=4),
    )
    service = SearchService(Settings(index_dir=sample_index, reload_interval_s=0, model_dir=out))
    with pytest.raises(SnapshotError, match="query tower"):
        service.load()


# -- the CLI ----------------------------------------------------------------------


def _tiny_generic(tmp_path: Path) -> dict[str, Path]:
    catalog = tmp_path / "catalog.csv"
    catalog.write_text(
        "product_uid,product_title\n" + "".join(f'{p.id},"{p.title}"\n' for p in PRODUCTS)
    )
    queries = tmp_path / "queries.tsv"
    queries.write_text("".join(f"{q.qid}\t{q.text}\n" for q in QUERIES))
    qrels = tmp_path / "qrels.txt"
    qrels.write_text(
        "".join(f"{q.qid} 0 {pid} {g}\n" for q in QUERIES for pid, g in q.judgments.items())
    )
    return {"catalog": catalog, "queries": queries, "qrels": qrels}


def _app():
    import typer

    from shopsearch.api.cli_train import models_app, train_app

    app = typer.Typer()
    app.add_typer(train_app, name="train")
    app.add_typer(models_app, name="models")
    return app


@pytest.mark.parametrize("kind", ["towers", "reranker"])
def test_cli_train_help_lists_the_step_budget(kind: str) -> None:
    result = CliRunner().invoke(_app(), ["train", kind, "--help"])
    assert result.exit_code == 0 and "--max-steps" in result.output


def test_cli_train_towers_and_models_list_show(tmp_path: Path) -> None:
    files = _tiny_generic(tmp_path)
    models = tmp_path / "models"
    common = [
        "--train", str(files["queries"]), "--train-qrels", str(files["qrels"]),
        "--dev", str(files["queries"]), "--dev-qrels", str(files["qrels"]),
        "--gain-offset", "1", "--catalog", str(files["catalog"]),
        "--models-dir", str(models), "--max-pairs", "8", "--dev-queries", "3", "--device", "cpu",
    ]  # fmt: skip
    runner = CliRunner()
    result = runner.invoke(
        _app(), ["train", "towers", *common, "--towers", "shared", "--batch-size", "4", "--json"]
    )
    assert result.exit_code == 0, result.output
    card = json.loads(result.stdout[result.stdout.index("{") :])
    assert card["towers_decision"]["layout"] == "shared"
    assert card["training_data"]["checksum"] and card["base_model"]["sha256"]
    assert card["dev_metrics"]["after"] and card["epochs"]
    # A run the budget did not cut: every step of the epoch, no warning.
    budget = card["budget"]
    assert budget["stopped_by"] == card["stopped_by"] == "epochs" and budget["warnings"] == []
    assert budget["steps"] == budget["planned_steps"] == budget["epoch_steps"] == card["steps"]
    # The cached catalog vectors are keyed by the model checksum.
    cache = models / ".cache" / "embeddings" / card["base_model"]["sha256"][:16]
    assert (cache / "cache.npz").is_file()
    result = runner.invoke(_app(), ["models", "show", "towers/latest", "--models-dir", str(models)])
    assert result.exit_code == 0 and json.loads(result.stdout)["version"] == card["version"]
    result = runner.invoke(_app(), ["models", "list", "--models-dir", str(models)])
    assert result.exit_code == 0 and "towers/" in result.stdout
    result = runner.invoke(
        _app(), ["models", "show", "reranker/latest", "--models-dir", str(models)]
    )
    assert result.exit_code == 1 and "no reranker model" in result.output


def test_cli_train_reranker_then_distil_it_into_the_towers(tmp_path: Path) -> None:
    files = _tiny_generic(tmp_path)
    models = tmp_path / "models"
    common = [
        "--train", str(files["queries"]), "--train-qrels", str(files["qrels"]),
        "--dev", str(files["queries"]), "--dev-qrels", str(files["qrels"]),
        "--gain-offset", "1", "--catalog", str(files["catalog"]),
        "--models-dir", str(models), "--dev-queries", "3", "--device", "cpu", "--json",
    ]  # fmt: skip
    args = ["train", "reranker", *common, "--max-pairs", "16", "--batch-size", "16"]
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 0, result.output
    card = json.loads(result.stdout[result.stdout.index("{") :])
    assert card["kind"] == "reranker" and card["max_length"] >= 8
    assert card["training_data"]["query_rewrite"]["enabled"] is True
    assert card["training_examples"]["labels"]["zero_labels"] > 0

    # The trained cross-encoder teaches the towers: one margin per triplet, grouped by query.
    # torch: int8 scores shift a little with the batch (activations are quantized per batch).
    teacher = Reranker(resolve_model("reranker/latest", models), device="cpu", backend="torch")
    triplets = [
        ("cordless drill", "DeWalt 20V cordless drill", "Round front toilet seat"),
        ("garden hose", "50 ft garden hose", "LED ceiling light"),
        ("cordless drill", "DeWalt 20V cordless drill", "Exterior wood stain"),
    ]
    done = []
    margins = teacher_margins(teacher, triplets, progress=done.append)
    for (query, pos, neg), margin in zip(triplets, margins, strict=True):
        want = teacher.score(query, [pos, neg])
        assert margin == pytest.approx(float(want[0] - want[1]), abs=1e-5)
    assert sorted(done) == [1, 2]  # one teacher call per query
    result = CliRunner().invoke(
        _app(),
        [
            "train", "towers", *common, "--towers", "shared", "--batch-size", "4",
            "--max-pairs", "8", "--distill-from", "reranker/latest",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    card = json.loads(result.stdout[result.stdout.index("{") :])
    distillation = card["distillation"]
    teacher_dir = resolve_model("reranker/latest", models)
    assert distillation["teacher"]["id"] == f"{teacher_dir.name}+onnx-int8"  # auto on a CPU
    assert distillation["teacher"]["path"] == str(teacher_dir)
    assert distillation["margins"]["count"] == card["training_examples"]["triplets"]
    assert "MarginMSELoss" in card["loss"]


# -- real data --------------------------------------------------------------------


def test_homedepot_training_data_slice(homedepot_dir: Path, encoder: Encoder) -> None:
    """Mining over a slice of the real catalog gives negatives for most queries."""
    require((homedepot_dir / "train.csv").is_file(), "Home Depot train.csv missing")
    from shopsearch.indexer.catalog import ColumnMapping, load_catalog
    from shopsearch.retrieval.lexical_index import TantivyIndex

    full = load_homedepot(homedepot_dir / "train.csv")
    sliced = EvalDataset(full.name, full.queries[:40], full.gain_offset)
    products, _ = load_catalog(
        homedepot_dir / "products.csv", ColumnMapping(id="product_uid", title="product_title")
    )
    judged = {pid for q in sliced.queries for pid in q.judgments}
    subset = [p for p in products if p.id in judged] + list(products[:300])
    subset = list({p.id: p for p in subset}.values())
    index = TantivyIndex(Path(__import__("tempfile").mkdtemp()) / "lex")
    index.build(subset)
    vectors = catalog_embeddings(encoder, subset)
    sources = [lexical_source(index), dense_source(encoder, vectors, [p.id for p in subset])]
    candidates = mine_candidates(sliced.queries, sources, depth=20)
    data = build_training_data(sliced, subset, candidates)
    stats = data.stats()
    assert stats["positives"] > 20
    assert sum(1 for q in data.queries if q.hard_negatives) >= 0.9 * len(data.queries)
    for q in data.queries:
        assert all(q.judgments.get(pid, 0.0) < 2.0 for pid in q.hard_negatives)


# -- the registry the training commands use ($SHOPSEARCH_MODELS_DIR) --------------


def _squeezed(output: str) -> str:
    """``output`` without whitespace: rich folds a long path over lines."""
    return "".join(output.split())


@pytest.mark.parametrize("kind", ["towers", "reranker"])
def test_train_commands_use_the_models_dir_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """Without --models-dir, training resolves specs in (and registers into) the
    registry $SHOPSEARCH_MODELS_DIR names, the one `serve --model towers/latest` reads.
    An unresolvable --mining-model fails before any data is read, naming the registry."""
    registry = tmp_path / "registry"
    monkeypatch.setenv("SHOPSEARCH_MODELS_DIR", str(registry))
    args = ["train", kind, "--mining-model", "towers/latest", "--homedepot-dir", str(tmp_path)]
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 1, result.output
    assert f"notowersmodelin{registry};" in _squeezed(result.output), result.output
    # --models-dir still wins over the setting.
    other = tmp_path / "other"
    result = CliRunner().invoke(_app(), [*args, "--models-dir", str(other)])
    assert f"notowersmodelin{other};" in _squeezed(result.output), result.output


def test_models_commands_use_the_models_dir_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = tmp_path / "registry"
    version = _stage_fake(registry, "towers")
    register(registry, "towers", version, {"seed": 1})
    monkeypatch.setenv("SHOPSEARCH_MODELS_DIR", str(registry))
    result = CliRunner().invoke(_app(), ["models", "show", "towers/latest"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["version"] == version


def test_train_recommender_registers_in_the_models_dir_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Importing it registers `train recommender` on train_app.
    import shopsearch.api.cli_train_recommender  # noqa: F401

    registry = tmp_path / "registry"
    monkeypatch.setenv("SHOPSEARCH_MODELS_DIR", str(registry))
    monkeypatch.chdir(tmp_path)  # the default var/models would land here, not in the repo
    history = tmp_path / "history.csv"
    rows = ["InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country"]
    for n in range(12):
        day = f"2011-09-{n + 1:02d} 10:00:00"
        rows += [f"5{n:03d},A1,RED HEART MUG,2,{day},1.5,{100 + n % 4},UK"]
        rows += [f"5{n:03d},B1,RED HEART CUP,2,{day},1.5,{100 + n % 4},UK"]
        rows += [f"6{n:03d},C1,BLUE LANTERN,2,{day},1.5,{200 + n % 3},UK"]
    history.write_text("\n".join(rows) + "\n")
    args = ["train", "recommender", "--history", str(history), "--max-minutes", "0.5"]
    result = CliRunner().invoke(_app(), [*args, "--sequence-minutes", "0", "--json"])
    assert result.exit_code == 0, result.output
    card = json.loads(result.stdout[result.stdout.index("{") :])
    assert [m.version for m in list_models(registry, "recommender")] == [card["version"]]
    assert not (tmp_path / "var").exists()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["towers", "reranker"])
def test_cli_max_steps_run_lands_where_serve_looks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """A tiny `train <kind> --max-steps 2` with $SHOPSEARCH_MODELS_DIR set and no
    --models-dir: the model is registered there (so `--model <kind>/latest` resolves it),
    it took exactly 2 steps, and the card and the output say it is a partial epoch."""
    from shopsearch.api.cli_common import resolve_model_option

    files = _tiny_generic(tmp_path)
    registry = tmp_path / "registry"
    monkeypatch.setenv("SHOPSEARCH_MODELS_DIR", str(registry))
    monkeypatch.chdir(tmp_path)  # the old default var/models would land here
    args = [
        "train", kind, "--train", str(files["queries"]), "--train-qrels", str(files["qrels"]),
        "--dev", str(files["queries"]), "--dev-qrels", str(files["qrels"]),
        "--gain-offset", "1", "--catalog", str(files["catalog"]), "--dev-queries", "3",
        "--device", "cpu", "--batch-size", "2", "--max-steps", "2", "--json",
    ]  # fmt: skip
    if kind == "towers":
        args += ["--towers", "shared"]
    else:
        args += ["--loss", "bce"]
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 0, result.output
    card = json.loads(result.stdout[result.stdout.index("{") :])
    assert resolve_model_option(f"{kind}/latest") == registry / kind / card["version"]
    assert not (tmp_path / "var").exists()
    budget = card["budget"]
    assert card["steps"] == budget["steps"] == budget["planned_steps"] == 2
    assert budget["stopped_by"] == "steps" and card["hyper_parameters"]["max_steps"] == 2
    assert budget["epoch_steps"] > 2 and budget["fraction_of_epoch"] == pytest.approx(
        2 / budget["epoch_steps"], abs=1e-3
    )
    assert any("partial epoch" in w for w in budget["warnings"])
    assert "partial epoch" in result.stderr
