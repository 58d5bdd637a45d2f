"""The models a search service answers with: the runtime of its query tower, the fusion
of a request that names none (which follows whether the towers were fine-tuned), and the
ids and checksums each answer reports.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from shopsearch.api.settings import Settings
from shopsearch.indexer.snapshot_load import LoadedSnapshot
from shopsearch.rerank.cross_encoder import Reranker
from shopsearch.retrieval.encoders import Encoder
from shopsearch.retrieval.fusion import FusionChoice, FusionMethod, default_fusion
from shopsearch.retrieval.model_registry import towers_fine_tuned

__all__ = ["fusion_default", "models_answering", "query_tower", "solo_threads"]

log = logging.getLogger(__name__)


def solo_threads(settings: Settings) -> int:
    """``Settings.solo_threads``, or when unset the cores this process may use (0 on a
    single core, where a solo session could not be faster)."""
    if settings.solo_threads is not None:
        return settings.solo_threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return cores if cores and cores > 1 else 0


def query_tower(settings: Settings, encoder: Encoder) -> Encoder:
    """The query tower: ``encoder`` itself, or the same weights on the runtime
    ``Settings.query_backend`` names (``auto``, when ``encoder`` runs torch on a CPU:
    fp32 onnxruntime, the same vectors in half the time, for fine-tuned towers; int8
    onnxruntime for base towers, whose answers BM25 leads)."""
    backend = settings.query_backend
    if backend == "auto":
        on_cpu = not encoder.device.startswith("cuda")
        backend = "same"
        if on_cpu and encoder.backend == "torch":
            # Base towers answer in the BM25-led fusion, where int8's small shift of the
            # query vector measured +0.0011 nDCG@10 (dense leg alone -0.0014) for 1.8 ms
            # less a query; fine-tuned towers lead the answer, so they keep fp32 (the
            # same vectors) until int8 is measured on them (README, "Query tower runtime").
            fine_tuned = towers_fine_tuned(Path(encoder.info.path))
            backend = "onnx" if fine_tuned else "onnx-int8"
    if backend in ("same", encoder.backend):
        return encoder
    query = Encoder(
        encoder.path,
        device=settings.device,
        backend=backend,
        onnx_threads=settings.onnx_threads,
        solo_threads=solo_threads(settings),
    )
    log.info("query tower on %s (item tower on %s)", query.backend, encoder.backend)
    return query


def fusion_default(settings: Settings, encoder: Encoder) -> FusionChoice:
    """The fusion of a request that names none: ``Settings.fusion``, or with ``auto``
    the one suited to ``encoder``'s towers (fine-tuned or not)."""
    if settings.fusion != "auto":
        return FusionChoice(
            FusionMethod(settings.fusion), settings.lexical_weight, "set by SHOPSEARCH_FUSION"
        )
    return default_fusion(
        fine_tuned=towers_fine_tuned(Path(encoder.info.path)),
        base_lexical_weight=settings.base_lexical_weight,
    )


def models_answering(
    query_encoder: Encoder, snap: LoadedSnapshot | None, reranker: Reranker | None
) -> dict[str, dict[str, str] | None]:
    """Ids and short checksums of the models answering queries: ``query_encoder``, the
    item tower that built ``snap`` (None: no snapshot) and ``reranker`` (None: none)."""

    def short(info: dict[str, str]) -> dict[str, str]:
        return {"id": info["id"], "sha256": info["sha256"][:12]}

    query = query_encoder.info
    return {
        # The runtime's checksum, and that of the weights it runs (the item tower's
        # when the query tower is the same model on a faster runtime).
        "query_tower": {**short(query.to_dict()), "weights_sha256": query.weights_sha256[:12]},
        "item_tower": short(snap.item_model) if snap else None,
        "reranker": short(reranker.info.to_dict()) if reranker else None,
    }
