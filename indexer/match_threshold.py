"""A snapshot's dense-match threshold: measured at build, read when serving.

The threshold (:mod:`retrieval.match_calibration`) belongs to the item model and the
catalog, so it is measured once per build and stored in the manifest under
``match_set``. It is measured again when a snapshot loads (about a second on the
embedded legs) and the result kept beside it in memory (``LoadedSnapshot.extra``, which
wins over the manifest) in two cases: a snapshot built before result sets existed, and a
server whose query tower has another precision than the build's (int8 moves query
vectors enough to move the threshold: 0.3995 -> 0.3941 on the sample catalog).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from shopsearch.indexer.snapshot_build import calibrate_snapshot
from shopsearch.indexer.snapshot_load import LoadedSnapshot
from shopsearch.retrieval.match_calibration import MATCH_SET_KEY

__all__ = ["dense_threshold", "ensure_calibrated", "precision"]

QueryEncoder = Callable[[Sequence[str]], npt.NDArray[np.float32]]


def precision(backend: str) -> str:
    """``"int8"`` for a quantised encoder backend (``onnx-int8``), else ``"fp32"``."""
    return "int8" if "int8" in backend else "fp32"


def ensure_calibrated(
    snap: LoadedSnapshot, encode_query: QueryEncoder, query_backend: str | None = None
) -> None:
    """Measure the threshold with ``encode_query`` (kept in ``extra``) when the manifest
    has none, or when ``query_backend`` (the serving query tower's) differs in
    :func:`precision` from the build's query tower; otherwise keep the build's."""
    if MATCH_SET_KEY in snap.extra:
        return
    built = snap.manifest.get("models", {}).get("query_tower", {}).get("backend", "torch")
    other = query_backend is not None and precision(query_backend) != precision(built)
    if MATCH_SET_KEY not in snap.manifest or other:
        entry = calibrate_snapshot(snap, encode_query)
        if other:
            entry = {**entry, "query_backend": query_backend}
        snap.extra[MATCH_SET_KEY] = entry


def dense_threshold(snap: LoadedSnapshot) -> float | None:
    """The similarity from which a dense neighbour is in the result set; None when the
    snapshot has no calibration (then only lexical matches are)."""
    entry = snap.extra.get(MATCH_SET_KEY) or snap.manifest.get(MATCH_SET_KEY) or {}
    value = entry.get("dense_threshold")
    return None if value is None else float(value)
