"""How cost grows with catalog size: build time, index size and memory, query latency.

For each size, a catalog is scaled from a real one (``eval.scale``: perturbed titles),
indexed into its own snapshot, loaded, and queried. Item embeddings are cached per model
under ``work_dir/embedding-cache``, so the sizes share the vectors of the titles they
have in common and a rerun encodes nothing new.
"""

from __future__ import annotations

import json
import logging
import resource
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shopsearch.api.schemas import SearchRequest
from shopsearch.api.service import SearchService
from shopsearch.api.settings import Settings
from shopsearch.eval.loadtest import summarize_latencies
from shopsearch.eval.scale import scale_catalog, write_catalog
from shopsearch.indexer.catalog import ColumnMapping, load_catalog
from shopsearch.indexer.progress import ProgressFactory, no_progress
from shopsearch.indexer.snapshot import SnapshotError, SnapshotStore
from shopsearch.indexer.snapshot_build import BuildOptions, build_snapshot
from shopsearch.indexer.snapshot_load import MANIFEST
from shopsearch.retrieval.encoders import Encoder

__all__ = ["ScalePoint", "approx_recall", "run_scale_bench"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ScalePoint:
    """Measurements at one catalog size (times in seconds, sizes in MiB, latency in ms).

    ``serving_rss_mib`` is the resident memory of a fresh serving process after loading
    the snapshot and answering the queries; ``rss_growth_mib`` is the part of it that the
    snapshot adds over the same process with only the encoder loaded.
    """

    products: int
    build_s: float
    encode_s: float
    encoded: int
    index_factory: str
    approx_recall_at_100: float
    disk_mib: float
    serving_rss_mib: float
    rss_growth_mib: float
    p50_ms: dict[str, float]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _dir_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def _rss_mib() -> float:
    # ru_maxrss is the peak (KiB on Linux); current RSS from /proc is what a load adds.
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * resource.getpagesize() / 2**20
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def approx_recall(manifest: Mapping[str, Any], manifest_path: Path, recall_k: int) -> float:
    """The approximate-vs-exact recall that ``build_snapshot`` wrote into ``manifest``:
    ``approx_vs_exact["recall@<k>"]`` with k = min(``recall_k``, products), i.e.
    recall@100 by default, recall@<n> for a catalog of n < 100 products.

    Raises:
        SnapshotError: the manifest lacks ``counts.products`` or that recall key (the
            message names ``manifest_path`` and the key).
    """
    products = manifest.get("counts", {}).get("products")
    if not isinstance(products, int):
        raise SnapshotError(
            f"{manifest_path}: no 'counts.products'; rebuild the snapshot with this shopsearch"
        )
    key = f"recall@{min(recall_k, products)}"
    found = manifest.get("approx_vs_exact", {})
    if key not in found:
        raise SnapshotError(
            f"{manifest_path}: 'approx_vs_exact' has no {key!r} (keys: {sorted(found)}); "
            "rebuild the snapshot with this shopsearch"
        )
    return float(found[key])


def run_scale_bench(
    base_rows: Sequence[dict[str, object]],
    sizes: Sequence[int],
    work_dir: Path,
    encoder: Encoder,
    queries: Sequence[str],
    *,
    id_field: str = "id",
    title_field: str = "title",
    progress: ProgressFactory = no_progress,
) -> list[ScalePoint]:
    """Scale ``base_rows`` to each size, build, load and query it; return the measurements.

    ``queries`` are run once per mode (hybrid, dense, lexical) after 20 warm-up queries,
    in a fresh child process (see :func:`measure_serving`), so memory the build freed
    does not hide what serving the snapshot costs.
    """
    points = []
    for size in sizes:
        catalog = work_dir / f"catalog-{size}.parquet"
        if not catalog.is_file():
            rows = scale_catalog(base_rows, size, id_field=id_field, title_field=title_field)
            write_catalog(rows, catalog)
        products, report = load_catalog(catalog, ColumnMapping(id=id_field, title=title_field))
        index_dir = work_dir / f"index-{size}"
        started = time.perf_counter()
        options = BuildOptions(cache_dir=work_dir / "embedding-cache", keep=1)
        manifest = build_snapshot(products, report, index_dir, encoder, options, progress=progress)
        build_s = time.perf_counter() - started
        del products
        serving = measure_serving(index_dir, encoder, queries)
        snapshot_dir = SnapshotStore(index_dir).path(manifest["version"])
        timings = manifest["build"]["timings_s"]
        point = ScalePoint(
            products=size,
            build_s=round(build_s, 1),
            encode_s=round(timings["encode_s"], 1),
            encoded=size - int(manifest["build"]["embedding_cache_hits"]),
            index_factory=str(
                manifest["vector_index"].get("factory", manifest["vector_index"]["kind"])
            ),
            approx_recall_at_100=approx_recall(manifest, snapshot_dir / MANIFEST, options.recall_k),
            disk_mib=round(_dir_mib(snapshot_dir), 1),
            serving_rss_mib=serving["rss_mib"],
            rss_growth_mib=serving["rss_growth_mib"],
            p50_ms=serving["p50_ms"],
        )
        log.info("scale %d: %s", size, point)
        points.append(point)
    return points


def _serve_and_measure(
    index_dir: Path, model: str, backend: str, queries: Sequence[str]
) -> dict[str, Any]:
    """Child-process side of :func:`measure_serving`."""
    encoder = Encoder(Path(model), backend=backend)
    encoder.encode_query(["warm up"])
    before = _rss_mib()
    service = SearchService(
        Settings(
            index_dir=index_dir,
            reload_interval_s=0,
            query_cache_size=0,  # every measured search computes its answer
            result_cache_size=0,
            rerank_cache_size=0,
        ),
        encoder=encoder,
    )
    service.load()
    p50: dict[str, float] = {}
    for mode in ("hybrid", "dense", "lexical"):
        for q in queries[:20]:
            service.search(SearchRequest(q=q, mode=mode))  # type: ignore[arg-type]
        totals = [
            service.search(SearchRequest(q=q, mode=mode)).timings_ms["total"]  # type: ignore[arg-type]
            for q in queries
        ]
        p50[mode] = round(float(summarize_latencies(totals).p50_ms or np.nan), 2)
    after = _rss_mib()
    return {
        "rss_mib": round(after, 1),
        "rss_growth_mib": round(after - before, 1),
        "p50_ms": p50,
    }


def measure_serving(index_dir: Path, encoder: Encoder, queries: Sequence[str]) -> dict[str, Any]:
    """Load ``index_dir``'s CURRENT snapshot in a fresh process and query it.

    Returns ``{"rss_mib": float, "rss_growth_mib": float, "p50_ms": {mode: ms}}``.

    Raises:
        RuntimeError: the child process failed (its stderr is in the message).
    """
    payload = json.dumps(
        {
            "index_dir": str(index_dir),
            "model": str(encoder.path),
            "backend": encoder.backend,
            "queries": list(queries),
        }
    )
    done = subprocess.run(
        [sys.executable, "-m", "shopsearch.eval.scale_bench"],
        input=payload,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"serving probe for {index_dir} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    # The serving probe: reads its job as JSON on stdin, prints the result as one JSON line.
    job = json.loads(sys.stdin.read())
    logging.basicConfig(level=logging.WARNING)
    result = _serve_and_measure(
        Path(job["index_dir"]), job["model"], job["backend"], job["queries"]
    )
    print(json.dumps(result))
