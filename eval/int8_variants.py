"""Other int8 and fused graphs of the MiniLM-L6 tower, against the ones shopsearch runs.

The query tower and the cross-encoder share MiniLM-L6's architecture, and both run as
dynamic int8 onnxruntime graphs by default (:mod:`retrieval.onnx_export`). This measures
the alternatives the compression issue names, on the bundled all-MiniLM-L6-v2:

* ``fp32``: the exported graph as it is (the reference);
* ``dynamic int8``: what ``onnx-int8`` runs today (activation ranges per call);
* ``static int8 (MinMax|Percentile)``: activation ranges calibrated once on real
  queries (Home Depot *train* search terms, never the dev ones that are scored), QDQ;
* ``fused int8``: the tower exported with eager attention, fused by onnxruntime's
  transformer optimizer (Attention, EmbedLayerNormalization, SkipLayerNormalization,
  BiasGelu), then dynamic int8 (QAttention).

For each: one query's latency (p50 over the dev queries, one call each), a batch of 50
dev queries (the reranker's shape at depth 50; median of 5 calls), and the cosine of the
mean-pooled, normalised embedding to fp32's on every dev query (min and median). One
intra-op thread without spin-waiting, as the server runs its towers. Run::

    .venv/bin/python -m shopsearch.eval.int8_variants --out var/eval/int8-variants.json
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from shopsearch.indexer.judgments import load_homedepot
from shopsearch.retrieval.encoders import default_model_path, model_info
from shopsearch.retrieval.onnx_export import export_onnx

__all__ = ["main", "measure_variants", "single_thread_session"]

log = logging.getLogger(__name__)

Feed = dict[str, npt.NDArray[np.int64]]
#: Word pieces of a calibration query: static ranges need one shape for every sample.
CALIBRATION_LENGTH = 24


def _tokenizer(model_dir: Path) -> Callable[[Sequence[str], bool], Feed]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)

    def feed(texts: Sequence[str], fixed: bool = False) -> Feed:
        t = tok(
            list(texts),
            padding="max_length" if fixed else True,
            truncation=True,
            max_length=CALIBRATION_LENGTH if fixed else 64,
            return_tensors="np",
        )
        ids = t["input_ids"].astype(np.int64)
        mask = t["attention_mask"].astype(np.int64)
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}

    return feed


def _static_int8(source: Path, out: Path, calibration: list[Feed], method: str) -> Path:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.samples: Iterator[Feed] = iter(calibration)

        def get_next(self) -> Feed | None:
            return next(self.samples, None)

    pre = out / "pre.onnx"
    if not pre.exists():
        quant_pre_process(str(source), str(pre), skip_symbolic_shape=True)
    target = out / f"static-{method}.onnx"
    quantize_static(
        str(pre),
        str(target),
        Reader(),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["MatMul"],
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=getattr(CalibrationMethod, method),
        extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
    )
    return target


def _fused_int8(model_dir: Path, out: Path) -> Path:
    """The tower exported with eager attention (the SDPA trace does not match the
    optimizer's attention pattern), fused, then dynamic int8."""
    import onnx
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model
    from transformers import AutoModel

    model = AutoModel.from_pretrained(
        str(model_dir), attn_implementation="eager", local_files_only=True
    ).eval()

    class Hidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, ids: Any, mask: Any, types: Any) -> Any:
            return self.model(input_ids=ids, attention_mask=mask, token_type_ids=types)[0]

    names = ["input_ids", "attention_mask", "token_type_ids"]
    sample = torch.ones((2, 8), dtype=torch.long)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            Hidden(),
            (sample, sample, torch.zeros_like(sample)),
            str(out / "eager.onnx"),
            dynamo=False,
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes={n: {0: "batch", 1: "sequence"} for n in [*names, "last_hidden_state"]},
            opset_version=17,
            do_constant_folding=True,
        )
    config = model.config
    fused = optimize_model(
        str(out / "eager.onnx"),
        model_type="bert",
        num_heads=int(config.num_attention_heads),
        hidden_size=int(config.hidden_size),
        opt_level=1,
    )
    log.info(
        "fused operators: %s", {k: v for k, v in fused.get_fused_operator_statistics().items() if v}
    )
    fused.save_model_to_file(str(out / "fused-fp32.onnx"))
    target = out / "fused-int8.onnx"
    quantize_dynamic(
        str(out / "fused-fp32.onnx"),
        str(target),
        op_types_to_quantize=["MatMul", "Attention"],
        per_channel=True,
        reduce_range=False,
        weight_type=QuantType.QInt8,
        extra_options={
            "WeightSymmetric": True,
            "ActivationSymmetric": False,
            "DefaultTensorType": onnx.TensorProto.FLOAT,  # the fused ops hide some types
        },
    )
    return target


