"""Training of the sequence recommender (:mod:`retrieval.recommend.sequence`) from
purchase lines.

Examples are baskets: for each shopper (guests have no history and are left out) and each
invoice after their first, the items of the earlier invoices (the last ``max_len``, oldest
first) are the input and the items of that invoice are the target, scored with a full
softmax over the vocabulary (a few thousand items: cheap). With ``objective="new"`` the
items the shopper bought before are masked out of the softmax and of the target, so the
model learns discovery (protocol R1-new) rather than replenishment, which a shopper's own
most-bought items already cover.

Validation never looks past the lines it is given: the last calendar month present in
``lines`` (or ``validation_start`` onwards) is held out; the model trains on the lines
before it and is scored each epoch on R1-new recall@20 of that month (the shoppers who
bought in it and before it; ranx computes the metrics). Training stops when it has not
improved for ``patience`` epochs or at ``max_minutes``; the best epoch wins. With
``refit`` (default) a fresh network is then trained on all lines for that many epochs,
so the saved model knows the newest products and habits; the card keeps the validation
figures of the first phase (the refit has no held-out month left to be scored on).

On the development split (lines before 2011-10-01) the validation month is September 2011
and October is never seen. Training sets torch's thread count for its duration only.

This module holds the configuration, the training loop (loss, per-epoch validation,
early stopping, refit) and :func:`train_sequence`; the lines-to-examples work (the
columns read, vocabulary, baskets, examples, the validation month) and the batching are
in :mod:`indexer.training.sequence_data`.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from shopsearch.indexer.progress import ProgressFactory, no_progress
from shopsearch.indexer.training.budget import Deadline, TrainingError
from shopsearch.indexer.training.loop import seed_everything
from shopsearch.indexer.training.sequence_data import (
    Baskets,
    Examples,
    Objective,
    Validation,
    bucketed_batches,
    check_lines,
    shopper_baskets,
    tensor_batch,
    training_examples,
    validation_examples,
    validation_month_start,
    vocabulary,
)
from shopsearch.retrieval.encoders import Encoder
from shopsearch.retrieval.recommend.sequence import SequenceConfig, SequenceNet, save_model

__all__ = [
    "SequenceTrainingConfig",
    "SequenceTrainingResult",
    "train_sequence",
]

log = logging.getLogger(__name__)

_MASKED = -1e9  # a logit that softmax turns into 0 without the NaN of 0 * -inf


@dataclass(frozen=True, slots=True)
class SequenceTrainingConfig:
    """Hyper-parameters of a training run (all recorded in the model card).

    Defaults were chosen on the September 2011 validation month of the development split
    (R1-new recall@20): one transformer layer, learning rate 2e-3, a 30-day target horizon,
    a 60-day recency half-life, dropout and id dropout 0.3.
    """

    model: SequenceConfig = field(default_factory=SequenceConfig)
    objective: Objective = "new"
    batch_size: int = 128
    learning_rate: float = 2e-3
    weight_decay: float = 0.0
    max_epochs: int = 60
    patience: int = 4
    #: The target of an invoice also holds the shopper's items of the following days,
    #: as "for you" is judged on a month of purchases, not on the next basket alone.
    horizon_days: float = 30.0
    #: Examples weigh 0.5 ** (age / half-life) (age from the newest one; 0 = all equal),
    #: so what is bought now (seasonal products) counts more.
    recency_half_life_days: float = 60.0
    refit: bool = True
    threads: int = 2
    #: Cut-off of the R1/R1-new validation metrics.
    k: int = 20

    def __post_init__(self) -> None:
        if self.objective not in ("new", "all"):
            raise ValueError(f"objective must be 'new' or 'all', got {self.objective!r}")
        if self.batch_size < 1 or self.max_epochs < 1 or self.patience < 1 or self.threads < 1:
            raise ValueError("batch_size, max_epochs, patience and threads must be at least 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class SequenceTrainingResult:
    """What a run produced: the model directory, its card, and the validation metrics
    (``{"R1": {...}, "R1-new": {...}}`` of the best first-phase epoch)."""

    path: Path
    card: dict[str, Any]
    metrics: dict[str, dict[str, float]]
    best_epoch: int
    epochs_run: int
    stopped_by: str  # patience | max_epochs | max_minutes
    refitted: bool
    seconds: float


# -- training ------------------------------------------------------------------------


def _examples(
    baskets: Baskets, n_items: int, cfg: SequenceTrainingConfig, before: pd.Timestamp | None
) -> Examples:
    """:func:`~indexer.training.sequence_data.training_examples` with ``cfg``'s settings."""
    return training_examples(
        baskets,
        n_items,
        before,
        objective=cfg.objective,
        horizon_days=cfg.horizon_days,
        recency_half_life_days=cfg.recency_half_life_days,
        max_len=cfg.model.max_len,
    )


