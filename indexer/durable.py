"""Crash-safe file writes: a file is either the old one or the complete new one.

``os.replace`` is atomic, but without ``fsync`` a power cut can leave the new name
pointing at an empty file, and without an ``fsync`` of the directory the rename itself
may be lost. Every commit point of the index directory (``CURRENT``, ``HISTORY``,
manifests, the embedding cache) goes through :func:`write_atomic`.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

__all__ = ["fsync_dir", "pid_alive", "remove_stale_temp_files", "write_atomic"]

log = logging.getLogger(__name__)

_TMP = re.compile(r"^\..+\.(\d+)\.tmp$")  # .<name>.<pid>.tmp, as write_atomic names them


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (renames, creations, deletions) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(
    path: Path,
    write: Callable[[BinaryIO], object],
    *,
    before_commit: Callable[[], None] | None = None,
) -> None:
    """Replace ``path`` with what ``write(fh)`` writes: temp file ``.<name>.<pid>.tmp``
    beside it, fsync, ``os.replace``, fsync of the directory.

    ``before_commit`` runs between the fsync and the rename (a test hook). A process
    killed before the rename leaves ``path`` as it was, and a temp file that
    :func:`pid_alive` tells stale (its pid is in its name).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        if before_commit is not None:
            before_commit()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (so its temp files may still be written)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def remove_stale_temp_files(directory: Path) -> list[str]:
    """Remove the temp files of :func:`write_atomic` in ``directory`` whose process is gone
    (killed before its rename); returns their names. A running writer's are left."""
    removed: list[str] = []
    if not Path(directory).is_dir():
        return removed
    for path in Path(directory).iterdir():
        match = _TMP.match(path.name)
        if match and path.is_file() and not pid_alive(int(match.group(1))):
            log.info("removing %s, left by a write that was killed", path)
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed


@contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created, with its folder, when missing)
    for the block, across processes and threads; a second holder waits for the first.
    The lock goes with the process, so a killed holder never leaves it taken."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
