"""Cross-encoder reranking of a short candidate list.

Any sentence-transformers ``CrossEncoder`` directory works. ``backend`` picks the runtime
as for the towers: ``torch``, or onnxruntime ``onnx`` (fp32) / ``onnx-int8`` (dynamic int8,
the fast CPU path; exports cached by :mod:`retrieval.onnx_export`), or ``auto`` (the
service's default): int8 on a CPU, torch on a GPU. No pretrained reranker is
installable offline and an untrained head scores noise, so the service runs this stage
only when a trained model is configured (``SHOPSEARCH_RERANKER_DIR``); otherwise the
response says ``rerank: skipped (no model)``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt

from shopsearch.retrieval.encoders import (
    EncoderBackend,
    ModelInfo,
    attach_onnx_backend,
    model_info,
    resolve_device,
)
from shopsearch.retrieval.types import ShopsearchError

__all__ = [
    "CPU_BATCH_SIZE",
    "FALLBACK_MAX_LENGTH",
    "GPU_BATCH_SIZE",
    "RERANKER_BACKENDS",
    "Reranker",
    "RerankerBackend",
    "RerankerError",
    "resolve_reranker_backend",
    "trained_max_length",
]

log = logging.getLogger(__name__)


#: Word pieces per pair when a model has no card: a title with brand and category fits.
FALLBACK_MAX_LENGTH = 128

#: Pairs per forward pass when none is given. On a CPU, 32 (the cost is arithmetic, and
#: smaller batches pad less). On a GPU one pass per list (the largest rerank depth a
#: request may ask, 500, fits): at these sizes a pass costs its kernel launches more than
#: its arithmetic, and depth 50 in one pass measured 12.5 ms p50 against 16.7 ms in two on
#: an H200 (README, "GPU path").
CPU_BATCH_SIZE = 32
GPU_BATCH_SIZE = 512

RerankerBackend = Literal["auto", "torch", "onnx", "onnx-int8"]
RERANKER_BACKENDS: tuple[str, ...] = get_args(RerankerBackend)


class RerankerError(ShopsearchError):
    """The reranker model cannot be loaded or failed to score."""


def resolve_reranker_backend(backend: str, device: str = "auto") -> EncoderBackend:
    """The runtime ``backend`` names on ``device``: ``auto`` is ``onnx-int8`` on a CPU
    (measured 2.9x faster than torch at depth 50 on Home Depot, nDCG@10 within 0.002) and
    ``torch`` on a GPU (the ONNX graphs run on the CPU); the others name themselves.

    Raises:
        RerankerError: ``backend`` is not one of :data:`RERANKER_BACKENDS`.
    """
    if backend not in RERANKER_BACKENDS:
        raise RerankerError(
            f"unknown reranker backend {backend!r}; choose one of {', '.join(RERANKER_BACKENDS)}"
        )
    if backend == "auto":
        return "torch" if resolve_device(device).startswith("cuda") else "onnx-int8"
    return backend  # type: ignore[return-value]


def trained_max_length(path: Path) -> int:
    """The ``max_length`` recorded in ``path/model_card.json``, else the fallback.

    Raises:
        RerankerError: the card exists but is not valid JSON.
    """
    card_path = Path(path) / "model_card.json"
    if not card_path.is_file():
        return FALLBACK_MAX_LENGTH
    try:
        card = json.loads(card_path.read_text())
    except json.JSONDecodeError as exc:
        raise RerankerError(f"{card_path} is not valid JSON: {exc}") from exc
    return int(card.get("max_length") or FALLBACK_MAX_LENGTH)


class Reranker:
    """Scores ``(query, item_text)`` pairs with a cross-encoder, in batches.

    ``max_length`` bounds the word pieces of a pair (cost grows with length). ``None``
    takes the length the model was trained with from its ``model_card.json`` (training
    picks it from the catalog's title lengths), else :data:`FALLBACK_MAX_LENGTH`.
    ``batch_size`` ``None``: :data:`GPU_BATCH_SIZE` on a GPU, else :data:`CPU_BATCH_SIZE`.
    """

    def __init__(
        self,
        path: Path,
        *,
        device: str = "auto",
        batch_size: int | None = None,
        max_length: int | None = None,
        backend: RerankerBackend = "torch",
    ) -> None:
        from sentence_transformers import CrossEncoder

        runtime = resolve_reranker_backend(backend, device)
        self.path = Path(path)
        if max_length is None:
            max_length = trained_max_length(self.path)
        self.max_length = max_length
        self.info: ModelInfo = model_info(self.path)
        #: The runtime in use (``auto`` resolved).
        self.backend: EncoderBackend = runtime
        # The ONNX graphs run on the CPU (onnxruntime); torch stays on the chosen device.
        self.device = resolve_device(device) if runtime == "torch" else "cpu"
        if batch_size is None:
            batch_size = GPU_BATCH_SIZE if self.device.startswith("cuda") else CPU_BATCH_SIZE
        self.batch_size = batch_size
        # Offline by its arguments (model_info() refused a non-directory above, and
        # local_files_only), never by changing the process environment.
        try:
            self.model = CrossEncoder(
                str(self.path), device=self.device, max_length=max_length, local_files_only=True
            )
        except (OSError, ValueError) as exc:
            raise RerankerError(f"cannot load cross-encoder from {self.path}: {exc}") from exc
        if runtime != "torch":
            from shopsearch.retrieval.onnx_export import OnnxExportError

            try:
                self.info = attach_onnx_backend(self.model, self.info, runtime)
            except OnnxExportError as exc:
                raise RerankerError(f"{self.path}: {exc}") from exc

    def score(self, query: str, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """One relevance score per text (higher is better), shape ``(len(texts),)``."""
        if not texts:
            return np.zeros(0, dtype=np.float32)
        scores = self.model.predict(
            [(query, t) for t in texts],
            batch_size=self.batch_size,
            show_progress_bar=False,
            convert_to_numpy=True,
        )
        return np.asarray(scores, dtype=np.float32).reshape(len(texts))