def single_thread_session(file: Path) -> Any:
    """An onnxruntime CPU session of ``file`` with one intra-op thread and no spin-waiting
    (how the server runs its towers)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])


def _embed(session: Any, feed: Feed) -> npt.NDArray[np.float32]:
    hidden = session.run(None, feed)[0]
    mask = feed["attention_mask"][..., None]
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return (pooled / np.linalg.norm(pooled, axis=1, keepdims=True)).astype(np.float32)


def measure_variants(
    calibration_queries: Sequence[str], dev_queries: Sequence[str], work_dir: Path
) -> dict[str, dict[str, float]]:
    """``{variant: {one_query_p50_ms, batch50_ms, cosine_min, cosine_median}}`` for the
    variants of the module docstring, built in ``work_dir`` from the bundled model;
    ``calibration_queries`` calibrate the static ones, ``dev_queries`` are measured."""
    model_dir = default_model_path()
    feed = _tokenizer(model_dir)
    from sentence_transformers import SentenceTransformer

    tower = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
    sha = model_info(model_dir).sha256
    files = {
        "fp32": export_onnx(tower, sha, "fp32").files[0],
        "dynamic int8": export_onnx(tower, sha, "int8").files[0],
    }
    calibration = [feed([q], True) for q in calibration_queries]
    for method in ("MinMax", "Percentile"):
        files[f"static int8 ({method})"] = _static_int8(
            files["fp32"], work_dir, calibration, method
        )
    files["fused int8"] = _fused_int8(model_dir, work_dir)

    sessions = {name: single_thread_session(file) for name, file in files.items()}
    one = [feed([q], False) for q in dev_queries]
    batch = feed(list(dev_queries[:50]), False)
    reference = np.vstack([_embed(sessions["fp32"], f) for f in one])
    report: dict[str, dict[str, float]] = {}
    for name, session in sessions.items():
        vectors = np.vstack([_embed(session, f) for f in one])
        cosine = (vectors * reference).sum(axis=1)
        single = []
        for f in one:
            t = time.perf_counter()
            session.run(None, f)
            single.append((time.perf_counter() - t) * 1000)
        batched = []
        for _ in range(5):
            t = time.perf_counter()
            session.run(None, batch)
            batched.append((time.perf_counter() - t) * 1000)
        report[name] = {
            "one_query_p50_ms": round(statistics.median(single), 3),
            "batch50_ms": round(statistics.median(batched), 2),
            "cosine_min": round(float(cosine.min()), 4),
            "cosine_median": round(float(np.median(cosine)), 4),
        }
        log.info("%s: %s", name, report[name])
    return report


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m shopsearch.eval.int8_variants",
        description="Static int8 and fused graphs of the MiniLM-L6 tower against the exported "
        "fp32 and dynamic int8 ones: latency (one query, a batch of 50) and cosine to fp32.",
    )
    parser.add_argument(
        "--homedepot-dir",
        type=Path,
        default=Path("../shared/datasets/homedepot"),
        help="Home Depot data: train.csv calibrates, dev.csv is measured.",
    )
    parser.add_argument(
        "--calibration", type=int, default=200, help="Train queries that calibrate."
    )
    parser.add_argument("--queries", type=int, default=400, help="Dev queries measured.")
    parser.add_argument("--out", type=Path, required=True, help="Write the figures as JSON here.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    for name in ("onnxruntime", "root"):
        logging.getLogger(name).setLevel(logging.WARNING)

    def distinct(split: str) -> list[str]:
        queries = load_homedepot(args.homedepot_dir / f"{split}.csv").queries
        return list(dict.fromkeys(q.text for q in queries))

    train = distinct("train")
    picks = np.random.default_rng(0).choice(
        len(train), min(args.calibration, len(train)), replace=False
    )
    with tempfile.TemporaryDirectory(prefix="int8-variants-") as tmp:
        report = measure_variants(
            [train[i] for i in picks], distinct("dev")[: args.queries], Path(tmp)
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
