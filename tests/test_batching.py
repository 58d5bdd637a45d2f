from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import numpy as np
import pytest

from shopsearch.retrieval.batching import MicroBatcher
from shopsearch.retrieval.encoders import Encoder


def test_concurrent_callers_get_their_own_rows_in_fewer_batches(encoder: Encoder) -> None:
    batcher = MicroBatcher(lambda texts: encoder.encode_query(texts), max_batch=16)
    texts = [f"cordless drill {i}" for i in range(32)]
    expected = encoder.encode_query(texts)
    results: dict[int, np.ndarray] = {}

    def call(i: int) -> None:
        results[i] = batcher.encode(texts[i])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batcher.close()
    for i, row in results.items():
        assert row.shape == (1, encoder.dim)
        np.testing.assert_allclose(row[0], expected[i], atol=1e-5)  # batching changes no result
    assert batcher.items == 32
    assert batcher.batches < 32  # callers that arrived together shared a forward pass


def test_errors_reach_every_caller_and_the_worker_survives() -> None:
    calls: list[int] = []

    def flaky(texts: Sequence[str]) -> np.ndarray:
        calls.append(len(texts))
        if texts[0] == "boom":
            raise RuntimeError("encoder failed")
        time.sleep(0.01)
        return np.ones((len(texts), 4), dtype=np.float32)

    batcher = MicroBatcher(flaky)
    with pytest.raises(RuntimeError, match="encoder failed"):
        batcher.encode("boom")
    assert batcher.encode("fine").shape == (1, 4)
    batcher.close()
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(flaky, max_batch=0)
