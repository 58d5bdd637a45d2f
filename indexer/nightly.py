"""The nightly reindex job: build a snapshot, evaluate it before it serves, then promote
it or refuse it.

One run of :func:`run_nightly`, under the index directory's nightly lock:

1. **Up to date?** When the serving snapshot was built from the same inputs (catalog
   checksum, item tower, reranker, lexical backend: :class:`NightlyInputs`), nothing is
   built and nothing is promoted (status ``unchanged``): running the job twice on the
   same catalog and models gives one promotion.
2. **Build** a new snapshot without promoting it (the caller's ``build`` callback, which
   reuses cached embeddings and validates the snapshot: it loads, answers probe queries,
   records approximate-vs-exact recall). A failed build raises and touches nothing. When
   a kept snapshot that never served was built from the same inputs and evaluated on the
   same queries (a refused night run again), that one is judged again instead of a
   rebuild: rerun with a larger ``--tolerance`` to accept it on purpose.
3. **Evaluate** the new version on the judged queries (:class:`SnapshotEvaluator`: the
   engine lives above this package, so the caller provides it) and store the result in
   its manifest (``evaluation``).
4. **Baseline**: the evaluation stored in the serving snapshot's manifest, when it was
   made on the same judged queries and the same generation; otherwise the serving
   snapshot is evaluated now and the result stored with it, so the next night compares
   against it without evaluating again.
5. **Gate** (:func:`indexer.quality_gate.check_gate`): promote (``CURRENT`` and, for an
   Elasticsearch snapshot, the alias, in one step: :meth:`SnapshotStore.promote`) only
   when no gated metric drops by more than the tolerance; otherwise leave the serving
   snapshot alone and keep the refused one on disk for inspection (status ``refused``).

Every step that writes is atomic (a temp file renamed into place), so killing the job at
any point leaves the serving snapshot serving: a half-built snapshot is removed by the
next build, an evaluated but unpromoted one is pruned like any snapshot that never
served, and ``CURRENT`` only ever names a complete snapshot.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from shopsearch.indexer.crashpoints import crashpoint
from shopsearch.indexer.generations import update_lock
from shopsearch.indexer.history import now
from shopsearch.indexer.quality_gate import DEFAULT_GATE_METRICS, GateResult, check_gate
from shopsearch.indexer.snapshot import SnapshotError, SnapshotStore
from shopsearch.indexer.snapshot_load import write_manifest

__all__ = [
    "NightlyInputs",
    "NightlyOutcome",
    "NightlyPolicy",
    "SnapshotEvaluator",
    "dataset_fingerprint",
    "nightly_lock",
    "run_nightly",
]

log = logging.getLogger(__name__)

Status = Literal["promoted", "refused", "unchanged", "first"]


@dataclass(frozen=True, slots=True)
class NightlyInputs:
    """What a snapshot is built from. Two builds from equal inputs serve the same answers,
    so the second is not worth building (``reranker_sha256`` is None without reranker)."""

    catalog_sha256: str
    item_tower_sha256: str
    reranker_sha256: str | None
    lexical: str

    @classmethod
    def of_manifest(cls, manifest: Mapping[str, Any]) -> NightlyInputs | None:
        """The inputs a snapshot was built from: those the nightly job recorded, else the
        ones the build recorded (a plain ``shopsearch build`` records no reranker, so
        such a snapshot never counts as up to date when a reranker is configured).
        None when the manifest lacks them."""
        recorded = manifest.get("nightly", {}).get("inputs")
        if isinstance(recorded, dict):
            try:
                return cls(**recorded)
            except TypeError:
                return None
        try:
            return cls(
                catalog_sha256=str(manifest["catalog"]["sha256"]),
                item_tower_sha256=str(manifest["models"]["item_tower"]["sha256"]),
                reranker_sha256=None,
                lexical=str(manifest["lexical_index"]["backend"]),
            )
        except (KeyError, TypeError):
            return None


@dataclass(frozen=True, slots=True)
class NightlyPolicy:
    """Which metrics gate a promotion and by how much each may drop (absolute)."""

    metrics: tuple[str, ...] = DEFAULT_GATE_METRICS
    tolerance: float = 0.01
    #: Snapshots kept on disk after the run (the serving one and a refused one included).
    keep: int = 3


class SnapshotEvaluator(Protocol):
    """Evaluates one snapshot of the index directory on a fixed set of judged queries."""

    #: Identifies the judged queries and the configuration evaluated: a stored evaluation
    #: with another key is not comparable and is redone.
    dataset_key: str

    def evaluate(self, version: str) -> dict[str, float]:
        """The metrics of ``version`` (higher is better). Raises
        :class:`~indexer.snapshot.SnapshotError` when it cannot be loaded."""
        ...


@dataclass(slots=True)
class NightlyOutcome:
    """What a run did. ``exit_code``: 0 promoted/unchanged/first, 3 refused."""

    status: Status
    serving_before: str | None
    serving_after: str | None
    candidate: str | None
    inputs: NightlyInputs
    dataset_key: str = ""
    candidate_metrics: dict[str, float] = field(default_factory=dict)
    baseline_metrics: dict[str, float] = field(default_factory=dict)
    #: ``stored`` (from the serving manifest) or ``evaluated`` (this run), "" without one.
    baseline_source: str = ""
    gate: GateResult | None = None
    policy: NightlyPolicy = field(default_factory=NightlyPolicy)
    build: dict[str, Any] = field(default_factory=dict)
    at: str = field(default_factory=now)

    @property
    def exit_code(self) -> int:
        return 3 if self.status == "refused" else 0

    @property
    def reason(self) -> str:
        """One line a log or a cron mail can show."""
        if self.status == "unchanged":
            return (
                f"snapshot {self.serving_after} already serves this catalog and these models; "
                "nothing built"
            )
        if self.status == "first":
            return f"promoted {self.candidate}: no snapshot served before, nothing to compare"
        if self.status == "promoted":
            return f"promoted {self.candidate}: no gated metric dropped beyond the tolerance"
        failures = "; ".join(self.gate.failures) if self.gate else ""
        return (
            f"refused {self.candidate}: {failures}; {self.serving_after} keeps serving "
            f"(the refused snapshot stays on disk for inspection)"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "reason": self.reason,
            "exit_code": self.exit_code,
            "serving_before": self.serving_before,
            "serving_after": self.serving_after,
            "candidate": self.candidate,
            "inputs": asdict(self.inputs),
            "dataset": self.dataset_key,
            "candidate_metrics": self.candidate_metrics,
            "baseline_metrics": self.baseline_metrics,
            "baseline_source": self.baseline_source,
            "gate": None
            if self.gate is None
            else {"failures": self.gate.failures, "tolerance": self.gate.tolerance},
            "policy": asdict(self.policy),
            "build": self.build,
            "at": self.at,
        }


def dataset_fingerprint(name: str, items: Sequence[tuple[str, str, Mapping[str, float]]]) -> str:
    """``<name>:<queries>:<sha256 prefix>`` of judged queries given as
    ``(qid, text, {product id: gain})``: equal for the same queries and judgments only."""
    digest = hashlib.sha256()
    for qid, text, judgments in sorted(items, key=lambda item: item[0]):
        digest.update(json.dumps([qid, text, sorted(judgments.items())]).encode())
    return f"{name}:{len(items)}:{digest.hexdigest()[:16]}"


@contextmanager
def nightly_lock(index_dir: Path) -> Iterator[None]:
    """Exclusive, non-blocking: a second nightly job (cron fired twice, a slow night)
    fails at once with the lock's path instead of racing the first."""
    index_dir.mkdir(parents=True, exist_ok=True)
    path = index_dir / ".nightly.lock"
    with path.open("w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise SnapshotError(f"another nightly job holds {path}; wait for it to finish") from exc
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def run_nightly(
    store: SnapshotStore,
    inputs: NightlyInputs,
    build: Callable[[], Mapping[str, Any]],
    evaluator: SnapshotEvaluator,
    policy: NightlyPolicy | None = None,
) -> NightlyOutcome:
    """Run the job described in the module docstring on ``store``.

    ``build`` builds one snapshot of ``inputs`` without promoting it and returns its
    manifest. Returns what was done; a refusal is an outcome, not an exception.

    Raises:
        SnapshotError: another nightly job runs, the build or an evaluation failed, or
            the promotion failed; the serving snapshot is unchanged in every case.
    """
    policy = policy or NightlyPolicy()
    with nightly_lock(store.root):
        serving = store.current()
        outcome = NightlyOutcome(
            status="unchanged",
            serving_before=serving,
            serving_after=serving,
            candidate=None,
            inputs=inputs,
            dataset_key=evaluator.dataset_key,
            policy=policy,
        )
        if serving is not None and NightlyInputs.of_manifest(store.manifest(serving)) == inputs:
            log.info("%s", outcome.reason)
            return outcome

        kept = _evaluated_candidate(store, inputs, serving, evaluator.dataset_key)
        if kept is not None:
            # Tonight's inputs were built and evaluated before (a refused night run again):
            # the same snapshot would come out, so it is judged again, not rebuilt.
            candidate, outcome.candidate_metrics = kept
            outcome.candidate = candidate
            outcome.build = {"reused": candidate}
            log.info("snapshot %s was built from these inputs and evaluated; reusing it", candidate)
        else:
            manifest = build()
            candidate = str(manifest["version"])
            outcome.candidate = candidate
            outcome.build = {
                "timings_s": manifest.get("build", {}).get("timings_s", {}),
                "embedding_cache_hits": manifest.get("build", {}).get("embedding_cache_hits"),
                "approx_vs_exact": manifest.get("approx_vs_exact", {}),
                "products": manifest.get("counts", {}).get("products"),
            }
            crashpoint("nightly.built")
            log.info("evaluating snapshot %s on %s", candidate, evaluator.dataset_key)
            outcome.candidate_metrics = evaluator.evaluate(candidate)
            _store_evaluation(store, candidate, evaluator.dataset_key, outcome.candidate_metrics)
            crashpoint("nightly.evaluated")

        if serving is None:
            outcome.status = "first"
        else:
            outcome.baseline_metrics, outcome.baseline_source = _baseline(store, serving, evaluator)
            outcome.gate = check_gate(
                outcome.candidate_metrics,
                outcome.baseline_metrics,
                tolerance=policy.tolerance,
                metrics=policy.metrics,
            )
            outcome.status = "promoted" if outcome.gate.passed else "refused"
        gate = {"first": "no-baseline", "promoted": "passed"}.get(outcome.status, "refused")
        _record_verdict(store, candidate, inputs, gate, serving)
        if gate != "refused":
            store.promote(candidate)
            outcome.serving_after = candidate
        store.prune(policy.keep)
        log.info("%s", outcome.reason)
        return outcome


def _stored_evaluation(manifest: Mapping[str, Any], dataset_key: str) -> dict[str, float] | None:
    """The evaluation stored in ``manifest`` when it was made on ``dataset_key`` and the
    snapshot has not been updated since (``shopsearch update`` moves the generation)."""
    stored = manifest.get("evaluation")
    if not isinstance(stored, dict) or stored.get("dataset") != dataset_key:
        return None
    if stored.get("generation") != manifest.get("generation", 0):
        return None
    metrics = stored.get("metrics")
    if not isinstance(metrics, dict):
        return None
    return {str(k): float(v) for k, v in metrics.items()}


def _evaluated_candidate(
    store: SnapshotStore, inputs: NightlyInputs, serving: str | None, dataset_key: str
) -> tuple[str, dict[str, float]] | None:
    """The newest kept snapshot that never served, was built from ``inputs`` and holds an
    evaluation on ``dataset_key``: its version and metrics (None when there is none)."""
    served = set(store.history()) | ({serving} if serving else set())
    for version in reversed(store.versions()):
        if version in served:
            continue
        try:
            manifest = store.manifest(version)
        except SnapshotError:
            continue  # being pruned, or damaged: build anew
        if NightlyInputs.of_manifest(manifest) != inputs:
            continue
        metrics = _stored_evaluation(manifest, dataset_key)
        if metrics is not None:
            return version, metrics
    return None


def _baseline(
    store: SnapshotStore, serving: str, evaluator: SnapshotEvaluator
) -> tuple[dict[str, float], str]:
    stored = _stored_evaluation(store.manifest(serving), evaluator.dataset_key)
    if stored is not None:
        log.info("baseline: the evaluation stored with serving snapshot %s", serving)
        return stored, "stored"
    log.info("baseline: no comparable evaluation stored with %s; evaluating it now", serving)
    metrics = evaluator.evaluate(serving)
    _store_evaluation(store, serving, evaluator.dataset_key, metrics)
    return metrics, "evaluated"


def _edit_manifest(
    store: SnapshotStore, version: str, edit: Callable[[dict[str, Any]], None]
) -> None:
    """Read, change and atomically replace ``version``'s manifest under its update lock
    (an update of a serving snapshot rewrites the manifest too; neither loses the
    other's change)."""
    path = store.path(version)
    with update_lock(path):
        manifest = store.manifest(version)
        edit(manifest)
        write_manifest(path, manifest)


def _store_evaluation(
    store: SnapshotStore, version: str, dataset_key: str, metrics: Mapping[str, float]
) -> None:
    def edit(manifest: dict[str, Any]) -> None:
        manifest["evaluation"] = {
            "dataset": dataset_key,
            "generation": manifest.get("generation", 0),
            "metrics": dict(metrics),
            "at": now(),
        }

    _edit_manifest(store, version, edit)


def _record_verdict(
    store: SnapshotStore,
    version: str,
    inputs: NightlyInputs,
    gate: str,
    baseline: str | None,
) -> None:
    """Record the inputs (for the next night's up-to-date check) and the gate's verdict
    (``passed``, ``refused``, ``no-baseline``): whether it then served is ``HISTORY``'s
    business, so a kill between this and the promotion leaves nothing false here."""

    def edit(manifest: dict[str, Any]) -> None:
        manifest["nightly"] = {
            "inputs": asdict(inputs),
            "gate": gate,
            "compared_with": baseline,
            "at": now(),
        }

    _edit_manifest(store, version, edit)
