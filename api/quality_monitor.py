"""Live recall of the vector index: what the approximate dense leg answered, against an
exact search over the same snapshot, on a sampled fraction of live searches.

Contract:

* :meth:`LiveRecallMonitor.offer` runs on the request path (it is the
  ``on_dense`` observer of :meth:`api.service.SearchService.search`). An unsampled
  search costs one random draw; a sampled one a non-blocking put on a bounded queue.
  When the queue is full the sample is dropped and counted: a request never waits for
  the monitor.
* One daemon thread takes the samples and asks the snapshot's own vector index for
  its exact answer (``search(..., exact=True)``, the scan eval's ``dense-exact``
  configuration uses) over the stored float32 vectors, then records
  recall@k = |approximate top-k ∩ exact top-k| / |exact top-k|, k being the depth the
  dense leg was asked for, by snapshot version.
* :class:`LiveRecallCollector` exports the numbers at scrape time (nothing is
  registered per request); the last :data:`VERSIONS_KEPT` snapshot versions keep series.
* :meth:`LiveRecallMonitor.close` stops the thread; samples still queued are discarded.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import random
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from shopsearch.indexer.snapshot_load import LoadedSnapshot
from shopsearch.retrieval.log_throttle import LogThrottle
from shopsearch.retrieval.vector_index import VectorIndex, recall_at_k

__all__ = [
    "RECALL_BUCKETS",
    "LiveRecallCollector",
    "LiveRecallMonitor",
    "RecallStats",
    "VersionRecall",
    "rerank_outcome",
]

log = logging.getLogger(__name__)

#: Upper bounds of the recall histogram's buckets: recall lives near 1, where a drop of
#: a few hundredths is already the news (the build's probe recall is 0.96-0.98).
RECALL_BUCKETS = (0.5, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 1.0)
#: Samples waiting for the worker, at most; more are dropped (and counted).
DEFAULT_QUEUE = 64
#: Measurements the ``_recent`` gauge averages, per snapshot version.
RECENT = 100
#: Snapshot versions that keep series: a long-lived server swaps snapshots nightly, and
#: one series per version ever served would grow without bound.
VERSIONS_KEPT = 4

FloatArray = npt.NDArray[np.float32]
RowArray = npt.NDArray[np.int64]


def rerank_outcome(status: str) -> str:
    """The ``outcome`` label of a search's ``rerank`` status (``SearchService._rerank``).

    ``applied``; ``degraded``: the reranker failed ("skipped (error)"), the fused order
    answered; ``skipped``: wanted but not run (no model, the deadline, too few
    candidates); ``off``: not wanted (``rerank=false``, or no reranker and none asked)."""
    if status.startswith("applied"):
        return "applied"
    if status == "skipped (error)":
        return "degraded"
    if status.startswith("skipped"):
        return "skipped"
    return "off"


@dataclass(frozen=True, slots=True)
class _Sample:
    """What the worker needs, captured at request time. ``index`` is the snapshot's own
    vector index (a reference): an update replaces its matrix rather than writing into
    it, and a tombstone set in between moves one sample by one row."""

    version: str
    index: VectorIndex
    query: FloatArray
    rows: RowArray
    k: int


@dataclass(slots=True)
class VersionRecall:
    """Recall measured on one snapshot version."""

    #: Measurements at or below each of :data:`RECALL_BUCKETS` (cumulative, as exported).
    buckets: list[int] = field(default_factory=lambda: [0] * len(RECALL_BUCKETS))
    count: int = 0
    total: float = 0.0
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT))

    @property
    def recent_mean(self) -> float:
        """Mean of the last :data:`RECENT` measurements (NaN before the first)."""
        return sum(self.recent) / len(self.recent) if self.recent else float("nan")


@dataclass(frozen=True, slots=True)
class RecallStats:
    """A consistent copy of the monitor's numbers. Every sample offered and taken ends
    ``measured``, ``failed`` or (still) ``pending``; ``dropped`` were never queued."""

    measured: int
    failed: int
    dropped: int
    pending: int
    versions: dict[str, VersionRecall]


class LiveRecallMonitor:
    """Samples ``fraction`` of the dense answers offered and measures their recall on a
    worker thread (see the module docstring for the contract).

    ``gate``: when given, the worker takes a sample only while the event is set, so an
    operator or a test can hold it (samples then queue up, and drop once the queue is
    full); :meth:`close` sets it. ``seed`` makes the sampling draws repeatable.
    """

    def __init__(
        self,
        fraction: float,
        *,
        queue_size: int = DEFAULT_QUEUE,
        gate: threading.Event | None = None,
        seed: int | None = None,
    ) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction={fraction} must be within [0, 1]")
        if queue_size < 1:
            raise ValueError(f"queue_size={queue_size} must be >= 1")
        self.fraction = fraction
        self._random = random.Random(seed)
        self._queue: queue.Queue[_Sample | None] = queue.Queue(maxsize=queue_size)
        self._gate = gate
        # One condition guards the counts and wakes flush() when the worker catches up.
        self._cond = threading.Condition()
        self._pending = self._measured = self._failed = self._dropped = 0
        self._closed = False
        self._versions: OrderedDict[str, VersionRecall] = OrderedDict()
        # An exact search that fails fails for every sample (e.g. a snapshot without
        # stored vectors): log it once in a while, count every one.
        self._errors = LogThrottle(log, 60.0)
        self._thread: threading.Thread | None = None
        if fraction > 0.0:  # off: no thread at all
            self._thread = threading.Thread(target=self._run, name="live-recall", daemon=True)
            self._thread.start()

    # -- the request path ----------------------------------------------------------

    def offer(self, snapshot: LoadedSnapshot, query: FloatArray, rows: RowArray, k: int) -> bool:
        """Maybe queue a measurement of ``rows`` (the dense leg's answer to ``query``, at
        most ``k``, best first) on ``snapshot``; returns whether it was queued. Never
        blocks and never raises for an index it cannot measure (it skips it)."""
        if self._thread is None or self._closed or k < 1 or len(rows) == 0:
            return False
        if self.fraction < 1.0 and self._random.random() >= self.fraction:
            return False
        sample = _Sample(snapshot.version, snapshot.vectors, query, rows, k)
        with self._cond:
            try:
                self._queue.put_nowait(sample)
            except queue.Full:
                self._dropped += 1
                return False
            self._pending += 1  # under the lock with the put: the worker cannot undercount
        return True

    # -- the worker ----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            if self._gate is not None:
                self._gate.wait()
            sample = self._queue.get()
            if sample is None or self._closed:
                return
            try:
                recall: float | None = exact_recall(
                    sample.index, sample.query, sample.rows, sample.k
                )
            except Exception as exc:  # keep measuring the next ones
                self._errors.warning(type(exc).__name__, "live recall not measured: %r", exc)
                recall = None
            self._record(sample.version, recall)

    def _record(self, version: str, recall: float | None) -> None:
        with self._cond:
            self._pending -= 1
            if recall is None:
                self._failed += 1
            else:
                self._measured += 1
                stats = self._versions.get(version)
                if stats is None:
                    stats = self._versions[version] = VersionRecall()
                    while len(self._versions) > VERSIONS_KEPT:
                        self._versions.popitem(last=False)  # the least recently measured
                else:
                    self._versions.move_to_end(version)
                for i, bound in enumerate(RECALL_BUCKETS):
                    if recall <= bound:
                        stats.buckets[i] += 1
                stats.count += 1
                stats.total += recall
                stats.recent.append(recall)
            self._cond.notify_all()

    # -- reading and stopping --------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the worker thread is alive (False when off or closed)."""
        return self._thread is not None and self._thread.is_alive()

    def stats(self) -> RecallStats:
        """The numbers now (copies: safe to read while the worker goes on)."""
        with self._cond:
            versions = {
                v: VersionRecall(list(s.buckets), s.count, s.total, deque(s.recent, RECENT))
                for v, s in self._versions.items()
            }
            return RecallStats(self._measured, self._failed, self._dropped, self._pending, versions)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued sample is measured (or failed), at most ``timeout``
        seconds; returns whether the queue was drained. Samples offered meanwhile count."""
        end = time.monotonic() + timeout
        with self._cond:
            while self._pending > 0:
                left = end - time.monotonic()
                if left <= 0 or self._closed:
                    return False
                self._cond.wait(left)
            return True

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker (at most ``timeout`` seconds for the sample it is measuring);
        queued samples are discarded, later offers refused. Idempotent."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is None:
            return
        if self._gate is not None:
            self._gate.set()
        # Wakes a worker waiting on an empty queue; from a full one it takes a sample
        # and then sees _closed.
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        self._thread.join(timeout)


def exact_recall(index: VectorIndex, query: FloatArray, rows: RowArray, k: int) -> float:
    """recall@k of ``rows`` against ``index``'s exact top ``k`` of ``query`` (1, d) over
    its live rows (the same exact scan eval's oracle uses); 1.0 when there is nothing
    to find."""
    _, truth = index.search(query.reshape(1, -1), k, exact=True)
    if not (truth >= 0).any():
        return 1.0
    return recall_at_k(np.asarray(rows, dtype=np.int64).reshape(1, -1), truth, k)


class LiveRecallCollector(Collector):
    """``shopsearch_live_recall`` (histogram), ``shopsearch_live_recall_recent`` (gauge),
    both by ``snapshot``, and ``shopsearch_live_recall_samples_total`` by ``result``
    (measured, failed, dropped), read from the monitor ``monitor()`` returns at each
    scrape (None: series without samples)."""

    def __init__(self, monitor: Callable[[], LiveRecallMonitor | None]) -> None:
        self._monitor = monitor

    def collect(self) -> Iterator[HistogramMetricFamily | GaugeMetricFamily | CounterMetricFamily]:
        recall = HistogramMetricFamily(
            "shopsearch_live_recall",
            "recall@k of the dense leg's approximate answer against an exact search over "
            "the same snapshot, on sampled live searches (k: the depth the leg was asked).",
            labels=["snapshot"],
        )
        recent = GaugeMetricFamily(
            "shopsearch_live_recall_recent",
            f"Mean live recall of the last {RECENT} sampled searches.",
            labels=["snapshot"],
        )
        samples = CounterMetricFamily(
            "shopsearch_live_recall_samples",
            "Sampled searches by what became of them: measured, failed (the exact search "
            "raised), dropped (the queue was full; never blocks a request).",
            labels=["result"],
        )
        monitor = self._monitor()
        stats = monitor.stats() if monitor is not None else RecallStats(0, 0, 0, 0, {})
        for version, s in stats.versions.items():
            bounds = [floatToGoString(b) for b in RECALL_BUCKETS]
            buckets = [*zip(bounds, map(float, s.buckets), strict=True), ("+Inf", float(s.count))]
            recall.add_metric([version], buckets, sum_value=s.total)
            recent.add_metric([version], s.recent_mean)
        for result, value in (
            ("measured", stats.measured),
            ("failed", stats.failed),
            ("dropped", stats.dropped),
        ):
            samples.add_metric([result], value)
        yield from (recall, recent, samples)
