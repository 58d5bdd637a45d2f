"""Training and registering the shopper-aware re-scorer (``personal/<version>``).

`shopsearch train recommender` calls :func:`train_personal` after the recommender: the
re-scorer's blend (:mod:`rerank.personal`) is learned on the history's last month
(:func:`indexer.training.personal.prepare_personal_training`), and its ``foryou`` feature
needs a for-you ranker that knew only the months before it, as the examples' other
statistics do. So a second recommender is fitted on those months
(:func:`fit_foryou_before`, a few minutes), and the re-scorer that ships gets the
recommender fitted on the whole history (the one being registered beside it; the server
attaches the served recommender's ranker at load time).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd

from shopsearch.indexer.progress import ProgressFactory, no_progress
from shopsearch.indexer.training.personal import month_start, prepare_personal_training
from shopsearch.rerank.personal import ForYouScorer, PersonalError, PersonalRescorer
from shopsearch.rerank.personal_fit import FitReport, require_enough, train_rescorer, usable
from shopsearch.retrieval.encoders import Encoder
from shopsearch.retrieval.model_registry import (
    RegisteredModel,
    new_version,
    register,
    staging_dir,
)
from shopsearch.retrieval.recommend.ranker import RankedForYou

__all__ = ["TrainedPersonal", "fit_blend", "fit_foryou_before", "train_personal"]

log = logging.getLogger(__name__)

#: Budget of the recommender fitted before the validation month (its tuning stops at it).
FORYOU_BEFORE_MINUTES = 4.0


@dataclass(frozen=True)
class TrainedPersonal:
    """The re-scorer that ships (for-you ranker attached), its fit report and, when
    registered, its registry entry."""

    rescorer: PersonalRescorer
    report: FitReport
    model: RegisteredModel | None


def fit_foryou_before(
    lines: pd.DataFrame,
    texts: Mapping[str, str],
    encoder: Encoder,
    *,
    valid_start: pd.Timestamp | None = None,
    max_minutes: float = FORYOU_BEFORE_MINUTES,
    cache_dir: Path | None = None,
    progress: ProgressFactory = no_progress,
) -> RankedForYou | None:
    """The for-you ranker of a recommender fitted on the retail ``lines`` before
    ``valid_start`` (default :func:`month_start`, the re-scorer's validation month), as
    `train recommender` fits one; None when that history is too short to fit a ranker."""
    from shopsearch.indexer.training.recommender import (
        RecommenderTrainingError,
        fit_recommender,
        retail_interactions,
    )

    valid_start = month_start(lines) if valid_start is None else valid_start
    before = lines[lines["ts"] < valid_start]
    try:
        fitted = fit_recommender(
            retail_interactions(before),
            texts,
            encoder=encoder,
            max_minutes=max_minutes,
            cache_dir=cache_dir,
            progress=progress,
        )
    except RecommenderTrainingError as exc:
        log.warning(
            "no for-you ranker before %s (%s); the foryou feature stays 0", valid_start, exc
        )
        return None
    return fitted.bundle.ranked


def fit_blend(
    lines: pd.DataFrame,
    texts: Mapping[str, str],
    encoder: Encoder,
    *,
    foryou_full: ForYouScorer | None,
    fit_before: Callable[[], ForYouScorer | None] | None,
    version: str | None = None,
    seed: int = 0,
    max_minutes: float | None = None,
    progress: ProgressFactory = no_progress,
) -> tuple[PersonalRescorer, FitReport]:
    """The re-scorer's blend learned on retail ``lines``, unregistered: the training
    queries of the last month (:func:`prepare_personal_training`), then, only when there
    are enough of them, ``fit_before()`` (the for-you ranker that knew only the months
    before that month: minutes), then the fit. ``foryou_full`` (the ranker fitted on all
    of ``lines``) is used only with a before-month ranker: one without the other would
    score a feature the weights never saw.

    Raises:
        ValueError: the history has no month before its last, or no validation query.
        PersonalError: too few validation queries have a shopper history and a bought
            candidate (:data:`rerank.personal_fit.MIN_EXAMPLES`); ``fit_before`` was not
            called.
    """
    prepared = prepare_personal_training(
        lines,
        texts,
        encoder.encode_document,
        encoder.encode_query,
        seed=seed,
        max_minutes=max_minutes,
        progress=progress,
    )
    # Too few searches to learn from fail here, before the minutes of a second fit.
    require_enough(sum(usable(e) for e in prepared.examples))
    before = fit_before() if foryou_full is not None and fit_before is not None else None
    return train_rescorer(
        prepared,
        max_minutes=max_minutes,
        version=version,
        foryou_train=before,
        foryou_full=foryou_full if before is not None else None,
    )


def train_personal(
    lines: pd.DataFrame,
    texts: Mapping[str, str],
    encoder: Encoder,
    *,
    foryou_full: ForYouScorer | None,
    models_dir: Path | None = None,
    max_minutes: float | None = None,
    recommender_version: str | None = None,
    progress: ProgressFactory = no_progress,
) -> TrainedPersonal:
    """Learn the re-scorer on retail ``lines`` (invoice, stock_code, customer, ts) with
    item ``texts``; register it as ``personal/<version>`` when ``models_dir`` is given.

    ``foryou_full``: the for-you ranker fitted on all of ``lines`` (None: no ``foryou``
    feature); the one that knew only the months before the validation month is fitted
    here (:func:`fit_foryou_before`) once :func:`fit_blend` has enough training queries.

    Raises:
        ValueError: the history has no month before its last, or no validation query.
        PersonalError: too few validation queries have a shopper history and a bought
            candidate, or the blend orders the held-out shoppers' searches worse than the
            base order (nothing is registered).
    """
    started = time.monotonic()
    fit_before = partial(
        fit_foryou_before,
        lines,
        texts,
        encoder,
        max_minutes=min(FORYOU_BEFORE_MINUTES, max_minutes / 2)
        if max_minutes
        else FORYOU_BEFORE_MINUTES,
        cache_dir=models_dir / ".cache" / "embeddings" if models_dir else None,
        progress=progress,
    )
    version = new_version(models_dir, "personal") if models_dir is not None else None
    rescorer, report = fit_blend(
        lines,
        texts,
        encoder,
        foryou_full=foryou_full,
        fit_before=fit_before,
        version=version,
        max_minutes=max_minutes,
        progress=progress,
    )
    held, base = report.get("held_out.mrr@10.blend"), report.get("held_out.mrr@10.base")
    if held is not None and base is not None and held < base:
        # The gate of a release: a blend that orders held-out shoppers' searches worse than
        # the plain relevance does is not registered (the serving one stays).
        raise PersonalError(
            f"the blend's held-out MRR@10 {held:.4f} is below the base order's {base:.4f}; "
            "not registered"
        )
    card: dict[str, Any] = {
        **rescorer.card,
        "recommender": recommender_version,
        "minutes": round((time.monotonic() - started) / 60, 2),
    }
    rescorer.card = card
    model = None
    if models_dir is not None and version is not None:
        rescorer.save(staging_dir(models_dir, "personal", version))
        model = register(models_dir, "personal", version, card)
        rescorer.card = model.card
    return TrainedPersonal(rescorer, report, model)
