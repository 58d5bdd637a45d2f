"""FAISS IVF-PQ vs Elasticsearch kNN as the dense leg, side by side, measured.

On the Home Depot dev queries over a built snapshot of the full catalog (FAISS +
tantivy; read only), the same product table, lexical leg and fusion serve with either
dense leg, so only the vector index differs:

* dense ``recall@100`` of each against the exact scan (:class:`ExactIndex`), on the dev
  queries through the query tower;
* hybrid and dense nDCG@10 of protocol A (``eval.metrics.evaluate_protocol_a``);
* the dense leg's latency, one query per call as the service searches (p50/p99 ms);
* memory: FAISS's coarse index and stored vectors on disk vs the Elasticsearch index's
  store size (``_stats``), both per million products.

The Elasticsearch index is built into ``<prefix>-vectors-parity`` (deleted and rebuilt
unless ``--reuse``). Run::

    nice -n 10 .venv/bin/python -m shopsearch.eval.es_vector_parity \\
        --es-url http://127.0.0.1:9201 --index-dir var/hd-nightly --out var/es-vector-parity.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from shopsearch.api.retrieval_stages import normalize_query
from shopsearch.api.schemas import SearchRequest
from shopsearch.api.service import SearchService
from shopsearch.api.settings import Settings
from shopsearch.eval.metrics import evaluate_protocol_a
from shopsearch.eval.script_setup import current_snapshot, script_logging
from shopsearch.indexer.judgments import load_homedepot
from shopsearch.retrieval.elasticsearch_index import ElasticsearchConnection
from shopsearch.retrieval.encoders import Encoder
from shopsearch.retrieval.es_vector_index import ElasticsearchVectorIndex, EsVectorParams
from shopsearch.retrieval.vector_index import ExactIndex, VectorIndex, recall_at_k

log = logging.getLogger("es_vector_parity")

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "homedepot"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _latency(index: VectorIndex, qvecs: np.ndarray, k: int) -> dict[str, float]:
    for q in qvecs[:20]:  # warm-up
        index.search(q[None, :], k)
    ms = []
    for q in qvecs:
        t = time.perf_counter()
        index.search(q[None, :], k)
        ms.append((time.perf_counter() - t) * 1000)
    return {
        "p50_ms": round(statistics.median(ms), 2),
        "p99_ms": round(_percentile(ms, 0.99), 2),
        "mean_ms": round(statistics.fmean(ms), 2),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the comparison; prints (and with ``--out`` writes) the results as JSON."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--es-url", required=True)
    parser.add_argument("--es-index-prefix", default="hdparity")
    parser.add_argument("--index-dir", type=Path, default=Path("var/hd-nightly"))
    parser.add_argument("--dev", type=Path, default=DATA / "dev.csv")
    parser.add_argument("--catalog", type=Path, default=DATA / "products.csv")
    parser.add_argument("--index-options", default="int8_hnsw")
    parser.add_argument("--num-candidates", type=int, default=400)
    parser.add_argument("--refine-factor", type=int, default=2)
    parser.add_argument("--limit-queries", type=int, default=None)
    parser.add_argument(
        "--no-force-merge",
        action="store_true",
        help="leave the built index in the segments indexing made (several HNSW graphs to "
        "search) instead of merging it into one",
    )
    parser.add_argument("--reuse", action="store_true", help="reuse an existing ES index")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    script_logging(
        ("elastic_transport", "sentence_transformers", "faiss", "httpx"), "%(asctime)s %(message)s"
    )
    snap = current_snapshot(args.index_dir)
    version = snap.version
    if snap.vectors.kind != "faiss":
        raise SystemExit(f"snapshot {version} has a {snap.vectors.kind} vector leg, not faiss")
    n = len(snap.table.products)
    vectors = np.asarray(snap.vectors.vectors_of(np.arange(n)))
    dataset = load_homedepot(args.dev, args.catalog)
    queries = list(dataset.queries)[: args.limit_queries]
    # Metrics average over the dataset's queries: keep only those that are run.
    dataset = dataclasses.replace(dataset, queries=tuple(queries))
    # The snapshot's own towers on the runtime that built it (a snapshot encoded by the
    # int8 ONNX item tower is searched by the same): query and item vectors must match.
    backend = snap.item_model.get("backend", "torch")
    encoder = Encoder(Path(snap.item_model["path"]), device="cpu", backend=backend)  # type: ignore[arg-type]
    qvecs = encoder.encode_query([normalize_query(q.text) for q in queries])

    es = ElasticsearchConnection(args.es_url, timeout=10.0, admin_timeout=1800.0)
    name = f"{args.es_index_prefix}-vectors-parity"
    params = EsVectorParams(
        index_options=args.index_options,
        num_candidates=args.num_candidates,
        refine_factor=args.refine_factor,
        force_merge=not args.no_force_merge,
    )
    client = es.index(name).client
    t = time.perf_counter()
    reused = bool(args.reuse and client.indices.exists(index=name))
    if reused:
        knn = ElasticsearchVectorIndex(vectors, name, params, es=es)
    else:
        if client.indices.exists(index=name):
            client.indices.delete(index=name)
        knn = ElasticsearchVectorIndex.build(es, name, vectors, list(snap.table.products), params)
    build_s = round(time.perf_counter() - t, 1)
    log.info("Elasticsearch index %s ready in %.1f s", name, build_s)
    if len(snap.tombstones):
        knn.remove(snap.tombstones)

    oracle = ExactIndex(vectors)
    oracle.alive = knn.alive.copy()
    # In chunks of queries: one call over all 1,248 queries of a 1M catalog would hold a
    # 5 GB score matrix.
    exact_rows = np.vstack(
        [oracle.search(qvecs[i : i + 64], 100)[1] for i in range(0, len(qvecs), 64)]
    )
    legs: dict[str, VectorIndex] = {"faiss": snap.vectors, "elasticsearch": knn}
    dense: dict[str, dict[str, Any]] = {}
    for leg_name, index in legs.items():
        rows = index.search(qvecs, 100)[1]
        dense[leg_name] = {
            "recall@100_vs_exact": round(recall_at_k(rows, exact_rows, 100), 4),
            "latency_k100": _latency(index, qvecs[:300], 100),
        }
        log.info("%s: %s", leg_name, dense[leg_name])

    settings = Settings(
        index_dir=args.index_dir,
        reload_interval_s=0,
        result_cache_size=0,
        model_dir=Path(snap.item_model["path"]),
        encoder_backend=backend,  # type: ignore[arg-type]
    )
    service = SearchService(settings, encoder=encoder)
    # Loaded by the service, so both variants answer as served: query rewriting and the
    # result set's calibration live beside the snapshot (``extra``), shared by both.
    service.load(version)
    served = service.snapshot
    quality: dict[str, dict[str, float]] = {}
    for leg_name, index in legs.items():
        if leg_name == "faiss":
            index = served.vectors
        variant = dataclasses.replace(served, vectors=index, version=f"{version}:{leg_name}")
        service.use_snapshot(variant)
        for mode in ("hybrid", "dense"):
            run: dict[str, dict[str, float]] = {}
            for judged in queries:
                result = service.retrieve(SearchRequest(q=judged.text, size=100, mode=mode))  # type: ignore[arg-type]
                ranked = [snap.table.products[c.row].id for c in result.filtered[:100]]
                run[judged.qid] = {pid: float(len(ranked) - i) for i, pid in enumerate(ranked)}
            metrics = evaluate_protocol_a(dataset, run).metrics
            quality[f"{leg_name}/{mode}"] = {
                "ndcg@10": round(metrics["ndcg@10"], 4),
                "recall@100": round(metrics["recall@100"], 4),
            }
            log.info("%s/%s: %s", leg_name, mode, quality[f"{leg_name}/{mode}"])

    stats = client.indices.stats(index=name, metric="store,docs,segments")["indices"][name][
        "primaries"
    ]
    vectors_dir = snap.path / str(snap.manifest["files"]["vectors"])
    faiss_disk = _dir_bytes(vectors_dir)
    per_million = 1e6 / max(1, snap.live_count)
    results = {
        "snapshot": version,
        "item_tower_backend": backend,
        "products": snap.live_count,
        "queries": len(queries),
        "elasticsearch": {
            "index": name,
            "params": dataclasses.asdict(params),
            # A reused index was built by an earlier run: its build time is not this run's.
            "build_s": None if reused else build_s,
            "reused": reused,
            "segments": stats["segments"]["count"],
        },
        "dense": dense,
        "quality": quality,
        "hybrid_ndcg@10_diff": round(
            quality["elasticsearch/hybrid"]["ndcg@10"] - quality["faiss/hybrid"]["ndcg@10"], 4
        ),
        "bytes_per_million_products": {
            "faiss_snapshot_dir (coarse index + float32 vectors)": round(faiss_disk * per_million),
            "float32_vectors_only": round(vectors.nbytes * per_million),
            "elasticsearch_store (primaries)": round(stats["store"]["size_in_bytes"] * per_million),
        },
    }
    text = json.dumps(results, indent=2)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    sys.stdout.write(text + "\n")
    service.close()
    es.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