def _step(net: SequenceNet, batch: tuple[Any, ...], objective: Objective, id_dropout: float) -> Any:
    import torch

    tokens, lengths, target, seen, weights = batch
    keep = (torch.rand(net.n_trained + 1) >= id_dropout).float()
    h = net.encode(tokens, lengths, keep)
    table, bias = net.output_table(keep)
    logits = h @ table.T + bias
    if objective == "new":
        logits = logits.masked_fill(seen, _MASKED)
    logp = torch.log_softmax(logits, dim=1)
    return (weights * (-(target * logp).sum(1) / target.sum(1))).mean()


def _evaluate(net: SequenceNet, val: Validation, k: int) -> dict[str, dict[str, float]]:
    """R1 and R1-new (recall@k, nDCG@k) on the validation month, with ranx."""
    import torch
    from ranx import Qrels, Run, evaluate

    net.eval()
    ex = val.examples
    tops: dict[str, list[npt.NDArray[np.int64]]] = {"R1": [], "R1-new": []}
    scores_of: dict[str, list[npt.NDArray[np.float32]]] = {"R1": [], "R1-new": []}
    with torch.inference_mode():
        table, bias = net.output_table()
        for start in range(0, len(ex), 512):
            rows = np.arange(start, min(start + 512, len(ex)))
            tokens, lengths, _, seen, _ = tensor_batch(ex, rows)
            scores = (net.encode(tokens, lengths) @ table.T + bias).numpy()
            for name, s in (("R1", scores), ("R1-new", np.where(seen.numpy(), -np.inf, scores))):
                top = np.argsort(-s, axis=1, kind="stable")[:, :k]
                tops[name].append(top)
                scores_of[name].append(np.take_along_axis(s, top, axis=1))
    net.train()
    out: dict[str, dict[str, float]] = {}
    for name in ("R1", "R1-new"):
        top, top_scores = np.concatenate(tops[name]), np.concatenate(scores_of[name])
        qrels: dict[str, dict[str, int]] = {}
        run: dict[str, dict[str, float]] = {}
        for row, shopper in enumerate(val.shoppers):
            relevant = ex.targets[row].indices
            if name == "R1-new":
                relevant = np.setdiff1d(relevant, ex.seen[row].indices)
            if len(relevant) == 0:
                continue
            qrels[shopper] = {str(i): 1 for i in relevant}
            run[shopper] = {
                str(i): float(v)
                for i, v in zip(top[row], top_scores[row], strict=True)
                if np.isfinite(v)
            }
        metrics = evaluate(Qrels(qrels), Run(run), [f"recall@{k}", f"ndcg@{k}"])
        out[name] = {m: round(float(v), 4) for m, v in metrics.items()}
        out[name]["shoppers"] = float(len(qrels))
    return out


