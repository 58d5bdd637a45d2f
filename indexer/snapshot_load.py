"""Opening a snapshot for serving: its manifest, product store, vector and lexical legs
and tombstones, checked against each other (:func:`load_snapshot`), and the manifest's
atomic rewrite (:func:`write_manifest`). The layout and the store of snapshots are in
:mod:`indexer.snapshot`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from shopsearch.indexer.durable import write_atomic
from shopsearch.indexer.errors import SnapshotError
from shopsearch.indexer.generations import snapshot_files
from shopsearch.indexer.lexical_lifecycle import lifecycle_of
from shopsearch.indexer.product_store import read_products
from shopsearch.retrieval.elasticsearch_index import ElasticsearchConnection
from shopsearch.retrieval.filters import ProductTable
from shopsearch.retrieval.lexical_index import LexicalIndex
from shopsearch.retrieval.types import Product, ShopsearchError
from shopsearch.retrieval.vector_index import VectorIndex, load_vector_index

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST",
    "LoadedSnapshot",
    "load_snapshot",
    "make_table",
    "write_manifest",
]

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


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
