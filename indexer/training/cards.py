"""The model card of a trained towers or reranker model: what it was trained from, how,
for how long, and how it measured on dev.

Built from a run's parts by the pipeline (:mod:`indexer.training.pipeline`) and written
by ``retrieval.model_registry.register``. A run the budget cut short says so in its
``budget`` field (warnings included), not only in a log line.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from shopsearch.indexer.training.compress import layer_count
from shopsearch.indexer.training.dev_metrics import RerankDevSet, RetrievalDevSet
from shopsearch.indexer.training.inputs import TrainingInputs
from shopsearch.indexer.training.loop import TrainingRun
from shopsearch.indexer.training.mined_data import MiningOptions, TrainingData
from shopsearch.indexer.training.reranker import RerankerTrainingConfig, RerankerTrainingResult
from shopsearch.indexer.training.towers import TowerTrainingConfig, TowerTrainingResult
from shopsearch.retrieval.encoders import model_info

__all__ = [
    "base_card",
    "reranker_fields",
    "run_fields",
    "summary_rows",
    "teacher_card",
    "towers_fields",
]


def base_card(
    base: Path,
    inputs: TrainingInputs,
    data: TrainingData,
    mining: dict[str, Any],
    options: MiningOptions,
) -> dict[str, Any]:
    """The fields every card starts with: the base model and the training data (files,
    checksums, query rewriting, statistics, and ``mining``: where the negatives came from)."""
    info = model_info(base)
    return {
        "base_model": {"id": info.id, "path": info.path, "sha256": info.sha256},
        "training_data": {
            "checksum": data.checksum,
            "catalog_sha256": inputs.catalog_sha256,
            "files": inputs.sources,
            "query_rewrite": inputs.rewrite,
            "stats": data.stats(),
            "mining": {
                **mining,
                "options": {
                    "positive_threshold": options.positive_threshold,
                    "negative_threshold": options.negative_threshold,
                    "depth": options.depth,
                    "hard_negatives": options.hard_negatives,
                    "random_negatives": options.random_negatives,
                },
            },
        },
    }


def _threads() -> int:
    import torch

    return int(torch.get_num_threads())


def run_fields(
    result: TrainingRun,
    hyper_parameters: dict[str, Any],
    seed: int,
    started: float,
    prepared: float,
) -> dict[str, Any]:
    """The fields every training run has; ``started`` and ``prepared`` are
    ``time.monotonic()`` at the start of the job and when its data was ready."""
    return {
        "hyper_parameters": hyper_parameters,
        "seed": seed,
        "device": result.device,
        "threads": _threads(),
        "steps": result.steps,
        "planned_steps": result.planned_steps,
        "pairs_seen": result.pairs_seen,
        "stopped_by": result.stopped_by,
        # What bounded the run (epochs, --max-steps, --max-minutes) and how much of an
        # epoch it trained; a run cut short says so here, not only in a log line.
        "budget": result.budget,
        "first_step_loss": result.first_step_loss,
        "wall_time_s": {
            "mining_and_data": round(prepared - started, 1),
            "training": round(result.wall_s, 1),
            "total": round(time.monotonic() - started, 1),
        },
        "epochs": [e.to_dict() for e in result.epochs],
        "loss_curve": "loss_curve.png",
    }


def teacher_card(teacher: Any, path: Path) -> dict[str, str]:
    """What a student's model card says of its teacher (a ``rerank.Reranker``)."""
    return {
        "id": teacher.info.id,
        "path": str(path),
        "sha256": teacher.info.sha256,
        "backend": teacher.backend,
    }


def towers_fields(
    result: TowerTrainingResult,
    config: TowerTrainingConfig,
    *,
    triplets: int,
    distillation: dict[str, Any] | None,
    dev: RetrievalDevSet,
    started: float,
    prepared: float,
) -> dict[str, Any]:
    """The towers' fields after :func:`base_card`'s: the examples, :func:`run_fields`,
    the loss, distillation, the layout decision and the dev measurements."""
    return {
        "training_examples": {
            "triplets": triplets,
            "used": result.train_pairs,
            "format": "(query, positive item text, hard negative item text)",
        },
        **run_fields(result, config.to_dict(), config.seed, started, prepared),
        "loss": result.loss_name,
        "distillation": distillation,
        "towers_decision": result.decision,
        "dev_metrics": {
            "subset_queries": len(dev.queries),
            "sub_corpus": len(dev.corpus),
            "before": result.dev_before,
            "after": result.dev_after,
        },
    }


def reranker_fields(
    result: RerankerTrainingResult,
    config: RerankerTrainingConfig,
    *,
    base: Path,
    pairs: int,
    data: TrainingData,
    distillation: dict[str, Any],
    dev: RerankDevSet,
    started: float,
    prepared: float,
) -> dict[str, Any]:
    """The reranker's fields after :func:`base_card`'s: the examples and their labels,
    :func:`run_fields`, the loss, pair length, compression, distillation and the dev
    measurements."""
    low, high = data.grade_range
    return {
        "training_examples": {
            "pairs": pairs,
            "used": result.train_pairs,
            "labels": result.label_stats,
            "label_map": f"(grade - {low}) / ({high} - {low}); negatives 0",
        },
        **run_fields(result, config.to_dict(), config.seed, started, prepared),
        "loss": (
            "LambdaLoss (NDCG-Loss2++, one list per query)"
            if config.loss == "lambda"
            else "BinaryCrossEntropyLoss (soft labels)"
        ),
        "max_length": result.max_length,
        "max_length_measurement": result.length_stats,
        "compression": {
            "kept_layers": result.kept_layers,
            "of_base_layers": layer_count(base),
        }
        if result.kept_layers
        else None,
        "distillation": distillation or None,
        "dev_metrics": {
            "subset_queries": len(dev.queries),
            "candidates": sum(len(t) for t in dev.texts),
            "metric": "nDCG@10/MRR@10 over judged + mined candidates (unjudged = 0); "
            "b.ndcg@10 over judged only",
            "before": result.dev_before,
            "after": result.dev_after,
        },
    }


def summary_rows(card: dict[str, Any]) -> list[tuple[str, str]]:
    """A towers or reranker card in a few ``(label, value)`` lines: layout or pair
    length, dev before and after, steps, the budget, wall time. Pure."""
    budget = card.get("budget") or {}
    wall = card.get("wall_time_s", {})
    rows = [
        (
            "layout / max_length",
            str(card.get("towers_decision", {}).get("layout", card.get("max_length", ""))),
        ),
        ("dev before", json.dumps(card.get("dev_metrics", {}).get("before", {}))),
        ("dev after", json.dumps(card.get("dev_metrics", {}).get("after", {}))),
        ("steps", f"{card.get('steps')} ({card.get('stopped_by')})"),
    ]
    if budget:
        rows.append(
            (
                "budget",
                f"{budget['steps']} of {budget['data_steps']} steps trained "
                f"({budget['fraction_of_epoch']:g} epochs of {budget['epoch_steps']}), "
                f"stopped by {budget['stopped_by']}",
            )
        )
    rows.append(("wall time", f"training {wall.get('training')} s, total {wall.get('total')} s"))
    return rows
