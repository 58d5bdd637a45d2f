"""ONNX exports of a sentence-transformers model's Transformer modules, fp32 or int8, cached.

Works for the two towers (a ``SentenceTransformer``: the graph outputs
``last_hidden_state``, pooled by sentence-transformers) and for the reranker (a
``CrossEncoder``, whose Transformer module is a sequence classifier: the graph outputs
``logits``); the output is the one the module's modality config reads.

sentence-transformers' own ``backend="onnx"`` goes through ``optimum-onnx``, which pins
``transformers<4.58``; this module needs only ``torch.onnx`` and ``onnxruntime``. Each
``Transformer`` module of a model (one, or one per tower under a ``Router``) is exported
to ``transformer_<i>.onnx`` and later swapped for an :class:`OrtTransformerModel`, so
tokenisation, prompts, routing, pooling and normalisation stay sentence-transformers'.

Exports live under ``${SHOPSEARCH_CACHE:-~/.cache/shopsearch}/onnx/<sha256[:16]>/<fp32|int8>/``
and are written to a temporary directory renamed into place, so a killed export leaves
nothing that a later load would take for a finished one. int8 is onnxruntime's dynamic
quantisation of the fp32 export, with the configuration chosen by CPU flags
(:func:`quantization_target`). Nothing here contacts a model hub.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt
import torch

from shopsearch.retrieval.types import ShopsearchError

if TYPE_CHECKING:
    import onnxruntime

__all__ = [
    "OnnxExport",
    "OnnxExportError",
    "OrtTransformerModel",
    "Precision",
    "attach",
    "cache_root",
    "cpu_flags",
    "export_onnx",
    "onnx_gpu_available",
    "quantization_target",
    "solo_session",
]

log = logging.getLogger(__name__)

Precision = Literal["fp32", "int8"]
QuantTarget = Literal["arm64", "avx2", "avx512", "avx512_vnni"]

#: Token inputs an exported graph may take, in this order (the tokenizer decides which).
_TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
#: What a Transformer module reads from its model when its config does not say.
_DEFAULT_OUTPUT = "last_hidden_state"
_OPSET = 17
#: Bump when the export recipe changes, so old cache entries are not reused.
_RECIPE = 1
_META = "export.json"
_INSTALL_HINT = "install them with `pip install onnxruntime onnx` (or onnxruntime-gpu for CUDA)"


class OnnxExportError(ShopsearchError):
    """An ONNX export or its runtime is unavailable or failed."""


def cache_root() -> Path:
    """``$SHOPSEARCH_CACHE/onnx`` (default ``~/.cache/shopsearch/onnx``)."""
    base = os.environ.get("SHOPSEARCH_CACHE") or "~/.cache/shopsearch"
    return Path(base).expanduser() / "onnx"


def cpu_flags() -> set[str]:
    """The CPU feature flags Linux reports in ``/proc/cpuinfo`` (empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def quantization_target() -> QuantTarget:
    """The dynamic-quantisation flavour for this CPU: ``arm64`` on ARM, else by AVX flags."""
    if platform.machine().lower() in ("aarch64", "arm64"):
        return "arm64"
    flags = cpu_flags()
    if "avx512_vnni" in flags:
        return "avx512_vnni"
    if "avx512f" in flags:
        return "avx512"
    return "avx2"


def onnx_gpu_available() -> bool:
    """Whether onnxruntime is installed with its CUDA execution provider."""
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers()


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise OnnxExportError(
            f"the ONNX encoder backends need onnxruntime and onnx ({exc}); {_INSTALL_HINT}, "
            "or use --backend torch"
        ) from exc


@dataclass(frozen=True, slots=True)
class OnnxExport:
    """A finished export: ``files[i]`` replaces the model's i-th ``Transformer`` module."""

    dir: Path
    precision: Precision
    files: tuple[Path, ...]
    inputs: tuple[tuple[str, ...], ...]
    quantization: str | None
    #: The graph output per file (``last_hidden_state`` for towers, ``logits`` for rerankers).
    outputs: tuple[str, ...] = ()

    def sha256(self, base_sha256: str, backend: str) -> str:
        """Identity of the exported model: the base weights' checksum, the backend tag
        and the bytes of every exported graph."""
        digest = hashlib.sha256(f"{base_sha256}\0{backend}\0".encode())
        for file in self.files:
            digest.update(file.name.encode() + b"\0")
            with file.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
        return digest.hexdigest()


def _transformer_modules(model: torch.nn.Module) -> list[Any]:
    from sentence_transformers.base.modules.transformer import Transformer

    found = [m for m in model.modules() if isinstance(m, Transformer)]
    if not found:
        raise OnnxExportError(
            "the model has no sentence-transformers Transformer module to export; use --backend torch"
        )
    return found


def _read(dir_: Path) -> OnnxExport | None:
    meta_path = dir_ / _META
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        files = tuple(dir_ / name for name in meta["files"])
        if meta.get("recipe") != _RECIPE or not all(f.is_file() for f in files):
            return None
        return OnnxExport(
            dir=dir_,
            precision=meta["precision"],
            files=files,
            inputs=tuple(tuple(names) for names in meta["inputs"]),
            quantization=meta.get("quantization"),
            outputs=tuple(meta.get("outputs") or [_DEFAULT_OUTPUT] * len(files)),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _publish(tmp: Path, final: Path) -> None:
    """Rename a finished ``tmp`` into ``final``; when another process got there first
    (or a stale entry is in the way), keep a valid one."""
    try:
        os.rename(tmp, final)
        return
    except OSError:
        pass
    if _read(final) is not None:  # a concurrent export won; use it
        shutil.rmtree(tmp, ignore_errors=True)
        return
    stale = final.with_name(f".stale-{final.name}-{os.getpid()}")
    os.rename(final, stale)
    shutil.rmtree(stale, ignore_errors=True)
    os.rename(tmp, final)


class _ExportWrapper(torch.nn.Module):
    """A Hugging Face model taking its token inputs positionally (``torch.onnx`` wants that)."""

    def __init__(self, hf_model: torch.nn.Module, names: Sequence[str], output: str) -> None:
        super().__init__()
        self.hf = hf_model
        self.names = tuple(names)
        self.output = output

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        kwargs = dict(zip(self.names, tensors, strict=True))
        return getattr(self.hf(**kwargs, return_dict=True), self.output)  # type: ignore[no-any-return]


def _output_name(module: Any) -> str:
    """The model output a Transformer module reads (its text modality config)."""
    config = getattr(module, "modality_config", None) or {}
    name = config.get("text", {}).get("method_output_name")
    return name if isinstance(name, str) else _DEFAULT_OUTPUT


def _export_fp32(model: torch.nn.Module, out: Path) -> tuple[list[str], list[list[str]], list[str]]:
    import warnings

    files: list[str] = []
    inputs: list[list[str]] = []
    outputs: list[str] = []
    for i, module in enumerate(_transformer_modules(model)):
        tokenizer = module.tokenizer
        if tokenizer is None:
            raise OnnxExportError(f"Transformer module {i} has no tokenizer; use --backend torch")
        sample = tokenizer(
            ["a short title", "a somewhat longer product title for the export trace"],
            padding=True,
            return_tensors="pt",
        )
        names = [n for n in _TOKEN_INPUTS if n in sample]
        output = _output_name(module)
        wrapped = _ExportWrapper(module.model.to("cpu"), names, output).eval()
        file = f"transformer_{i}.onnx"
        axes: dict[str, dict[int, str]] = {n: {0: "batch", 1: "sequence"} for n in names}
        # Hidden states are per token; a classifier's logits are one row per pair.
        axes[output] = {0: "batch", 1: "sequence"} if output == _DEFAULT_OUTPUT else {0: "batch"}
        with warnings.catch_warnings(), torch.no_grad():
            # The TorchScript exporter is deprecated upstream, and transformers' tracer
            # warnings are expected; the graph is checked against torch by the tests.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapped,
                tuple(sample[n] for n in names),
                str(out / file),
                dynamo=False,
                input_names=names,
                output_names=[output],
                dynamic_axes=axes,
                opset_version=_OPSET,
                do_constant_folding=True,
            )
        files.append(file)
        inputs.append(names)
        outputs.append(output)
    return files, inputs, outputs


class _QuietQuantizer(logging.Filter):
    """onnxruntime's quantiser logs per-tensor chatter on the root logger; keep warnings."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING and "pre-processing" not in record.getMessage()


def _quantize(source: OnnxExport, out: Path, target: QuantTarget) -> list[str]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # optimum's dynamic presets: uint8 weights on plain AVX2, int8 elsewhere; per-channel.
    weights = QuantType.QUInt8 if target == "avx2" else QuantType.QInt8
    files = []
    quiet = _QuietQuantizer()
    root = logging.getLogger()
    root.addFilter(quiet)
    try:
        for file in source.files:
            quantize_dynamic(
                file,
                out / file.name,
                op_types_to_quantize=["MatMul", "Attention"],
                per_channel=True,
                reduce_range=False,
                weight_type=weights,
                extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
            )
            files.append(file.name)
    finally:
        root.removeFilter(quiet)
    return files


def export_onnx(
    model: torch.nn.Module,
    base_sha256: str,
    precision: Precision,
    *,
    cache_dir: Path | None = None,
) -> OnnxExport:
    """The cached export of ``model`` (a ``SentenceTransformer`` or ``CrossEncoder`` whose
    weights checksum to ``base_sha256``), made first when missing. ``cache_dir`` defaults to :func:`cache_root`.

    Raises :class:`OnnxExportError` when onnxruntime/onnx are missing or the export fails.
    """
    if precision not in ("fp32", "int8"):
        raise ValueError(f"precision must be 'fp32' or 'int8', not {precision!r}")
    _require_onnx()
    root = (cache_dir if cache_dir is not None else cache_root()) / base_sha256[:16]
    final = root / precision
    found = _read(final)
    if found is not None:
        log.debug("reusing ONNX %s export %s", precision, final)
        return found
    source = (
        export_onnx(model, base_sha256, "fp32", cache_dir=cache_dir)
        if precision == "int8"
        else None
    )
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{precision}-", dir=root))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the cache is not
    try:
        import onnx
        import onnxruntime

        meta: dict[str, Any] = {
            "recipe": _RECIPE,
            "precision": precision,
            "base_sha256": base_sha256,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "opset": _OPSET,
        }
        if source is None:
            log.info("exporting the model to ONNX fp32 in %s", final)
            files, inputs, outputs = _export_fp32(model, tmp)
            meta["quantization"] = None
        else:
            target = quantization_target()
            log.info("quantizing the ONNX model to int8 (%s) in %s", target, final)
            files = _quantize(source, tmp, target)
            inputs = [list(names) for names in source.inputs]
            outputs = list(source.outputs)
            meta["quantization"] = target
        meta["files"] = files
        meta["inputs"] = inputs
        meta["outputs"] = outputs
        (tmp / _META).write_text(json.dumps(meta, indent=2))
        _publish(tmp, final)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, (OnnxExportError, KeyboardInterrupt, SystemExit)):
            raise
        if isinstance(exc, Exception):
            raise OnnxExportError(f"ONNX {precision} export to {final} failed: {exc}") from exc
        raise
    done = _read(final)
    if done is None:  # pragma: no cover - the rename above just made it
        raise OnnxExportError(f"ONNX export in {final} is unreadable after writing it")
    return done


def _session(
    file: Path, use_cuda: bool, threads: int = 0, *, spinning: bool = False
) -> onnxruntime.InferenceSession:
    """An inference session on ``file``; ``threads`` > 0 fixes its intra-op threads (and
    turns spin-waiting off unless ``spinning``), 0 keeps onnxruntime's default (one per
    core, spinning)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads > 0:
        options.intra_op_num_threads = threads
    if threads > 0 and not spinning:
        # Idle intra-op threads spin for work by default, burning a core each between
        # calls; beside other request threads that is CPU stolen from them.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = ["CPUExecutionProvider"]
    if use_cuda:
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(str(file), sess_options=options, providers=providers)