def _train_phase(
    net: SequenceNet,
    train: Examples,
    cfg: SequenceTrainingConfig,
    epochs: int,
    deadline: Deadline,
    rng: np.random.Generator,
    val: Validation | None,
    advance: Any,
) -> tuple[SequenceNet, list[dict[str, Any]], int, str]:
    """Train for up to ``epochs``; with ``val``, keep the best epoch by R1-new recall@k
    and stop after ``patience`` epochs without progress. Returns the (best) network,
    the epoch log, the best epoch and why it stopped."""
    import torch

    opt = torch.optim.Adam(net.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    key = f"recall@{cfg.k}"
    best_state, best_score, best_epoch, stale = None, -1.0, 0, 0
    history: list[dict[str, Any]] = []
    stopped = "max_epochs"
    net.train()
    for epoch in range(1, epochs + 1):
        batches = bucketed_batches(train.lengths, cfg.batch_size, rng)
        losses = []
        for rows in batches:
            if deadline.expired():
                stopped = "max_minutes"
                break
            loss = _step(net, tensor_batch(train, rows), cfg.objective, cfg.model.id_dropout)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        if stopped == "max_minutes" and len(losses) < len(batches):
            break  # a partial epoch is neither logged nor kept
        entry: dict[str, Any] = {
            "epoch": epoch,
            "loss": round(float(np.mean(losses)), 4),
            "elapsed_s": round(deadline.elapsed(), 1),
        }
        advance(1)
        if val is not None:
            metrics = _evaluate(net, val, cfg.k)
            entry["validation"] = metrics
            score = metrics["R1-new"][key]
            log.info("sequence epoch %d loss %.4f R1-new %s %.4f", epoch, entry["loss"], key, score)
            if score > best_score:
                best_state, best_score, best_epoch, stale = (
                    copy.deepcopy(net.state_dict()),
                    score,
                    epoch,
                    0,
                )
            else:
                stale += 1
        else:
            best_epoch = epoch
        history.append(entry)
        if val is not None and stale >= cfg.patience:
            stopped = "patience"
            break
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    return net, history, best_epoch, stopped


def train_sequence(
    lines: pd.DataFrame,
    item_texts: Mapping[str, str],
    out_dir: Path,
    encoder: Encoder,
    *,
    config: SequenceTrainingConfig | None = None,
    max_minutes: float = 5.0,
    progress: ProgressFactory = no_progress,
    seed: int = 0,
    validation_start: pd.Timestamp | None = None,
    version: str | None = None,
) -> SequenceTrainingResult:
    """Train a sequence model on purchase ``lines`` and save it into ``out_dir``.

    ``lines`` has at least the columns of
    :data:`~indexer.training.sequence_data.REQUIRED_COLUMNS` (``ts`` UTC-aware;
    ``customer`` ``""`` for guests). ``item_texts`` maps items to their text (the
    description); items with a text that nobody bought are in the vocabulary too, scored
    by text alone. ``encoder``'s item tower embeds the texts (``encode_document``).
    ``validation_start`` defaults to the first day of the last month in ``lines``.
    Deterministic for a seed when it finishes inside ``max_minutes``.

    Raises:
        TrainingError: a column is missing, or there is nothing to train or validate on.
    """
    import torch

    cfg = config or SequenceTrainingConfig()
    check_lines(lines)
    started = time.monotonic()
    deadline = Deadline(max_minutes)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        seed_everything(seed)
        rng = np.random.default_rng(seed)
        val_start = validation_month_start(lines, validation_start)
        early = lines[lines["ts"] < val_start]
        items_all, n_trained_all = vocabulary(lines, item_texts)
        texts = [item_texts.get(i, "") for i in items_all]
        with progress("embedding item texts", len(items_all)) as advance:
            vectors = _embed(encoder, texts, advance)
        vector_of = dict(zip(items_all, vectors, strict=True))

        # Phase 1: train before the validation month, pick the epoch on it. Items first
        # bought in that month are text-only here, as new products are in production.
        items1, n_trained1 = vocabulary(early, item_texts)
        items1 += sorted(set(items_all) - set(items1))
        index1 = {item: i for i, item in enumerate(items1)}
        baskets1 = shopper_baskets(lines, index1)
        text1 = np.stack([vector_of[i] for i in items1])
        train1 = _examples(baskets1, len(items1), cfg, val_start)
        val = validation_examples(baskets1, len(items1), cfg.model.max_len, val_start)
        if len(train1) == 0 or len(val.shoppers) == 0:
            raise TrainingError(
                f"nothing to train or validate on: {len(train1)} training baskets before "
                f"{val_start.date()}, {len(val.shoppers)} shoppers who bought before and on or "
                "after it; pass more history (several months of named customers)"
            )
        log.info(
            "sequence: %d training baskets, %d validation shoppers", len(train1), len(val.shoppers)
        )
        net1 = SequenceNet(n_trained1, text1, cfg.model)
        phase1_started = time.monotonic()
        with progress("training sequence model", cfg.max_epochs) as advance:
            net1, epochs, best_epoch, stopped = _train_phase(
                net1, train1, cfg, cfg.max_epochs, deadline, rng, val, advance
            )
        if best_epoch == 0:
            raise TrainingError(
                f"max_minutes={max_minutes} did not allow one epoch ({len(train1)} baskets); "
                "raise --max-minutes"
            )
        metrics = _evaluate(net1, val, cfg.k)

        # Phase 2: the same number of epochs on every line, when the budget allows.
        net, items, refitted = net1, items1, False
        per_epoch = (time.monotonic() - phase1_started) / len(epochs)
        if cfg.refit:
            all_index = {item: i for i, item in enumerate(items_all)}
            train2 = _examples(shopper_baskets(lines, all_index), len(items_all), cfg, None)
            needed = per_epoch * best_epoch * len(train2) / len(train1)
            if needed < deadline.remaining():
                seed_everything(seed)
                net2 = SequenceNet(n_trained_all, vectors, cfg.model)
                with progress("refitting on all lines", best_epoch) as advance:
                    net2, _, _, refit_stop = _train_phase(
                        net2, train2, cfg, best_epoch, deadline, rng, None, advance
                    )
                # A refit cut short by the deadline is not the validated recipe: keep phase 1.
                if refit_stop != "max_minutes":
                    net, items, refitted = net2, items_all, True
            else:
                log.warning(
                    "sequence: no time left to refit (%.0f s needed); keeping phase 1", needed
                )
        seconds = time.monotonic() - started
        card = {
            "name": "sequence",
            "version": version or datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ"),
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "trained_range": {
                "start": str(lines["ts"].min()),
                "end": str(lines["ts"].max()),
                "validation_start": str(val_start),
                "refitted_on_all": refitted,
            },
            "metrics": {"validation": metrics},
            "training": {
                **cfg.to_dict(),
                "seed": seed,
                "max_minutes": max_minutes,
                "examples": len(train1),
                "validation_shoppers": len(val.shoppers),
                "best_epoch": best_epoch,
                "epochs_run": len(epochs),
                "stopped_by": stopped,
                "seconds": round(seconds, 1),
                "epochs": epochs,
            },
            "text_encoder": {**encoder.info.to_dict(), "dim": encoder.dim},
            "items_without_text": sum(1 for i in items if not item_texts.get(i)),
        }
        written = save_model(
            Path(out_dir), net, items, np.stack([vector_of[i] for i in items]), card
        )
    finally:
        torch.set_num_threads(threads)
    return SequenceTrainingResult(
        path=Path(out_dir),
        card=written,
        metrics=metrics,
        best_epoch=best_epoch,
        epochs_run=len(epochs),
        stopped_by=stopped,
        refitted=refitted,
        seconds=seconds,
    )


def _embed(encoder: Encoder, texts: Sequence[str], advance: Any) -> npt.NDArray[np.float32]:
    """Item-tower vectors of ``texts``; an empty text gets a zero vector (id only)."""
    out = np.zeros((len(texts), encoder.dim), dtype=np.float32)
    present = [i for i, t in enumerate(texts) if t.strip()]
    if present:
        out[present] = encoder.encode_document([texts[i] for i in present], progress=advance)
    advance(len(texts) - len(present))
    return out
