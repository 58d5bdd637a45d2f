"""Versioned index snapshots: build, validate, promote, roll back, prune, load.

Layout (see docs/ARCHITECTURE.md)::

    <index-dir>/
      CURRENT                       # name of the serving snapshot (replaced atomically)
      snapshots/<version>/
        manifest.json  products.parquet  vectors/  lexical/
      snapshots/.building-<version>/  # a build in progress; never served

A build writes everything into ``.building-<version>``, loads it back and answers
probe queries, and only then renames it into place and switches ``CURRENT`` with an
atomic ``os.replace``. A build that fails or is killed leaves ``CURRENT`` and every
promoted snapshot untouched; its half-written directory is removed by the next build.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import platform
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from indexer.catalog import CatalogReport
from indexer.embedding_cache import EmbeddingCache
from indexer.product_store import read_products, write_products
from indexer.progress import ProgressFactory, no_progress
from retrieval.encoders import Encoder
from retrieval.filters import ProductTable
from retrieval.item_text import item_text
from retrieval.lexical_index import LexicalIndex, TantivyIndex
from retrieval.types import Product, ShopsearchError
from retrieval.vector_index import (
    ExactIndex,
    FaissIndex,
    FaissParams,
    VectorIndex,
    load_vector_index,
    recall_at_k,
)

__all__ = [
    "BuildOptions",
    "LoadedSnapshot",
    "SnapshotError",
    "SnapshotInfo",
    "SnapshotStore",
    "build_snapshot",
    "load_snapshot",
    "probe_queries",
]

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


class SnapshotError(ShopsearchError):
    """A snapshot is missing, damaged, mismatched with the models, or failed validation."""


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


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """A promoted snapshot on disk."""

    version: str
    path: Path
    created_at: str
    products: int
    current: bool


@dataclass(slots=True)
class LoadedSnapshot:
    """A snapshot opened for serving: products, both indexes and the manifest."""

    version: str
    path: Path
    manifest: dict[str, Any]
    table: ProductTable
    vectors: VectorIndex
    lexical: LexicalIndex
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def item_model(self) -> dict[str, str]:
        """``{"id", "sha256", "path"}`` of the item tower that encoded this snapshot."""
        return dict(self.manifest["models"]["item_tower"])


class SnapshotStore:
    """The snapshots under one index directory and its ``CURRENT`` pointer."""

    def __init__(self, index_dir: Path) -> None:
        self.root = Path(index_dir)
        self.snapshots_dir = self.root / "snapshots"

    @property
    def current_file(self) -> Path:
        return self.root / "CURRENT"

    def current(self) -> str | None:
        """Version named by ``CURRENT``, or None before the first promotion."""
        try:
            version = self.current_file.read_text().strip()
        except FileNotFoundError:
            return None
        return version or None

    def path(self, version: str) -> Path:
        path = self.snapshots_dir / version
        if not (path / MANIFEST).is_file():
            raise SnapshotError(
                f"snapshot {version!r} not found in {self.snapshots_dir}; "
                "`shopsearch snapshots` lists what exists"
            )
        return path

    def versions(self) -> list[str]:
        """Promotable snapshots, oldest first (versions sort by creation time)."""
        if not self.snapshots_dir.is_dir():
            return []
        return sorted(
            p.name
            for p in self.snapshots_dir.iterdir()
            if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).is_file()
        )

    def list_snapshots(self) -> list[SnapshotInfo]:
        current = self.current()
        out = []
        for version in self.versions():
            manifest = json.loads((self.snapshots_dir / version / MANIFEST).read_text())
            out.append(
                SnapshotInfo(
                    version=version,
                    path=self.snapshots_dir / version,
                    created_at=manifest.get("created_at", ""),
                    products=int(manifest.get("counts", {}).get("products", 0)),
                    current=version == current,
                )
            )
        return out

    def promote(self, version: str) -> None:
        """Point ``CURRENT`` at ``version`` atomically (write a temp file, fsync, rename)."""
        self.path(version)  # raises if it does not exist
        tmp = self.root / f".CURRENT.{os.getpid()}.tmp"
        with tmp.open("w") as fh:
            fh.write(version + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.current_file)
        log.info("promoted snapshot %s", version)

    def rollback(self) -> str:
        """Promote the snapshot before the current one; returns its version."""
        versions = self.versions()
        current = self.current()
        if current not in versions:
            raise SnapshotError("no current snapshot to roll back from; build one first")
        position = versions.index(current)
        if position == 0:
            raise SnapshotError(
                f"{current} is the oldest snapshot kept; nothing to roll back to "
                "(raise --keep to keep more)"
            )
        previous = versions[position - 1]
        self.promote(previous)
        return previous

    def prune(self, keep: int) -> list[str]:
        """Delete promoted snapshots beyond the newest ``keep`` (never the current one)."""
        if keep < 1:
            raise SnapshotError(f"keep must be >= 1, got {keep}")
        current = self.current()
        versions = self.versions()
        doomed = [v for v in versions[:-keep] if v != current]
        for version in doomed:
            shutil.rmtree(self.snapshots_dir / version, ignore_errors=True)
            log.info("pruned snapshot %s", version)
        return doomed

    def clean_partial(self) -> None:
        """Remove directories of builds that never finished."""
        if self.snapshots_dir.is_dir():
            for p in self.snapshots_dir.iterdir():
                if p.name.startswith(".building-"):
                    log.info("removing unfinished build %s", p.name)
                    shutil.rmtree(p, ignore_errors=True)

    @contextmanager
    def build_lock(self) -> Iterator[None]:
        """Exclusive lock so two builds never race on ``CURRENT``."""
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".build.lock").open("w") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise SnapshotError(
                    f"another build holds {self.root / '.build.lock'}; wait for it to finish"
                ) from exc
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def new_version(self, catalog_sha: str) -> str:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        version = f"{stamp}-{catalog_sha[:8]}"
        n = 2
        while (self.snapshots_dir / version).exists():
            version = f"{stamp}-{catalog_sha[:8]}-{n}"
            n += 1
        return version


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


def _make_vector_index(
    vectors: np.ndarray, options: BuildOptions
) -> tuple[VectorIndex, FaissParams]:
    params = FaissParams.for_size(
        len(vectors), vectors.shape[1], nprobe=options.nprobe, refine_factor=options.refine_factor
    )
    return FaissIndex(vectors, params, use_gpu=options.use_gpu, seed=options.seed), params


def load_snapshot(path: Path, *, use_gpu: bool | None = None) -> LoadedSnapshot:
    """Open the snapshot in ``path`` for serving (raises :class:`SnapshotError`)."""
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise SnapshotError(f"{path / MANIFEST} cannot be read: {exc}") from exc
    if manifest.get("format_version") != FORMAT_VERSION:
        raise SnapshotError(
            f"{path}: snapshot format {manifest.get('format_version')} is not {FORMAT_VERSION}; rebuild it"
        )
    try:
        products = read_products(path / "products.parquet")
        vectors = load_vector_index(path / "vectors", use_gpu=use_gpu)
        lexical = TantivyIndex.load(path / "lexical")
    except (OSError, ValueError, ShopsearchError) as exc:
        raise SnapshotError(f"{path}: cannot load snapshot: {exc}") from exc
    counts = manifest["counts"]
    if not (len(products) == vectors.size == lexical.count() == counts["products"]):
        raise SnapshotError(
            f"{path}: counts disagree (products {len(products)}, vectors {vectors.size}, "
            f"lexical {lexical.count()}, manifest {counts['products']}); rebuild it"
        )
    return LoadedSnapshot(
        version=manifest["version"],
        path=path,
        manifest=manifest,
        table=ProductTable(products),
        vectors=vectors,
        lexical=lexical,
    )


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
) -> dict[str, Any]:
    """Build, validate and (unless ``options.promote`` is False) promote a new snapshot.

    Returns the manifest. Raises :class:`SnapshotError` when validation fails; in that
    case, and when the process dies midway, the serving snapshot is untouched.
    """
    options = options or BuildOptions()
    store = SnapshotStore(index_dir)
    timings: dict[str, float] = {}
    with store.build_lock():
        store.clean_partial()
        version = store.new_version(report.sha256)
        work = store.snapshots_dir / f".building-{version}"
        work.mkdir(parents=True)
        log.info("building snapshot %s from %d products in %s", version, len(products), work)
        try:
            manifest = _build_into(
                work, version, products, report, encoder, options, progress, timings
            )
            final = store.snapshots_dir / version
            os.replace(work, final)
        except BaseException:
            # Includes KeyboardInterrupt: never leave a half-built directory that looks real.
            shutil.rmtree(work, ignore_errors=True)
            raise
        if options.promote:
            store.promote(version)
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
) -> dict[str, Any]:
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
        index, params = _make_vector_index(vectors, options)
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
    lexical = TantivyIndex(work / "lexical")
    with progress("building lexical index", len(products)) as advance:
        lexical.build(products, progress=advance)
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
        "vector_index": {**index.describe(), "exact_below": params.nlist == 0},
        "lexical_index": lexical.describe(),
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
    loaded = load_snapshot(work, use_gpu=options.use_gpu)
    manifest["validation"] = _validate(loaded, probes, probe_vectors)
    timings["validate_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - started
    manifest["build"]["timings_s"] = {name: round(v, 3) for name, v in timings.items()}
    (work / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def _torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())
