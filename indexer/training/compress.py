"""Compression of the cross-encoder: fewer layers, taught by the full model.

A reranker's cost is linear in its transformer layers, so keeping ``k`` of MiniLM's 6
layers divides the rerank time by about ``6 / k``. The kept layers start from the full
(teacher) reranker's weights, every ``6 / k``-th one with the last always kept (the
DistilBERT recipe), and the pruned student is then trained on the same mined lists with
labels that mix the judgments with the teacher's scores (distillation: the teacher knows
how much better one candidate is than another, which the graded judgments only say for the
few judged products; Hinton et al. 2015, Sanh et al. 2019):

    label = (1 - teacher_weight) * judged label + teacher_weight * teacher score

:func:`prune_layers` edits a loaded ``CrossEncoder`` in place; its ``save`` then writes a
model with ``num_hidden_layers = k`` that any ``CrossEncoder`` loads as is.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shopsearch.indexer.training.distill import PairScorer

__all__ = ["distilled_labels", "kept_layers", "layer_count", "prune_layers"]


def kept_layers(total: int, keep: int) -> list[int]:
    """Which of ``total`` layers a ``keep``-layer student keeps: evenly spaced, the last
    one always (``kept_layers(6, 2) == [2, 5]``, ``kept_layers(6, 3) == [1, 3, 5]``).

    Raises:
        ValueError: ``keep`` outside ``1..total``.
    """
    if not 1 <= keep <= total:
        raise ValueError(f"keep must be in 1..{total} (the model's layers), got {keep}")
    step = total / keep
    return [round(step * (i + 1)) - 1 for i in range(keep)]


def layer_count(model_dir: Path) -> int | None:
    """``num_hidden_layers`` of the model saved in ``model_dir`` (None when unreadable)."""
    try:
        return int(json.loads((Path(model_dir) / "config.json").read_text())["num_hidden_layers"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _encoder_layers(model: Any) -> Any:
    """The ``nn.ModuleList`` of transformer layers of a CrossEncoder's HF model."""
    hf = getattr(model, "model", model)
    base = getattr(hf, "base_model", hf)
    encoder = getattr(base, "encoder", None)
    layers = getattr(encoder, "layer", None)
    if layers is None:
        raise ValueError(
            f"{type(hf).__name__} has no encoder.layer list; layer pruning supports "
            "BERT-style cross-encoders (MiniLM, BERT, RoBERTa)"
        )
    return layers


def prune_layers(model: Any, keep: int) -> list[int]:
    """Keep ``keep`` of the transformer layers of ``model`` (a sentence-transformers
    ``CrossEncoder``) in place (:func:`kept_layers`) and return their former indices.

    Raises:
        ValueError: the model is not BERT-style or ``keep`` is out of range.
    """
    import torch

    layers = _encoder_layers(model)
    kept = kept_layers(len(layers), keep)
    pruned = torch.nn.ModuleList([layers[i] for i in kept])
    hf = getattr(model, "model", model)
    getattr(hf, "base_model", hf).encoder.layer = pruned
    hf.config.num_hidden_layers = keep
    return kept


def distilled_labels(
    teacher: PairScorer,
    pairs: Sequence[tuple[str, str, float]],
    teacher_weight: float,
    *,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[tuple[str, str, float]], dict[str, float]]:
    """``pairs`` with each label mixed with the teacher's score of the pair (see the module
    docstring), and statistics of the teacher's scores for the model card. Each query's
    distinct texts are scored in one teacher call; ``progress`` gets the pairs done after
    each query. Teacher scores must lie in [0, 1] (``rerank.Reranker`` returns the
    one-logit head's sigmoid), so mixed labels stay in [0, 1].

    Raises:
        ValueError: ``teacher_weight`` outside [0, 1] or a teacher score outside [0, 1].
    """
    if not 0.0 <= teacher_weight <= 1.0:
        raise ValueError(f"teacher_weight must be in [0, 1], got {teacher_weight}")
    by_query: dict[str, list[int]] = {}
    for i, (query, _, _) in enumerate(pairs):
        by_query.setdefault(query, []).append(i)
    scores = np.zeros(len(pairs), dtype=np.float64)
    for query, rows in by_query.items():
        texts = list(dict.fromkeys(pairs[i][1] for i in rows))
        scored = dict(zip(texts, teacher.score(query, texts).tolist(), strict=True))
        for i in rows:
            scores[i] = scored[pairs[i][1]]
        if progress is not None:
            progress(len(rows))
    if len(scores) and not (scores.min() >= 0.0 and scores.max() <= 1.0):
        raise ValueError(
            f"teacher scores must be in [0, 1], got {scores.min():.3f}..{scores.max():.3f}; "
            "use a rerank.Reranker (sigmoid scores) as teacher"
        )
    labels = np.array([p[2] for p in pairs], dtype=np.float64)
    mixed = (1.0 - teacher_weight) * labels + teacher_weight * scores
    positives = labels > 0
    stats = {
        "teacher_weight": teacher_weight,
        "mean_teacher_score": float(scores.mean()) if len(scores) else 0.0,
        "mean_teacher_score_judged_positive": float(scores[positives].mean())
        if positives.any()
        else 0.0,
        "mean_teacher_score_label_zero": float(scores[~positives].mean())
        if (~positives).any()
        else 0.0,
    }
    out = [(q, t, float(m)) for (q, t, _), m in zip(pairs, mixed.tolist(), strict=True)]
    return out, stats
