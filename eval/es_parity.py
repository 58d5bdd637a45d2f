"""Parity of the Elasticsearch lexical leg with the embedded tantivy leg, measured.

On the Home Depot dev queries, over the full 54,667-product catalog:

* ``overlap@10``: mean over queries of |ES top-10 ∩ tantivy top-10| / 10 (or the longer
  list's length when both return fewer than 10);
* hybrid (dense + lexical, RRF) nDCG@10 of protocol A (``eval.metrics.evaluate_protocol_a``)
  with each lexical leg, and lexical-only nDCG@10;
* lexical query latency of each leg (p50/p95 ms, after a warm-up).

Three lexical legs are compared, all over the same product table and the same FAISS
index, so only the lexical leg differs: tantivy with English stemming (``en_stem``, the
default), tantivy without stemming (its ``default`` tokenizer: what a cluster without
stemming would match), and Elasticsearch with its default analyzer (``en_stem``: the
engine's own analysis, so it should agree with the first; the analyzer used is reported).

Run (the catalog is encoded once into the embedding cache; later runs reuse it and the
snapshots already built)::

    nice -n 10 .venv/bin/python -m eval.es_parity --es-url http://127.0.0.1:9201 \\
        --index-dir var/hd-parity --cache-dir var/hd-index/embedding-cache \\
        --out var/es-parity.json
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from shopsearch.api.retrieval_stages import normalize_query  # noqa: E402
from shopsearch.api.schemas import SearchRequest  # noqa: E402
from shopsearch.api.service import SearchService  # noqa: E402
from shopsearch.api.settings import Settings  # noqa: E402
from shopsearch.eval.metrics import evaluate_protocol_a  # noqa: E402
from shopsearch.indexer.catalog import ColumnMapping, load_catalog  # noqa: E402
from shopsearch.indexer.judgments import load_homedepot  # noqa: E402
from shopsearch.indexer.snapshot import SnapshotStore  # noqa: E402
from shopsearch.indexer.snapshot_build import BuildOptions, build_snapshot  # noqa: E402
from shopsearch.indexer.snapshot_load import load_snapshot  # noqa: E402
from shopsearch.retrieval.elasticsearch_index import ElasticsearchConnection  # noqa: E402
from shopsearch.retrieval.encoders import Encoder  # noqa: E402
from shopsearch.retrieval.lexical_index import LexicalIndex, TantivyIndex  # noqa: E402

log = logging.getLogger("es_parity")

DATA = REPO.parent / "shared" / "datasets" / "homedepot"


class PlainTantivyIndex(TantivyIndex):
    """Tantivy without stemming: its ``default`` tokenizer (split on non-alphanumerics,
    lower-case, drop tokens over 40 bytes), close to Elasticsearch's ``standard``."""

    TOKENIZER = "default"


def _snapshot_for(
    store: SnapshotStore, backend: str, catalog_sha: str, es: ElasticsearchConnection | None
) -> str | None:
    """The newest kept snapshot of this catalog with this lexical backend (still usable)."""
    for version in reversed(store.versions()):
        manifest = store.manifest(version)
        if manifest["catalog"]["sha256"] != catalog_sha:
            continue
        if manifest["lexical_index"]["backend"] != backend:
            continue
        if backend == "elasticsearch":
            if es is None:
                continue
            index = manifest["lexical_index"]["index"]
            if not es.index(index).client.indices.exists(index=index):
                continue
        return version
    return None


