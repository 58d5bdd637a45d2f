"""The nightly job's second half: retrain the shopper models from the event store.

After the snapshot step, ``shopsearch nightly`` calls :func:`retrain_shopper_models`:

0. **Retention**: events older than ``retention_days`` (``SHOPSEARCH_EVENTS_RETENTION_DAYS``)
   are deleted first, so no model is trained on what the shop promised to forget.
1. **Anything new?** No event store, or no purchase in it: ``skipped``. The serving
   recommender (``recommender/latest``) was trained on the store's span of events (up to
   its newest event, and from its oldest on, so no event it learned from has been deleted
   since): ``unchanged`` (two runs on the same events, one training).
2. **Fit** the recommender on every interaction of the store, as `shopsearch train
   recommender` does (tuning and the for-you ranker on the last 30 days), without
   registering it yet.
3. **Gate**: its validation figures (R1 nDCG@20 and R2 hit@10 of the tuned settings on its
   own last 30 days) must not fall more than ``tolerance`` below the serving recommender's
   figures on *its* last 30 days. The windows differ by a day, so this is a guard against
   broken inputs (a half-imported day, a catalog that lost its texts), not a comparison
   of models; a refusal registers nothing and the serving models stay.
4. **Register** ``recommender/<version>``, then train the shopper-aware search re-scorer
   beside it (``personal/<version>``, :func:`indexer.training.personal_model.train_personal`,
   with this recommender's for-you ranker); a history too short for the re-scorer keeps
   the previous one and says so.

The server picks up both ``latest`` versions at its next registry look
(``reload_interval_s``), so its recommendations and shopper-aware search change together.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd

from shopsearch.indexer.events.store import EventStore
from shopsearch.indexer.progress import ProgressFactory, no_progress
from shopsearch.retrieval.encoders import Encoder
from shopsearch.retrieval.model_registry import RegistryError, load_card, new_version, resolve_model
from shopsearch.retrieval.types import ShopsearchError

if TYPE_CHECKING:  # the training modules import torch; load them only when training
    from shopsearch.indexer.training.recommender import TrainedRecommender

__all__ = ["GATED", "ShopperModelsOutcome", "retrain_shopper_models"]

log = logging.getLogger(__name__)

#: Validation figures the gate compares: (protocol, metric) of the recommender's card.
GATED: tuple[tuple[str, str], ...] = (("R1", "ndcg@20"), ("R2", "hit@10"))
Status = Literal["retrained", "unchanged", "skipped", "refused"]


@dataclass
class ShopperModelsOutcome:
    """What the shopper step did: ``status``, why, the versions registered, and the
    gated figures of the new and the serving recommender (``{"R1 ndcg@20": value}``)."""

    status: Status
    reason: str
    recommender: str | None = None
    personal: str | None = None
    candidate: dict[str, float] = field(default_factory=dict)
    serving: dict[str, float] = field(default_factory=dict)
    pruned: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "reason": self.reason,
            "pruned_events": self.pruned,
            "recommender": self.recommender,
            "personal": self.personal,
            "candidate": self.candidate,
            "serving": self.serving,
        }


def _gated(card: Mapping[str, Any]) -> dict[str, float]:
    metrics = card.get("validation", {}).get("metrics", {})
    return {
        f"{protocol} {metric}": float(metrics[protocol][metric])
        for protocol, metric in GATED
        if metric in metrics.get(protocol, {})
    }


def retrain_shopper_models(
    events_db: Path,
    texts: Mapping[str, str],
    models_dir: Path,
    encoder: Encoder,
    *,
    max_minutes: float = 10.0,
    personal_minutes: float = 8.0,
    tolerance: float = 0.05,
    retention_days: int = 0,
    progress: ProgressFactory = no_progress,
) -> ShopperModelsOutcome:
    """Run the steps of the module docstring; ``texts`` are the catalog's item texts (cold
    start, and the re-scorer's query words); ``retention_days`` 0 keeps every event. A
    refusal is an outcome, not an exception.

    Raises:
        RecommenderTrainingError: the interactions cannot train a recommender.
    """
    from shopsearch.indexer.training.recommender import fit_recommender, register_fitted

    events_db = Path(events_db)
    if not events_db.is_file():
        return ShopperModelsOutcome("skipped", f"no event store at {events_db}")
    pruned = 0
    with EventStore(events_db) as store:
        if retention_days > 0:
            pruned = store.apply_retention(retention_days)
            log.info("retention: %d events older than %d days deleted", pruned, retention_days)
        interactions = store.interactions()
    purchases = interactions[interactions["kind"] == "purchase"]
    if purchases.empty:
        return ShopperModelsOutcome(
            "skipped", f"the event store {events_db} holds no purchase", pruned=pruned
        )
    serving_card: dict[str, Any] = {}
    with contextlib.suppress(RegistryError):  # none registered yet: nothing to compare with
        serving_card = load_card(resolve_model("recommender/latest", models_dir))
    serving = _gated(serving_card)
    same = _same_events(serving_card, interactions)
    if same is not None:
        return ShopperModelsOutcome(
            "unchanged",
            same,
            recommender=serving_card.get("version"),
            serving=serving,
            pruned=pruned,
        )
    version = new_version(models_dir, "recommender")
    fitted = fit_recommender(
        interactions,
        texts,
        encoder=encoder,
        max_minutes=max_minutes,
        cache_dir=models_dir / ".cache" / "embeddings",
        progress=progress,
        version=version,
    )
    candidate = _gated(fitted.card)
    drops = [
        f"{name} {candidate[name]:.4f} < serving {serving[name]:.4f} - {tolerance}"
        for name in serving
        if name in candidate and candidate[name] < serving[name] - tolerance
    ]
    if drops:
        return ShopperModelsOutcome(
            "refused",
            "the new recommender's validation fell: " + "; ".join(drops),
            candidate=candidate,
            serving=serving,
            pruned=pruned,
        )
    trained = register_fitted(models_dir, version, fitted, {"events_db": str(events_db)})
    outcome = ShopperModelsOutcome(
        "retrained",
        f"recommender {version} trained on {len(interactions)} events up to "
        f"{interactions['ts'].max()}",
        recommender=trained.model.spec,
        candidate=candidate,
        serving=serving,
        pruned=pruned,
    )
    outcome.personal, kept = _train_rescorer(
        purchases, texts, encoder, trained, models_dir, personal_minutes, progress
    )
    if kept is not None:
        outcome.reason += f"; the shopper-aware re-scorer was kept ({kept})"
    return outcome


def _same_events(card: Mapping[str, Any], interactions: pd.DataFrame) -> str | None:
    """Why the serving recommender (``card``) already describes ``interactions``, or None
    when it must be retrained: it saw every event (trained up to the newest one) and no
    event it saw has been deleted since (trained from the oldest one on; retention or an
    erasure of old events makes its span start earlier, and a model must not keep
    what the shop promised to forget)."""
    span = card.get("trained_on", {})
    if "until" not in span or "from" not in span:
        return None
    oldest, newest = interactions["ts"].min(), interactions["ts"].max()
    if pd.Timestamp(span["until"]) < newest or pd.Timestamp(span["from"]) < oldest:
        return None
    return (
        f"recommender {card.get('version')} was trained on the same span of events "
        f"({oldest} to {newest})"
    )


def _train_rescorer(
    purchases: pd.DataFrame,
    texts: Mapping[str, str],
    encoder: Encoder,
    trained: TrainedRecommender,
    models_dir: Path,
    max_minutes: float,
    progress: ProgressFactory,
) -> tuple[str | None, str | None]:
    """Step 4's second half: the re-scorer beside ``trained``. Returns the registered
    spec (None when its held-out gate kept the serving one) and, when the history cannot
    train one at all, why (the serving re-scorer stays)."""
    from shopsearch.indexer.training.personal_model import train_personal

    lines = purchases.rename(
        columns={"basket": "invoice", "item": "stock_code", "user": "customer"}
    )
    try:
        personal = train_personal(
            lines,
            texts,
            encoder,
            foryou_full=trained.bundle.ranked,
            models_dir=models_dir,
            max_minutes=max_minutes,
            recommender_version=trained.model.version,
            progress=progress,
        )
    except (ValueError, ShopsearchError) as exc:  # too short a history, no shopper query
        return None, str(exc)
    return (personal.model.spec if personal.model else None), None
