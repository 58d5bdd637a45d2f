"""The nightly job's evaluator: a snapshot answered exactly as ``serve`` answers with its
defaults, scored on judged queries (the ``default`` configuration of ``shopsearch eval``).

It implements :class:`indexer.nightly.SnapshotEvaluator`, which the batch side defines
and cannot implement itself: evaluating needs the engine (:class:`api.service.SearchService`)
and the runner (:mod:`eval.runner`), both above ``indexer``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shopsearch.api.service import SearchService
from shopsearch.api.settings import Settings
from shopsearch.eval.runner import default_configurations, evaluate_configurations
from shopsearch.indexer.judgments import EvalDataset
from shopsearch.indexer.nightly import dataset_fingerprint
from shopsearch.indexer.snapshot import SnapshotError, SnapshotStore
from shopsearch.rerank.cross_encoder import Reranker
from shopsearch.retrieval.match_set import MATCH_RULE_VERSION

__all__ = ["ServeDefaultsEvaluator"]

log = logging.getLogger(__name__)


class ServeDefaultsEvaluator:
    """Evaluate any snapshot of ``settings.index_dir`` with the towers that built it (read
    from its manifest) and the reranker of ``settings`` (None: no rerank), on ``dataset``.

    ``dataset_key`` names the judged queries and the configuration, so an evaluation
    stored under another key (other queries, a reranker added) is redone rather than
    compared. ``progress(description, total)`` returns a callable advancing a bar.
    """

    def __init__(
        self,
        settings: Settings,
        dataset: EvalDataset,
        *,
        progress: Callable[[str, int], Callable[[int], Any]] | None = None,
    ) -> None:
        self.settings = settings.model_copy(update={"reload_interval_s": 0.0})
        self.dataset = dataset
        self.progress = progress
        judged = [(q.qid, q.text, q.judgments) for q in dataset.queries if q.judgments]
        reranker = "rerank" if settings.reranker_dir is not None else "no-rerank"
        # The result-set rule is part of what `default` answers: an evaluation made
        # under another rule is redone, not compared.
        self.dataset_key = (
            f"{dataset_fingerprint(dataset.name, judged)}:default-{reranker}:{MATCH_RULE_VERSION}"
        )
        self._loaded_reranker: Reranker | None = None

    def _reranker(self) -> Reranker | None:
        """The cross-encoder, loaded on first use and shared by every evaluation of the
        run (the candidate's and the serving snapshot's use the same one)."""
        if self._loaded_reranker is None and self.settings.reranker_dir is not None:
            self._loaded_reranker = Reranker(
                self.settings.reranker_dir,
                device=self.settings.device,
                batch_size=self.settings.rerank_batch_size,
                backend=self.settings.reranker_backend,
            )
        return self._loaded_reranker

    def evaluate(self, version: str) -> dict[str, float]:
        """The ``default`` configuration's metrics for ``version`` (protocol A and B).

        Raises:
            SnapshotError: the snapshot or the towers that built it cannot be loaded.
        """
        store = SnapshotStore(self.settings.index_dir)
        tower = store.manifest(version).get("models", {}).get("item_tower", {})
        towers = Path(str(tower.get("path", "")))
        if not towers.is_dir():
            raise SnapshotError(
                f"snapshot {version} was built with towers {tower.get('id', '?')} from "
                f"{towers}, which no longer exists; it cannot be evaluated (restore the "
                "model directory, or rebuild that snapshot)"
            )
        service = SearchService(
            self.settings.model_copy(update={"model_dir": towers}), reranker=self._reranker()
        )
        try:
            service.load(version)
            config = default_configurations(with_reranker=service.reranker is not None)[0]
            outcome = evaluate_configurations(
                service,
                self.dataset,
                [config],
                progress=None
                if self.progress is None
                else lambda name, total: self.progress(f"evaluating {version}", total),  # type: ignore[misc]
            )[0]
        finally:
            service.close()
        metrics = outcome.result().metrics
        log.info(
            "snapshot %s: %s",
            version,
            ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if not k.startswith("stage.")),
        )
        return {k: float(v) for k, v in metrics.items()}
