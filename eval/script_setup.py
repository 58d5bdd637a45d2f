"""What the measurement scripts of ``eval`` (``python -m shopsearch.eval.X``) set up
first: their log lines, and the snapshot they measure."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from shopsearch.indexer.errors import SnapshotError
from shopsearch.indexer.snapshot import SnapshotStore
from shopsearch.indexer.snapshot_load import LoadedSnapshot

__all__ = ["current_snapshot", "script_logging"]


def script_logging(noisy: Sequence[str], fmt: str = "%(levelname)s %(message)s") -> None:
    """INFO lines in ``fmt`` on stderr, and only warnings from the ``noisy`` loggers."""
    logging.basicConfig(level=logging.INFO, format=fmt)
    for name in noisy:
        logging.getLogger(name).setLevel(logging.WARNING)


def current_snapshot(index_dir: Path) -> LoadedSnapshot:
    """The ``CURRENT`` snapshot of ``index_dir``, opened; exits with the reason (and no
    traceback) when there is none or it cannot be opened."""
    try:
        return SnapshotStore(index_dir).load_current()
    except SnapshotError as exc:
        raise SystemExit(str(exc)) from exc
