"""Training of the cross-encoder reranker from the base MiniLM weights.

The model is the base encoder with a fresh one-logit head (sentence-transformers
``CrossEncoder`` with ``num_labels=1``, head initialised from the seed). It learns
``(query, item text, label)`` pairs: graded judgments mapped to [0, 1] plus mined and
random negatives at 0 (prepared by ``indexer.training.mined_data``; without the negatives the
model learns to ignore topicality). Two losses (``RerankerTrainingConfig.loss``):

- ``bce``: pointwise binary cross-entropy on the soft labels, ``batch_size`` pairs a step.
- ``lambda``: listwise LambdaLoss (NDCG-Loss2++ weighting) over each query's pairs as one
  list, so the model is trained on the order within a query, which is what nDCG@10
  measures. Whole queries are packed into a step up to ``batch_size`` pairs (at least
  one query); queries whose labels are all equal carry no ordering signal and are left out.

``max_length`` (word pieces of query + item text) is measured on the training pairs when
not given: the 99th percentile rounded up to a multiple of 8; a pair is rarely cut and
no batch pays for padding it does not need.

Budgets and determinism as in every trainer (:mod:`indexer.training.budget`):
``max_pairs``, ``epochs``, ``max_steps`` (a fixed number of steps, whatever the machine's
speed), ``max_minutes`` (schedule shortened to what fits with a WARNING, clean stop at the
deadline, always saved); the result's ``budget`` says what bounded the run and warns of a
partial epoch. The loop is :func:`indexer.training.loop.run_loop`; this module supplies
the batches (packed queries or pairs), the loss and the dev measurement.
Per-epoch dev metrics over candidate lists (:mod:`indexer.training.dev_metrics`): nDCG@10 of the full list (judged products
plus mined candidates, unjudged at gain 0, like protocol A restricted to the
candidates), MRR@10, and protocol B's nDCG@10 over the judged products only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from shopsearch.indexer.training.budget import Deadline, TrainingBudget, TrainingError
from shopsearch.indexer.training.dev_metrics import RerankDevSet, rerank_metrics
from shopsearch.indexer.training.loop import (
    Optimisation,
    StepCallback,
    TrainingRun,
    run_loop,
    save_loss_curve,
    seed_everything,
    start_budget,
)
from shopsearch.retrieval.encoders import ModelError, resolve_device

__all__ = [
    "RERANKER_LOSSES",
    "RerankerTrainingConfig",
    "RerankerTrainingResult",
    "choose_max_length",
    "query_groups",
    "train_reranker",
]

log = logging.getLogger(__name__)

#: Training losses of :func:`train_reranker` (see the module docstring).
RERANKER_LOSSES: tuple[str, ...] = ("bce", "lambda")

#: A query's pairs as one list: ``(query, item texts, labels)``.
QueryGroup = tuple[str, list[str], list[float]]


def choose_max_length(
    tokenizer: Any,
    pairs: Sequence[tuple[str, str]],
    *,
    quantile: float = 0.99,
    multiple: int = 8,
    cap: int = 256,
    sample: int = 5000,
    seed: int = 1234,
) -> tuple[int, dict[str, float]]:
    """The ``quantile`` of the token lengths of ``(query, text)`` pairs (special tokens
    included) rounded up to ``multiple``, at most ``cap``; and the length distribution."""
    if not pairs:
        raise TrainingError("no pairs to measure max_length on")
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(pairs), size=min(sample, len(pairs)), replace=False)
    chosen = [pairs[i] for i in picks]
    encoded = tokenizer(
        [q for q, _ in chosen],
        [t for _, t in chosen],
        truncation=False,
        padding=False,
        verbose=False,
    )
    lengths = np.array([len(ids) for ids in encoded["input_ids"]])
    value = float(np.quantile(lengths, quantile))
    max_length = int(min(cap, multiple * int(np.ceil(value / multiple))))
    stats = {
        "sampled_pairs": len(chosen),
        "p50": float(np.quantile(lengths, 0.5)),
        "p90": float(np.quantile(lengths, 0.9)),
        "p99": float(np.quantile(lengths, 0.99)),
        "max": float(lengths.max()),
        "quantile_used": quantile,
        "truncated_share": float((lengths > max_length).mean()),
    }
    return max_length, stats


@dataclass(frozen=True, slots=True)
class RerankerTrainingConfig(TrainingBudget):
    """Hyper-parameters and budgets of :func:`train_reranker` (recorded on the card)."""

    loss: Literal["bce", "lambda"] = "lambda"  # measured better on Home Depot dev (README)
    learning_rate: float = 4e-5
    max_length: int | None = None  # None: measured on the training pairs
    #: Keep this many transformer layers of the base model (indexer.training.compress); None: all.
    keep_layers: int | None = None

    def __post_init__(self) -> None:
        if self.keep_layers is not None and self.keep_layers < 1:
            raise TrainingError(f"keep_layers must be >= 1, got {self.keep_layers}")
        if self.loss not in RERANKER_LOSSES:
            raise TrainingError(
                f"loss must be one of {', '.join(RERANKER_LOSSES)}, got {self.loss!r}"
            )
        if self.max_length is not None and self.max_length < 8:
            raise TrainingError(f"max_length must be >= 8 word pieces, got {self.max_length}")
        # Explicit base call: zero-argument super() fails in slotted dataclasses.
        TrainingBudget.__post_init__(self)


@dataclass(kw_only=True)
class RerankerTrainingResult(TrainingRun):
    """What :func:`train_reranker` did: the run plus the pair length and label counts."""

    max_length: int
    length_stats: dict[str, float]
    label_stats: dict[str, float]
    #: The base model's layers the model kept (``keep_layers``); empty: all of them.
    kept_layers: list[int] = field(default_factory=list)


def _score_dev(model: Any, dev: RerankDevSet, batch_size: int = 128) -> list[list[float]]:
    flat = [(q, t) for q, texts in zip(dev.queries, dev.texts, strict=True) for t in texts]
    scores = model.predict(
        flat, batch_size=batch_size, show_progress_bar=False, convert_to_numpy=True
    )
    out, at = [], 0
    for texts in dev.texts:
        out.append([float(x) for x in scores[at : at + len(texts)]])
        at += len(texts)
    return out


def _evaluate(model: Any, dev: RerankDevSet | None) -> dict[str, float]:
    return rerank_metrics(_score_dev(model, dev), dev) if dev is not None else {}


def query_groups(pairs: Sequence[tuple[str, str, float]]) -> list[QueryGroup]:
    """``(query, item text, label)`` pairs as one list per query (first-seen order),
    leaving out queries whose labels are all equal: a list without two different labels
    has no order to learn."""
    grouped: dict[str, tuple[list[str], list[float]]] = {}
    for query, text, label in pairs:
        texts, labels = grouped.setdefault(query, ([], []))
        texts.append(text)
        labels.append(label)
    return [(q, t, y) for q, (t, y) in grouped.items() if len(set(y)) > 1]


def _pack(order: Sequence[int], sizes: Sequence[int], budget: int) -> list[list[int]]:
    """Consecutive units of ``order`` packed into steps of at most ``budget`` pairs (a unit
    larger than the budget gets a step of its own)."""
    steps: list[list[int]] = []
    current: list[int] = []
    filled = 0
    for i in order:
        if current and filled + sizes[i] > budget:
            steps.append(current)
            current, filled = [], 0
        current.append(int(i))
        filled += sizes[i]
    if current:
        steps.append(current)
    return steps


def train_reranker(
    pairs: Sequence[tuple[str, str, float]],
    base_model: Path,
    output_dir: Path,
    config: RerankerTrainingConfig | None = None,
    *,
    dev: RerankDevSet | None = None,
    on_step: StepCallback | None = None,
) -> RerankerTrainingResult:
    """Train a cross-encoder from ``base_model`` on ``(query, item text, label)`` pairs
    (labels in [0, 1]) and save it to ``output_dir`` with ``loss_curve.png``. With
    ``config.loss == "lambda"`` the pairs of one query form one list (:func:`query_groups`);
    ``max_pairs`` samples pairs before they are grouped.

    Raises:
        TrainingError: no pairs, a label outside [0, 1], no query with two different labels
            (``lambda``), or the budget ends before the first step.
        ModelError: the base model cannot be loaded.
    """
    import torch
    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss, LambdaLoss

    config = config or RerankerTrainingConfig()
    if not pairs:
        raise TrainingError("no training pairs; build them with indexer.training.mined_data")
    bad = [p for p in pairs if not 0.0 <= p[2] <= 1.0]
    if bad:
        raise TrainingError(
            f"{len(bad)} labels are outside [0, 1] (e.g. {bad[0]!r}); map grades with "
            "TrainingData.label()"
        )
    device = resolve_device(config.device)
    deadline = Deadline(config.max_minutes)
    seed_everything(config.seed)
    rng = np.random.default_rng(config.seed)
    pool = list(pairs)
    if config.max_pairs is not None and len(pool) > config.max_pairs:
        pool = [pool[i] for i in sorted(rng.choice(len(pool), config.max_pairs, replace=False))]
    labels = np.array([p[2] for p in pool])
    label_stats = {
        "pairs": len(pool),
        "mean_label": float(labels.mean()),
        "zero_labels": int((labels == 0).sum()),
        "positive_labels": int((labels > 0).sum()),
    }
    try:
        model = CrossEncoder(str(base_model), num_labels=1, device=device, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load base model from {base_model}: {exc}") from exc
    kept: list[int] = []
    if config.keep_layers is not None:
        from shopsearch.indexer.training.compress import prune_layers

        try:
            kept = prune_layers(model, config.keep_layers)
        except ValueError as exc:
            raise TrainingError(f"--keep-layers: {exc}") from exc
        log.info("kept layers %s of %s", kept, base_model)
    if config.max_length is None:
        max_length, length_stats = choose_max_length(
            model.tokenizer, [(q, t) for q, t, _ in pool], seed=config.seed
        )
    else:
        max_length, length_stats = config.max_length, {"given": float(config.max_length)}
    model.max_seq_length = max_length
    log.info("reranker max_length %d (%s)", max_length, length_stats)
    groups = query_groups(pool) if config.loss == "lambda" else []
    if config.loss == "lambda":
        if not groups:
            raise TrainingError(
                "loss 'lambda' needs queries with at least two different labels; "
                "add negatives or use --loss bce"
            )
        # -1: score a step's pairs in one forward pass (None would mean one query's worth).
        loss_fn: Any = LambdaLoss(model, mini_batch_size=-1)
        sizes = [len(g[1]) for g in groups]
        label_stats["queries"] = len(groups)
    else:
        loss_fn = BinaryCrossEntropyLoss(model)
        sizes = [1] * len(pool)

    def step_loss(units: list[int]) -> Any:
        if config.loss == "lambda":
            picked = [groups[i] for i in units]
            return loss_fn(
                [[g[0] for g in picked], [g[1] for g in picked]],
                [torch.tensor(g[2], dtype=torch.float32, device=model.device) for g in picked],
            )
        batch = [pool[i] for i in units]
        return loss_fn(
            [[b[0] for b in batch], [b[1] for b in batch]],
            torch.tensor([b[2] for b in batch], dtype=torch.float32, device=model.device),
        )

    def epoch_steps(epoch: int) -> list[list[int]]:
        order = np.random.default_rng([config.seed, epoch]).permutation(len(sizes))
        return _pack(order.tolist(), sizes, config.batch_size)

    # Packing whole queries makes epochs differ a little in length: count each.
    epoch_plans = [epoch_steps(e) for e in range(config.epochs)]
    budget, dev_before = start_budget(
        config,
        epoch_plans,
        deadline,
        evaluate=None if dev is None else lambda: _evaluate(model, dev),
        logger=log,
    )
    optimisation = Optimisation(model, config, budget.planned, device)
    loop = run_loop(
        epoch_plans,
        lambda units: optimisation.step(lambda: step_loss(units)),
        budget=budget,
        schedule=optimisation.schedule,
        deadline=deadline,
        evaluate=lambda: _evaluate(model, dev),
        size=lambda units: sum(sizes[i] for i in units),
        on_step=on_step,
        logger=log,
    )

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save(str(output_dir))
    curve = save_loss_curve(
        loop.losses,
        output_dir / "loss_curve.png",
        title=(
            f"reranker - {'LambdaLoss over query lists' if config.loss == 'lambda' else 'BCE'}"
            f" on graded labels + mined negatives (max_length {max_length})"
        ),
        epoch_ends=[e.steps for e in loop.epochs[:-1]],
    )
    result = RerankerTrainingResult(
        output_dir=output_dir,
        max_length=max_length,
        length_stats=length_stats,
        losses=loop.losses,
        epochs=loop.epochs,
        dev_before=dev_before,
        dev_after=loop.dev_after,
        steps=loop.steps,
        planned_steps=budget.plan.data_steps,
        pairs_seen=loop.pairs_seen,
        train_pairs=len(pool),
        label_stats=label_stats,
        kept_layers=kept,
        stopped_by=loop.stopped_by,
        wall_s=deadline.elapsed(),
        device=device,
        budget=loop.budget,
        loss_curve=curve,
    )
    log.info(
        "reranker trained: %d steps, %s, %.0f s, dev %s -> %s",
        result.steps,
        result.stopped_by,
        result.wall_s,
        dev_before,
        result.dev_after,
    )
    return result
