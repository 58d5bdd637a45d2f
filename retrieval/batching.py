"""Micro-batching of query encoding across concurrent requests.

On a CPU, one forward pass over 16 short queries costs far less than 16 passes of one:
the per-call overhead (tokenizer, thread pool, small matrix products) dominates. A
:class:`MicroBatcher` runs one worker thread that takes every request waiting in its
queue, encodes them as one batch, and hands each caller its row. It never waits for a
batch to fill: at low load a request is encoded alone at once (no added latency); under
load, requests arriving while a batch is being encoded form the next batch.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future

import numpy as np
import numpy.typing as npt

__all__ = ["MicroBatcher"]

log = logging.getLogger(__name__)

EncodeFn = Callable[[Sequence[str]], npt.NDArray[np.float32]]


class MicroBatcher:
    """Thread-safe ``encode(text) -> (1, dim)`` that batches concurrent callers.

    ``fn`` encodes a list of texts to a ``(len(texts), dim)`` array; it is only ever
    called from the worker thread. ``max_batch`` bounds a batch. An exception raised by
    ``fn`` is re-raised in every caller of that batch. ``close()`` stops the worker.
    """

    def __init__(self, fn: EncodeFn, *, max_batch: int = 32) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self._fn = fn
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[tuple[str, Future[npt.NDArray[np.float32]]] | None] = (
            queue.SimpleQueue()
        )
        self.batches = 0  # counters, for tests and metrics
        self.items = 0
        self._worker = threading.Thread(target=self._run, name="query-batcher", daemon=True)
        self._worker.start()

    def encode(self, text: str) -> npt.NDArray[np.float32]:
        """The ``(1, dim)`` encoding of ``text`` (blocks until its batch is done)."""
        future: Future[npt.NDArray[np.float32]] = Future()
        self._queue.put((text, future))
        return future.result()

    def close(self) -> None:
        self._queue.put(None)
        self._worker.join(timeout=5)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self._max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)  # stop after this batch
                    break
                batch.append(item)
            texts = [t for t, _ in batch]
            try:
                vectors = self._fn(texts)
            except Exception as exc:  # delivered to each waiting caller
                for _, future in batch:
                    future.set_exception(exc)
                continue
            self.batches += 1
            self.items += len(batch)
            for i, (_, future) in enumerate(batch):
                row = vectors[i : i + 1].copy()
                row.setflags(write=False)
                future.set_result(row)
