"""SearchParams (retrieval/search_params.py): one typed set of parameters per search,
resolved by the service from its settings and the request; per-call nprobe on the
vector index; eval's configurations as parameter overrides, swept with ``--sweep``.

The sample catalog (352 products) builds an exact Flat index, on which nprobe changes
nothing. ``ivf_index`` is a copy of the sample index whose snapshot serves IVF16 + PQ +
refine over the same stored vectors (as in tests/test_quality_monitor.py), so nprobe
changes what the dense leg finds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, get_args

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from shopsearch.api.app import create_app
from shopsearch.api.schemas import SearchRequest
from shopsearch.api.service import SearchService
from shopsearch.api.settings import Settings
from shopsearch.eval.runner import (
    Configuration,
    evaluate_configurations,
    parse_sweep,
    sweep_configurations,
)
from shopsearch.indexer.generations import snapshot_files
from shopsearch.indexer.judgments import EvalDataset, JudgedQuery
from shopsearch.indexer.snapshot import SnapshotStore
from shopsearch.rerank.cross_encoder import Reranker
from shopsearch.retrieval.encoders import Encoder
from shopsearch.retrieval.fusion import FusionMethod
from shopsearch.retrieval.search_params import (
    FUSION_NAMES,
    MAX_NPROBE,
    MERGE_NAMES,
    MODE_NAMES,
    PARAM_NAMES,
    SearchParams,
    parse_param,
)
from shopsearch.retrieval.vector_index import ExactIndex, FaissIndex, FaissParams

NLIST = 16
QUERIES = [
    "cordless drill",
    "garden hose",
    "led light bulb",
    "paint roller",
    "step ladder",
    "kitchen faucet",
    "wood screws",
    "lawn mower",
]


def _params(**changes: Any) -> SearchParams:
    base: dict[str, Any] = {
        "mode": "hybrid",
        "fusion": "rrf",
        "lexical_weight": 0.5,
        "leg_depth": 100,
        "max_depth": 2000,
        "rewrite": True,
        "rerank": False,
        "rerank_depth": 50,
        "rerank_weight": 0.5,
        "rerank_merge": "scores",
    }
    return SearchParams(**{**base, **changes})


@pytest.fixture(scope="module")
def ivf_index(sample_index: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of ``sample_index`` serving IVF16 + 4-bit PQ + refine (do not modify)."""
    index_dir = tmp_path_factory.mktemp("ivf-params") / "index"
    shutil.copytree(sample_index, index_dir)
    store = SnapshotStore(index_dir)
    path = store.path(str(store.current()))
    manifest = json.loads((path / "manifest.json").read_text())
    vectors_dir = path / str(snapshot_files(manifest)["vectors"])
    vectors = np.load(vectors_dir / "vectors.npy")
    params = FaissParams(nlist=NLIST, pq_m=vectors.shape[1] // 4, nprobe=NLIST, refine_factor=8)
    FaissIndex(vectors, params, use_gpu=False).save(vectors_dir)
    return index_dir


@pytest.fixture(scope="module")
def ivf_service(ivf_index: Path, encoder: Encoder, cross_encoder_dir: Path) -> SearchService:
    """A service over ``ivf_index`` with a reranker (search only; do not modify)."""
    svc = SearchService(
        Settings(index_dir=ivf_index, reload_interval_s=0, result_cache_size=0),
        encoder=encoder,
        reranker=Reranker(cross_encoder_dir, device="cpu", backend="torch"),
    )
    svc.load()
    return svc


@pytest.fixture(scope="module")
def exact_dataset(ivf_service: SearchService) -> EvalDataset:
    """``QUERIES`` judged by the exact top 10 of the dense leg: recall@10 of a dense run
    is its recall against exact search."""
    ids = ivf_service.snapshot.table.products
    queries = []
    for i, text in enumerate(QUERIES):
        request = SearchRequest(q=text, mode="dense", size=10)
        params = ivf_service.search_params(request, {"exact_dense": True, "leg_depth": 10})
        found = ivf_service.retrieve(request, params=params).dense
        # Grade 3: relevant to protocol A (grade >= 2.5).
        queries.append(JudgedQuery(f"q{i}", text, {ids[row].id: 3.0 for row, _ in found}))
    return EvalDataset("exact-top-10", tuple(queries))


# -- the parameters and their choices ---------------------------------------------------


def test_each_list_of_choices_is_defined_once() -> None:
    assert tuple(m.value for m in FusionMethod) == FUSION_NAMES
    request = SearchRequest.model_json_schema()["properties"]
    assert tuple(request["mode"]["enum"]) == MODE_NAMES
    assert tuple(request["fusion"]["anyOf"][0]["enum"]) == FUSION_NAMES
    assert tuple(request["rerank_merge"]["anyOf"][0]["enum"]) == MERGE_NAMES
    assert request["nprobe"]["anyOf"][0]["maximum"] == MAX_NPROBE
    assert get_args(Settings.model_fields["rerank_merge"].annotation) == MERGE_NAMES
    with pytest.raises(ValueError, match="fusion must be one of auto, rrf, weighted, weighted-rrf"):
        Settings(fusion="best")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"mode": "both"}, "mode must be one of hybrid, dense, lexical; got 'both'"),
        ({"fusion": "max"}, "fusion must be one of rrf, weighted, weighted-rrf"),
        ({"rerank_merge": "sum"}, "rerank_merge must be one of scores, ranks"),
        ({"lexical_weight": 1.5}, r"lexical_weight must be in \[0, 1\], got 1.5"),
        ({"leg_depth": 0}, "leg_depth must be an integer >= 1, got 0"),
        ({"nprobe": MAX_NPROBE + 1}, f"nprobe must be at most {MAX_NPROBE}"),
        ({"refine_factor": 0}, "refine_factor must be an integer >= 1"),
        ({"rerank": 1}, "rerank must be true or false"),
    ],
)
def test_params_refuse_values_out_of_range_naming_them(
    change: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        _params(**change)
    with pytest.raises(ValueError, match=message):
        _params().with_overrides(change)


def test_overrides_and_command_line_values() -> None:
    params = _params().with_overrides({"nprobe": 4, "mode": "dense"})
    assert (params.nprobe, params.mode, params.fusion) == (4, "dense", "rrf")
    assert params.to_dict()["nprobe"] == 4 and set(params.to_dict()) == set(PARAM_NAMES)
    with pytest.raises(ValueError, match=r"unknown search parameter\(s\) \['nprobes'\]; choose"):
        params.with_overrides({"nprobes": 4})
    assert parse_param("nprobe", "8") == 8 and parse_param("nprobe", "none") is None
    assert parse_param("lexical_weight", "0.3") == 0.3
    assert parse_param("exact_dense", "true") is True
    assert parse_param("fusion", "weighted-rrf") == "weighted-rrf"
    with pytest.raises(ValueError, match="nprobe must be an integer, got 'many'"):
        parse_param("nprobe", "many")
    with pytest.raises(ValueError, match="fusion must be one of rrf"):
        parse_param("fusion", "best")
    assert parse_sweep("nprobe=1, 4,16") == ("nprobe", (1, 4, 16))
    for bad in ("nprobe", "nprobe=", "=1,2", "depth=1"):
        with pytest.raises(ValueError):
            parse_sweep(bad)


def test_service_resolves_the_servers_defaults_into_the_params(
    sample_service: SearchService,
) -> None:
    settings = sample_service.settings
    default = sample_service.default_fusion
    params = sample_service.search_params(SearchRequest(q="drill"))
    assert params.fusion == default.method.value
    assert params.lexical_weight == default.lexical_weight
    assert params.leg_depth == settings.leg_depth and params.max_depth == settings.max_depth
    assert params.rerank is False  # no reranker configured
    assert (params.nprobe, params.exact_dense, params.rewrite) == (None, False, True)
    # A fusion named without a weight gets the configured weight, not the default's.
    named = sample_service.search_params(SearchRequest(q="drill", fusion="weighted"))
    assert (named.fusion, named.lexical_weight) == ("weighted", settings.lexical_weight)
    # The leg depth reaches the requested page; a request's depth and nprobe win.
    deep = sample_service.search_params(SearchRequest(q="drill", page=4, size=50))
    assert deep.leg_depth == 200
    asked = sample_service.search_params(
        SearchRequest(q="drill", depth=7, nprobe=3, rewrite=False, rerank_merge="ranks")
    )
    assert (asked.leg_depth, asked.nprobe, asked.rewrite, asked.rerank_merge) == (
        7,
        3,
        False,
        "ranks",
    )
    # Overrides (eval's) come last.
    assert (
        sample_service.search_params(SearchRequest(q="x", depth=7), {"leg_depth": 9}).leg_depth == 9
    )


# -- per-request nprobe -------------------------------------------------------------------


def _recall(svc: SearchService, nprobe: int) -> float:
    total = 0.0
    for text in QUERIES:
        request = SearchRequest(q=text, mode="dense", size=10, depth=10)
        exact = svc.retrieve(request, params=svc.search_params(request, {"exact_dense": True}))
        found = svc.retrieve(request.model_copy(update={"nprobe": nprobe}))
        truth = {row for row, _ in exact.dense}
        total += len(truth & {row for row, _ in found.dense}) / len(truth)
    return total / len(QUERIES)


def test_nprobe_per_request_changes_recall_without_changing_the_index(
    ivf_service: SearchService,
) -> None:
    index = ivf_service.snapshot.vectors
    assert isinstance(index, FaissIndex) and index.params.nlist == NLIST
    before = index.params
    low, high = _recall(ivf_service, 1), _recall(ivf_service, NLIST)
    assert high >= 0.95
    assert low < high - 0.1
    assert index.params == before  # nothing set on the shared index


def test_exact_search_of_the_faiss_index_is_the_exact_oracle(ivf_service: SearchService) -> None:
    index = ivf_service.snapshot.vectors
    assert isinstance(index, FaissIndex)
    oracle = ExactIndex(index.vectors)
    oracle.alive = index.alive.copy()
    queries = ivf_service.encoder.encode_query(QUERIES)
    keep = np.zeros(len(index.alive), dtype=bool)
    keep[::3] = True
    for id_filter in (None, keep):
        got = index.search(queries, 10, id_filter=id_filter, exact=True, nprobe=1)
        want = oracle.search(queries, 10, id_filter=id_filter)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_array_equal(got[0], want[0])
    # An exact index has nothing to tune: the same answer whatever is asked.
    np.testing.assert_array_equal(
        oracle.search(queries, 10, nprobe=1, refine_factor=2)[1], oracle.search(queries, 10)[1]
    )
    rows = np.asarray([3, 1], dtype=np.int64)
    np.testing.assert_array_equal(index.vectors_of(rows), index.vectors[[3, 1]])


def test_http_nprobe_is_bounded_and_explain_reports_the_params(
    ivf_service: SearchService,
) -> None:
    with TestClient(create_app(ivf_service.settings, service=ivf_service)) as client:
        r = client.post(
            "/v1/search",
            json={
                "q": "garden hose",
                "mode": "dense",
                "nprobe": 2,
                "explain": True,
                "rerank": False,
            },
        )
        assert r.status_code == 200, r.text
        params = r.json()["params"]
        assert params["nprobe"] == 2 and params["mode"] == "dense" and params["rerank"] is False
        assert params["leg_depth"] == ivf_service.settings.leg_depth
        assert "params" not in client.post("/v1/search", json={"q": "garden hose"}).json()
        for bad in (0, MAX_NPROBE + 1, "4"):
            r = client.post("/v1/search", json={"q": "hose", "nprobe": bad})
            assert r.status_code == 422, r.text
            assert r.json()["detail"][0]["loc"][-1] == "nprobe"
        r = client.get("/v1/search", params={"q": "hose", "mode": "fuzzy"})
        assert r.status_code == 422 and "hybrid" in r.text


# -- eval: configurations are parameter overrides -----------------------------------------


def test_sweep_names_and_overrides() -> None:
    base = [
        Configuration("default", fusion=None, serve_defaults=True),
        Configuration("lexical", "lexical"),
    ]
    swept = sweep_configurations(base, [("nprobe", (1, 4)), ("lexical_weight", (0.3,))])
    assert [c.name for c in swept] == [
        "default",
        "default-nprobe-1-lexical_weight-0.3",
        "default-nprobe-4-lexical_weight-0.3",
        "lexical",
        "lexical-nprobe-1-lexical_weight-0.3",
        "lexical-nprobe-4-lexical_weight-0.3",
    ]
    assert swept[2].params() == {
        "mode": "hybrid",
        "rerank": False,
        "exact_dense": False,
        "serve_defaults": True,
        "nprobe": 4,
        "lexical_weight": 0.3,
    }
    assert swept[2].search_overrides(depth=1000, rerank_depth=50) == {
        "nprobe": 4,
        "lexical_weight": 0.3,
    }
    # Every configuration but `default` ranks all candidates (a leg's recall is measured
    # on its whole list); `default` answers with the query's result set, as serve does.
    assert swept[3].search_overrides(depth=1000, rerank_depth=50) == {
        "mode": "lexical",
        "fusion": "rrf",
        "rerank": False,
        "leg_depth": 1000,
        "match_only": False,
    }
    assert sweep_configurations(base, []) == base
    with pytest.raises(ValueError, match=r"configuration x: unknown search parameter\(s\)"):
        Configuration("x", overrides={"probes": 2})


def test_eval_nprobe_sweep_on_an_ivf_index(
    ivf_service: SearchService, exact_dataset: EvalDataset
) -> None:
    svc = ivf_service
    state = (id(svc.reranker), id(svc.score_cache), id(svc.snapshot), svc.snapshot.vectors)
    cache_before = svc.score_cache.stats() if svc.score_cache is not None else None
    configs = sweep_configurations(
        [
            Configuration("dense-exact", mode="dense", exact_dense=True),
            Configuration("dense-ivfpq", mode="dense"),
            Configuration("hybrid-rrf+rerank", rerank=True),
        ],
        [("nprobe", (1, NLIST))],
    )
    outcomes = {
        o.config.name: o
        for o in evaluate_configurations(svc, exact_dataset, configs, depth=10, rerank_depth=5)
    }
    recall = {name: o.protocol_a.metrics["recall@10"] for name, o in outcomes.items()}
    assert recall["dense-exact"] == pytest.approx(1.0)
    assert recall["dense-exact-nprobe-1"] == pytest.approx(1.0)  # exact: nprobe ignored
    assert recall["dense-ivfpq-nprobe-16"] >= 0.95
    assert recall["dense-ivfpq-nprobe-1"] < recall["dense-ivfpq-nprobe-16"] - 0.1
    assert outcomes["dense-ivfpq-nprobe-1"].result().params["nprobe"] == 1
    assert outcomes["hybrid-rrf+rerank-nprobe-1"].protocol_b is not None
    # Only searched: the same reranker, cache, snapshot and index; the memo scored
    # every pair, the service's score cache saw none of them.
    assert (id(svc.reranker), id(svc.score_cache), id(svc.snapshot), svc.snapshot.vectors) == state
    if cache_before is not None and svc.score_cache is not None:
        assert svc.score_cache.stats() == cache_before


def test_eval_refuses_a_configuration_out_of_range_before_any_query(
    ivf_service: SearchService, exact_dataset: EvalDataset
) -> None:
    bad = Configuration("too-deep", overrides={"nprobe": 0})
    with pytest.raises(ValueError, match="configuration too-deep: nprobe must be an integer >= 1"):
        evaluate_configurations(ivf_service, exact_dataset, [bad], depth=10)


@pytest.fixture
def generic_files(exact_dataset: EvalDataset, tmp_path: Path) -> tuple[Path, Path]:
    """``exact_dataset`` in the generic format (queries TSV and TREC qrels)."""
    queries = tmp_path / "queries.tsv"
    qrels = tmp_path / "qrels.txt"
    queries.write_text("".join(f"{q.qid}\t{q.text}\n" for q in exact_dataset.queries))
    qrels.write_text(
        "".join(f"{q.qid} 0 {pid} 3\n" for q in exact_dataset.queries for pid in q.judgments)
    )
    return queries, qrels


def test_eval_command_sweeps_nprobe(
    ivf_index: Path, generic_files: tuple[Path, Path], tmp_path: Path
) -> None:
    from shopsearch.api.cli import app, mount_plugins

    mount_plugins(app)
    queries, qrels = generic_files
    out = tmp_path / "eval"
    base = ["eval", "--index-dir", str(ivf_index), "--queries", str(queries), "--qrels", str(qrels)]
    args = [*base, "--configs", "dense-ivfpq", "--depth", "10", "--sweep", "nprobe=1,16"]
    result = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    by_name = {c["name"]: c for c in metrics["configurations"]}
    assert list(by_name) == ["dense-ivfpq", "dense-ivfpq-nprobe-1", "dense-ivfpq-nprobe-16"]
    assert by_name["dense-ivfpq-nprobe-1"]["params"]["nprobe"] == 1
    low = by_name["dense-ivfpq-nprobe-1"]["metrics"]["recall@10"]
    assert low < by_name["dense-ivfpq-nprobe-16"]["metrics"]["recall@10"] - 0.1
    refused = CliRunner().invoke(app, [*base, "--sweep", "nprobes=1", "--out", str(tmp_path / "x")])
    assert refused.exit_code == 2
    assert "unknown search parameter 'nprobes'" in " ".join(refused.output.split())
