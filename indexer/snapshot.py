"""Versioned index snapshots: build, validate, promote, roll back, prune, load.

Layout (see docs/ARCHITECTURE.md)::

    <index-dir>/
      CURRENT                       # name of the serving snapshot (replaced atomically)
      HISTORY                       # the served versions, oldest first (indexer.history)
      snapshots/<version>/
        manifest.json  products.parquet  vectors/  lexical/
      snapshots/.building-<version>/  # a build in progress; never served
      snapshots/.deleting-<version>/  # a snapshot being pruned; never listed nor served

A build writes everything into ``.building-<version>``, loads it back and answers
probe queries, and only then renames it into place and switches ``CURRENT`` with an
atomic ``os.replace``. A build that fails or is killed leaves ``CURRENT`` and every
promoted snapshot untouched; its half-written directory is removed by the next build.

Every switch of ``CURRENT`` (promotion, rollback) is then recorded in ``HISTORY``, so a
rollback goes to the version that *served* before, never to a snapshot that was built
but never promoted (a build killed just before its switch); a rollback loads its target
before switching, and passes over one that does not load. Pruning renames a snapshot to
a tombstone before deleting it, so a kill midway never leaves a half-deleted snapshot
that is listed or rolled back to. Crash windows have named pause points for kill tests
(:mod:`indexer.crashpoints`).

**The lexical leg** is built, opened, switched and dropped through its
:class:`~indexer.lexical_lifecycle.LexicalLifecycle`, chosen from the build options or the
manifest, so nothing here asks which backend it is: tantivy keeps it in ``lexical/``;
with ``BuildOptions(lexical="elasticsearch")`` it is the index ``<prefix>-<version>``,
whose alias ``<prefix>`` moves with ``CURRENT`` (see :mod:`indexer.lexical_lifecycle`
for the alias, orphan and pruning guarantees; use one prefix per index directory).

**The vector leg** likewise goes through its
:class:`~indexer.vector_lifecycle.VectorLifecycle`: FAISS in ``vectors/``, or with
``BuildOptions(vector="elasticsearch")`` kNN in the index ``<prefix>-vectors-<version>``
whose alias ``<prefix>-vectors`` moves with ``CURRENT`` too.

The *serving path searches the snapshot's own index by name, never the alias*: a
snapshot's product table, vectors and lexical index must answer for the same products,
so a server (or a replica) still on the previous snapshot keeps answering from the
previous index until it swaps, and one that swapped answers from the new one; neither
sees the other's rows. The alias exists for external readers (dashboards, other
services). Keep ``keep >= 2`` so a lagging replica's index is not deleted under it.

**Incremental updates** (:mod:`indexer.updates`) write a new *generation* of a
snapshot's files (``products.g<N>.parquet``, ``vectors.g<N>/``, ``tombstones.g<N>.npy``,
``lexical.g<N>/``) and commit it by replacing ``manifest.json`` (which names the files
of its generation) atomically; dead rows stay in the product store and are listed in
the tombstones file, so rows keep matching vector ids.
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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from shopsearch.indexer.catalog import CatalogReport
from shopsearch.indexer.crashpoints import crashpoint
from shopsearch.indexer.durable import (
    exclusive_lock,
    fsync_dir,
    remove_stale_temp_files,
    write_atomic,
)
from shopsearch.indexer.embedding_cache import EmbeddingCache
from shopsearch.indexer.errors import SnapshotError
from shopsearch.indexer.generations import BASE_FILES, snapshot_files, sweep_generations
from shopsearch.indexer.history import (
    now,
    prune_plan,
    read_history,
    rollback_candidates,
    served_stack,
    write_history,
)
from shopsearch.indexer.lexical_lifecycle import (
    DEFAULT_ES_PREFIX,
    LEXICAL_BACKENDS,
    LexicalLifecycle,
    SwitchAction,
    es_index_name,
    lexical_lifecycle,
    lifecycle_of,
)
from shopsearch.indexer.product_store import read_products, write_products
from shopsearch.indexer.progress import ProgressFactory, no_progress
from shopsearch.indexer.vector_lifecycle import (
    VECTOR_BACKENDS,
    VectorLifecycle,
    vector_lifecycle,
    vector_lifecycle_of,
)
from shopsearch.retrieval.elasticsearch_index import ElasticsearchConnection
from shopsearch.retrieval.encoders import Encoder
from shopsearch.retrieval.es_vector_index import EsVectorParams
from shopsearch.retrieval.filters import ProductTable
from shopsearch.retrieval.item_text import item_text
from shopsearch.retrieval.lexical_index import LexicalIndex
from shopsearch.retrieval.match_calibration import MATCH_SET_KEY, calibrate_dense_threshold
from shopsearch.retrieval.types import Product, ShopsearchError
from shopsearch.retrieval.vector_index import (
    ExactIndex,
    VectorIndex,
    load_vector_index,
    recall_at_k,
)

__all__ = [
    "LEXICAL_BACKENDS",
    "VECTOR_BACKENDS",
    "BuildOptions",
    "LoadedSnapshot",
    "RollbackResult",
    "SnapshotError",
    "SnapshotInfo",
    "SnapshotStore",
    "build_snapshot",
    "calibrate_snapshot",
    "es_index_name",
    "load_snapshot",
    "make_table",
    "probe_queries",
    "snapshot_files",
    "write_manifest",
]

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
#: A snapshot being pruned is first renamed to ``.deleting-<version>`` (never listed).
TOMBSTONE_PREFIX = ".deleting-"


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


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """A promoted snapshot on disk."""

    version: str
    path: Path
    created_at: str
    products: int
    current: bool


@dataclass(frozen=True, slots=True)
class RollbackResult:
    """What :meth:`SnapshotStore.rollback` did: ``CURRENT`` moved from ``previous`` to
    ``version``; ``skipped`` lists ``(version, reason)`` of more recently served
    snapshots passed over because they do not load."""

    version: str
    previous: str
    skipped: list[tuple[str, str]] = field(default_factory=list)


@dataclass(slots=True)
class LoadedSnapshot:
    """A snapshot opened for serving: products, both indexes and the manifest.

    ``table`` holds every row of the product store, dead ones included (so rows match
    vector ids); ``tombstones`` lists the dead rows, and ``table.row_of`` maps each live
    product id to its one live row (dead ids are absent), so a dead row is never served.
    """

    version: str
    path: Path
    manifest: dict[str, Any]
    table: ProductTable
    vectors: VectorIndex
    lexical: LexicalIndex
    extra: dict[str, Any] = field(default_factory=dict)
    tombstones: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def item_model(self) -> dict[str, str]:
        """``{"id", "sha256", "path"}`` of the item tower that encoded this snapshot."""
        return dict(self.manifest["models"]["item_tower"])

    @property
    def generation(self) -> int:
        """0 for a fresh build; incremented by every committed update."""
        return int(self.manifest.get("generation", 0))

    @property
    def live_count(self) -> int:
        """Products that can be returned (rows minus tombstones)."""
        return len(self.table.row_of)

    @property
    def lexical_backend(self) -> str:
        return str(self.manifest.get("lexical_index", {}).get("backend", "tantivy"))


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Replace ``path/manifest.json`` atomically (temp file, fsync, rename)."""
    text = json.dumps(manifest, indent=2)
    write_atomic(path / MANIFEST, lambda fh: fh.write(text.encode("utf-8")))


