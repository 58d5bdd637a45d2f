"""Named pause points in the dangerous windows of builds, promotions, prunes, updates
and the embedding cache, for kill tests. A no-op unless a test asks for one.

A test starts a real ``shopsearch`` command with ``SHOPSEARCH_CRASHPOINT=<name>`` (one of
:data:`CRASHPOINTS`) and ``SHOPSEARCH_CRASHPOINT_MARKER=<file>``; when the process reaches
that point it writes its name to the marker file and sleeps
(``SHOPSEARCH_CRASHPOINT_SLEEP`` seconds, default 600), so the test can ``kill -9`` it
exactly there: the window that lasts microseconds in production is held open on purpose.
Without the variable (production), :func:`crashpoint` returns at once.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

__all__ = ["CRASHPOINTS", "ENV", "crashpoint"]

ENV = "SHOPSEARCH_CRASHPOINT"
MARKER_ENV = "SHOPSEARCH_CRASHPOINT_MARKER"
SLEEP_ENV = "SHOPSEARCH_CRASHPOINT_SLEEP"

#: Every pause point, where it sits, and what a kill there leaves on disk.
CRASHPOINTS: dict[str, str] = {
    "build.written": "a build's .building-<version> is complete, not yet renamed into place",
    "promote.before-current": "a snapshot is in snapshots/, CURRENT not yet switched to it",
    "promote.before-history": "CURRENT names the new snapshot, HISTORY not yet written",
    "prune.tombstoned": "a pruned snapshot is renamed to .deleting-<version>, not yet removed",
    "rollback.before-current": "the rollback target loaded, CURRENT not yet switched",
    "rollback.before-history": "CURRENT names the rollback target, HISTORY not yet written",
    "update.before-commit": "an update's generation files are written, manifest not replaced",
    "update.after-commit": "an update committed, the old generation's files not yet deleted",
    "nightly.built": "a nightly job built its snapshot (not promoted), not yet evaluated",
    "nightly.evaluated": "a nightly job stored its snapshot's evaluation, gate not yet applied",
    "cache.before-commit": "the embedding cache's temp file is written, not yet renamed",
}


def crashpoint(name: str) -> None:
    """Pause here if ``SHOPSEARCH_CRASHPOINT`` names this point (see the module docstring)."""
    if name not in CRASHPOINTS:  # every point is listed, so a test can check its name
        raise ValueError(f"unknown crashpoint {name!r}; known: {', '.join(CRASHPOINTS)}")
    if os.environ.get(ENV) != name:
        return
    marker = os.environ.get(MARKER_ENV)
    if marker:
        Path(marker).write_text(f"{name} {os.getpid()}\n")
    time.sleep(float(os.environ.get(SLEEP_ENV, "600")))
