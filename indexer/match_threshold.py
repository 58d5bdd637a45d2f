"""A snapshot's dense-match threshold: measured at build, read when serving.

The threshold (:mod:`retrieval.match_calibration`) belongs to the item model and the
catalog, so it is measured once per build and stored in the manifest under
``match_set``. A snapshot built before result sets existed is measured when it loads
(about a second) and the result kept beside it in memory (``LoadedSnapshot.extra``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from shopsearch.indexer.snapshot_build import calibrate_snapshot
from shopsearch.indexer.snapshot_load import LoadedSnapshot
from shopsearch.retrieval.match_calibration import MATCH_SET_KEY

__all__ = ["dense_threshold", "ensure_calibrated"]

QueryEncoder = Callable[[Sequence[str]], npt.NDArray[np.float32]]


def ensure_calibrated(snap: LoadedSnapshot, encode_query: QueryEncoder) -> None:
    """Measure the threshold of a snapshot whose manifest has none (kept in ``extra``)."""
    if MATCH_SET_KEY not in snap.manifest and MATCH_SET_KEY not in snap.extra:
        snap.extra[MATCH_SET_KEY] = calibrate_snapshot(snap, encode_query)


def dense_threshold(snap: LoadedSnapshot) -> float | None:
    """The similarity from which a dense neighbour is in the result set; None when the
    snapshot has no calibration (then only lexical matches are)."""
    entry = snap.manifest.get(MATCH_SET_KEY) or snap.extra.get(MATCH_SET_KEY) or {}
    value = entry.get("dense_threshold")
    return None if value is None else float(value)