def overlap_at(a: list[str], b: list[str], k: int) -> float:
    """|a[:k] ∩ b[:k]| / max(len(a[:k]), len(b[:k])) (1.0 when both are empty)."""
    a, b = a[:k], b[:k]
    longest = max(len(a), len(b))
    return 1.0 if longest == 0 else len(set(a) & set(b)) / longest


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--es-url", required=True)
    parser.add_argument("--es-index-prefix", default="hdparity")
    parser.add_argument("--index-dir", type=Path, default=REPO / "var" / "hd-parity")
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help="embedding cache (default: in index dir)"
    )
    parser.add_argument("--catalog", type=Path, default=DATA / "products.csv")
    parser.add_argument("--dev", type=Path, default=DATA / "dev.csv")
    parser.add_argument("--limit-queries", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for noisy in ("elastic_transport", "sentence_transformers", "faiss", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    products, report = load_catalog(
        args.catalog, ColumnMapping(id="product_uid", title="product_title")
    )
    dataset = load_homedepot(args.dev, args.catalog)
    queries = list(dataset.queries)[: args.limit_queries]
    encoder = Encoder(device="cpu")
    es = ElasticsearchConnection(args.es_url, timeout=10.0, admin_timeout=600.0)
    store = SnapshotStore(args.index_dir, es=es)
    timings: dict[str, float] = {}

    versions: dict[str, str] = {}
    for backend in ("tantivy", "elasticsearch"):
        found = _snapshot_for(store, backend, report.sha256, es)
        if found is None:
            t = time.perf_counter()
            options = BuildOptions(
                lexical=backend,
                es_index_prefix=args.es_index_prefix,
                cache_dir=args.cache_dir,
                keep=4,
            )
            found = build_snapshot(products, report, args.index_dir, encoder, options, es=es)[
                "version"
            ]
            timings[f"build_{backend}_s"] = round(time.perf_counter() - t, 1)
        versions[backend] = found
    stemmed = load_snapshot(store.path(versions["tantivy"]))
    remote = load_snapshot(store.path(versions["elasticsearch"]), es=es)
    plain_dir = args.index_dir / "tantivy-default"
    t = time.perf_counter()
    plain = PlainTantivyIndex(plain_dir)
    plain.build(products)
    timings["build_tantivy_default_s"] = round(time.perf_counter() - t, 1)

    # One product table and one FAISS index for every variant: only the lexical leg differs.
    legs: dict[str, LexicalIndex] = {
        "tantivy-en_stem": stemmed.lexical,
        "tantivy-default": plain,
        "elasticsearch": remote.lexical,
    }
    variants = {
        name: dataclasses.replace(stemmed, lexical=leg, version=f"{stemmed.version}:{name}")
        for name, leg in legs.items()
    }
    analyzer = remote.manifest["lexical_index"]["analyzer"]
    log.info("Elasticsearch index %s (analyzer %s)", remote.lexical, analyzer)

    # Lexical top-10s and latency.
    texts = [normalize_query(q.text) for q in queries]
    tops: dict[str, list[list[str]]] = {}
    latency: dict[str, dict[str, float]] = {}
    for name, leg in legs.items():
        for q in texts[:20]:  # warm-up
            leg.search(q, 10)
        ms: list[float] = []
        out = []
        for q in texts:
            t = time.perf_counter()
            out.append([h.id for h in leg.search(q, 10)])
            ms.append((time.perf_counter() - t) * 1000)
        tops[name] = out
        latency[name] = {
            "p50_ms": round(statistics.median(ms), 2),
            "p95_ms": round(_percentile(ms, 0.95), 2),
            "mean_ms": round(statistics.fmean(ms), 2),
        }

    def mean_overlap(a: str, b: str) -> float:
        pairs = zip(tops[a], tops[b], strict=True)
        return round(statistics.fmean(overlap_at(x, y, 10) for x, y in pairs), 4)

    overlaps = {
        "elasticsearch_vs_tantivy-default": mean_overlap("elasticsearch", "tantivy-default"),
        "elasticsearch_vs_tantivy-en_stem": mean_overlap("elasticsearch", "tantivy-en_stem"),
        "tantivy-default_vs_tantivy-en_stem": mean_overlap("tantivy-default", "tantivy-en_stem"),
    }

    # nDCG@10 (protocol A) of each variant, hybrid and lexical only.
    settings = Settings(
        index_dir=args.index_dir, reload_interval_s=0, es_url=args.es_url, es_timeout=10.0
    )
    service = SearchService(settings, encoder=encoder)
    quality: dict[str, dict[str, Any]] = {}
    for name, snap in variants.items():
        service.use_snapshot(snap)
        for mode in ("hybrid", "lexical"):
            run: dict[str, dict[str, float]] = {}
            degraded = 0
            t = time.perf_counter()
            for judged in queries:
                result = service.retrieve(SearchRequest(q=judged.text, size=100, mode=mode))
                degraded += bool(result.degraded)
                ranked = [snap.table.products[c.row].id for c in result.filtered[:100]]
                run[judged.qid] = {pid: float(len(ranked) - i) for i, pid in enumerate(ranked)}
            metrics = evaluate_protocol_a(dataset, run)
            quality[f"{name}/{mode}"] = {
                "ndcg@10": round(metrics.metrics["ndcg@10"], 4),
                "recall@100": round(metrics.metrics["recall@100"], 4),
                "mrr@10": round(metrics.metrics["mrr@10"], 4),
                "degraded_queries": degraded,
                "seconds": round(time.perf_counter() - t, 1),
            }
            log.info("%s/%s: %s", name, mode, quality[f"{name}/{mode}"])
    hybrid = {name: quality[f"{name}/hybrid"]["ndcg@10"] for name in variants}
    results = {
        "command": "nice -n 10 .venv/bin/python -m eval.es_parity " + " ".join(sys.argv[1:]),
        "catalog": {"path": str(args.catalog), "products": len(products), "sha256": report.sha256},
        "queries": len(queries),
        "dataset": dataset.name,
        "snapshots": versions,
        "elasticsearch_analyzer": analyzer,
        "overlap@10": overlaps,
        "hybrid_ndcg@10": hybrid,
        "hybrid_ndcg@10_diff": {
            "elasticsearch_minus_tantivy-default": round(
                hybrid["elasticsearch"] - hybrid["tantivy-default"], 4
            ),
            "elasticsearch_minus_tantivy-en_stem": round(
                hybrid["elasticsearch"] - hybrid["tantivy-en_stem"], 4
            ),
        },
        "quality": quality,
        "lexical_latency": latency,
        "timings_s": timings,
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
