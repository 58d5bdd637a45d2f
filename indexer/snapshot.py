"""Versioned index snapshots: the store of promoted snapshots and its ``CURRENT`` pointer
(promote, roll back, prune); building one is :mod:`indexer.snapshot_build`, opening one for
serving :mod:`indexer.snapshot_load`.

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
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shopsearch.indexer.crashpoints import crashpoint
from shopsearch.indexer.durable import (
    exclusive_lock,
    fsync_dir,
    remove_stale_temp_files,
    write_atomic,
)
from shopsearch.indexer.errors import SnapshotError
from shopsearch.indexer.generations import sweep_generations
from shopsearch.indexer.history import (
    now,
    prune_plan,
    read_history,
    rollback_candidates,
    served_stack,
    write_history,
)
from shopsearch.indexer.lexical_lifecycle import (
    LexicalLifecycle,
    SwitchAction,
    lifecycle_of,
)
from shopsearch.indexer.snapshot_load import MANIFEST, LoadedSnapshot, load_snapshot
from shopsearch.indexer.vector_lifecycle import VectorLifecycle, vector_lifecycle_of
from shopsearch.retrieval.elasticsearch_index import ElasticsearchConnection

__all__ = [
    "RollbackResult",
    "SnapshotError",
    "SnapshotInfo",
    "SnapshotStore",
]

log = logging.getLogger(__name__)

#: A snapshot being pruned is first renamed to ``.deleting-<version>`` (never listed).
TOMBSTONE_PREFIX = ".deleting-"


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

    def load_current(self) -> LoadedSnapshot:
        """The ``CURRENT`` snapshot opened for serving, with this store's cluster
        connection (raises :class:`SnapshotError` before the first promotion)."""
        version = self.current()
        if version is None:
            raise SnapshotError(f"{self.root}: no CURRENT snapshot; build one first")
        return load_snapshot(self.path(version), es=self.es)

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