class SnapshotStore:
    """The snapshots under one index directory and its ``CURRENT`` pointer.

    ``es`` is needed to promote, roll back to or prune snapshots whose lexical leg lives
    in Elasticsearch (their alias moves and their indices are deleted with them); without
    it those operations raise :class:`SnapshotError` saying so (pruning only warns and
    leaves the index for the next Elasticsearch build to delete).
    """

    def __init__(self, index_dir: Path, *, es: ElasticsearchConnection | None = None) -> None:
        self.root = Path(index_dir)
        self.snapshots_dir = self.root / "snapshots"
        self.es = es

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

    def manifest(self, version: str) -> dict[str, Any]:
        """The manifest of snapshot ``version`` (raises :class:`SnapshotError`)."""
        path = self.path(version) / MANIFEST
        try:
            data: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise SnapshotError(f"{path} cannot be read: {exc}") from exc
        return data

    def current_item_tower(self) -> dict[str, str] | None:
        """The item tower (``{"id", "path", "sha256", ...}``) that built the ``CURRENT``
        snapshot, or None before the first promotion (raises :class:`SnapshotError` when
        its manifest cannot be read)."""
        version = self.current()
        if version is None:
            return None
        return dict(self.manifest(version)["models"]["item_tower"])

    def generation(self, version: str) -> int:
        """The committed update generation of ``version`` (0 until an update)."""
        return int(self.manifest(version).get("generation", 0))

    def vector(self, manifest: dict[str, Any]) -> VectorLifecycle:
        """The lifecycle of the vector leg of the snapshot with ``manifest``."""
        return vector_lifecycle_of(manifest, self.es)

    def lexical(self, manifest: dict[str, Any]) -> LexicalLifecycle:
        """The lifecycle of the lexical leg of the snapshot with ``manifest``, on this
        store's cluster connection (raises :class:`SnapshotError` for an unknown backend)."""
        return lifecycle_of(manifest, self.es)

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

    @contextmanager
    def _switch_lock(self) -> Iterator[None]:
        """Serialise switches of ``CURRENT`` and ``HISTORY`` (promote, rollback, prune)
        across processes and threads; a second one waits for the first."""
        with exclusive_lock(self.root / ".switch.lock"):
            yield

    def history(self) -> list[str]:
        """The served versions, oldest first, ending with ``CURRENT`` (see
        :mod:`indexer.history`); empty before the first promotion."""
        return [e["version"] for e in self._served()]

    def _served(self) -> list[dict[str, Any]]:
        return served_stack(read_history(self.root), self.current(), self.versions())

    def promote(self, version: str) -> None:
        """Point ``CURRENT`` at ``version`` atomically (write a temp file, fsync, rename),
        then record it in ``HISTORY`` (see :mod:`indexer.history`).

        For an Elasticsearch snapshot the alias moves to its index first, in one
        ``_aliases`` request; if that fails nothing changed (:class:`SnapshotError`), and
        if ``CURRENT`` then cannot be written the alias is moved back.
        A tantivy snapshot leaves any alias where it is. The snapshot is not loaded here:
        a caller that has not loaded it (as a build and ``POST /v1/admin/promote`` do)
        must load it first.
        """
        with self._switch_lock():
            stack = self._served()
            self._switch(version, "promote", [*stack, {"version": version, "at": now()}])
        log.info("promoted snapshot %s", version)

    def _switch(self, version: str, action: SwitchAction, stack: list[dict[str, Any]]) -> None:
        """Switch the lexical leg (Elasticsearch: the alias), ``CURRENT``, then ``HISTORY``
        to ``stack``; the leg's switch is undone when ``CURRENT`` cannot be written."""
        manifest = self.manifest(version)  # raises if it does not exist
        undo = self.lexical(manifest).switch(version, manifest, action, self.current())
        try:
            undo_vector = self.vector(manifest).switch(version, manifest, action, self.current())
        except BaseException:
            undo()
            raise
        try:
            crashpoint(f"{action}.before-current")
            write_atomic(self.current_file, lambda fh: fh.write(f"{version}\n".encode()))
        except BaseException:
            undo_vector()
            undo()
            raise
        # CURRENT is the truth; a HISTORY that lags it by this switch is reconciled on read.
        crashpoint(f"{action}.before-history")
        write_history(self.root, stack)

    def rollback(self, load: Callable[[str], object] | None = None) -> RollbackResult:
        """Serve again the snapshot that served before the current one.

        Candidates come from the promotion history, the most recently served first; one
        that was pruned is passed over, and one that does not load (``load(version)``
        raises :class:`SnapshotError`; default: :func:`load_snapshot`) is passed over with
        a warning and listed in the result. ``CURRENT`` switches only to a snapshot that
        loaded. Raises :class:`SnapshotError` (``CURRENT`` unchanged) when no candidate
        loads, or when the target keeps its lexical leg in Elasticsearch and this store
        has no cluster connection.
        """
        with self._switch_lock():
            self.sweep_tombstones()
            stack = self._served()
            current = self.current()
            if current is None or current not in self.versions():
                raise SnapshotError("no current snapshot to roll back from; build one first")
            on_disk = set(self.versions())
            skipped: list[tuple[str, str]] = []
            for version in rollback_candidates(stack):
                if version not in on_disk:
                    continue  # pruned
                try:
                    lexical = self.lexical(self.manifest(version))
                except SnapshotError as exc:
                    log.warning("not rolling back to %s: %s", version, exc)
                    skipped.append((version, str(exc)))
                    continue
                lexical.check_switch(version, "rollback")  # missing config, not damage: stop
                self.vector(self.manifest(version)).check_switch(version, "rollback")
                try:
                    if load is None:
                        load_snapshot(self.path(version), es=self.es)
                    else:
                        load(version)
                except SnapshotError as exc:
                    log.warning("not rolling back to %s: it does not load: %s", version, exc)
                    skipped.append((version, str(exc)))
                    continue
                names = [e["version"] for e in stack]
                last = len(names) - 1 - names[::-1].index(version)
                self._switch(version, "rollback", stack[: last + 1])
                log.info("rolled back from %s to %s", current, version)
                return RollbackResult(version=version, previous=current, skipped=skipped)
        if skipped:
            reasons = "; ".join(f"{v}: {why}" for v, why in skipped)
            raise SnapshotError(
                f"no previously served snapshot loads ({reasons}); CURRENT still names "
                f"{current}. Build a new snapshot instead"
            )
        raise SnapshotError(
            f"{current} is the oldest snapshot kept; nothing to roll back to "
            "(raise --keep to keep more)"
        )

    def prune(self, keep: int) -> list[str]:
        """Delete snapshots beyond the newest ``keep`` with their Elasticsearch indices
        (never one an alias points at); returns the deleted versions.

        Never deletes ``CURRENT``, nor (with ``keep >= 2``) the rollback target; a
        snapshot that never served and is older than the newest served one is always
        deleted and takes no slot (:func:`indexer.history.prune_plan`). Each snapshot is
        first renamed to a tombstone ``.deleting-<version>`` (atomic; no longer listed),
        then removed, so a kill midway never leaves a half-deleted snapshot that could be
        listed or rolled back to; tombstones left by a kill are removed by the next
        prune, build, rollback or server start (:meth:`sweep_tombstones`). Old update
        generations of the kept snapshots are swept too
        (:func:`indexer.generations.sweep_generations`).

        An index that cannot be deleted (cluster unreachable, no ``es``) is logged and
        left: the next Elasticsearch build deletes such orphans.
        """
        if keep < 1:
            raise SnapshotError(f"keep must be >= 1, got {keep}")
        with self._switch_lock():
            self.sweep_tombstones()
            current = self.current()
            versions = self.versions()
            doomed = prune_plan(versions, self._served(), current, keep)
            for version in doomed:
                try:
                    manifest = self.manifest(version)
                    lexical: LexicalLifecycle | None = self.lexical(manifest)
                except SnapshotError:  # unreadable: nothing to learn about its lexical leg
                    lexical = None
                tomb = self.snapshots_dir / f"{TOMBSTONE_PREFIX}{version}"
                shutil.rmtree(tomb, ignore_errors=True)
                os.replace(self.snapshots_dir / version, tomb)
                fsync_dir(self.snapshots_dir)
                crashpoint("prune.tombstoned")
                if lexical is not None:
                    lexical.drop(version, manifest)
                    self.vector(manifest).drop(version, manifest)
                shutil.rmtree(tomb, ignore_errors=True)
                log.info("pruned snapshot %s", version)
        for version in self.versions():
            sweep_generations(self.snapshots_dir / version, wait=False)
        return doomed

    def sweep_tombstones(self) -> list[str]:
        """Remove what pruning left half-deleted (``.deleting-*``, never listed nor
        loaded); returns their names. Safe at any time, from any process."""
        if not self.snapshots_dir.is_dir():
            return []
        swept = []
        for path in self.snapshots_dir.iterdir():
            if path.name.startswith(TOMBSTONE_PREFIX):
                log.info("removing %s, left half-deleted by an interrupted prune", path.name)
                shutil.rmtree(path, ignore_errors=True)
                swept.append(path.name)
        return swept

    def lexical_names(self) -> set[str]:
        """What the lexical and vector legs of the snapshots kept on disk own outside their
        directories (Elasticsearch indices); a build's orphan sweeps keep them. Raises
        :class:`SnapshotError` when a manifest cannot be read (so the sweep deletes nothing)."""
        names: set[str] = set()
        for version in self.versions():
            manifest = self.manifest(version)
            names |= self.lexical(manifest).names(manifest)
            names |= self.vector(manifest).names(manifest)
        return names

    def clean_partial(self) -> None:
        """Remove directories of builds that never finished and of interrupted prunes
        (call it holding :meth:`build_lock`: a running build's directory is removed)."""
        if self.snapshots_dir.is_dir():
            for p in self.snapshots_dir.iterdir():
                if p.name.startswith(".building-"):
                    log.info("removing unfinished build %s", p.name)
                    shutil.rmtree(p, ignore_errors=True)
        self.sweep_tombstones()
        remove_stale_temp_files(self.root)  # of CURRENT and HISTORY writes that were killed

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


