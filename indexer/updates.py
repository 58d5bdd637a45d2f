"""Incremental updates: upsert and delete products of a snapshot between nightly builds.

Both legs follow every change:

* **dense** -- the vector index keeps *tombstones*: a row is never reused, so changing a
  product's vector removes its old row and appends the product (and its new vector)
  under a new row. The dead row stays in the product store, listed in the snapshot's
  tombstones file, and is never returned (:func:`indexer.snapshot_load.make_table` leaves
  dead ids out of ``row_of``; the vector index never returns a removed row).
  A change that leaves :func:`~retrieval.item_text.item_text` unchanged (price, stock,
  image, attributes) replaces the product in its row, without re-encoding.
* **lexical** -- tantivy: ``upsert``/``delete`` into a copy of the index (the serving one
  is never written to); Elasticsearch: the same calls on the snapshot's own index, with
  the connection's refresh policy (``wait_for`` by default: visible when this returns).

The new state is written as a new *generation* of the snapshot's files beside the
current one and committed by replacing ``manifest.json`` atomically; the manifest's
``updates`` log records each update's counts and time. A server picks the new
generation up at its next reload check (``SearchService.reload_if_changed``), or at once
when the update went through it (``POST /v1/admin/products``). After the commit every
generation file but the committed generation's and the previous one's is deleted (a
server that has just loaded the previous one can still open it); files leaked by an
update killed before or after its commit are swept by the next update, and by the next
prune (:func:`indexer.generations.sweep_generations`).

Failure semantics: products that fail validation or that Elasticsearch rejects are
reported by id with the reason (:attr:`UpdateReport.rejected`) and applied to neither
leg; the rest is applied. Any other failure (the cluster unreachable, a full disk)
commits nothing; Elasticsearch may already hold part of the changes, and running the
same update again converges (upserts and deletes are idempotent). A rollback to an
older snapshot drops the updates (they were applied to the serving snapshot only); the
next build from the catalog export replaces them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from shopsearch.indexer.crashpoints import crashpoint
from shopsearch.indexer.generations import (
    generation_files,
    snapshot_files,
    sweep_generations_locked,
    update_lock,
)
from shopsearch.indexer.product_store import write_products
from shopsearch.indexer.snapshot import SnapshotError
from shopsearch.indexer.snapshot_load import (
    LoadedSnapshot,
    load_snapshot,
    make_table,
    write_manifest,
)
from shopsearch.retrieval.elasticsearch_index import ElasticsearchConnection
from shopsearch.retrieval.encoders import Encoder
from shopsearch.retrieval.es_bulk import RejectedDocumentsError
from shopsearch.retrieval.item_text import item_text
from shopsearch.retrieval.lexical_index import LexicalIndex, TantivyIndex
from shopsearch.retrieval.types import Product, ShopsearchError
from shopsearch.retrieval.vector_index import FilteringVectorIndex

__all__ = [
    "UPDATE_LOG_LIMIT",
    "UpdateError",
    "UpdateReport",
    "UpdateResult",
    "apply_updates",
    "read_delete_ids",
]

log = logging.getLogger(__name__)

#: Entries of the manifest's ``updates`` log kept (the oldest are dropped; the counts in
#: ``updates_total`` keep adding up).
UPDATE_LOG_LIMIT = 200
#: Rejected products listed per log entry.
_REJECTED_LOGGED = 100


class UpdateError(ShopsearchError):
    """An update request is ambiguous or could not be applied (nothing was committed)."""


@dataclass(frozen=True, slots=True)
class UpdateReport:
    """What one :func:`apply_updates` call did, by product id.

    ``added``: new products; ``reencoded``: existing products whose item text changed
    (new row and vector); ``fields_only``: existing products whose item text did not
    change (row replaced in place, no encoding); ``unchanged``: upserts equal to the
    stored product (nothing done); ``deleted``; ``not_found``: deletes of ids the
    snapshot does not have (ignored); ``rejected``: ``(id, reason)`` of products applied
    to neither leg. ``generation`` is the committed generation (unchanged when nothing
    changed).
    """

    version: str
    generation: int
    added: list[str] = field(default_factory=list)
    reencoded: list[str] = field(default_factory=list)
    fields_only: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    not_found: list[str] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def changed(self) -> int:
        """Products whose state changed."""
        return len(self.added) + len(self.reencoded) + len(self.fields_only) + len(self.deleted)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (counts, and the ids of not-found and rejected products)."""
        return {
            "version": self.version,
            "generation": self.generation,
            "added": len(self.added),
            "reencoded": len(self.reencoded),
            "fields_only": len(self.fields_only),
            "unchanged": len(self.unchanged),
            "deleted": len(self.deleted),
            "not_found": list(self.not_found),
            "rejected": [{"id": pid, "reason": reason} for pid, reason in self.rejected],
            "timings_s": dict(self.timings_s),
        }


