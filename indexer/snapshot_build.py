"""Building a snapshot: encode the catalog (through the embedding cache), build and check
the vector index against exact search, build the lexical leg, write the files and the
manifest, load it back, answer probe queries and calibrate its dense-match threshold,
then promote it through :class:`~indexer.snapshot.SnapshotStore` (see the layout and the
guarantees of a build in :mod:`indexer.snapshot`).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from shopsearch.indexer.catalog import CatalogReport
from shopsearch.indexer.crashpoints import crashpoint
from shopsearch.indexer.embedding_cache import EmbeddingCache
from shopsearch.indexer.errors import SnapshotError
from shopsearch.indexer.generations import BASE_FILES
from shopsearch.indexer.lexical_lifecycle import (
    DEFAULT_ES_PREFIX,
    LexicalLifecycle,
    lexical_lifecycle,
)
from shopsearch.indexer.product_store import write_products
from shopsearch.indexer.progress import ProgressFactory, no_progress
from shopsearch.indexer.snapshot import SnapshotStore
from shopsearch.indexer.snapshot_load import (
    FORMAT_VERSION,
    MANIFEST,
    LoadedSnapshot,
    load_snapshot,
)
from shopsearch.indexer.vector_lifecycle import VectorLifecycle, vector_lifecycle
from shopsearch.retrieval.elasticsearch_index import ElasticsearchConnection
from shopsearch.retrieval.encoders import Encoder
from shopsearch.retrieval.es_vector_index import EsVectorParams
from shopsearch.retrieval.item_text import item_text
from shopsearch.retrieval.match_calibration import MATCH_SET_KEY, calibrate_dense_threshold
from shopsearch.retrieval.types import Product
from shopsearch.retrieval.vector_index import ExactIndex, recall_at_k

__all__ = [
    "BuildOptions",
    "build_snapshot",
    "calibrate_snapshot",
    "probe_queries",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BuildOptions:
    """Knobs of a build. Defaults suit catalogs from a few hundred to a few million products."""

    nprobe: int | None = None  # None: derived from the catalog size (FaissParams.for_size)
    refine_factor: int = 8
    keep: int = 3  # promoted snapshots kept on disk, the serving one included
    batch_size: int = 64
    probe_count: int = 200  # probe queries for validation and approx-vs-exact recall
    recall_k: int = 100
    min_recall: float = 0.0  # refuse to promote below this approx-vs-exact recall@k
    use_gpu: bool | None = None
    seed: int = 1234
    promote: bool = True
    #: Reuse vectors of unchanged item texts (None: ``<index-dir>/embedding-cache``).
    cache_dir: Path | None = None
    use_cache: bool = True
    #: ``"tantivy"`` (embedded, in the snapshot) or ``"elasticsearch"`` (needs ``es=``).
    lexical: str = "tantivy"
    #: Elasticsearch index names are ``<prefix>-<version>``; the alias is ``<prefix>``.
    es_index_prefix: str = DEFAULT_ES_PREFIX
    #: ``"faiss"`` (in the snapshot) or ``"elasticsearch"`` (kNN in the sibling index
    #: ``<prefix>-vectors-<version>``, alias ``<prefix>-vectors``; needs ``es=``).
    vector: str = "faiss"
    #: Layout and search of an Elasticsearch vector leg (``index_options``, ``num_candidates``).
    es_vector: EsVectorParams = field(default_factory=EsVectorParams)


def _code_version() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        package = version("shopsearch")
    except PackageNotFoundError:
        package = "unknown"
    commit = "unknown"
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        if result.returncode == 0:
            commit = result.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return {"package": package, "commit": commit, "python": platform.python_version()}


def probe_queries(products: Sequence[Product], count: int, seed: int = 1234) -> list[str]:
    """Short search-box-like queries (first three title words of random products)."""
    if not products:
        return []
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(products), size=min(count, len(products)), replace=False)
    return [" ".join(products[i].title.split()[:3]) for i in sorted(picks.tolist())]


def _validate(
    snapshot: LoadedSnapshot, probes: list[str], probe_vectors: np.ndarray
) -> dict[str, Any]:
    """Answer probe queries from the loaded snapshot; raise when a leg answers nothing."""
    _, rows = snapshot.vectors.search(probe_vectors, 10)
    dense_answered = float((rows[:, 0] >= 0).mean()) if len(rows) else 0.0
    lexical_answered = (
        sum(1 for q in probes if snapshot.lexical.search(q, 10)) / len(probes) if probes else 0.0
    )
    if probes and dense_answered < 1.0:
        raise SnapshotError(
            f"validation failed: dense leg answered {dense_answered:.0%} of probe queries"
        )
    if probes and lexical_answered < 0.9:
        raise SnapshotError(
            f"validation failed: lexical leg answered {lexical_answered:.0%} of probe queries (< 90%)"
        )
    lexical_count = snapshot.lexical.count()
    if lexical_count != snapshot.live_count:
        raise SnapshotError(
            f"validation failed: the lexical index holds {lexical_count} documents, the "
            f"snapshot {snapshot.live_count} products"
        )
    return {
        "probe_queries": len(probes),
        "dense_answered": dense_answered,
        "lexical_answered": lexical_answered,
    }


def build_snapshot(
    products: Sequence[Product],
    report: CatalogReport,
    index_dir: Path,
    encoder: Encoder,
    options: BuildOptions | None = None,
    *,
    progress: ProgressFactory = no_progress,
    es: ElasticsearchConnection | None = None,
) -> dict[str, Any]:
    """Build, validate and (unless ``options.promote`` is False) promote a new snapshot.

    With ``options.lexical == "elasticsearch"`` the lexical leg is the new index
    ``<options.es_index_prefix>-<version>`` on ``es`` (required), and promotion also moves
    the alias ``<prefix>`` (see the module docstring).

    Returns the manifest. Raises :class:`SnapshotError` when validation or promotion
    fails, :class:`~retrieval.lexical_index.LexicalIndexError` (its subclass
    ``RejectedDocumentsError`` names rejected products) when the cluster fails; in those
    cases, and when the process dies midway, ``CURRENT``, the alias and the serving
    snapshot are untouched and the half-built directory and index are removed.
    """
    options = options or BuildOptions()
    lexical = lexical_lifecycle(
        options.lexical,
        es=es,
        es_prefix=options.es_index_prefix,
        field="lexical backend (BuildOptions.lexical)",
    )
    lexical.check_build()
    dense = vector_lifecycle(
        options.vector,
        es=es,
        es_prefix=options.es_index_prefix,
        params=options.es_vector,
        field="vector backend (BuildOptions.vector)",
    )
    dense.check_build()
    store = SnapshotStore(index_dir, es=es)
    timings: dict[str, float] = {}
    with store.build_lock():
        store.clean_partial()
        lexical.prepare_build(store.lexical_names)
        dense.prepare_build(store.lexical_names)
        version = store.new_version(report.sha256)
        work = store.snapshots_dir / f".building-{version}"
        final = store.snapshots_dir / version
        work.mkdir(parents=True)
        log.info("building snapshot %s from %d products in %s", version, len(products), work)
        try:
            manifest = _build_into(
                work,
                version,
                products,
                report,
                encoder,
                options,
                progress,
                timings,
                es=es,
                lexical=lexical,
                dense=dense,
            )
            crashpoint("build.written")
            os.replace(work, final)
            if options.promote:
                store.promote(version)
        except BaseException:
            # Includes KeyboardInterrupt: never leave a half-built directory (or index)
            # that looks real. A snapshot that failed to promote is removed too.
            shutil.rmtree(work, ignore_errors=True)
            if store.current() != version:
                shutil.rmtree(final, ignore_errors=True)
                lexical.discard(version)
                dense.discard(version)
            raise
        if options.promote:
            store.prune(options.keep)
    return manifest


def _build_into(
    work: Path,
    version: str,
    products: Sequence[Product],
    report: CatalogReport,
    encoder: Encoder,
    options: BuildOptions,
    progress: ProgressFactory,
    timings: dict[str, float],
    *,
    es: ElasticsearchConnection | None,
    lexical: LexicalLifecycle,
    dense: VectorLifecycle,
) -> dict[str, Any]:
    """Write snapshot ``version`` into ``work`` (its lexical leg through ``lexical``), load
    it back (through ``es`` when the leg is on a cluster) and validate it; returns the
    manifest."""
    started = time.perf_counter()

    t = time.perf_counter()
    texts = [item_text(p) for p in products]
    cache_hits = 0
    with progress("encoding products", len(texts)) as advance:

        def encode(batch: Sequence[str]) -> np.ndarray:
            return encoder.encode_document(batch, batch_size=options.batch_size, progress=advance)

        if options.use_cache:
            cache_dir = options.cache_dir or work.parent.parent / "embedding-cache"
            cache = EmbeddingCache(cache_dir, encoder.info.sha256, encoder.dim)
            vectors, cache_hits = cache.encode(texts, encode)
            advance(cache_hits)
        else:
            vectors = encode(texts)
    timings["encode_s"] = time.perf_counter() - t
    log.info(
        "encoded %d products (%d from the embedding cache)", len(texts) - cache_hits, cache_hits
    )

    t = time.perf_counter()
    with progress("building vector index", 1) as advance:
        index, vector_meta = dense.build(
            version,
            vectors,
            products,
            nprobe=options.nprobe,
            refine_factor=options.refine_factor,
            use_gpu=options.use_gpu,
            seed=options.seed,
        )
        advance(1)
    timings["vector_index_s"] = time.perf_counter() - t

    t = time.perf_counter()
    probes = probe_queries(products, options.probe_count, options.seed)
    probe_vectors = (
        encoder.encode_query(probes) if probes else np.zeros((0, encoder.dim), np.float32)
    )
    k = min(options.recall_k, len(products))
    exact_rows = ExactIndex(vectors).search(probe_vectors, k)[1]
    approx_rows = index.search(probe_vectors, k)[1]
    recall = recall_at_k(approx_rows, exact_rows, k) if probes else 1.0
    timings["recall_check_s"] = time.perf_counter() - t
    log.info("approx-vs-exact recall@%d on %d probe queries: %.4f", k, len(probes), recall)
    if recall < options.min_recall:
        raise SnapshotError(
            f"approximate index recall@{k} {recall:.3f} is below --min-recall {options.min_recall}; "
            "raise --nprobe or --refine-factor"
        )

    t = time.perf_counter()
    built = lexical.build(work, version, products, progress)
    files = {**BASE_FILES, "lexical": built.file}
    timings["lexical_index_s"] = time.perf_counter() - t

    t = time.perf_counter()
    write_products(products, work / "products.parquet")
    index.save(work / "vectors")
    timings["write_s"] = time.perf_counter() - t

    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "version": version,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "catalog": report.to_dict(),
        "counts": {"products": len(products), "skipped_rows": len(report.skipped)},
        "models": {"item_tower": encoder.info.to_dict(), "query_tower": encoder.info.to_dict()},
        "vector_index": {**index.describe(), **vector_meta},
        "lexical_index": built.meta,
        "files": files,
        "generation": 0,
        "approx_vs_exact": {
            f"recall@{k}": round(recall, 4),
            "probe_queries": len(probes),
            "probe_kind": "first three title words of random products, query tower",
        },
        "build": {
            "timings_s": {},
            "embedding_cache_hits": cache_hits,
            "device": encoder.device,
            "threads": _torch_threads(),
        },
        "code": _code_version(),
    }
    (work / MANIFEST).write_text(json.dumps(manifest, indent=2))

    t = time.perf_counter()
    loaded = load_snapshot(work, use_gpu=options.use_gpu, es=es)
    manifest["validation"] = _validate(loaded, probes, probe_vectors)
    t = time.perf_counter()
    manifest[MATCH_SET_KEY] = calibrate_snapshot(loaded, encoder.encode_query)
    timings["match_threshold_s"] = time.perf_counter() - t
    timings["validate_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - started
    manifest["build"]["timings_s"] = {name: round(v, 3) for name, v in timings.items()}
    (work / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def calibrate_snapshot(
    snap: LoadedSnapshot, encode_query: Callable[[Sequence[str]], np.ndarray]
) -> dict[str, Any]:
    """Measure ``snap``'s dense-match threshold (:mod:`retrieval.match_calibration`) with
    ``encode_query``, the query tower of its item model: the manifest's ``match_set``."""
    return calibrate_dense_threshold(
        snap.table.products,
        snap.table.row_of,
        lambda texts: encode_query(texts),
        snap.vectors.vectors_of,
        snap.lexical,
    )


def _torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())