def solo_session(graph: OrtTransformerModel, threads: int) -> onnxruntime.InferenceSession:
    """A second session on ``graph``'s file for a caller alone on the machine: ``threads``
    intra-op threads with spin-waiting on (onnxruntime's fastest setting for one caller;
    the spinning costs nothing when no other search wants the cores)."""
    return _session(graph.file, graph.use_cuda, threads, spinning=True)


class OrtTransformerModel(torch.nn.Module):
    """Stands in for a Transformer module's Hugging Face model: runs the exported graph in
    onnxruntime and returns ``{output: tensor}`` (a CPU tensor; ``output`` is
    ``last_hidden_state`` or ``logits``)."""

    def __init__(
        self,
        file: Path,
        inputs: Sequence[str],
        config: Any,
        *,
        use_cuda: bool = False,
        output: str = _DEFAULT_OUTPUT,
        threads: int = 0,
    ) -> None:
        super().__init__()
        self.file = file
        self.use_cuda = use_cuda
        self.session = _session(file, use_cuda, threads)
        self.input_names = tuple(inputs)
        self.config = config
        self.output = output

    def forward(self, input_ids: torch.Tensor, **kwargs: Any) -> dict[str, torch.Tensor]:
        given = {"input_ids": input_ids, **kwargs}
        feeds: dict[str, npt.NDArray[np.int64]] = {}
        for name in self.input_names:
            value = given.get(name)
            if value is None:
                if name != "token_type_ids":
                    raise OnnxExportError(f"the ONNX model needs input {name!r}")
                feeds[name] = np.zeros(tuple(input_ids.shape), dtype=np.int64)
            else:
                feeds[name] = value.detach().cpu().numpy().astype(np.int64, copy=False)
        (result,) = self.session.run([self.output], feeds)
        return {self.output: torch.from_numpy(result)}


def attach(
    model: torch.nn.Module, export: OnnxExport, *, use_cuda: bool = False, threads: int = 0
) -> None:
    """Swap each ``Transformer`` module's torch model in ``model`` for its exported graph
    (``threads``: intra-op threads of each session, 0 = onnxruntime's default)."""
    modules = _transformer_modules(model)
    if len(modules) != len(export.files):
        raise OnnxExportError(
            f"{export.dir} holds {len(export.files)} graphs but the model has {len(modules)} "
            "Transformer modules; delete that directory to re-export"
        )
    for module, file, names, output in zip(
        modules, export.files, export.inputs, export.outputs, strict=True
    ):
        config = getattr(module.model, "config", None)
        module.model = OrtTransformerModel(
            file, names, config, use_cuda=use_cuda, output=output, threads=threads
        )