@dataclass(slots=True)
class UpdateResult:
    """The report and the updated snapshot, loaded and ready to serve."""

    report: UpdateReport
    snapshot: LoadedSnapshot


def read_delete_ids(path: Path) -> list[str]:
    """Product ids from a text file, one a line; blank lines and ``#`` comments are skipped.

    Raises :class:`UpdateError` when the file cannot be read.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UpdateError(f"cannot read delete ids from {path}: {exc}") from exc
    return [s for line in lines if (s := line.split("#", 1)[0].strip())]


def _invalid(product: Product) -> str | None:
    """Why ``product`` cannot be indexed, or None (the catalog reader's rules)."""
    if not product.id.strip():
        return "empty id"
    if not product.title.strip():
        return "empty title"
    if product.price is not None and (
        math.isnan(product.price) or math.isinf(product.price) or product.price < 0
    ):
        return f"price {product.price!r} must be a non-negative number"
    return None


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


def _fsync_tree(path: Path) -> None:
    """Flush a written file, or every file under a directory, to disk."""
    for file in [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]:
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def apply_updates(
    target: Path | LoadedSnapshot,
    upserts: Sequence[Product],
    deletes: Sequence[str],
    encoder: Encoder,
    *,
    es: ElasticsearchConnection | None = None,
    use_gpu: bool | None = None,
    batch_size: int = 64,
) -> UpdateResult:
    """Upsert ``upserts`` and delete ``deletes`` (product ids) in a snapshot, on both legs.

    ``target`` is a snapshot directory or a loaded snapshot; a loaded one is never
    changed (it may be serving requests): the snapshot is loaded afresh from its
    directory, changed, persisted as a new generation, and returned in the result
    (ready to swap in). ``encoder`` must be the item tower that built the snapshot;
    ``es`` is required for snapshots whose lexical leg is in Elasticsearch.

    Raises :class:`UpdateError` for an ambiguous request (an id twice in ``upserts``, or
    in both lists) and :class:`SnapshotError` for an encoder that is not the snapshot's
    item tower, before changing anything; :class:`~retrieval.lexical_index.LexicalIndexError`
    when the cluster fails and :class:`OSError` when the files cannot be written, having
    committed nothing (see the module docstring). Invalid or rejected products do not
    raise: they are in the report's ``rejected``.
    """
    started = time.perf_counter()
    path = Path(target.path if isinstance(target, LoadedSnapshot) else target)
    _check_request(upserts, deletes)
    with update_lock(path):
        # Files of generations no reader needs (an earlier update killed midway).
        sweep_generations_locked(path)
        snap = load_snapshot(path, use_gpu=use_gpu, es=es)
        if snap.item_model["sha256"] != encoder.info.sha256:
            raise SnapshotError(
                f"snapshot {snap.version} was built with item tower {snap.item_model['id']}, "
                f"not {encoder.info.id}; update it with --model {snap.item_model['path']}"
            )
        return _apply(snap, upserts, deletes, encoder, batch_size, started)


def _check_request(upserts: Sequence[Product], deletes: Sequence[str]) -> None:
    counts = Counter(p.id for p in upserts)
    twice = sorted(pid for pid, n in counts.items() if n > 1)
    if twice:
        raise UpdateError(
            f"ids upserted more than once in one update: {twice[:20]}; send each product once"
        )
    both = sorted(set(counts) & set(deletes))
    if both:
        raise UpdateError(
            f"ids both upserted and deleted in one update: {both[:20]}; send them in separate "
            "updates, in the order you mean"
        )


def _apply(
    snap: LoadedSnapshot,
    upserts: Sequence[Product],
    deletes: Sequence[str],
    encoder: Encoder,
    batch_size: int,
    started: float,
) -> UpdateResult:
    table = snap.table
    products = list(table.products)
    timings: dict[str, float] = {}
    rejected: list[tuple[str, str]] = []
    added: list[Product] = []
    reencoded: list[Product] = []
    fields_only: list[Product] = []
    unchanged: list[str] = []
    for product in upserts:
        reason = _invalid(product)
        if reason is not None:
            rejected.append((product.id, reason))
            continue
        row = table.row_of.get(product.id)
        if row is None:
            added.append(product)
        elif products[row] == product:
            unchanged.append(product.id)
        elif item_text(products[row]) == item_text(product):
            fields_only.append(product)
        else:
            reencoded.append(product)
    deleted = [pid for pid in dict.fromkeys(deletes) if pid in table.row_of]
    not_found = [pid for pid in dict.fromkeys(deletes) if pid not in table.row_of]

    # Encode first: the slowest step, and nothing has changed yet if it fails.
    t = time.perf_counter()
    to_encode = [*reencoded, *added]
    vectors = (
        encoder.encode_document([item_text(p) for p in to_encode], batch_size=batch_size)
        if to_encode
        else np.zeros((0, encoder.dim), np.float32)
    )
    timings["encode_s"] = time.perf_counter() - t

    generation = snap.generation + 1
    backend = snap.lexical_backend
    files = generation_files(generation, backend)
    written = [snap.path / name for name in files.values() if name]
    for leftover in written:  # of an update that died before committing
        _remove(leftover)
    try:
        t = time.perf_counter()
        lexical, lexical_rejected = _update_lexical(
            snap, files, [*fields_only, *reencoded, *added], deleted
        )
        timings["lexical_s"] = time.perf_counter() - t
        if lexical_rejected:
            rejected += lexical_rejected
            gone = {pid for pid, _ in lexical_rejected}
            keep = [i for i, p in enumerate(to_encode) if p.id not in gone]
            vectors = vectors[keep]
            to_encode = [to_encode[i] for i in keep]
            added = [p for p in added if p.id not in gone]
            reencoded = [p for p in reencoded if p.id not in gone]
            fields_only = [p for p in fields_only if p.id not in gone]
            deleted = [pid for pid in deleted if pid not in gone]

        report = UpdateReport(
            version=snap.version,
            generation=snap.generation,
            added=[p.id for p in added],
            reencoded=[p.id for p in reencoded],
            fields_only=[p.id for p in fields_only],
            unchanged=unchanged,
            deleted=deleted,
            not_found=not_found,
            rejected=rejected,
            timings_s=timings,
        )
        if report.changed == 0:
            for leftover in written:
                _remove(leftover)
            timings["total_s"] = time.perf_counter() - started
            _log_report(report)
            return UpdateResult(report=report, snapshot=snap)

        t = time.perf_counter()
        dead = set(snap.tombstones.tolist())
        newly_dead = [table.row_of[p.id] for p in reencoded] + [table.row_of[i] for i in deleted]
        for product in fields_only:
            products[table.row_of[product.id]] = product
        new_rows = np.arange(len(products), len(products) + len(to_encode), dtype=np.int64)
        products += to_encode
        dead.update(newly_dead)
        if newly_dead:
            snap.vectors.remove(np.asarray(newly_dead, dtype=np.int64))
        if len(new_rows):
            snap.vectors.add(vectors, new_rows)
        if isinstance(snap.vectors, FilteringVectorIndex):  # it filters on the products' fields
            rows = [*new_rows.tolist(), *(table.row_of[p.id] for p in fields_only)]
            snap.vectors.put_products(np.asarray(rows, np.int64), [*to_encode, *fields_only])
        tombstones: npt.NDArray[np.int64] = np.asarray(sorted(dead), dtype=np.int64)
        updated_table = make_table(products, tombstones)
        timings["dense_s"] = time.perf_counter() - t

        t = time.perf_counter()
        manifest = _write_generation(
            snap, files, generation, products, tombstones, len(updated_table.row_of), report
        )
        timings["write_s"] = time.perf_counter() - t
    except BaseException:
        for leftover in written:
            _remove(leftover)
        raise

    # Committed: drop every generation but this one and the previous one (a server may
    # still be opening the previous one). A kill here leaks them until the next sweep.
    crashpoint("update.after-commit")
    sweep_generations_locked(snap.path)
    timings["total_s"] = time.perf_counter() - started
    report = dataclasses.replace(report, generation=generation, timings_s=timings)
    _log_report(report)
    updated = LoadedSnapshot(
        version=snap.version,
        path=snap.path,
        manifest=manifest,
        table=updated_table,
        vectors=snap.vectors,
        lexical=lexical,
        tombstones=tombstones,
    )
    return UpdateResult(report=report, snapshot=updated)


def _update_lexical(
    snap: LoadedSnapshot,
    files: dict[str, str | None],
    upserts: list[Product],
    deletes: list[str],
) -> tuple[LexicalIndex, list[tuple[str, str]]]:
    """Apply the changes to the lexical leg; returns the index to serve and what the
    backend rejected. Tantivy is changed in a copy (the serving index is never written)."""
    rejected: list[tuple[str, str]] = []
    if files["lexical"] is not None:
        source = snap.path / str(snapshot_files(snap.manifest)["lexical"])
        copy = snap.path / files["lexical"]
        shutil.copytree(source, copy, ignore=shutil.ignore_patterns("*.lock"))
        lexical: LexicalIndex = TantivyIndex.load(copy)
    else:
        lexical = snap.lexical
    if upserts:
        try:
            lexical.upsert(upserts)
        except RejectedDocumentsError as exc:
            rejected += exc.rejected
    if deletes:
        try:
            lexical.delete(deletes)
        except RejectedDocumentsError as exc:
            rejected += exc.rejected
    return lexical, rejected


def _write_generation(
    snap: LoadedSnapshot,
    files: dict[str, str | None],
    generation: int,
    products: list[Product],
    tombstones: npt.NDArray[np.int64],
    live: int,
    report: UpdateReport,
) -> dict[str, Any]:
    """Write the generation's files, then commit it by replacing the manifest."""
    path = snap.path
    products_file = path / str(files["products"])
    tmp = path / f".{products_file.name}.tmp"
    write_products(products, tmp)
    _fsync_tree(tmp)
    os.replace(tmp, products_file)

    vectors_dir = path / str(files["vectors"])
    tmp_dir = path / f".{vectors_dir.name}.tmp"
    _remove(tmp_dir)
    snap.vectors.save(tmp_dir)
    _fsync_tree(tmp_dir)
    os.replace(tmp_dir, vectors_dir)

    out_files = dict(files)
    if len(tombstones):
        tomb_file = path / str(files["tombstones"])
        with tomb_file.open("wb") as fh:
            np.save(fh, tombstones)
            fh.flush()
            os.fsync(fh.fileno())
    else:
        out_files["tombstones"] = None
    if files["lexical"] is not None:
        _fsync_tree(path / files["lexical"])

    manifest: dict[str, Any] = json.loads(json.dumps(snap.manifest))  # a deep copy
    manifest["files"] = out_files
    manifest["generation"] = generation
    manifest["counts"] = {**manifest["counts"], "products": live, "rows": len(products)}
    manifest["vector_index"] = {**manifest["vector_index"], **snap.vectors.describe()}
    counts = {
        "added": len(report.added),
        "reencoded": len(report.reencoded),
        "fields_only": len(report.fields_only),
        "deleted": len(report.deleted),
    }
    entry = {
        "generation": generation,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        **counts,
        "not_found": len(report.not_found),
        "rejected": [
            {"id": pid, "reason": reason} for pid, reason in report.rejected[:_REJECTED_LOGGED]
        ],
        "rows": len(products),
        "live": live,
    }
    manifest["updates"] = [*manifest.get("updates", []), entry][-UPDATE_LOG_LIMIT:]
    totals: dict[str, int] = manifest.get("updates_total", {})
    for key, n in counts.items():
        totals[key] = int(totals.get(key, 0)) + n
    totals["updates"] = int(totals.get("updates", 0)) + 1
    manifest["updates_total"] = totals
    crashpoint("update.before-commit")
    write_manifest(path, manifest)
    return manifest


def _log_report(report: UpdateReport) -> None:
    log.info(
        "updated snapshot %s (generation %d): %d added, %d re-encoded, %d fields only, "
        "%d unchanged, %d deleted, %d not found, %d rejected",
        report.version,
        report.generation,
        len(report.added),
        len(report.reencoded),
        len(report.fields_only),
        len(report.unchanged),
        len(report.deleted),
        len(report.not_found),
        len(report.rejected),
    )
    for pid, reason in report.rejected[:20]:
        log.warning("rejected product %s: %s", pid, reason)
