"""A shallower query tower, distilled into the item tower's space, against the full one.

The towers are separate: the catalog's vectors come from the item tower, and a query
only has to land near the products it wants in that space. So a query tower with fewer
layers can be taught to copy the full tower's query vectors (mean squared error between
normalised embeddings), and the catalog is not encoded again. This trains such students
from the bundled all-MiniLM-L6-v2 (the base towers every new shop starts with): ``k`` of
its 6 layers (:func:`indexer.training.compress.prune_layers`, the last always kept),
started from the teacher's weights, taught on Home Depot *train* search terms. It then
measures, on a built snapshot and the *dev* queries:

* the dense leg's nDCG@10 and recall@100 (protocol A; the query as typed; the
  snapshot's FAISS index, ``k`` = 100) with the full tower and with each student;
* the cosine of each student's query vector to the full tower's (min and median);
* one query's encode time in dynamic int8 onnxruntime, one intra-op thread (what
  ``onnx-int8`` serves), p50 over the dev queries.

Run::

    .venv/bin/python -m shopsearch.eval.shallow_query_tower --index-dir var/hd-index \\
        --keep 2,3 --out var/eval/shallow-query-tower.json
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from shopsearch.eval.int8_variants import single_thread_session
from shopsearch.eval.metrics import evaluate_protocol_a
from shopsearch.eval.script_setup import current_snapshot, script_logging
from shopsearch.indexer.judgments import load_homedepot
from shopsearch.indexer.judgments.datasets import EvalDataset
from shopsearch.indexer.training.compress import prune_layers
from shopsearch.retrieval.encoders import default_model_path, model_info
from shopsearch.retrieval.onnx_export import export_onnx

__all__ = ["distil_query_tower", "main"]

log = logging.getLogger(__name__)


def distil_query_tower(
    teacher: Any,
    keep: int,
    texts: Sequence[str],
    targets: npt.NDArray[np.float32],
    *,
    steps: int,
    batch_size: int = 64,
    learning_rate: float = 1e-4,
    seed: int = 0,
) -> Any:
    """A copy of ``teacher`` (a ``SentenceTransformer``) with ``keep`` of its transformer
    layers, trained for ``steps`` steps to map ``texts`` onto ``targets`` (the teacher's
    normalised vectors of the same texts, one row each). Every weight is trained,
    the word-piece embeddings included."""
    import torch

    student = copy.deepcopy(teacher)
    prune_layers(student[0].auto_model, keep)
    student.train()
    optimizer = torch.optim.AdamW(student.parameters(), lr=learning_rate)
    rng = np.random.default_rng(seed)
    target = torch.from_numpy(targets)
    for step in range(steps):
        pick = rng.choice(len(texts), min(batch_size, len(texts)), replace=False)
        features = student.tokenize([texts[i] for i in pick])
        out = student(features)["sentence_embedding"]
        out = torch.nn.functional.normalize(out, dim=1)
        loss = torch.nn.functional.mse_loss(out, target[pick]) * out.shape[1]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 200 == 0 or step == steps - 1:
            log.info("%d layers: step %d of %d, loss %.4f", keep, step + 1, steps, loss.item())
    student.eval()
    return student


def _encode(model: Any, texts: Sequence[str]) -> npt.NDArray[np.float32]:
    vectors = model.encode(list(texts), batch_size=128, normalize_embeddings=True)
    return np.asarray(vectors, dtype=np.float32)


def _dense_metrics(
    snap: Any, dataset: EvalDataset, queries: npt.NDArray[np.float32]
) -> dict[str, float]:
    scores, rows = snap.vectors.search(queries, 100)
    ids = snap.table.products
    run = {
        q.qid: {ids[r].id: float(s) for s, r in zip(srow, rrow, strict=True) if r >= 0}
        for q, srow, rrow in zip(dataset.queries, scores, rows, strict=True)
    }
    metrics = evaluate_protocol_a(dataset, run).metrics
    return {"ndcg@10": round(metrics["ndcg@10"], 4), "recall@100": round(metrics["recall@100"], 4)}


def _encode_ms(model: Any, texts: Sequence[str], cache: Path) -> float:
    """p50 of one query's int8 onnxruntime call (tokenised as the fast path does)."""
    digest = hashlib.sha256()
    for tensor in model.state_dict().values():
        digest.update(tensor.detach().cpu().numpy().tobytes())
    graph = export_onnx(model, digest.hexdigest(), "int8", cache_dir=cache)
    session = single_thread_session(graph.files[0])
    tok = model.tokenizer
    took = []
    for text in texts:
        t = tok([text], return_tensors="np", padding=True, truncation=True, max_length=64)
        feed = {name: t[name].astype(np.int64) for name in graph.inputs[0] if name in t}
        if "token_type_ids" in graph.inputs[0] and "token_type_ids" not in feed:
            feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
        start = time.perf_counter()
        session.run(None, feed)
        took.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(took), 3)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m shopsearch.eval.shallow_query_tower",
        description="Distil query towers of fewer layers into the base item tower's space and "
        "measure their dense-leg nDCG@10, recall@100 and encode time against the full tower.",
    )
    parser.add_argument("--index-dir", type=Path, required=True, help="Built with base towers.")
    parser.add_argument(
        "--homedepot-dir",
        type=Path,
        default=Path("../shared/datasets/homedepot"),
        help="train.csv teaches, dev.csv is measured.",
    )
    parser.add_argument("--keep", default="2,3", help="Layers of each student, comma-separated.")
    parser.add_argument("--train-queries", type=int, default=20000, help="Train queries taught.")
    parser.add_argument("--steps", type=int, default=1500, help="Training steps per student.")
    parser.add_argument("--dev-queries", type=int, default=0, help="Dev queries (0: all).")
    parser.add_argument("--out", type=Path, required=True, help="Write the figures as JSON here.")
    args = parser.parse_args(argv)
    script_logging(("sentence_transformers", "faiss", "onnxruntime", "root"))
    from sentence_transformers import SentenceTransformer

    snap = current_snapshot(args.index_dir)
    version = snap.version
    model_dir = default_model_path()
    if snap.item_model["sha256"] != model_info(model_dir).sha256:
        raise SystemExit(f"snapshot {version} was not built with the base towers")
    teacher = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
    train = list(
        dict.fromkeys(q.text for q in load_homedepot(args.homedepot_dir / "train.csv").queries)
    )
    train = train[: args.train_queries]
    dev = load_homedepot(args.homedepot_dir / "dev.csv")
    if args.dev_queries:
        dev = EvalDataset(
            dev.name, dev.queries[: args.dev_queries], dev.gain_offset, dev.catalog_ids
        )
    dev_texts = [q.text for q in dev.queries]
    latency_texts = list(dict.fromkeys(dev_texts))[:300]

    targets = _encode(teacher, train)
    full = _encode(teacher, dev_texts)
    report: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="shallow-query-") as tmp:
        report["6 layers (the item tower)"] = {
            **_dense_metrics(snap, dev, full),
            "cosine_min": 1.0,
            "cosine_median": 1.0,
            "encode_int8_p50_ms": _encode_ms(teacher, latency_texts, Path(tmp)),
        }
        for keep in (int(k) for k in args.keep.split(",")):
            started = time.perf_counter()
            student = distil_query_tower(teacher, keep, train, targets, steps=args.steps)
            vectors = _encode(student, dev_texts)
            cosine = (vectors * full).sum(axis=1)
            report[f"{keep} layers (distilled)"] = {
                **_dense_metrics(snap, dev, vectors),
                "cosine_min": round(float(cosine.min()), 4),
                "cosine_median": round(float(np.median(cosine)), 4),
                "encode_int8_p50_ms": _encode_ms(student, latency_texts, Path(tmp)),
                "train_s": round(time.perf_counter() - started, 1),
            }
            log.info("%d layers: %s", keep, report[f"{keep} layers (distilled)"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