def make_table(products: Sequence[Product], tombstones: npt.NDArray[np.int64]) -> ProductTable:
    """The :class:`ProductTable` of a snapshot whose ``tombstones`` rows are dead: every
    row stays (rows are vector ids) but ``row_of`` maps only live ids, each to its live
    row. Raises :class:`SnapshotError` when an id has two live rows."""
    table = ProductTable(products)
    row_of = table.row_of
    dead = set(tombstones.tolist())
    for row in dead:
        pid = table.products[row].id
        if row_of.get(pid) == row:
            del row_of[pid]
    live = len(table.products) - len(dead)
    if len(row_of) != live:
        raise SnapshotError(
            f"{len(table.products)} rows, {len(dead)} dead, but {len(row_of)} live ids: some "
            "product id has two live rows; the snapshot is damaged, rebuild it"
        )
    return table


def load_snapshot(
    path: Path,
    *,
    use_gpu: bool | None = None,
    es: ElasticsearchConnection | None = None,
) -> LoadedSnapshot:
    """Open the snapshot in ``path`` for serving (raises :class:`SnapshotError`).

    ``es`` is the cluster connection for snapshots built with the Elasticsearch lexical
    leg (the manifest says which); their index is searched by its own name, not through
    the alias. Opening makes no request to the cluster, so a snapshot loads (and serves
    degraded answers) while the cluster is down; its document count is therefore not
    checked here (the build validates it; updates and refresh lag move it).
    """
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise SnapshotError(f"{path / MANIFEST} cannot be read: {exc}") from exc
    if manifest.get("format_version") != FORMAT_VERSION:
        raise SnapshotError(
            f"{path}: snapshot format {manifest.get('format_version')} is not {FORMAT_VERSION}; rebuild it"
        )
    files = snapshot_files(manifest)
    try:
        products = read_products(path / str(files["products"]))
        vectors = load_vector_index(path / str(files["vectors"]), use_gpu=use_gpu, es=es)
        tombstones = (
            np.load(path / files["tombstones"]).astype(np.int64)
            if files["tombstones"]
            else np.zeros(0, np.int64)
        )
        lexical = lifecycle_of(manifest, es).open(path, manifest, files["lexical"])
    except (OSError, ValueError, ShopsearchError) as exc:
        if isinstance(exc, SnapshotError):
            raise
        raise SnapshotError(f"{path}: cannot load snapshot: {exc}") from exc
    counts = manifest["counts"]
    rows = int(counts.get("rows", counts["products"]))
    live = len(products) - len(tombstones)
    lexical_count = lexical.count() if files["lexical"] is not None else live
    if not (len(products) == rows and live == vectors.size == lexical_count == counts["products"]):
        raise SnapshotError(
            f"{path}: counts disagree (product rows {len(products)} of which "
            f"{len(tombstones)} dead, vectors {vectors.size}, lexical {lexical_count}, manifest "
            f"{counts['products']} live of {rows}); rebuild it"
        )
    return LoadedSnapshot(
        version=manifest["version"],
        path=path,
        manifest=manifest,
        table=make_table(products, tombstones),
        vectors=vectors,
        lexical=lexical,
        tombstones=tombstones,
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
