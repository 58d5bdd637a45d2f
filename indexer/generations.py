"""The files of a snapshot's update generations, the lock that serialises updates, and the
sweep of generations no reader needs any more.

A fresh build is generation 0 (``products.parquet``, ``vectors/``, ``lexical/``); each
committed update writes generation N (``products.gN.parquet``, ``vectors.gN/``,
``lexical.gN/``, ``tombstones.gN.npy``) and commits it by replacing ``manifest.json``.
Readers need the committed generation and, for a while, the one before it (a server may
be opening it). Everything else -- older generations left by an update killed between
its commit and its clean-up, files of an update killed before its commit, temp files --
is removed by :func:`sweep_generations`, at the next update and at every prune.
"""

from __future__ import annotations

import fcntl
import json
import logging
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from shopsearch.indexer.durable import remove_stale_temp_files

__all__ = [
    "BASE_FILES",
    "generation_files",
    "snapshot_files",
    "sweep_generations",
    "update_lock",
]

log = logging.getLogger(__name__)

#: Files of generation 0 (a fresh build); updates write ``<name>.g<N>`` siblings.
BASE_FILES: dict[str, str | None] = {
    "products": "products.parquet",
    "vectors": "vectors",
    "lexical": "lexical",
    "tombstones": None,
}
#: Names of generation files (and of the temp files updates write them through).
_GENERATION_FILE = re.compile(
    r"^\.?(?:products(?:\.g\d+)?\.parquet|vectors(?:\.g\d+)?|lexical(?:\.g\d+)?"
    r"|tombstones\.g\d+\.npy)(?:\.tmp)?$"
)


def snapshot_files(manifest: dict[str, Any]) -> dict[str, str | None]:
    """The files of the manifest's generation (``products``, ``vectors``, ``lexical`` --
    None for Elasticsearch --, ``tombstones`` -- None before the first delete)."""
    files = dict(BASE_FILES)
    files.update(manifest.get("files", {}))
    if manifest.get("lexical_index", {}).get("backend") == "elasticsearch":
        files["lexical"] = None
    return files


def generation_files(generation: int, backend: str) -> dict[str, str | None]:
    """The files generation ``generation`` of a snapshot is written to."""
    if generation == 0:
        files = dict(BASE_FILES)
    else:
        files = {
            "products": f"products.g{generation}.parquet",
            "vectors": f"vectors.g{generation}",
            "lexical": f"lexical.g{generation}",
            "tombstones": f"tombstones.g{generation}.npy",
        }
    if backend != "tantivy":
        files["lexical"] = None
    return files


@contextmanager
def update_lock(snapshot_dir: Path, *, wait: bool = True) -> Iterator[bool]:
    """Serialise updates of one snapshot. Yields True when held; with ``wait=False``
    yields False at once when another process holds it."""
    with (Path(snapshot_dir) / ".update.lock").open("w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def sweep_generations(snapshot_dir: Path, *, wait: bool = True) -> list[str]:
    """Remove generation files of ``snapshot_dir`` that neither the committed generation
    (the files its manifest names) nor the one before it uses; returns their names.

    Takes :func:`update_lock` (so no update is writing); with ``wait=False`` it sweeps
    nothing when an update is running. Deletes nothing when the manifest cannot be read.
    """
    path = Path(snapshot_dir)
    try:
        with update_lock(path, wait=wait) as held:
            return sweep_generations_locked(path) if held else []
    except OSError as exc:  # being pruned, or read-only
        log.debug("not sweeping generations of %s: %s", path, exc)
        return []


def sweep_generations_locked(snapshot_dir: Path) -> list[str]:
    """:func:`sweep_generations` for a caller that holds :func:`update_lock`."""
    path = Path(snapshot_dir)
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except (OSError, ValueError):
        return []
    committed = int(manifest.get("generation", 0))
    backend = str(manifest.get("lexical_index", {}).get("backend", "tantivy"))
    needed = {name for name in snapshot_files(manifest).values() if name}
    if committed >= 1:
        needed |= {n for n in generation_files(committed - 1, backend).values() if n}
    swept = []
    for entry in sorted(path.iterdir()):
        if entry.name in needed or not _GENERATION_FILE.match(entry.name):
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        swept.append(entry.name)
    swept += remove_stale_temp_files(path)  # of manifest commits that were killed
    if swept:
        log.info("removed files no generation of %s uses: %s", path.name, ", ".join(swept))
    return swept
